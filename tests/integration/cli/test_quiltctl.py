"""quiltctl as a script runs it: the installed binary, as a subprocess with no terminal, against the real agent.

Each test checks what a user or a script sees: stdout, stderr, the exit status, and what the agent and systemd
hold afterwards (inspect, `systemctl show` of the scope, the journal).
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from quilt_agent import __version__
from quilt_agent.client import Client
from tests.integration.conftest import systemctl
from tests.integration.waiting import until_now

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
MIB = 1 << 20
QUILT_ERROR = 125
USAGE_ERROR = 2


def quiltctl(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run quiltctl as a script would: stdin not a terminal, stdout and stderr captured separately."""
    return subprocess.run([QUILTCTL, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env=env)


def ok(*args: str) -> str:
    result = quiltctl(*args)
    assert result.returncode == 0, f"quiltctl {' '.join(args)} -> {result.returncode}: {result.stderr}"
    assert result.stderr == "", result.stderr
    return result.stdout


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """A failure is one `quiltctl: ...` line on stderr, no traceback, and the documented status."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quiltctl: "), lines[0]
    assert result.returncode == code, (result.returncode, result.stderr)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def inspect(container: str) -> dict:
    (props,) = json.loads(ok("inspect", container))
    return props


def ps_json(*flags: str) -> dict[str, dict]:
    return {props["Name"]: props for props in json.loads(ok("ps", "--json", *flags))}


def scope_property(unit: str, prop: str) -> str:
    return systemctl("show", "-P", prop, unit, check=False).stdout.strip()


def wait_for_log_lines(container: str, count: int, timeout: float = 10.0) -> list[str]:
    lines: list[str] = []

    def enough() -> bool:
        lines[:] = ok("logs", container).splitlines()
        return len(lines) >= count

    until_now(enough, lambda: f"only {lines} in the logs of {container}", timeout, interval=0.1)
    return lines


async def _remove_all() -> None:
    async with Client() as client:
        for entry in await client.list_containers():
            try:
                await client.remove(entry.path, True)
            except Exception:  # noqa: BLE001 - it may be gone already (--rm)
                pass


@pytest.fixture(autouse=True)
def clean(agent: None) -> Iterator[None]:
    """Each test starts with the agent running and ends with no containers left."""
    yield
    systemctl("start", "quilt-agent")
    asyncio.run(_remove_all())


@pytest.fixture
def image(busybox_tar: Path) -> str:
    return str(busybox_tar)


# run


def test_run_in_the_foreground_prints_stdout_and_stderr_apart_and_exits_with_the_containers_code(
        image: str, name: str) -> None:
    result = quiltctl("run", "--rm", "--name", name, image, "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.returncode) == ("out\n", "err\n", 3)
    # --rm: gone once quiltctl has returned.
    assert name not in ps_json("-a")
    assert_one_error_line(quiltctl("inspect", name), QUILT_ERROR, name)


def test_run_in_the_foreground_without_rm_keeps_the_exited_container(image: str, name: str) -> None:
    result = quiltctl("run", "--name", name, image, "/bin/sh", "-c", "echo hello; exit 0")
    assert (result.stdout, result.stderr, result.returncode) == ("hello\n", "", 0)
    props = inspect(name)
    assert props["State"] == "exited" and props["ExitCode"] == 0


def test_run_detached_prints_the_id_and_leaves_the_container_running(image: str, name: str) -> None:
    out = ok("run", "-d", "--name", name, image, "/bin/sleep", "300")
    assert re.fullmatch(r"[0-9a-f]{64}\n", out), out
    container_id = out.strip()
    props = inspect(name)
    assert props["Id"] == container_id and props["State"] == "running" and props["MainPID"] > 0
    assert scope_property(f"quilt-{name}.scope", "ActiveState") == "active"
    # The id and its short form name the container as well as its name does.
    assert inspect(container_id[:12])["Name"] == name


# create, start, stop, kill, wait, rm


def test_create_does_not_start_and_start_then_stop_with_a_timeout_ends_it(image: str, name: str) -> None:
    container_id = ok("create", "--name", name, image, "/bin/sleep", "300").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container_id)
    assert inspect(name)["State"] == "created"
    assert name not in ps_json()

    assert ok("start", name) == f"{name}\n"
    assert inspect(name)["State"] == "running"

    # sleep is PID 1 of its pid namespace and ignores SIGTERM: stop -t 1 must SIGKILL it after one second.
    started = time.monotonic()
    stopped = quiltctl("stop", "-t", "1", name)
    elapsed = time.monotonic() - started
    assert stopped.returncode == 0 and stopped.stdout == f"{name}\n", stopped
    # As Podman warns: the stop signal did not end it.
    assert stopped.stderr == (f"quiltctl: StopSignal SIGTERM failed to stop container {name} in 1 seconds, "
                              "resorting to SIGKILL\n"), stopped.stderr
    assert elapsed >= 1.0 and elapsed < 8  # the grace period was waited, not the default 10 s
    props = inspect(name)
    assert props["State"] == "exited" and props["ExitSignal"] == 9 and props["ExitCode"] == 128 + 9


def test_kill_sends_a_named_signal_and_wait_prints_the_exit_code(image: str, name: str) -> None:
    script = "trap 'echo got USR1; exit 7' USR1; echo ready; while true; do sleep 0.05; done"
    ok("run", "-d", "--name", name, image, "/bin/sh", "-c", script)
    wait_for_log_lines(name, 1)  # the trap is set
    assert ok("kill", "-s", "USR1", name) == f"{name}\n"
    assert ok("wait", name) == "7\n"
    assert ok("logs", name) == "ready\ngot USR1\n"


def test_kill_with_a_signal_number_kills_it(image: str, name: str) -> None:
    ok("run", "-d", "--name", name, image, "/bin/sleep", "300")
    assert ok("kill", "-s", "9", name) == f"{name}\n"
    assert ok("wait", name) == f"{128 + 9}\n"
    props = inspect(name)
    assert props["State"] == "exited" and props["ExitSignal"] == 9


def test_wait_prints_the_exit_code_of_a_container_that_ends_by_itself(image: str, name: str) -> None:
    ok("run", "-d", "--name", name, image, "/bin/sh", "-c", "sleep 0.3; exit 5")
    assert ok("wait", name) == "5\n"


def test_rm_removes_a_stopped_container_and_refuses_a_running_one_without_force(image: str, name: str) -> None:
    ok("create", "--name", name, image, "/bin/true")
    assert ok("rm", name) == f"{name}\n"
    assert name not in ps_json("-a")

    ok("run", "-d", "--name", name, image, "/bin/sleep", "300")
    assert_one_error_line(quiltctl("rm", name), QUILT_ERROR)
    assert inspect(name)["State"] == "running"
    assert ok("rm", "-f", name) == f"{name}\n"
    assert name not in ps_json("-a")
    until_now(lambda: scope_property(f"quilt-{name}.scope", "LoadState") == "not-found",
              "the emptied scope was not collected", 5)


# ps, inspect, status


def test_ps_shows_running_containers_and_ps_a_all_of_them_with_their_states(image: str, name: str) -> None:
    running, exited, created = name + "-run", name + "-done", name + "-new"
    ok("run", "-d", "--name", running, image, "/bin/sleep", "300")
    assert ok("run", "--name", exited, image, "/bin/true") == ""
    ok("create", "--name", created, image, "/bin/true")

    assert {n: p["State"] for n, p in ps_json().items()} == {running: "running"}
    assert {n: p["State"] for n, p in ps_json("-a").items()} == {
        running: "running", exited: "exited", created: "created"}

    table = ok("ps").splitlines()
    assert table[0].split() == ["ID", "NAME", "IMAGE", "COMMAND", "STATE", "EXIT", "CREATED"]
    assert len(table) == 2 and running in table[1] and "running" in table[1]
    all_rows = ok("ps", "-a")
    assert running in all_rows and exited in all_rows and created in all_rows


def test_inspect_prints_the_containers_properties_as_json(image: str, name: str) -> None:
    assert quiltctl("run", "--name", name, image, "/bin/sh", "-c", "exit 4").returncode == 4
    props = inspect(name)
    # quiltctl reads an image path itself and names the image it imported by its id.
    assert props["Name"] == name and props["Image"] == ok("image", "import", "-q", image).strip()
    assert props["Command"] == ["/bin/sh", "-c", "exit 4"]
    assert props["State"] == "exited" and props["ExitCode"] == 4 and props["ExitSignal"] == 0
    assert props["Unit"] == f"quilt-{name}.scope"
    assert props["MemoryMax"] == 0 and props["CPUQuota"] == 0.0 and props["PidsMax"] == 0
    assert props["CreatedAt"] <= props["StartedAt"] <= props["FinishedAt"]
    assert props["Namespaces"] == ["pid", "mount", "uts", "ipc", "net", "cgroup"]


def test_podman_flags_reach_the_container_and_its_scope(image: str, name: str) -> None:
    script = 'echo "$FOO|$SPACED"; pwd; id -u; id -g; hostname; sleep 300'
    ok("run", "-d", "--name", name, "-e", "FOO=bar", "-e", "SPACED=a b=c", "-w", "/tmp", "-u", "1000:1000",
       "--hostname", "myhost", "-m", "64M", "--cpus", "0.5", "--pids-limit", "50", "--label", "k=v",
       "--stop-timeout", "1", image, "/bin/sh", "-c", script)
    # Seen from inside.
    assert wait_for_log_lines(name, 5) == ["bar|a b=c", "/tmp", "1000", "1000", "myhost"]
    # Recorded by the agent.
    props = inspect(name)
    assert props["MemoryMax"] == 64 * MIB
    assert props["CPUQuota"] == 50.0
    assert props["PidsMax"] == 50
    assert props["Labels"] == {"k": "v"}
    assert props["StopTimeout"] == 1 and props["StopSignal"] == 15  # SIGTERM: the rootfs tarball names none
    assert props["Hostname"] == "myhost" and props["WorkingDirectory"] == "/tmp"
    assert {"FOO=bar", "SPACED=a b=c"} <= set(props["Environment"])
    # Applied by systemd to the container's scope.
    unit = f"quilt-{name}.scope"
    assert scope_property(unit, "MemoryMax") == str(64 * MIB)
    assert scope_property(unit, "TasksMax") == "50"
    assert scope_property(unit, "CPUQuotaPerSecUSec") == "500ms"
    # --stop-timeout is how long a plain stop waits before SIGKILL: sh, PID 1 of its pid namespace with no
    # handler for it, ignores SIGTERM, so stop takes that second rather than the default 10.
    started = time.monotonic()
    stopped = quiltctl("stop", name)
    elapsed = time.monotonic() - started
    assert stopped.returncode == 0 and "in 1 seconds, resorting to SIGKILL" in stopped.stderr, stopped
    assert elapsed >= 1.0 and elapsed < 8  # the grace period was waited, not the default 10 s
    assert inspect(name)["ExitSignal"] == 9


def test_original_spellings_create_status_and_remove_force(image: str) -> None:
    container_id = ok("create", "--image-path", image, "--memory-limit", "512", "--cpu-limit", "50.0",
                      "--enable-all-namespaces", "--", "/bin/sleep", "300").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container_id)
    props = inspect(container_id)
    assert props["Command"] == ["/bin/sleep", "300"]
    assert props["MemoryMax"] == 512 * MIB and props["CPUQuota"] == 50.0
    assert props["Namespaces"] == ["pid", "mount", "uts", "ipc", "net", "cgroup"]

    status = dict(line.split(":", 1) for line in ok("status", container_id).splitlines())
    status = {key: value.strip() for key, value in status.items()}
    assert status["ID"] == container_id
    assert status["State"] == "created"
    assert status["Limits"] == "memory 512 MiB, cpu 50%"
    assert status["Command"] == "/bin/sleep 300"

    ok("start", container_id)
    assert ok("status", container_id).splitlines()[2].startswith("State:      running (pid ")
    assert ok("remove", container_id, "--force") == f"{container_id}\n"
    assert_one_error_line(quiltctl("status", container_id), QUILT_ERROR)


# logs, and the admin's view of them


def test_logs_prints_stdout_and_stderr_apart_and_selects_the_last_lines_and_a_time(image: str, name: str) -> None:
    # stdout and stderr are two journal streams: only a pause orders lines across them.
    result = quiltctl("run", "--name", name, image, "/bin/sh", "-c", "echo one; echo two >&2; sleep 0.1; echo three")
    assert (result.stdout, result.stderr, result.returncode) == ("one\nthree\n", "two\n", 0)
    result = quiltctl("logs", name)
    assert (result.stdout, result.stderr, result.returncode) == ("one\nthree\n", "two\n", 0)
    assert ok("logs", "-n", "1", name) == "three\n"
    assert ok("logs", "--tail", "0", name) == ""
    result = quiltctl("logs", "--since", "1h", name)
    assert (result.stdout, result.stderr, result.returncode) == ("one\nthree\n", "two\n", 0)
    # A Unix time an hour from now: nothing yet.
    assert ok("logs", "--since", str(int(time.time()) + 3600), name) == ""


def test_journalctl_shows_a_containers_output_to_the_admin(image: str, name: str) -> None:
    marker = f"hello from {name}"
    ok("run", "--name", name, image, "/bin/echo", marker)
    unit_lines = subprocess.run(["journalctl", "-u", "quilt-*", "-o", "cat", "--no-pager"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
    assert marker in unit_lines
    verbose = subprocess.run(["journalctl", "-u", f"quilt-{name}.scope", "-o", "json", "--no-pager",
                              "_TRANSPORT=stdout"], capture_output=True, text=True, check=True).stdout
    (entry,) = [json.loads(line) for line in verbose.splitlines()]
    assert entry["MESSAGE"] == marker and entry["_SYSTEMD_UNIT"] == f"quilt-{name}.scope"


def test_stop_of_several_containers_waits_out_their_timeouts_together(image: str, name: str) -> None:
    names = [f"{name}-{i}" for i in range(5)]
    for n in names:  # sleep as PID 1 ignores SIGTERM: each stop waits its whole timeout, then SIGKILLs
        ok("run", "-d", "--name", n, image, "/bin/sleep", "300")
    started = time.monotonic()
    stopped = quiltctl("stop", "-t", "2", *names)
    elapsed = time.monotonic() - started
    assert stopped.returncode == 0 and sorted(stopped.stdout.split()) == sorted(names), stopped
    assert len(stopped.stderr.splitlines()) == 5 and "resorting to SIGKILL" in stopped.stderr
    assert 2.0 <= elapsed < 2 * 2.0, elapsed  # one timeout, not five one after another
    assert {inspect(n)["ExitCode"] for n in names} == {128 + 9}


def test_stop_all_stops_every_running_container_and_wants_names_or_all(image: str, name: str) -> None:
    for n in (f"{name}-a", f"{name}-b"):
        ok("run", "-d", "--name", n, image, "/bin/sh", "-c", "trap 'exit 3' TERM; sleep 300 & wait")
    ok("create", "--name", f"{name}-c", image, "/bin/true")
    assert sorted(ok("stop", "-a").split()) == [f"{name}-a", f"{name}-b"]
    assert [inspect(n)["State"] for n in (f"{name}-a", f"{name}-b", f"{name}-c")] == ["exited", "exited", "created"]
    for args in ((), ("-a", f"{name}-c")):
        result = quiltctl("stop", *args)
        assert result.returncode == 2 and "name the containers to stop, or give -a" in result.stderr, result


# errors


@pytest.mark.parametrize("verb", ["inspect", "rm", "start", "stop", "kill", "logs", "status", "wait"])
def test_a_verb_on_an_unknown_container_is_one_error_line_and_125(verb: str) -> None:
    assert_one_error_line(quiltctl(verb, "no-such-container"), QUILT_ERROR, "no-such-container")


def test_a_duplicate_name_is_one_error_line_and_125(image: str, name: str) -> None:
    ok("create", "--name", name, image, "/bin/true")
    assert_one_error_line(quiltctl("create", "--name", name, image, "/bin/true"), QUILT_ERROR, name)
    assert_one_error_line(quiltctl("run", "--name", name, image, "/bin/true"), QUILT_ERROR, name)
    assert list(ps_json("-a")) == [name]


def test_a_missing_image_path_is_one_error_line_and_125(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-image.tar")
    assert_one_error_line(quiltctl("run", "--rm", missing, "/bin/true"), QUILT_ERROR, missing)
    assert_one_error_line(quiltctl("create", "--image-path", missing, "--", "/bin/true"), QUILT_ERROR, missing)
    assert ps_json("-a") == {}


def test_a_command_missing_in_the_image_is_one_error_line_and_127_and_rm_leaves_nothing(
        image: str, name: str) -> None:
    # 127, as Podman's run: the command was not found (tests/integration/test_run_flags.py has 126 too).
    assert_one_error_line(quiltctl("run", "--rm", "--name", name, image, "/bin/no-such-command"), 127,
                          "/bin/no-such-command")
    assert ps_json("-a") == {}
    assert_one_error_line(quiltctl("run", "-d", "--rm", image, "/bin/no-such-command"), 127,
                          "/bin/no-such-command")
    assert ps_json("-a") == {}
    # Without --rm it stays, failed, for inspection.
    assert_one_error_line(quiltctl("run", "--name", name, image, "no-such-command"), 127)
    assert inspect(name)["State"] == "failed"


@pytest.mark.parametrize("args", [
    ["run", "-m", "lots", "IMG"],
    ["run", "-e", "=value", "IMG"],
    ["create", "--cpus", "-1", "IMG"],
    ["kill", "-s", "NOSUCHSIG", "x"],
    ["logs", "--since", "someday", "x"],
    ["run"],
    ["frobnicate"],
], ids=lambda args: " ".join(args))
def test_a_usage_error_is_one_error_line_and_2(args: list[str]) -> None:
    assert_one_error_line(quiltctl(*args), USAGE_ERROR)


# the agent


def test_with_the_agent_stopped_a_call_starts_it_again_through_bus_activation() -> None:
    """quilt-agent is D-Bus activatable (dbus/org.quilt.Runtime.service, SystemdService=quilt-agent.service): a
    stopped agent is not unreachable, the bus starts it for the first call, as for systemd's own services."""
    systemctl("stop", "quilt-agent")
    try:
        assert systemctl("is-active", "quilt-agent", check=False).stdout.strip() == "inactive"
        assert ok("ps").splitlines()[0].split()[0] == "ID"
        assert systemctl("is-active", "quilt-agent", check=False).stdout.strip() == "active"
    finally:
        systemctl("start", "quilt-agent")


def test_a_plain_stop_of_the_agent_leaves_it_inactive_not_failed() -> None:
    # Once the fork server got systemd's SIGTERM too, and the agent, seeing it die first, exited 1 as for a
    # crash: about one stop in seven ended "failed". A few rounds make a regression show.
    try:
        for _ in range(5):
            ok("ps")
            systemctl("stop", "quilt-agent")
            shown = systemctl("show", "-p", "ActiveState", "-p", "Result", "quilt-agent").stdout.split()
            assert sorted(shown) == ["ActiveState=inactive", "Result=success"]
            systemctl("start", "quilt-agent")
    finally:
        systemctl("start", "quilt-agent")


def test_with_the_agent_masked_ps_says_it_is_not_reachable_and_125() -> None:
    systemctl("stop", "quilt-agent")
    systemctl("mask", "--runtime", "quilt-agent")
    try:
        assert_one_error_line(quiltctl("ps"), QUILT_ERROR, "not reachable")
    finally:
        systemctl("unmask", "--runtime", "quilt-agent")
        systemctl("start", "quilt-agent")


def test_without_a_system_bus_ps_says_the_agent_is_not_reachable_and_125() -> None:
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS="unix:path=/run/no-such-bus-socket")
    # With, on the same line, what to do about it: the test host where there is no systemd, else install.
    assert_one_error_line(quiltctl("ps", env=env), QUILT_ERROR, "not reachable", "/run/no-such-bus-socket",
                          "python3 tests/testhost.py run -- bash", "make install")


def test_version_prints_the_client_and_agent_versions() -> None:
    assert ok("version").splitlines() == [f"Client: {__version__}", f"Agent:  {__version__}"]
    assert ok("--version") == f"quiltctl {__version__}\n"


# what a new user's trial found


def test_cp_dash_is_a_tar_stream_on_stdout_and_stdin(image: str, name: str, tmp_path: Path) -> None:
    ok("create", "--name", name, image, "/bin/true")
    out = subprocess.run([QUILTCTL, "cp", f"{name}:/etc/passwd", "-"], stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        assert tar.getnames() == ["passwd"] and b"root:" in tar.extractfile("passwd").read()  # type: ignore[union-attr]
    back = subprocess.run([QUILTCTL, "cp", "-", f"{name}:/tmp"], input=out.stdout, capture_output=True, timeout=60)
    assert back.returncode == 0, back.stderr
    assert list(tmp_path.iterdir()) == []  # once, a file named '-'
    (tmp_path / "-").write_text("a file named -\n")  # ./- is still a path
    assert ok("cp", str(tmp_path / "-"), f"{name}:/dash") == ""
    ok("cp", f"{name}:/dash", str(tmp_path / "back"))
    ok("cp", f"{name}:/tmp/passwd", str(tmp_path / "passwd"))
    assert (tmp_path / "back").read_text() == "a file named -\n" and b"root:" in (tmp_path / "passwd").read_bytes()


def test_logs_and_events_take_a_time_ago(image: str, name: str) -> None:
    ok("run", "--name", name, image, "/bin/echo", "hello")
    assert ok("logs", "--since", "2h ago", name) == "hello\n"
    assert ok("logs", "--since", "2h ago", "--until", "0s ago", name) == "hello\n"
    container_id = inspect(name)["Id"]
    shown = ok("events", "--since", "1h ago", "--until", "0s ago")
    assert f"container created {container_id[:12]} (name={name}" in shown
    assert_one_error_line(quiltctl("logs", "--since", "someday ago", name), USAGE_ERROR, "--since")


def test_the_stop_timeout_flag_takes_what_the_agent_takes(image: str, name: str) -> None:
    ok("create", "--name", name, "--stop-timeout", "86400", image, "/bin/true")
    assert inspect(name)["StopTimeout"] == 86400
    assert_one_error_line(quiltctl("create", "--stop-timeout", "86401", image, "/bin/true"), USAGE_ERROR,
                          "86401", "0<=x<=86400")


def test_volume_prune_words_the_space_freed_as_image_prune(image: str, name: str) -> None:
    ok("run", "--rm", "-v", f"{name}-v:/data", image, "/bin/sh", "-c", "head -c 300000 /dev/zero > /data/f")
    freed = ok("volume", "prune")
    assert re.fullmatch(r"\d+\.\d (kB|MB) freed\n", freed), freed
    assert re.fullmatch(r"(\d+ B|\d+\.\d (kB|MB|GB)) freed\n", ok("image", "prune"))


def test_ps_quiet_prints_the_short_ids(image: str, name: str) -> None:
    running = ok("run", "-d", "--name", name, image, "/bin/sleep", "300").strip()
    exited = ok("create", "--name", name + "-new", image, "/bin/true").strip()
    assert ok("ps", "-q") == running[:12] + "\n"
    assert sorted(ok("ps", "-a", "--quiet").split()) == sorted([running[:12], exited[:12]])
    assert [props["Id"] for props in json.loads(ok("ps", "-q", "--json"))] == [running]  # --json wins
