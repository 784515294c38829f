"""Names, options and the state machine: pure rules."""
import math

import pytest

from quilt_agent.errors import InvalidArgument
from quilt_agent.model import ContainerSpec, State, parse_options, scope_name, validate_command, validate_name


@pytest.mark.parametrize("name", ["web", "a", "web-1.prod_2", "A" * 63, "0abc"])
def test_valid_names_are_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "A" * 64, "a/b", "..", "a b", "-a", ".a", "a@b", "a\\b", "a:b", "é", "a\nb"])
def test_invalid_names_are_refused_naming_the_value(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_name(name)
    assert repr(name)[1:-1] in str(err.value) or name in str(err.value)


def test_scope_name_is_derived_from_the_container_name() -> None:
    assert scope_name("web") == "quilt-web.scope"


def test_unknown_option_is_an_error_naming_the_key() -> None:
    with pytest.raises(InvalidArgument, match="'colour'"):
        parse_options({"colour": "blue"})


@pytest.mark.parametrize("options", [
    {"memory_max": 0}, {"memory_max": 1}, {"memory_max": 1 << 63}, {"memory_max": "1G"}, {"memory_max": True},
    {"cpu_quota": -1.0}, {"cpu_quota": 0.0}, {"cpu_quota": math.nan}, {"cpu_quota": math.inf}, {"cpu_quota": 1e9},
    {"pids_max": 0}, {"stop_timeout": 86401}, {"env": "A=1"}, {"env": ["NOEQUALS"]}, {"env": ["=x"]},
    {"env": ["A B=c"]}, {"workdir": "relative"}, {"namespaces": ["pid", "mount", "time"]},
    {"namespaces": ["pid"]}, {"labels": {"": "x"}}, {"user": "a b"}, {"hostname": "bad host"},
    {"remove_on_exit": 1}, {"userns": 1}, {"userns": "keep-id"}, {"init": 1}, {"init": "yes"},
])
def test_bad_option_values_are_refused(options: dict) -> None:
    with pytest.raises(InvalidArgument):
        parse_options(options)


def test_good_options_become_spec_fields() -> None:
    fields = parse_options({"env": ["A=1", "B=x=y"], "memory_max": 64 << 20, "cpu_quota": 50, "pids_max": 10,
                            "namespaces": ["net", "mount", "pid"], "workdir": "/srv/../app", "user": "1000:1000",
                            "labels": {"k": "v"}, "remove_on_exit": True, "stop_timeout": 3})
    assert fields["env"] == ("A=1", "B=x=y")
    assert fields["cpu_quota"] == 50.0
    assert fields["namespaces"] == ("pid", "mount", "net")  # in the kernel's order, not the caller's
    assert fields["workdir"] == "/app"


def test_naming_every_namespace_in_any_order_is_the_default() -> None:
    every = ["cgroup", "net", "ipc", "uts", "mount", "pid"]
    default = ContainerSpec(name="c", image="/x.tar", image_id="a" * 64, command=("/bin/true",)).namespaces
    assert parse_options({"namespaces": every})["namespaces"] == default
    assert sorted(default) == sorted(every)


@pytest.mark.parametrize("command", [[], [""], ["a\0b"]])
def test_empty_or_nul_commands_are_refused(command: list) -> None:
    with pytest.raises(InvalidArgument):
        validate_command(command)


def test_only_created_exited_and_failed_containers_can_start() -> None:
    assert State.CREATED.can_start() and State.EXITED.can_start() and State.FAILED.can_start()
    assert not State.RUNNING.can_start() and not State.REMOVING.can_start()


def test_a_memory_limit_below_6_mib_names_the_unit_and_the_least() -> None:
    with pytest.raises(InvalidArgument, match=r"Invalid memory_max 512 bytes: the least is 6291456 \(6 MiB\)"):
        parse_options({"memory_max": 512})
    assert parse_options({"memory_max": 6 * 1024 * 1024})["memory_max"] == 6 * 1024 * 1024
