"""Exec and ExecWithFds through the real bus: the command joins every namespace and the scope of the running
container, gets its user, capabilities, no_new_privs and environment, and its output, exit code, timeout and
failures come back as documented in dbus/org.quilt.Runtime.xml."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import AsyncIterator

import pytest
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from quilt_agent import cgroups
from quilt_agent.client import Client, ClientError
from tests.integration.bus.test_polkit import USERS, run_as
from tests.integration.terminal import exec_on_a_terminal
from tests.integration.waiting import log_line, until

ERR = "org.quilt.Runtime.Error."
BUS_NAME = "org.quilt.Runtime"
CONTAINER = "org.quilt.Runtime.Container"
NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup")
MAX_OUTPUT = 1 << 20


@pytest.fixture
async def running(client: Client, busybox_tar: Path, name: str) -> AsyncIterator[str]:
    """A running container (its init sleeps), with an environment and a working directory of its own."""
    yield await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"],
                                     {"env": ["FOO=bar", "SHARED=container"], "workdir": "/srv"})


def agent_pid() -> int:
    return int(subprocess.run(["systemctl", "show", "-P", "MainPID", "quilt-agent"], capture_output=True,
                              text=True, check=True).stdout)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def sh(client: Client, path: str, script: str, options: dict | None = None) -> tuple[int, str, str]:
    result = await client.exec(path, ["/bin/sh", "-c", script], options or {})
    return result.exit_code, result.stdout.decode(), result.stderr.decode()


# --- what the command runs in -------------------------------------------------------------------------------


async def test_exec_returns_exit_code_stdout_and_stderr_apart(client: Client, running: str) -> None:
    assert await sh(client, running, "echo out; echo err >&2; exit 3") == (3, "out\n", "err\n")
    assert await sh(client, running, "true") == (0, "", "")


async def test_exec_enters_every_namespace_of_the_container(client: Client, running: str) -> None:
    init = (await client.properties(running))["MainPID"]
    code, out, _ = await sh(client, running, " ".join(f"readlink /proc/self/ns/{ns};" for ns in NAMESPACES)
                            + " echo pid=$$; hostname")
    assert code == 0
    lines = out.splitlines()
    assert lines[:len(NAMESPACES)] == [os.readlink(f"/proc/{init}/ns/{ns}") for ns in NAMESPACES]
    # Its own pid in the container's pid namespace, where the container's init is 1.
    exec_pid = int(lines[len(NAMESPACES)].removeprefix("pid="))
    assert exec_pid > 1 and exec_pid < 100  # inside the container's pid namespace, not the host's
    assert lines[-1] == (await client.properties(running))["Hostname"]
    # And the agent is in none of them but the host's.
    assert os.readlink(f"/proc/{agent_pid()}/ns/mnt") != lines[0]


async def test_exec_shares_only_the_namespaces_the_container_has(client: Client, busybox_tar: Path,
                                                                  name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"],
                                      {"namespaces": ["mount", "pid"]})
    init = (await client.properties(path))["MainPID"]
    code, out, _ = await sh(client, path, "readlink /proc/self/ns/net; readlink /proc/self/ns/mnt")
    assert code == 0
    net, mnt = out.split()
    assert net == os.readlink("/proc/self/ns/net")  # the host's, as the container's own
    assert mnt == os.readlink(f"/proc/{init}/ns/mnt")


async def test_exec_runs_in_the_containers_scope_in_every_hierarchy(client: Client, running: str,
                                                                     name: str) -> None:
    init = (await client.properties(running))["MainPID"]
    exec_task = asyncio.ensure_future(client.exec(running, ["/bin/sleep", "31"], {}))
    try:
        def in_scope() -> list[int]:
            scope = [d for d in cgroups.process_cgroups(init) if d.path.endswith(f"quilt-{name}.scope")]
            pids = {int(p) for d in scope for p in Path(d.path, "cgroup.procs").read_text().split()}
            return [p for p in pids if Path(f"/proc/{p}/cmdline").read_bytes() == b"/bin/sleep\x0031\x00"]

        execd = await until(in_scope, "the exec'd sleep never showed up in the scope")
        # Exactly the container init's cgroups, hierarchy by hierarchy (v1 controllers, name=systemd, unified).
        assert Path(f"/proc/{execd[0]}/cgroup").read_text() == Path(f"/proc/{init}/cgroup").read_text()
        assert f"quilt-{name}.scope" in Path(f"/proc/{execd[0]}/cgroup").read_text()
    finally:
        exec_task.cancel()
        await client.kill(running, 9)


async def test_exec_gets_the_containers_capabilities_and_no_new_privs(client: Client, running: str) -> None:
    fields = "^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):"
    code, out, _ = await sh(client, running, f"grep -E '{fields}' /proc/1/status; echo --;"
                                             f" grep -E '{fields}' /proc/self/status")
    assert code == 0
    init, execd = out.split("--\n")
    assert execd == init
    assert "NoNewPrivs:\t1" in execd and "CapBnd:\t00000000800405fb" in execd


async def test_exec_has_the_containers_environment_and_its_own_never_the_agents(client: Client,
                                                                                 running: str) -> None:
    code, out, _ = await sh(client, running, "env", {"env": ["SHARED=exec", "EXTRA=1"]})
    assert code == 0
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert env["FOO"] == "bar" and env["SHARED"] == "exec" and env["EXTRA"] == "1"
    assert env["container"] == "quilt" and env["HOME"] == "/root" and env["PATH"].startswith("/usr/local/sbin")
    agent_env = Path(f"/proc/{agent_pid()}/environ").read_bytes().split(b"\0")
    agent_only = {e.split(b"=", 1)[0].decode() for e in agent_env if e} - {"PATH", "HOME", "LANG", "TERM"}
    assert agent_only and not agent_only & set(env), agent_only & set(env)
    assert "TERM" not in env  # only with a terminal


async def test_exec_user_and_workdir_default_to_the_containers_and_can_be_chosen(client: Client,
                                                                                running: str) -> None:
    assert await sh(client, running, "id -u; id -g; pwd") == (0, "0\n0\n/srv\n", "")
    assert await sh(client, running, "id -u; id -g; pwd; echo $HOME", {"user": "user", "workdir": "/tmp"}) == \
        (0, "1000\n1000\n/tmp\n/home/user\n", "")
    code, out, _ = await sh(client, running, "id -u; id -g; grep CapEff /proc/self/status", {"user": "1234:5678"})
    assert (code, out.splitlines()[:2]) == (0, ["1234", "5678"])
    assert out.splitlines()[2] == "CapEff:\t0000000000000000"  # a non-root user keeps no capability


async def test_exec_output_is_cut_at_one_mib_per_stream(client: Client, running: str) -> None:
    result = await client.exec(running, ["/bin/sh", "-c", "head -c 3000000 /dev/zero; head -c 5 /dev/zero >&2"], {})
    assert result.exit_code == 0
    assert result.stdout == b"\0" * MAX_OUTPUT and result.stderr == b"\0" * 5


async def test_exec_returns_when_the_command_ends_even_if_a_child_keeps_stdout(client: Client, running: str) -> None:
    started = time.monotonic()
    result = await client.exec(running, ["/bin/sh", "-c", "sleep 20 & echo parent done"], {})
    assert (result.exit_code, result.stdout) == (0, b"parent done\n")
    assert time.monotonic() - started < 5


# --- ExecWithFds ---------------------------------------------------------------------------------------------


async def test_exec_with_fds_reads_and_writes_the_callers_descriptors(client: Client, running: str,
                                                                      tmp_path: Path) -> None:
    stdin_read, stdin_write = os.pipe()
    os.write(stdin_write, b"from the caller\n")
    os.close(stdin_write)
    out_file = tmp_path / "out"
    with open(out_file, "wb") as out, open(tmp_path / "err", "wb") as err:
        code = await client.exec_with_fds(running, ["/bin/sh", "-c", "tr a-z A-Z; echo oops >&2; exit 4"], {},
                                          stdin_read, out.fileno(), err.fileno())
    os.close(stdin_read)
    assert code == 4
    assert out_file.read_text() == "FROM THE CALLER\n" and (tmp_path / "err").read_text() == "oops\n"


async def test_exec_with_fds_tty_gives_a_controlling_terminal(client: Client, running: str) -> None:
    # The session's own terminal: its process group is the foreground one, so a ^C from the master reaches it.
    code, out = await exec_on_a_terminal(
        client, running, "test -t 0 && echo tty; echo term=$TERM; stty size; cat /proc/self/stat | cut -d' ' -f6,8")
    assert code == 0
    lines = out.replace("\r", "").splitlines()
    assert lines[:2] == ["tty", "term=xterm"]
    session, tty_pgrp = lines[3].split()
    assert tty_pgrp == session  # the shell leads its session and is its terminal's foreground group


async def test_exec_with_fds_needs_the_fds_in_the_message(client: Client, running: str) -> None:
    # A caller that does not send fds: the 'h' values are bare indexes. The agent must refuse, and never take
    # them for fds of its own (index 0 would be its stdin).
    agent = agent_pid()
    before = open_fds(agent)
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()  # no unix fd negotiation
    try:
        for _ in range(3):
            reply = await bus.call(Message(destination=BUS_NAME, path=running, interface=CONTAINER,
                                           member="ExecWithFds", signature="asa{sv}hhh",
                                           body=[["/bin/true"], {}, 0, 1, 2]))
            assert reply.message_type is MessageType.ERROR
            assert reply.error_name == ERR + "InvalidArgument", reply.body
            assert "file descriptor" in reply.body[0]
    finally:
        bus.disconnect()
    assert await sh(client, running, "echo still fine") == (0, "still fine\n", "")
    assert open_fds(agent) == before


async def test_exec_leaves_no_fd_behind_in_the_agent(client: Client, running: str) -> None:
    agent = agent_pid()
    await sh(client, running, "true")  # anything opened once for good is opened now
    before = open_fds(agent)
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for _ in range(10):
            await sh(client, running, "echo x")
            assert await client.exec_with_fds(running, ["/bin/true"], {}, null, null, null) == 0
            with pytest.raises(ClientError):  # refused after the fds arrived
                await client.exec_with_fds(running, ["/bin/true"], {"bogus": Variant("b", True)}, null, null, null)
            with pytest.raises(ClientError):
                await client.exec(running, [], {})
            assert (await client.exec(running, ["nope"], {})).exit_code == 127
        with pytest.raises(ClientError):
            await client.exec(running, ["/bin/sleep", "5"], {"timeout": 1})
    finally:
        os.close(null)
    assert open_fds(agent) == before


async def test_start_with_fds_gives_the_init_the_callers_descriptors(client: Client, busybox_tar: Path,
                                                                     name: str, tmp_path: Path) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/sh", "-c", "read x; echo got $x; exit 2"], {})
    stdin_read, stdin_write = os.pipe()
    os.write(stdin_write, b"it\n")
    os.close(stdin_write)
    with open(tmp_path / "out", "wb") as out:
        await client.start_with_fds(path, False, stdin_read, out.fileno(), out.fileno())
    os.close(stdin_read)
    assert await client.wait(path) == 2
    assert (tmp_path / "out").read_text() == "got it\n"
    assert await client.get_logs(path, {}) == []
    # A later plain start has an empty stdin and the journal again.
    await client.start(path)
    assert await client.wait(path) == 2
    assert await log_line(client, path, "got") == ["got"]
    with pytest.raises(ClientError) as err:
        await client._call_message(path, CONTAINER, "StartWithFds", "a{sv}hhh", [{"tty": Variant("s", "x")}, 0, 1, 2],
                                   unix_fds=[0, 1, 2])
    assert err.value.name == ERR + "InvalidArgument" and "tty" in err.value.message
    with pytest.raises(ClientError) as err:
        await client._call_message(path, CONTAINER, "StartWithFds", "a{sv}hhh", [{}, 0, 1, 2])  # no fds sent
    assert err.value.name == ERR + "InvalidArgument" and "file descriptor" in err.value.message


# --- failures ------------------------------------------------------------------------------------------------


async def test_a_missing_command_exits_127_and_says_so(client: Client, running: str) -> None:
    result = await client.exec(running, ["no-such-command", "arg"], {})
    assert result.exit_code == 127
    assert result.stderr.decode() == "quilt exec: executable file 'no-such-command' not found in $PATH or the image\n"
    result = await client.exec(running, ["/etc/passwd"], {})
    assert result.exit_code == 126 and b"permission denied" in result.stderr


async def test_the_timeout_kills_the_command_and_its_children_and_the_error_says_so(client: Client, running: str,
                                                                                    name: str) -> None:
    started = time.monotonic()
    with pytest.raises(ClientError) as err:
        await client.exec(running, ["/bin/sh", "-c", "sleep 40 & sleep 41"], {"timeout": 1})
    elapsed = time.monotonic() - started
    assert err.value.name == ERR + "TimedOut"
    assert "['/bin/sh', '-c', 'sleep 40 & sleep 41']" in err.value.message and "within 1 s" in err.value.message
    assert elapsed >= 1.0 and elapsed < 5
    # Neither the shell nor its background child is left in the container.
    code, out, _ = await sh(client, running, "ps -o args")
    assert "sleep 4" not in out, out


async def test_exec_into_a_container_that_does_not_run_is_not_running(client: Client, busybox_tar: Path,
                                                                      name: str) -> None:
    created = await client.create_container(f"{name}-new", str(busybox_tar), ["/bin/sleep", "300"], {})
    exited = await client.run_container(f"{name}-done", str(busybox_tar), ["/bin/true"], {})
    await client.wait(exited)
    for path, state in ((created, "created"), (exited, "exited")):
        with pytest.raises(ClientError) as err:
            await client.exec(path, ["/bin/true"], {})
        assert err.value.name == ERR + "NotRunning"
        assert err.value.message.endswith(f"is not running (state {state})")
        with pytest.raises(ClientError) as err:
            await client.exec_with_fds(path, ["/bin/true"], {}, 0, 1, 2)
        assert err.value.name == ERR + "NotRunning"
    await client.remove(exited)
    with pytest.raises(ClientError) as err:
        await client.exec(exited, ["/bin/true"], {})
    assert err.value.name == ERR + "NoSuchContainer"  # removed: no object any more, as for every method


@pytest.mark.parametrize("command, options, words", [
    ([], {}, "The command is empty"),
    ([""], {}, "The command is empty"),
    (["/bin/true"], {"bogus": Variant("s", "x")}, "Unknown exec option 'bogus'"),
    (["/bin/true"], {"timeout": Variant("s", "1")}, "Invalid timeout '1'"),
    (["/bin/true"], {"env": ["NOEQUALS"]}, "Invalid environment entry 'NOEQUALS'"),
    (["/bin/true"], {"workdir": "relative"}, "Invalid workdir 'relative'"),
    (["/bin/true"], {"user": "a b"}, "Invalid user 'a b'"),
    (["/bin/true"], {"user": "nosuchuser"}, "unable to find user nosuchuser"),
    (["/bin/true"], {"workdir": "/no/such/dir"}, "cannot enter the working directory /no/such/dir"),
    (["/bin/true"], {"tty": True}, "Option 'tty' needs the caller's terminal"),
])
async def test_bad_exec_arguments_are_invalid_argument(client: Client, running: str, command: list[str],
                                                        options: dict, words: str) -> None:
    with pytest.raises(ClientError) as err:
        await client.exec(running, command, options)
    assert err.value.name == ERR + "InvalidArgument"
    assert words in err.value.message
    assert (await client.properties(running))["State"] == "running"


async def test_exec_works_from_busctl_and_gdbus(client: Client, running: str) -> None:
    out = subprocess.run(["busctl", "call", BUS_NAME, running, CONTAINER, "Exec", "asa{sv}", "2", "echo", "hi", "0"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "iayay 0 3 104 105 10 0"
    out = subprocess.run(["gdbus", "call", "--system", "--dest", BUS_NAME, "--object-path", running, "--method",
                          f"{CONTAINER}.Exec", "['sh', '-c', 'echo err >&2; exit 2']", "{'timeout': <uint32 5>}"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(2, @ay [], [byte 0x65, 0x72, 0x72, 0x0a])"


async def test_unprivileged_callers_may_not_exec_or_start_with_fds(client: Client, running: str, busybox_tar: Path,
                                                                   name: str) -> None:
    # busctl cannot pass fds (the contract-wide refusal test leaves ExecWithFds and StartWithFds out): a Python
    # caller does.
    created = await client.create_container(f"{name}-new", str(busybox_tar), ["/bin/true"], {})
    script = ("import asyncio, sys\n"
              "from quilt_agent.client import Client, ClientError\n"
              "async def main():\n"
              "    async with Client() as c:\n"
              "        try:\n"
              f"            await c.exec_with_fds({running!r}, ['/bin/true'], {{}}, 0, 1, 2)\n"
              "        except ClientError as e:\n"
              "            print(e.name, e.message)\n"
              "        try:\n"
              f"            await c.start_with_fds({created!r}, False, 0, 1, 2)\n"
              "        except ClientError as e:\n"
              "            print(e.name, e.message)\n"
              "asyncio.run(main())\n")
    for user in USERS.values():
        result = await run_as(user, sys.executable, "-c", script)
        exec_line, start_line = result.stdout.splitlines()
        assert exec_line.startswith("org.freedesktop.DBus.Error.AccessDenied Not authorized to exec"), result
        assert "org.quilt.runtime.exec" in exec_line
        assert start_line.startswith("org.freedesktop.DBus.Error.AccessDenied Not authorized to start"), result
        assert "org.quilt.runtime.manage" in start_line
    assert (await client.properties(created))["State"] == "created"
