"""The process of the fake fork server (tests/fakes/helper.py): `python fake_monitor.py FD`, FD its end of the
agent's socket.

Like the real fork server it is single-threaded and forks one helper per request, speaking helper/protocol.py:
a monitor per LaunchSpec, an exec helper per ExecSpec. But the container's command is a plain host process:
no namespaces, no root filesystem (the image's layers are ignored), no user, capabilities or seccomp filter,
"/" as its working directory. Without stdio its output goes to /dev/null, the journal's stand-in. Setup
steps are not run: a start with some fails, rather than run without them.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import NoReturn

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the project's packages

from quilt_agent.helper import protocol
from quilt_agent.helper.protocol import (
    Abort, ExecExited, ExecFailed, ExecSetupFailed, ExecSpawned, ExecSpec, Go, LaunchSpec, MonitorForked, Spawned, Started,
)

MAX_FDS = 5  # an exec's socket, stdin, stdout, stderr and the container init's pidfd
SETUP_FAILED = 125
_HELPER_IGNORES = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE)


def serve(sock: socket.socket) -> None:
    """Fork a helper per request until the agent hangs up."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the helpers are reaped by the kernel, as the real ones
    while True:
        data, fds, _flags, _addr = socket.recv_fds(sock, protocol.MAX_MESSAGE, MAX_FDS)
        if not data:
            return
        request = protocol.decode(data, LaunchSpec, ExecSpec)
        if os.fork() == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            status = 1
            try:
                peer = socket.socket(fileno=fds[0])
                if isinstance(request, LaunchSpec):
                    status = monitor(request, peer, fds[1:4])
                else:
                    status = exec_helper(request, peer, fds[1:4], fds[4])
            finally:
                os._exit(status)
        for fd in fds:
            os.close(fd)


def start_time(pid: int) -> int:
    """A process's start time in clock ticks, as helper/monitor.py reports it."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


# --- a container -------------------------------------------------------------------------------------------


def monitor(spec: LaunchSpec, agent: socket.socket, stdio: list[int]) -> int:
    """The fake monitor: the parent of the command's process, which waits for Go before it execs."""
    for sig in _HELPER_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    os.setsid()
    me = os.getpid()
    born = start_time(me)
    protocol.send(agent, MonitorForked(monitor_pid=me, monitor_start=born))
    go_read, go_write = os.pipe()
    err_read, err_write = os.pipe2(os.O_CLOEXEC)  # its end at the exec tells the monitor the command runs
    pid = os.fork()
    if pid == 0:
        agent.close()
        os.close(go_write)
        os.close(err_read)
        _init(spec, go_read, err_write, stdio)
    os.close(go_read)
    os.close(err_write)
    for fd in stdio:
        os.close(fd)  # the init's alone: the caller sees the end of its pipes when the command ends
    protocol.send(agent, Spawned(init_pid=pid))
    try:
        message = protocol.receive(agent, Go, Abort)
    except (OSError, protocol.ProtocolError):
        message = Abort("the agent went away before the container started")
    if isinstance(message, Abort):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return 1
    try:
        os.write(go_write, b"g")
    except OSError:
        pass  # the init died: its reason, if any, is in the status pipe
    os.close(go_write)
    failure = _read_all(err_read)
    os.close(err_read)
    if failure:
        code, _, reason = failure.partition(" ")
        protocol.tell(agent, ExecFailed(reason=reason, exit_code=int(code)))
    else:
        protocol.tell(agent, Started())
    _, status = os.waitpid(pid, 0)
    _record_exit(spec.exit_file, status, failure.partition(" ")[2])
    return 0


def _record_exit(exit_file: str, status: int, reason: str) -> None:
    """The fields of model.ExitStatus, written whole (a rename), as helper/monitor.py does."""
    finished = time.time_ns() // 1000
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
    else:
        sig, code = 0, os.WEXITSTATUS(status)
    result = {"exit_code": code, "exit_signal": sig, "oom_killed": False, "reason": reason, "finished_at": finished,
              "failed": False}
    tmp = f"{exit_file}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.rename(tmp, exit_file)


def _init(spec: LaunchSpec, go_read: int, err_write: int, stdio: list[int]) -> NoReturn:
    """The container's command until its exec; a failure is 'CODE reason' on err_write."""
    try:
        for sig in _HELPER_IGNORES:
            signal.signal(sig, signal.SIG_DFL)  # an ignored signal would stay ignored across the exec
        if os.read(go_read, 1) != b"g":
            os._exit(SETUP_FAILED)  # aborted: the monitor kills it anyway
        if spec.setup:
            _fail(err_write, SETUP_FAILED, "the fake fork server runs no setup steps")
        null = os.open(os.devnull, os.O_RDWR)
        _become_stdio(stdio or [null, null, null], err_write)
        os.chdir("/")
        env = spec.env
        if spec.notify_dir:
            # Nothing is bound here: the command, a host process, reaches the agent's directory itself.
            env = tuple(f"NOTIFY_SOCKET={spec.notify_dir}/notify.sock" if e.startswith("NOTIFY_SOCKET=") else e
                        for e in env)
        _exec(spec.command, env, err_write)
    except BaseException as e:  # noqa: BLE001 - whatever happened, the monitor must hear of it
        _fail(err_write, SETUP_FAILED, f"container setup failed: {e}")


def _become_stdio(fds: list[int], keep: int) -> None:
    """fds as 0, 1 and 2; every other fd closed but keep (close-on-exec: the status pipe)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds]  # a received fd may itself be 0, 1 or 2
    for target, fd in enumerate(high):
        os.dup2(fd, target)  # dup2 clears close-on-exec on the target
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)


def _exec(command: tuple[str, ...], env: tuple[str, ...], err_write: int) -> NoReturn:
    """exec the command, searching the given PATH; 127 or 126 with the reason on failure, as a shell says."""
    try:
        os.execvpe(command[0], list(command), dict(e.split("=", 1) for e in env))
    except FileNotFoundError:
        _fail(err_write, 127, f"executable file '{command[0]}' not found in $PATH")
    except OSError as e:
        _fail(err_write, 126, f"'{command[0]}' could not be executed: {e.strerror}")


def _fail(err_write: int, code: int, reason: str) -> NoReturn:
    try:
        os.write(err_write, f"{code} {reason}".encode())
    finally:
        os._exit(code)


# --- an exec -----------------------------------------------------------------------------------------------


def exec_helper(spec: ExecSpec, agent: socket.socket, stdio: list[int], init_pidfd: int) -> int:
    """The fake exec helper: the command's parent, which reports its pid (and a pidfd of it), then its end."""
    for sig in _HELPER_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    try:
        signal.pidfd_send_signal(init_pidfd, 0)
    except ProcessLookupError:
        protocol.tell(agent, ExecSetupFailed("gone", "the container's init has exited"))
        return 1
    finally:
        os.close(init_pidfd)
    go_read, go_write = os.pipe()
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        agent.close()
        os.close(go_write)
        os.close(err_read)
        _command(spec, stdio, go_read, err_write)
    for fd in (go_read, err_write, *stdio):
        os.close(fd)  # the command's alone: a pipe's reader sees EOF when the command ends
    command_pidfd = os.pidfd_open(pid)
    try:
        os.write(go_write, b"g")
    except OSError:
        pass  # it has ended already: waitpid tells how
    os.close(go_write)
    try:
        socket.send_fds(agent, [protocol.encode(ExecSpawned(pid))], [command_pidfd])
    except OSError:
        pass  # the agent went away: the command runs on
    os.close(command_pidfd)
    failure = _read_all(err_read)
    os.close(err_read)
    _, status = os.waitpid(pid, 0)
    code, _, rest = failure.partition(" ")
    if failure and int(code) == SETUP_FAILED:
        kind, _, reason = rest.partition(" ")
        protocol.tell(agent, ExecSetupFailed(kind, reason))
    elif os.WIFSIGNALED(status):
        protocol.tell(agent, ExecExited(128 + os.WTERMSIG(status), os.WTERMSIG(status)))
    else:
        protocol.tell(agent, ExecExited(os.WEXITSTATUS(status)))
    return 0


def _command(spec: ExecSpec, stdio: list[int], go_read: int, err_write: int) -> NoReturn:
    """The exec'd command until its exec; 'CODE KIND reason' on err_write when it fails, and 126 or 127 said on
    its stderr too, as helper/enter.py does."""
    try:
        os.setsid()  # its own process group: the agent's timeout kills the group
        for sig in (*_HELPER_IGNORES, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        if os.read(go_read, 1) != b"g":
            os._exit(SETUP_FAILED)
        _become_stdio(stdio, err_write)
        os.chdir("/")
        env = dict(e.split("=", 1) for e in spec.env)
        try:
            os.execvpe(spec.command[0], list(spec.command), env)
        except FileNotFoundError:
            code, reason = 127, f"executable file '{spec.command[0]}' not found in $PATH"
        except OSError as e:
            code, reason = 126, f"'{spec.command[0]}' could not be executed: {e.strerror}"
        try:
            os.write(2, f"quilt exec: {reason}\n".encode())
        except OSError:
            pass
        _fail(err_write, code, f"failed {reason}")
    except BaseException as e:  # noqa: BLE001 - whatever happened, the helper must hear of it
        _fail(err_write, SETUP_FAILED, f"failed exec setup failed: {e}")


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
