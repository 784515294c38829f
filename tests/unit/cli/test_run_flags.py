"""create/run's flags for the command, environment, /etc files, capabilities, stop signal and ports: what each
spelling becomes in CreateContainer's options, and the bad ones as one usage line without a call; rm -a and
kill -a; the exit status of a command that cannot be run."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quilt_agent.cli.parsing import parse_env_entry
from quilt_agent.cli.runflags import FlagError, environment, log_options, parse_entrypoint, read_env_file
from quilt_agent.client import CONTAINER_OPTION_SIGNATURES, ClientError, ContainerEntry
from quilt_agent.model import OPTION_PARSERS
from tests.unit.cli.test_parsing import PATH, FakeClient, created, quiltctl

ERR = "org.quilt.Runtime.Error."


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


def options_of(fake: FakeClient, *flags: str) -> dict[str, Any]:
    return created(fake, *flags, "img", "cmd")[3]


def test_every_new_create_option_has_a_wire_type() -> None:
    # A key the agent takes but the client cannot send would be a flag that only fails.
    assert set(OPTION_PARSERS) <= set(CONTAINER_OPTION_SIGNATURES)


@pytest.mark.parametrize("text, expected", [
    ("/bin/sh", ["/bin/sh"]),
    ("/usr/bin/env python3", ["/usr/bin/env python3"]),  # one program, not split: as Podman
    ('["/bin/sh", "-c"]', ["/bin/sh", "-c"]),
    ("[]", []),
    ("", []),
])
def test_entrypoint_is_one_program_or_a_json_array(text: str, expected: list[str]) -> None:
    assert parse_entrypoint(text) == expected


@pytest.mark.parametrize("text", ['["/bin/sh", 1]', "[not json", '[{"a": 1}]'])
def test_an_entrypoint_that_looks_like_json_but_is_not_an_array_of_strings_is_refused(text: str) -> None:
    with pytest.raises(FlagError, match="JSON array of strings") as raised:
        parse_entrypoint(text)
    assert raised.value.flag == "--entrypoint"


def test_the_flags_reach_the_options(fake: FakeClient) -> None:
    assert options_of(
        fake, "--entrypoint", "/bin/tini", "--add-host", "db:10.0.0.5", "--add-host", "v6:::1", "--dns", "1.1.1.1",
        "--dns-search", "example.com", "--dns-option", "ndots:2", "--cap-add", "NET_RAW,cap_sys_time",
        "--cap-add", "MKNOD", "--cap-drop", "ALL", "--stop-signal", "SIGUSR1", "-P", "-p", "80", "-p", "::53/udp",
    ) == {
        "entrypoint": ["/bin/tini"], "add_hosts": ["db:10.0.0.5", "v6:::1"], "dns_servers": ["1.1.1.1"],
        "dns_search": ["example.com"], "dns_options": ["ndots:2"], "cap_add": ["NET_RAW", "cap_sys_time", "MKNOD"],
        "cap_drop": ["ALL"], "stop_signal": "SIGUSR1", "publish_all": True, "ports": ["80", "::53/udp"],
    }


def test_an_empty_entrypoint_is_sent_as_an_empty_list(fake: FakeClient) -> None:
    assert options_of(fake, "--entrypoint", "") == {"entrypoint": []}


def test_without_the_flags_no_option_is_sent(fake: FakeClient) -> None:
    assert options_of(fake) == {}


def test_a_bare_env_name_passes_this_shells_value_and_is_left_out_when_unset(fake: FakeClient,
                                                                            monkeypatch: Any) -> None:
    monkeypatch.setenv("QUILT_TEST_SET", "from shell")
    monkeypatch.delenv("QUILT_TEST_UNSET", raising=False)
    assert options_of(fake, "-e", "QUILT_TEST_SET", "-e", "QUILT_TEST_UNSET", "-e", "A=1") == {
        "env": ["QUILT_TEST_SET=from shell", "A=1"]}


@pytest.mark.parametrize("text", ["=value", "A B=1", ""])
def test_an_env_entry_without_a_name_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE or KEY"):
        parse_env_entry(text)


def test_env_file_values_are_literal_and_later_ones_win(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("FROM_SHELL", "shell value")
    monkeypatch.delenv("NOT_SET", raising=False)
    first = tmp_path / "first.env"
    first.write_text("# comment\n\n   \nA=1\n  B=indented\nC=\"quoted\"\nD=x=y\nFROM_SHELL\nNOT_SET\n#E=no\n")
    second = tmp_path / "second.env"
    second.write_text("A=2\n")
    assert read_env_file(str(first)) == [("A", "1"), ("B", "indented"), ("C", '"quoted"'), ("D", "x=y"),
                                         ("FROM_SHELL", "shell value"), ("NOT_SET", None)]
    params = {"env_file": (str(first), str(second)), "env": (("D", "flag"),)}
    assert environment(params) == ["B=indented", 'C="quoted"', "FROM_SHELL=shell value", "A=2", "D=flag"]


@pytest.mark.parametrize("content, words", [
    ("GOOD=1\nBAD KEY=2\n", "line 2"),
    ("=nameless\n", "line 1"),
    (b"A=\xff\n", "cannot read"),
])
def test_a_bad_env_file_is_one_usage_line_without_a_call(fake: FakeClient, tmp_path: Path, content: Any,
                                                         words: str) -> None:
    path = tmp_path / "bad.env"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = quiltctl(fake, "run", "--env-file", str(path), "img", "true")
    assert result.exit_code == 2 and words in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert fake.calls == []


def test_a_missing_env_file_is_a_usage_error_naming_it(fake: FakeClient, tmp_path: Path) -> None:
    result = quiltctl(fake, "create", "--env-file", str(tmp_path / "nope.env"), "img")
    assert result.exit_code == 2 and "nope.env" in result.stderr
    assert fake.calls == []


# --- exit status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("error, code", [("CommandNotFound", 127), ("CommandNotExecutable", 126),
                                         ("ContainerFailed", 125), ("InvalidArgument", 125)])
@pytest.mark.parametrize("flags", [[], ["-d"], ["--rm"]], ids=["foreground", "detached", "rm"])
def test_run_exits_as_podman_when_the_command_cannot_be_run(fake: FakeClient, error: str, code: int,
                                                            flags: list[str]) -> None:
    failure = ClientError(ERR + error, "Container 'web' failed to start: the reason")
    fake.errors["run_container"] = fake.errors["start"] = failure
    result = quiltctl(fake, "run", *flags, "img", "/nope")
    assert result.exit_code == code
    assert result.stderr == "quiltctl: Container 'web' failed to start: the reason\n"


# --- rm -a, kill -a -----------------------------------------------------------------------------------------


@pytest.fixture
def three(fake: FakeClient) -> FakeClient:
    fake.entries = [ContainerEntry("a" * 64, "up", "running", PATH + "up"),
                    ContainerEntry("b" * 64, "done", "exited", PATH + "done"),
                    ContainerEntry("c" * 64, "new", "created", PATH + "new"),
                    ContainerEntry("d" * 64, "going", "removing", PATH + "going")]
    return fake


def test_rm_all_removes_every_container_that_does_not_run(three: FakeClient) -> None:
    result = quiltctl(three, "rm", "-a")
    assert (result.exit_code, result.stdout.split()) == (0, ["done", "new"])
    assert [name for name, in three.calls_to("get_container")] == ["done", "new"]
    assert {force for _, force in three.calls_to("remove")} == {False}


def test_rm_all_with_force_removes_running_ones_too(three: FakeClient) -> None:
    result = quiltctl(three, "rm", "-a", "-f")
    assert (result.exit_code, sorted(result.stdout.split())) == (0, ["done", "new", "up"])
    assert {force for _, force in three.calls_to("remove")} == {True}


def test_kill_all_signals_the_running_ones(three: FakeClient) -> None:
    result = quiltctl(three, "kill", "--all", "-s", "HUP")
    assert (result.exit_code, result.stdout.split()) == (0, ["up"])
    assert [signum for _, signum in three.calls_to("kill")] == [1]


@pytest.mark.parametrize("args", [["rm"], ["rm", "-a", "web"], ["kill"], ["kill", "-a", "web"]])
def test_all_or_names_but_not_both_nor_neither(fake: FakeClient, args: list[str]) -> None:
    result = quiltctl(fake, *args)
    assert result.exit_code == 2 and "-a" in result.stderr and len(result.stderr.splitlines()) == 1
    assert fake.calls == []


def test_log_options_are_the_rotation_in_bytes_and_files() -> None:
    assert log_options(("max-size=10m", "max-files=3")) == {"log_max_size": 10 << 20, "log_max_files": 3}
    assert log_options(["max-file=2", "max-size=4096"]) == {"log_max_files": 2, "log_max_size": 4096}
    assert log_options(None) == {}


def test_podmans_rate_limit_options_go_to_the_agent_in_its_units() -> None:
    # The agent refuses them, saying why (model.LOG_RATE_LIMIT_REFUSED): its word, not the client's.
    assert log_options(("rate-limit-burst=500", "rate-limit-interval=30s")) == {
        "log_rate_limit_burst": 500, "log_rate_limit_interval": 30_000_000}


@pytest.mark.parametrize("text, words", [
    ("tag=web", "the known log options are max-size=SIZE, max-files=N, rate-limit-burst=N"),
    ("max-size", "known log options"), ("max-size=lots", "'lots' is not a size"),
    ("max-files=two", "'two' is not a number"), ("max-files=-1", "'-1' is not a number"),
    ("rate-limit-interval=soon", "'soon' is not a duration"), ("rate-limit-burst=-5", "'-5' is not a number"),
])
def test_a_bad_log_option_names_the_flag(text: str, words: str) -> None:
    with pytest.raises(FlagError) as caught:
        log_options((text,))
    assert words in str(caught.value) and caught.value.flag == "--log-opt"
