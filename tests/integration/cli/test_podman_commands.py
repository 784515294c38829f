"""The Podman commands a Podman user tries first (images, rmi, pull, import, tag, restart, rename, pause, unpause,
top, port, attach, export, info, container ..., container prune, system prune), run as a script runs quiltctl,
against the real agent: what they print, their exit status, and what the agent and the kernel hold afterwards."""
from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.integration.cli.test_quiltctl import (
    QUILT_ERROR, QUILTCTL, USAGE_ERROR, assert_one_error_line, clean, image, inspect, ok, ps_json, quiltctl,
)
from tests.integration.conftest import systemctl
from tests.integration.waiting import until

__all__ = ["clean", "image"]  # the fixtures test_quiltctl.py's tests use: every test here starts and ends clean

# Ends on SIGTERM (a shell as PID 1 has no default action for it).
SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; echo started; while true; do sleep 0.1; done"]


def run_detached(name: str, image: str, *flags: str, command: list[str] | None = None) -> str:
    return ok("run", "-d", "--name", name, *flags, image, "--", *(command or SLEEPER)).strip()


def frozen(name: str) -> bool:
    """Whether the kernel has every process of the container's scope frozen (cgroup v2's cgroup.events)."""
    pid = inspect(name)["MainPID"]
    path = next(line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                if line.startswith("0::"))
    # The unified hierarchy: the root on a v2 host, /sys/fs/cgroup/unified on a hybrid one.
    mount = Path("/sys/fs/cgroup") if Path("/sys/fs/cgroup/cgroup.controllers").exists() else Path(
        "/sys/fs/cgroup/unified")
    return "frozen 1" in (mount / path.lstrip("/") / "cgroup.events").read_text().splitlines()


def tiny_rootfs(tmp_path: Path, text: str) -> str:
    """A rootfs tarball of one file: an image of its own (the busybox one is every other test's)."""
    path = tmp_path / "tiny.tar"
    with tarfile.open(path, "w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return str(path)


# --- images, rmi, pull, import, tag ----------------------------------------------------------------------------

def test_import_images_tag_and_rmi_are_the_image_verbs(tmp_path: Path, name: str) -> None:
    image_id = ok("import", "-q", tiny_rootfs(tmp_path, name), f"{name}:1").strip()
    assert ok("images", "-q").split() == ok("image", "ls", "-q").split()
    ok("tag", f"{name}:1", f"{name}:2", f"{name}-other")
    names = {props["Id"]: props["Names"] for props in json.loads(ok("image", "ls", "--json"))}
    assert sorted(names[image_id]) == [f"{name}-other:latest", f"{name}:1", f"{name}:2"]
    assert ok("rmi", f"{name}:2") == f"{name}:2\n"
    assert f"{name}:2" not in ok("images")
    ok("image", "tag", image_id[:12], f"{name}:3")  # the group's spelling, and an id prefix
    assert f"{name}:3" in ok("images")
    ok("rmi", image_id)


def test_tag_refuses_an_unknown_image_and_a_bad_name(tmp_path: Path, name: str) -> None:
    assert_one_error_line(quiltctl("tag", f"{name}-none", f"{name}:1"), QUILT_ERROR, f"{name}-none")
    ok("import", "-q", tiny_rootfs(tmp_path, name), f"{name}:1")
    assert_one_error_line(quiltctl("tag", f"{name}:1", "Bad Name"), QUILT_ERROR, "Bad Name")
    assert_one_error_line(quiltctl("tag", f"{name}:1"), USAGE_ERROR)
    ok("rmi", f"{name}:1")


def test_pull_is_image_pull(name: str) -> None:
    # No registry in the test host: the error is the registry's, named, one line.
    assert_one_error_line(quiltctl("pull", "-q", f"127.0.0.1:1/{name}"), QUILT_ERROR, "127.0.0.1:1")


# --- container ... -------------------------------------------------------------------------------------------

def test_the_container_group_runs_the_top_level_commands(image: str, name: str) -> None:
    container_id = ok("container", "run", "-d", "--name", name, image, "--", *SLEEPER).strip()
    assert [p["Id"] for p in json.loads(ok("container", "ls", "--json"))] == [container_id]
    assert ok("container", "ps", "-q") == ok("ps", "-q") == container_id[:12] + "\n"
    assert json.loads(ok("container", "inspect", name))[0]["Id"] == container_id
    ok("container", "stop", "-t", "1", name)
    assert inspect(name)["State"] == "exited"
    assert_one_error_line(quiltctl("container", "frobnicate"), USAGE_ERROR, "frobnicate")
    assert_one_error_line(quiltctl("container", "start", f"{name}-none"), QUILT_ERROR, f"{name}-none")


def test_container_prune_removes_every_container_that_does_not_run(image: str, name: str) -> None:
    running = run_detached(f"{name}-run", image)
    created = ok("create", "--name", f"{name}-new", image, "/bin/true").strip()
    exited = ok("create", "--name", f"{name}-done", image, "/bin/true").strip()
    ok("start", f"{name}-done")
    ok("wait", f"{name}-done")
    result = quiltctl("container", "prune", "-f")
    assert result.returncode == 0 and result.stderr == ""
    assert sorted(result.stdout.split()) == sorted([created, exited])
    assert [p["Id"] for p in ps_json("-a").values()] == [running]
    assert quiltctl("container", "prune", "-f").stdout == ""


# --- restart ---------------------------------------------------------------------------------------------------

def test_restart_stops_a_running_container_and_starts_it_again(image: str, name: str) -> None:
    run_detached(name, image)
    before = inspect(name)
    assert ok("restart", "-t", "1", name) == f"{name}\n"
    after = inspect(name)
    assert after["State"] == "running" and after["MainPID"] != before["MainPID"]
    assert after["StartedAt"] > before["StartedAt"] and after["RestartCount"] == 0


def test_restart_starts_one_that_does_not_run_and_all_with_a(image: str, name: str) -> None:
    ok("create", "--name", f"{name}-a", image, "--", *SLEEPER)
    run_detached(f"{name}-b", image)
    ok("restart", "-t", "0", f"{name}-a")
    assert inspect(f"{name}-a")["State"] == "running"
    pid = inspect(f"{name}-b")["MainPID"]
    assert sorted(ok("restart", "-a", "-t", "0").split()) == [f"{name}-a", f"{name}-b"]
    assert inspect(f"{name}-b")["MainPID"] != pid
    assert {p["State"] for p in ps_json("-a").values()} == {"running"}


def test_restart_keeps_a_container_that_is_removed_when_it_exits(image: str, name: str) -> None:
    container_id = run_detached(name, image, "--rm")
    pid = inspect(name)["MainPID"]
    ok("restart", "-t", "1", name)
    props = inspect(name)
    assert (props["Id"], props["State"]) == (container_id, "running") and props["MainPID"] != pid
    ok("restart", "-t", "0", name)
    assert inspect(name)["State"] == "running"


def test_restart_of_a_paused_container_runs_it_again_unpaused(image: str, name: str) -> None:
    run_detached(name, image)
    ok("pause", name)
    ok("restart", name)
    assert inspect(name)["State"] == "running" and not frozen(name)


def test_restart_of_an_unknown_container_is_one_line_and_the_others_still_restart(image: str, name: str) -> None:
    run_detached(name, image)
    result = quiltctl("restart", "-t", "0", f"{name}-none", name)
    assert result.stdout == f"{name}\n"
    assert_one_error_line(result, QUILT_ERROR, f"{name}-none")
    assert_one_error_line(quiltctl("restart"), USAGE_ERROR)


# --- rename ----------------------------------------------------------------------------------------------------

def test_rename_of_a_stopped_container_takes_its_new_name_everywhere(image: str, name: str) -> None:
    container_id = ok("create", "--name", name, image, "--", "/bin/sh", "-c", "hostname; echo ran").strip()
    assert ok("rename", name, f"{name}-new") == ""
    props = inspect(f"{name}-new")
    assert props["Id"] == container_id and props["Name"] == f"{name}-new"
    assert_one_error_line(quiltctl("inspect", name), QUILT_ERROR, name)
    ok("start", f"{name}-new")
    assert ok("wait", f"{name}-new") == "0\n"
    assert ok("logs", f"{name}-new") == f"{name}-new\nran\n"  # its hostname followed the name
    assert inspect(f"{name}-new")["Unit"] == f"quilt-{name}-new.scope"
    events = [json.loads(line) for line in ok("events", "--since", "1m", "--until", "0s", "--json").splitlines()]
    assert any(e["kind"] == "renamed" and e["details"]["old_name"] == name for e in events), events


def test_rename_refuses_a_running_container_a_taken_name_and_a_bad_one(image: str, name: str) -> None:
    run_detached(name, image)
    assert_one_error_line(quiltctl("rename", name, f"{name}-x"), QUILT_ERROR, "already running", f"quilt-{name}.scope")
    ok("create", "--name", f"{name}-other", image, "/bin/true")
    assert_one_error_line(quiltctl("rename", f"{name}-other", name), QUILT_ERROR, "already in use")
    assert_one_error_line(quiltctl("rename", f"{name}-other", "bad name"), QUILT_ERROR, "bad name")
    assert_one_error_line(quiltctl("rename", f"{name}-none", f"{name}-y"), QUILT_ERROR, f"{name}-none")
    assert sorted(ps_json("-a")) == sorted([name, f"{name}-other"])


def test_a_renamed_container_answers_to_its_new_name_on_its_network(image: str, name: str) -> None:
    ok("create", "--name", name, image, "--", *SLEEPER)
    ok("rename", name, f"{name}-dns")
    ok("start", f"{name}-dns")
    address = inspect(f"{name}-dns")["Addresses"][0][1]
    run_detached(f"{name}-client", image)
    found = quiltctl("exec", f"{name}-client", "nslookup", f"{name}-dns")
    assert found.returncode == 0 and address in found.stdout, found
    assert quiltctl("exec", f"{name}-client", "nslookup", name).returncode != 0  # the old name is gone


# --- pause, unpause --------------------------------------------------------------------------------------------

def test_pause_freezes_the_container_and_shows_paused_until_unpause(image: str, name: str) -> None:
    run_detached(name, image)
    assert ok("pause", name) == f"{name}\n"
    assert frozen(name)
    assert inspect(name)["State"] == "paused"
    assert ps_json()[name]["State"] == "paused"  # shown without -a: it still runs
    assert "paused (pid" in ok("status", name)
    assert_one_error_line(quiltctl("exec", name, "true"), QUILT_ERROR, "paused")
    assert_one_error_line(quiltctl("pause", name), QUILT_ERROR, "paused")
    assert ok("unpause", name) == f"{name}\n"
    assert not frozen(name) and inspect(name)["State"] == "running"
    assert ok("exec", name, "echo", "thawed") == "thawed\n"
    assert_one_error_line(quiltctl("unpause", name), QUILT_ERROR, "not paused")


def test_stop_kill_and_rm_f_end_a_paused_container(image: str, name: str) -> None:
    ends_with_7 = ["/bin/sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done"]
    for verb, args in (("stop", ["-t", "5"]), ("kill", []), ("rm", ["-f"])):
        run_detached(f"{name}-{verb}", image, command=ends_with_7)
        ok("pause", f"{name}-{verb}")
        start = time.monotonic()
        ok(verb, *args, f"{name}-{verb}")
        if verb == "stop":
            props = inspect(f"{name}-stop")
            # Thawed before the signal: its TERM handler ran, well within the timeout.
            assert (props["State"], props["ExitCode"]) == ("exited", 7) and time.monotonic() - start < 5
        elif verb == "kill":
            assert ok("wait", f"{name}-kill") == "137\n"
    assert sorted(ps_json("-a")) == [f"{name}-kill", f"{name}-stop"]


def test_a_paused_container_stays_paused_over_an_agent_restart(image: str, name: str) -> None:
    run_detached(name, image)
    ok("pause", name)
    systemctl("restart", "quilt-agent")
    assert inspect(name)["State"] == "paused" and frozen(name)
    ok("unpause", name)
    assert inspect(name)["State"] == "running" and not frozen(name)


def test_pause_refuses_a_container_that_does_not_run_and_an_unknown_one(image: str, name: str) -> None:
    ok("create", "--name", name, image, "/bin/true")
    assert_one_error_line(quiltctl("pause", name), QUILT_ERROR, "not running")
    assert_one_error_line(quiltctl("unpause", name), QUILT_ERROR, "not running")
    assert_one_error_line(quiltctl("pause", f"{name}-none"), QUILT_ERROR, f"{name}-none")
    assert_one_error_line(quiltctl("pause"), USAGE_ERROR)


# --- top, port -------------------------------------------------------------------------------------------------

def test_top_lists_the_containers_processes_with_podmans_columns(image: str, name: str) -> None:
    run_detached(name, image)
    lines = ok("top", name).splitlines()
    assert lines[0].split() == ["USER", "PID", "PPID", "%CPU", "ELAPSED", "TTY", "TIME", "COMMAND"]
    first = lines[1].split()
    assert first[:3] == ["root", "1", "0"] and first[5] == "?"
    assert " ".join(first[7:]).startswith("/bin/sh -c trap 'exit 0' TERM;")
    rows = ok("top", name, "pid,hpid", "args").splitlines()
    assert rows[0].split() == ["PID", "HPID", "COMMAND"]
    assert rows[1].split()[:2] == ["1", str(inspect(name)["MainPID"])]
    assert_one_error_line(quiltctl("top", name, "nosuch"), USAGE_ERROR, "nosuch")


def test_top_refuses_a_container_that_does_not_run(image: str, name: str) -> None:
    ok("create", "--name", name, image, "/bin/true")
    assert_one_error_line(quiltctl("top", name), QUILT_ERROR, "not running")
    assert_one_error_line(quiltctl("top", f"{name}-none"), QUILT_ERROR, f"{name}-none")


def test_port_prints_podmans_mappings(image: str, name: str) -> None:
    container_id = run_detached(name, image, "-p", "18080:80", "-p", "127.0.0.1:15353:53/udp")
    assert ok("port", name) == "80/tcp -> 0.0.0.0:18080\n53/udp -> 127.0.0.1:15353\n"
    assert ok("port", name, "80") == "0.0.0.0:18080\n"
    assert ok("port", name, "53/udp") == "127.0.0.1:15353\n"
    assert ok("port", "-a") == (f"{container_id[:12]}\t80/tcp -> 0.0.0.0:18080\n"
                                f"{container_id[:12]}\t53/udp -> 127.0.0.1:15353\n")
    assert_one_error_line(quiltctl("port", name, "81"), QUILT_ERROR, '"81/tcp"')
    assert_one_error_line(quiltctl("port", name, "eighty"), USAGE_ERROR, "eighty")
    assert_one_error_line(quiltctl("port", f"{name}-none"), QUILT_ERROR, f"{name}-none")


# --- attach, export --------------------------------------------------------------------------------------------

def test_attach_follows_the_output_until_the_exit_and_exits_with_its_code(image: str, name: str) -> None:
    run_detached(name, image, command=["/bin/sh", "-c", "echo early; sleep 1; echo out; echo err >&2; exit 3"])
    result = quiltctl("attach", name)
    assert (result.stdout, result.stderr, result.returncode) == ("out\n", "err\n", 3)  # from the attach on
    assert_one_error_line(quiltctl("attach", name), QUILT_ERROR, "not running")
    assert_one_error_line(quiltctl("attach", "--sig-proxy=true", name), USAGE_ERROR, "sig-proxy")
    assert_one_error_line(quiltctl("attach", f"{name}-none"), QUILT_ERROR, f"{name}-none")


def _members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_export_writes_the_root_filesystem_without_volumes(image: str, name: str, tmp_path: Path,
                                                           running: bool) -> None:
    command = ["/bin/sh", "-c", "echo mine > /made; chmod 4755 /made; echo v > /data/v; sleep 300"]
    run_detached(name, image, "-v", "/data", command=command)
    asyncio.run(until(lambda: ok("exec", name, "cat", "/data/v") == "v\n", "the container wrote its files"))
    if not running:
        ok("stop", "-t", "0", name)
    out = subprocess.run([QUILTCTL, "export", name], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stderr == b""
    members = _members(out.stdout)
    assert "bin/busybox" in members and "made" in members
    assert members["made"].mode & 0o4000 and members["made"].uid == 0
    assert "data/v" not in members and "proc/self" not in "".join(members)
    ok("export", "-o", str(tmp_path / "out.tar"), name)
    assert set(_members((tmp_path / "out.tar").read_bytes())) == set(members)


def test_export_refuses_a_terminal_and_leaves_no_file_for_an_unknown_container(name: str, tmp_path: Path) -> None:
    assert_one_error_line(quiltctl("export", "-o", str(tmp_path / "x.tar"), f"{name}-none"), QUILT_ERROR,
                          f"{name}-none")
    assert not (tmp_path / "x.tar").exists()
    primary, secondary = os.openpty()
    try:
        tty = subprocess.run([QUILTCTL, "export", name], stdin=subprocess.DEVNULL, stdout=secondary,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(primary)
        os.close(secondary)
    assert_one_error_line(tty, QUILT_ERROR, "refusing to export to a terminal")


# --- info, system prune ----------------------------------------------------------------------------------------

def test_info_tells_the_host_and_the_containers_by_state(image: str, name: str) -> None:
    run_detached(f"{name}-a", image)
    run_detached(f"{name}-b", image)
    ok("pause", f"{name}-b")
    ok("create", "--name", f"{name}-c", image, "/bin/true")
    report = json.loads(ok("info", "--format", "json"))
    assert report["store"]["containerStore"] == {"number": 3, "paused": 1, "running": 1, "stopped": 1}
    assert report["host"]["cgroupVersion"] in ("v1", "v2") and report["store"]["graphRoot"] == "/var/lib/quilt"
    assert report["version"]["Agent"] == report["version"]["Client"]
    text = ok("system", "info")
    assert text.startswith("host:\n") and "  containerStore:\n    number: 3\n" in text
    assert_one_error_line(quiltctl("info", "--format", "{{.Host.Arch}}"), USAGE_ERROR, "json")


def test_system_prune_removes_stopped_containers_unused_networks_and_volumes(image: str, name: str,
                                                                            tmp_path: Path) -> None:
    ok("network", "create", f"{name}-used")
    ok("network", "create", f"{name}-free")
    ok("volume", "create", f"{name}-vol")
    run_detached(f"{name}-run", image, "--network", f"{name}-used")
    done = ok("create", "--name", f"{name}-done", image, "/bin/true").strip()
    image_id = ok("import", "-q", tiny_rootfs(tmp_path, name)).strip()  # no name: dangling
    result = quiltctl("system", "prune", "-f", "--volumes")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Deleted Containers\n{done}\n" in out and f"Deleted Networks\n{name}-free\n" in out
    assert f"Deleted Volumes\n{name}-vol\n" in out and f"Deleted Images\n{image_id}\n" in out
    assert out.splitlines()[-1].startswith("Total reclaimed space: ")
    assert list(ps_json("-a")) == [f"{name}-run"]
    assert f"{name}-used" in ok("network", "ls") and f"{name}-free" not in ok("network", "ls")
    ok("rm", "-f", f"{name}-run")
    ok("network", "rm", f"{name}-used")


def test_an_exported_root_imports_as_an_image_that_runs(image: str, name: str, tmp_path: Path) -> None:
    run_detached(name, image, command=["/bin/sh", "-c", "echo kept > /made; sleep 300"])
    asyncio.run(until(lambda: ok("exec", name, "cat", "/made") == "kept\n", "the container wrote its file"))
    ok("export", "-o", str(tmp_path / "root.tar"), name)
    ok("import", "-q", str(tmp_path / "root.tar"), f"{name}-img")
    assert ok("run", "--rm", f"{name}-img", "/bin/cat", "/made") == "kept\n"
    ok("rmi", f"{name}-img")
