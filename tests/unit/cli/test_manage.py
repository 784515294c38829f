"""The pure parts of quiltctl's Podman verbs (quilt_agent/cli/manage.py, system.py, container_group.py): top's
descriptors and columns, port's lines, info's YAML and counts, system prune's sizes, and the container group's
commands being the top-level ones."""
from __future__ import annotations

from pathlib import Path

import click
import pytest

from quilt_agent.cli import container_group, manage, system
from quilt_agent.cli.main import COMMANDS, cli
from quilt_agent.cli.manage import (
    Process, duration_text, inside_id, parse_descriptors, port_lines, top_rows, tty_name,
)


# --- top -------------------------------------------------------------------------------------------------------

def test_no_descriptors_are_podmans_default_columns() -> None:
    assert parse_descriptors([]) == ["user", "pid", "ppid", "pcpu", "etime", "tty", "time", "args"]


def test_descriptors_split_on_commas_and_spaces_and_aix_codes_map_onto_names() -> None:
    assert parse_descriptors(["pid,args", "hpid huser", "%C"]) == ["pid", "args", "hpid", "huser", "pcpu"]


def test_an_unknown_descriptor_is_a_usage_error_naming_it() -> None:
    with pytest.raises(click.UsageError, match="'cmd'"):
        parse_descriptors(["pid", "cmd"])


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (0.25, "250ms"), (4.5, "4.5s"), (62.25, "1m2.25s"),
                                          (3601, "1h0m1s"), (59.9999, "1m0s")])
def test_durations_read_as_gos(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize("tty_nr,name", [(0, "?"), ((136 << 8) | 3, "pts/3"), ((137 << 8) | 1, "pts/257"),
                                         ((4 << 8) | 1, "tty1")])
def test_terminals_are_named_as_ps_names_them(tty_nr: int, name: str) -> None:
    assert tty_name(tty_nr) == name


def test_host_ids_map_to_the_containers_own_and_an_unmapped_one_is_nobody() -> None:
    id_map = "         0     100000      65536\n"
    assert inside_id(100000, id_map) == 0 and inside_id(101000, id_map) == 1000
    assert inside_id(0, id_map) == 65534
    assert inside_id(1000, "0 0 4294967295") == 1000


def _process(host_pid: int, pid: int, host_ppid: int, args: str) -> Process:
    return Process(host_pid=host_pid, pid=pid, host_ppid=host_ppid, uid=100000, user_inside=0, state="S", nice=0,
                   pgid=host_pid, tty_nr=0, cpu_seconds=0.5, elapsed=2.0, vsz=1024, rss=512, comm="sh", args=args)


def test_top_rows_show_the_containers_pids_and_users_in_pid_order() -> None:
    rows = top_rows([_process(501, 2, 500, "sleep 1"), _process(500, 1, 42, "sh -c x")],
                    parse_descriptors([]), {0: "root"}, lambda uid: f"host{uid}")
    assert rows == [["USER", "PID", "PPID", "%CPU", "ELAPSED", "TTY", "TIME", "COMMAND"],
                    ["root", "1", "0", "25.000", "2s", "?", "500ms", "sh -c x"],
                    ["root", "2", "1", "25.000", "2s", "?", "500ms", "sleep 1"]]
    assert top_rows([_process(500, 1, 42, "x")], ["hpid", "huser"], {}, lambda uid: f"host{uid}")[1] == [
        "500", "host100000"]


def test_columns_are_aligned_and_the_last_is_left_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    manage.print_columns([["PID", "COMMAND"], ["1", "sh -c 'a  b'"]])
    assert capsys.readouterr().out == "PID   COMMAND\n1     sh -c 'a  b'\n"


# --- port ------------------------------------------------------------------------------------------------------

PORTS = ["8080:80/tcp", "127.0.0.1:5353:53/udp"]


def test_every_mapping_reads_as_podmans() -> None:
    assert port_lines(PORTS) == ["80/tcp -> 0.0.0.0:8080", "53/udp -> 127.0.0.1:5353"]


@pytest.mark.parametrize("wanted,lines", [("80", ["0.0.0.0:8080"]), ("80/tcp", ["0.0.0.0:8080"]),
                                          ("53/udp", ["127.0.0.1:5353"]), ("53", []), ("81", [])])
def test_a_private_port_gives_the_hosts_side_of_its_mapping(wanted: str, lines: list[str]) -> None:
    assert port_lines(PORTS, wanted) == lines


@pytest.mark.parametrize("wanted", ["http", "80/sctp", "/tcp"])
def test_a_bad_private_port_is_a_usage_error(wanted: str) -> None:
    with pytest.raises(click.UsageError, match=wanted.replace("/", ".")):
        port_lines(PORTS, wanted)


# --- info, system prune ----------------------------------------------------------------------------------------

def test_containers_are_counted_as_podmans_container_store() -> None:
    states = ["running", "paused", "exited", "created", "failed", "running"]
    assert system.container_counts(states) == {"number": 6, "paused": 1, "running": 2, "stopped": 3}


def test_info_prints_nested_keys_as_yaml() -> None:
    assert system.yaml_lines({"host": {"arch": "amd64", "list": ["a"], "none": []}, "n": 1}) == [
        "host:", "  arch: amd64", "  list:", "  - a", "  none: []", "n: 1"]


@pytest.mark.parametrize("files,version", [(["cgroup.controllers"], ("v2", "unified")),
                                           (["unified/cgroup.controllers"], ("v1", "hybrid")),
                                           ([], ("v1", "legacy"))])
def test_the_cgroup_layout_is_told_from_the_mounted_hierarchies(tmp_path: Path, files: list[str],
                                                                version: tuple[str, str]) -> None:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    found = system.cgroup_layout(str(tmp_path))
    assert found[0] == version[0] and found[1].startswith(version[1])


@pytest.mark.parametrize("size,text", [(0, "0B"), (999, "999B"), (1500, "1.5kB"), (12_345_678, "12.35MB")])
def test_reclaimed_space_reads_as_podmans(size: int, text: str) -> None:
    assert system.human_size(size) == text


# --- the container group, and the Podman names of the image verbs ----------------------------------------------

@pytest.mark.parametrize("sub", sorted(container_group.SUBCOMMANDS))
def test_each_container_subcommand_is_the_top_level_command_itself(sub: str) -> None:
    ctx = click.Context(cli)
    command = container_group.container.get_command(ctx, sub)
    target = container_group.SUBCOMMANDS[sub]
    if isinstance(target, str):
        assert command is cli.get_command(ctx, target)
    else:
        assert command is manage.container_prune


def test_podmans_image_verbs_are_the_image_groups_commands() -> None:
    ctx = click.Context(cli)
    image = cli.get_command(ctx, "image")
    assert isinstance(image, click.Group)
    for podman, ours in (("images", "ls"), ("rmi", "rm"), ("pull", "pull"), ("import", "import"), ("tag", "tag")):
        assert cli.get_command(ctx, podman) is image.get_command(ctx, ours), podman
    assert cli.get_command(ctx, "info") is system.system.get_command(ctx, "info")
    assert set(COMMANDS) >= {"restart", "rename", "pause", "unpause", "top", "port", "attach", "export", "container",
                             "system"}


# --- the prompt of the prunes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tty,force,answer,goes", [(True, False, "y", True), (True, False, "", False),
                                                   (True, True, "", True), (False, False, "", True)])
def test_a_prune_asks_only_a_terminal_without_force(monkeypatch: pytest.MonkeyPatch, tty: bool, force: bool,
                                                    answer: str, goes: bool) -> None:
    asked: list[str] = []
    monkeypatch.setattr(manage.sys.stdin, "isatty", lambda: tty)
    monkeypatch.setattr(manage.click, "prompt", lambda text, **kw: asked.append(text) or answer)
    assert manage.confirm("WARNING!", force) is goes
    assert bool(asked) == (tty and not force)
