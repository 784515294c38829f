"""quiltctl's lasting verbs while quilt-agent goes away and comes back (a crash, an upgrade, a restart), --rm
whatever becomes of quiltctl, and a terminal's typed-ahead keys.

Each test runs the installed quiltctl as a subprocess, restarts or kills quilt-agent.service through systemctl
while it runs, and checks what the user sees: every line once, the real exit code, one line and 125 when the
agent does not come back in time.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import select
import shutil
import signal
import termios
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client
from tests.integration.conftest import systemctl
from tests.integration.waiting import until

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
AGENT = "quilt-agent.service"
RUNTIME_MASK = Path("/run/systemd/system") / AGENT
QUILT_ERROR = 125
# Ends at once on SIGTERM, with 7 on SIGUSR1: the test decides when it exits.
LONG_RUNNING = ["/bin/sh", "-c", "trap 'exit 0' TERM; trap 'exit 7' USR1; sleep 300 & wait"]
SLOW_LINES = 50  # lines of slow_lines(), one every 0.1 s: five seconds, a restart of the agent among them


def slow_lines(count: int = SLOW_LINES) -> list[str]:
    return ["/bin/sh", "-c", f"i=0; while [ $i -lt {count} ]; do echo line $i; i=$((i+1)); sleep 0.1; done"]


# --- the agent, through systemctl --------------------------------------------------------------------------


def agent_pid() -> int:
    return int(systemctl("show", "-P", "MainPID", AGENT).stdout.strip() or 0)


async def take_agent_away(how: str) -> None:
    """kill: SIGKILL, as a crash (Restart=on-failure, or the next call, brings it back); restart: as an upgrade
    does, a clean stop and a start."""
    systemctl("reset-failed", AGENT, check=False)  # many starts in a test run are not a crash loop
    if how == "restart":
        systemctl("restart", AGENT)
        return
    old = agent_pid()
    assert old > 0
    systemctl("kill", "--kill-who=main", "--signal=KILL", AGENT)
    await until(lambda: not Path(f"/proc/{old}").exists(), "the agent did not die")


@pytest.fixture
def agent_held_down(agent: None) -> Iterator[None]:
    """Lets a test keep the agent from coming back (a runtime mask: the bus's activation is refused); the agent
    is unmasked and running again afterwards."""
    yield
    let_agent_up()


def hold_agent_down() -> None:
    # Masked first: a quiltctl that sees the agent go calls it at once, and the bus would start it again.
    systemctl("mask", "--runtime", AGENT)
    systemctl("stop", AGENT)


def let_agent_up() -> None:
    # By hand: `systemctl unmask --runtime` leaves the link in /run here, and the unit masked.
    RUNTIME_MASK.unlink(missing_ok=True)
    systemctl("daemon-reload")
    systemctl("reset-failed", AGENT, check=False)
    systemctl("start", AGENT)


# --- quiltctl as a subprocess ------------------------------------------------------------------------------


class Quiltctl:
    """A quiltctl running on, its stdout read line by line as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *args: str, stdin: int | None = asyncio.subprocess.DEVNULL,
                    env: dict[str, str] | None = None) -> Quiltctl:
        process = await asyncio.create_subprocess_exec(
            QUILTCTL, *args, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})})
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    async def lines_at_least(self, count: int, timeout: float = 20.0) -> None:
        await until(lambda: len(self.lines) >= count, f"quiltctl printed {self.lines}, not {count} lines", timeout)

    async def end(self, timeout: float = 60.0) -> tuple[int, str]:
        """Its exit status and its stderr, once it has exited."""
        assert self.process.stderr is not None
        # Its stderr is small: read after the exit (a command quiltctl leaves running may hold the pipe on, and
        # so does Process.wait(): it waits for the pipes' end too).
        await until(lambda: self.process.returncode is not None, "quiltctl did not exit", timeout)
        code = self.process.returncode
        stderr = await asyncio.wait_for(self.process.stderr.read(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        return code, stderr.decode()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@pytest.fixture
async def quiltctls() -> AsyncIterator[list[Quiltctl]]:
    """The test's quiltctl processes: none is left running after it."""
    started: list[Quiltctl] = []
    yield started
    for q in started:
        q.kill()
        await until(lambda: q.process.returncode is not None, "quiltctl did not die")
        q._reader.cancel()


async def running(client: Client, path: str) -> bool:
    return (await client.properties(path))["State"] == "running"


async def names(client: Client) -> list[str]:
    return [e.name for e in await client.list_containers()]


async def on_the_bus(client: Client, process: asyncio.subprocess.Process) -> None:
    """Until quiltctl's process has a connection on the system bus: the call it makes next (a Wait, a FollowLogs, a
    subscription) follows at once; an agent taken away before that call is ridden out the same way."""

    async def connected() -> bool:
        bus = ("/org/freedesktop/DBus", "org.freedesktop.DBus")
        names = (await client._call_message(*bus, "ListNames", destination="org.freedesktop.DBus")).body[0]
        for unique in (n for n in names if n.startswith(":")):
            try:
                reply = await client._call_message(*bus, "GetConnectionUnixProcessID", "s", [unique],
                                                   destination="org.freedesktop.DBus")
            except Exception:  # noqa: BLE001 - a connection that left meanwhile
                continue
            if reply.body[0] == process.pid:
                return True
        return False

    await until(connected, "quiltctl never connected to the bus")


# --- logs -f -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "restart"])
async def test_logs_follow_rides_out_the_agent_going_away_without_losing_or_repeating_a_line(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl], how: str) -> None:
    await client.run_container(name, str(busybox_tar), slow_lines(), {})
    follow = await Quiltctl.start("logs", "-f", name)
    quiltctls.append(follow)
    await follow.lines_at_least(5)
    await take_agent_away(how)
    code, stderr = await follow.end()
    assert (code, stderr) == (0, "")
    assert follow.lines == [f"line {i}" for i in range(SLOW_LINES)]


async def test_logs_follow_from_the_last_lines_resumes_after_them(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl]) -> None:
    # -n: the resumed follow must not start over from the last N lines.
    await client.run_container(name, str(busybox_tar), slow_lines(), {})
    await until(lambda: _journal_has(name, "line 9"), "the container's first lines never reached the journal")
    follow = await Quiltctl.start("logs", "-f", "-n", "3", name)
    quiltctls.append(follow)
    await follow.lines_at_least(5)
    await take_agent_away("kill")
    code, stderr = await follow.end()
    assert (code, stderr) == (0, "")
    first = int(follow.lines[0].split()[1])
    assert follow.lines == [f"line {i}" for i in range(first, SLOW_LINES)]


def _journal_has(name: str, text: str) -> bool:
    import subprocess

    out = subprocess.run(["journalctl", "-o", "cat", "--no-pager", f"_SYSTEMD_UNIT=quilt-{name}.scope"],
                         capture_output=True, text=True).stdout
    return text in out.splitlines()


async def test_logs_follow_gives_up_with_one_line_when_the_agent_does_not_come_back(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl], agent_held_down: None) -> None:
    await client.run_container(name, str(busybox_tar), LONG_RUNNING, {})
    follow = await Quiltctl.start("logs", "-f", name, env={"QUILTCTL_RECONNECT_TIMEOUT": "2"})
    quiltctls.append(follow)
    await on_the_bus(client, follow.process)
    started = time.monotonic()
    hold_agent_down()
    code, stderr = await follow.end()
    assert code == QUILT_ERROR
    assert stderr.startswith("quiltctl: quilt-agent did not come back within 2 s"), stderr
    assert len(stderr.splitlines()) == 1
    assert 2 <= time.monotonic() - started < 15


def test_a_bad_reconnect_timeout_is_one_line() -> None:
    import subprocess

    result = subprocess.run([QUILTCTL, "logs", "-f", "whatever"], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL, env={**os.environ, "QUILTCTL_RECONNECT_TIMEOUT": "soon"})
    assert result.returncode == QUILT_ERROR
    assert result.stderr.startswith("quiltctl: QUILTCTL_RECONNECT_TIMEOUT='soon'"), result.stderr
    assert len(result.stderr.splitlines()) == 1


# --- events --------------------------------------------------------------------------------------------------


async def test_events_follow_rides_out_the_agent_going_away_and_tells_what_happened_meanwhile_once(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl], agent_held_down: None) -> None:
    path = await client.run_container(name, str(busybox_tar), LONG_RUNNING, {})
    props = await client.properties(path)
    main_pid, cid = props["MainPID"], props["Id"]
    follow = await Quiltctl.start("events", "--json")
    quiltctls.append(follow)
    await on_the_bus(client, follow.process)
    # It exits while no agent runs (and none can be started): the agent that comes back records the exit before
    # it takes its name, so before anyone can hear it: quiltctl finds it in the history.
    hold_agent_down()
    os.kill(main_pid, signal.SIGUSR1)
    await until(lambda: not Path(f"/proc/{main_pid}").exists(), "the container did not exit")
    await asyncio.sleep(0.5)  # held on purpose: quiltctl keeps trying to reach the agent meanwhile
    let_agent_up()
    second = await client.create_container(f"{name}-2", str(busybox_tar), ["/bin/true"], {})
    cid2 = (await client.properties(second))["Id"]
    await until(lambda: _has(follow, "created", cid2), "the event after the restart never showed")
    await asyncio.sleep(0.5)  # held on purpose: a repeated event would come now
    assert follow.process.returncode is None
    follow.kill()
    events = _events(follow)
    keys = [(e["time"], e["kind"], e["container_id"]) for e in events]
    assert len(keys) == len(set(keys)), keys
    assert [e["details"]["exit_code"] for e in events if e["kind"] == "exited" and e["container_id"] == cid] == [7]
    assert [e["kind"] for e in events if e["container_id"] == cid2] == ["created"]


def _events(follow: Quiltctl) -> list[dict]:
    return [json.loads(line) for line in follow.lines]


def _count(follow: Quiltctl, kind: str, cid: str) -> int:
    return sum(1 for e in _events(follow) if e["kind"] == kind and e["container_id"] == cid)


def _has(follow: Quiltctl, kind: str, cid: str) -> bool:
    return _count(follow, kind, cid) > 0


# --- wait ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "restart"])
@pytest.mark.parametrize("condition", [[], ["--condition", "exited"]])
async def test_wait_rides_out_the_agent_going_away_and_prints_the_exit_code(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl], how: str,
        condition: list[str]) -> None:
    path = await client.run_container(name, str(busybox_tar), LONG_RUNNING, {})
    waiting = await Quiltctl.start("wait", *condition, name)
    quiltctls.append(waiting)
    await on_the_bus(client, waiting.process)
    await take_agent_away(how)
    assert waiting.process.returncode is None
    await until(lambda: running(client, path), "the container does not run after the agent came back")
    await client.kill(path, signal.SIGUSR1)
    code, stderr = await waiting.end()
    assert (code, stderr, waiting.lines) == (0, "", ["7"])


# --- stats ---------------------------------------------------------------------------------------------------


async def test_stats_streams_on_after_the_agent_comes_back(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl]) -> None:
    await client.run_container(name, str(busybox_tar), LONG_RUNNING, {})
    stats = await Quiltctl.start("stats", "--json", "-i", "0.2", name)
    quiltctls.append(stats)
    await stats.lines_at_least(2)
    await take_agent_away("kill")
    after = len(stats.lines)
    await stats.lines_at_least(after + 3)
    assert stats.process.returncode is None
    assert all([row["name"] for row in json.loads(line)] == [name] for line in stats.lines)


# --- attached run and exec -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "restart"])
async def test_an_attached_run_stays_attached_through_the_agent_going_away(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl], how: str) -> None:
    run = await Quiltctl.start("run", "-i", "--rm", "--name", name, str(busybox_tar), "/bin/sh", "-c",
                               "read x; echo got $x; exit 4", stdin=asyncio.subprocess.PIPE)
    quiltctls.append(run)
    path = await until(lambda: _path_if_running(client, name), "the container never ran")
    await on_the_bus(client, run.process)
    await take_agent_away(how)
    assert run.process.stdin is not None
    run.process.stdin.write(b"hello\n")
    await run.process.stdin.drain()
    run.process.stdin.close()
    code, stderr = await run.end()
    assert (code, stderr, run.lines) == (4, "", ["got hello"])
    assert name not in await names(client)  # --rm
    del path


async def _path_if_running(client: Client, name: str) -> str | None:
    for entry in await client.list_containers():
        if entry.name == name and entry.state == "running":
            return entry.path
    return None


def _running_anywhere(argv: list[bytes]) -> bool:
    """Whether a process on the host (a container's included) runs with exactly `argv` (quiltctl, which carries
    it among its own arguments, does not)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().split(b"\0")[:-1] == argv:
                return True
        except OSError:
            continue  # ended meanwhile
    return False


async def test_an_attached_exec_cut_by_the_agent_says_its_exit_code_is_lost(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl]) -> None:
    await client.run_container(name, str(busybox_tar), LONG_RUNNING, {})
    ran = await Quiltctl.start("exec", "-i", name, "/bin/sh", "-c", "read x; echo got $x",
                               stdin=asyncio.subprocess.PIPE)
    quiltctls.append(ran)
    await until(lambda: _running_anywhere([b"/bin/sh", b"-c", b"read x; echo got $x"]), "the exec's command never ran")
    await take_agent_away("kill")
    await until(lambda: ran.process.returncode is not None, "quiltctl did not exit", 30)
    assert ran.process.returncode == QUILT_ERROR
    # It does run on, on quiltctl's fds (the pipes quiltctl had): it reads what comes, and writes.
    assert ran.process.stdin is not None
    ran.process.stdin.write(b"later\n")
    await ran.process.stdin.drain()
    ran.process.stdin.close()
    code, stderr = await ran.end()
    assert stderr == (f"quiltctl: quilt-agent went away during the exec (a restart, an upgrade or a crash): the "
                      f"command in container {name} runs on, but its exit code is lost\n")
    assert ran.lines == ["got later"]


# --- --rm is the agent's -------------------------------------------------------------------------------------


@pytest.mark.parametrize("attached", [True, False])
async def test_rm_removes_the_container_at_its_exit_after_its_client_was_killed(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl], attached: bool) -> None:
    args = ["-i"] if attached else []
    run = await Quiltctl.start("run", *args, "--rm", "--name", name, str(busybox_tar), *LONG_RUNNING,
                               stdin=asyncio.subprocess.PIPE)
    quiltctls.append(run)
    path = await until(lambda: _path_if_running(client, name), "the container never ran")
    since = time.time_ns() // 1000
    run.process.kill()
    # Not process.wait(): that waits for its pipes too, which the container (attached) holds on.
    await until(lambda: run.process.returncode is not None, "quiltctl did not die")
    await asyncio.sleep(0.5)  # held on purpose: a removal at the client's death, wrongly, would be done now
    assert await running(client, path)
    await client.kill(path, signal.SIGUSR1)
    await until(lambda: _gone(client, name), "the --rm container stayed after its exit")
    exits = [e for e in await client.list_events(since) if e.kind == "exited" and e.details.get("name") == name]
    assert [e.details["exit_code"] for e in exits] == [7]


async def _gone(client: Client, name: str) -> bool:
    return name not in await names(client)


async def test_rm_run_still_prints_the_last_lines_and_the_exit_code(
        client: Client, busybox_tar: Path, name: str, quiltctls: list[Quiltctl]) -> None:
    for attached in ([], ["-i"]):
        run = await Quiltctl.start("run", *attached, "--rm", "--name", name, str(busybox_tar), "/bin/sh", "-c",
                                   "echo first; echo last; exit 3")
        quiltctls.append(run)
        code, stderr = await run.end()
        assert (code, stderr, run.lines) == (3, "", ["first", "last"]), attached
        assert name not in await names(client)


async def test_hold_removal_without_remove_on_exit_is_invalid(client: Client, busybox_tar: Path, name: str) -> None:
    from quilt_agent.client import ClientError

    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    with pytest.raises(ClientError) as caught:
        await client.hold_removal(path)
    assert caught.value.name == "org.quilt.Runtime.Error.InvalidArgument"
    assert "remove_on_exit" in caught.value.message


@pytest.mark.parametrize("options, message", [
    ({"hold_removal": True}, "needs remove_on_exit"),
    ({"hold_removal": Variant("s", "yes"), "remove_on_exit": True}, "must be a boolean"),
], ids=["without-remove-on-exit", "not-a-boolean"])
async def test_run_container_refuses_a_bad_hold_and_creates_nothing(
        client: Client, busybox_tar: Path, name: str, options: dict[str, object], message: str) -> None:
    from quilt_agent.client import ClientError

    with pytest.raises(ClientError) as caught:
        await client.run_container(name, str(busybox_tar), ["/bin/true"], options)
    assert caught.value.name == "org.quilt.Runtime.Error.InvalidArgument"
    assert message in caught.value.message
    assert name not in await names(client)


async def test_a_held_run_keeps_the_container_after_its_exit_until_its_caller_leaves(
        client: Client, busybox_tar: Path, name: str) -> None:
    async with Client() as holder:
        path = await holder.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "exit 4"],
                                          {"remove_on_exit": True, "hold_removal": True})
        assert await holder.wait(path) == 4
        await asyncio.sleep(0.5)  # held on purpose: an unheld remove_on_exit container would be gone by now
        assert name in await names(client)
        assert (await client.properties(path))["ExitCode"] == 4
    await until(lambda: _gone(client, name), "the held container stayed after its holder left the bus")


async def test_a_held_run_whose_start_fails_leaves_nothing(client: Client, busybox_tar: Path, name: str) -> None:
    from quilt_agent.client import ClientError

    with pytest.raises(ClientError) as caught:
        await client.run_container(name, str(busybox_tar), ["/no/such/program"],
                                   {"remove_on_exit": True, "hold_removal": True})
    assert caught.value.name == "org.quilt.Runtime.Error.CommandNotFound"
    assert name not in await names(client)


# --- terminals -----------------------------------------------------------------------------------------------


def _on_a_terminal(args: list[str], typed: bytes) -> tuple[int, str]:
    """Run quiltctl with a new pty as its controlling terminal, the keys `typed` already waiting on it before
    quiltctl has even started; its exit status and what the terminal showed."""
    import subprocess

    master, slave = os.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        os.write(master, typed)  # typed ahead: in the terminal's input queue before quiltctl reads it
        process = subprocess.Popen([QUILTCTL, *args], stdin=slave, stdout=slave, stderr=slave,
                                   preexec_fn=controlling_terminal)
        os.close(slave)
        slave = -1
        shown = b""
        deadline = time.monotonic() + 30
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([master], [], [], remaining)[0]:
                process.kill()  # it hangs: the keys never came where they were waited for
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break  # EIO: quiltctl and the container are done with the terminal
            if not chunk:
                break
            shown += chunk
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            code = -1
        return code, shown.decode(errors="replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


async def test_keys_typed_before_run_it_is_ready_reach_the_container(busybox_tar: Path, name: str,
                                                                     client: Client) -> None:
    code, shown = await asyncio.to_thread(
        _on_a_terminal, ["run", "-it", "--rm", "--name", name, str(busybox_tar), "/bin/sh"],
        b"echo typed-$((6*7))\nexit 5\n")
    assert code == 5, shown
    assert "typed-42" in shown


async def test_keys_typed_before_exec_it_is_ready_reach_the_command(busybox_tar: Path, name: str,
                                                                    client: Client) -> None:
    await client.run_container(name, str(busybox_tar), LONG_RUNNING, {})
    code, shown = await asyncio.to_thread(_on_a_terminal, ["exec", "-it", name, "/bin/sh"],
                                          b"echo typed-$((6*7))\nexit 6\n")
    assert code == 6, shown
    assert "typed-42" in shown


async def test_run_it_rm_is_removed_when_its_terminal_is_closed(client: Client, busybox_tar: Path, name: str) -> None:
    import subprocess

    master, slave = os.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen([QUILTCTL, "run", "-it", "--rm", "--name", name, str(busybox_tar), "/bin/sh"],
                               stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_terminal)
    os.close(slave)
    try:
        await until(lambda: _path_if_running(client, name), "the container never ran")
        os.close(master)  # the terminal goes away: quiltctl gets SIGHUP, and with it its own pty's shell
        master = -1
        await until(lambda: process.poll() is not None, "quiltctl outlived its terminal")
        await until(lambda: _gone(client, name), "the --rm container stayed after its terminal was closed")
    finally:
        if master >= 0:
            os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_an_exec_it_cut_by_the_agent_keeps_its_terminal_until_the_command_ends(
        client: Client, busybox_tar: Path, name: str) -> None:
    import subprocess

    await client.run_container(name, str(busybox_tar), LONG_RUNNING, {})
    master, slave = os.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen([QUILTCTL, "exec", "-it", name, "/bin/sh"], stdin=slave, stdout=slave, stderr=slave,
                               preexec_fn=controlling_terminal)
    os.close(slave)
    shown = bytearray()

    def read_until(text: bytes, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while text not in shown:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([master], [], [], remaining)[0]:
                return False
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return text in shown
            if not chunk:
                return text in shown
            shown.extend(chunk)
        return True

    try:
        os.write(master, b"echo before-$((1+1))\n")
        assert await asyncio.to_thread(read_until, b"before-2"), shown
        await take_agent_away("kill")
        os.write(master, b"echo after-$((2+2)); exit 3\n")  # the shell still has the terminal
        assert await asyncio.to_thread(read_until, b"its exit code is lost"), shown
        assert b"after-4" in shown
        await until(lambda: process.poll() is not None, "quiltctl did not end with the command")
        assert process.returncode == QUILT_ERROR
        assert (f"quiltctl: quilt-agent went away during the exec (a restart, an upgrade or a crash): the command "
                f"in container {name} ran to its end, but its exit code is lost").encode() in bytes(shown)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
