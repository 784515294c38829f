"""Entering a running container: the forked side of Exec.

The fork server forks one exec helper per request. The helper enters the
container's namespaces through a pidfd of the container's init (one atomic
setns, and no pid that could be reused meanwhile), then forks the process that
will run the command: a pid namespace applies only to the children of whoever
enters it. The helper puts that process into the container's cgroups (its
scope) before letting it exec, so the command runs in the scope from its first
instruction. The helper stays outside, the parent of the command, and reports
how it ended.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import termios

from quilt_agent.helper import process, protocol, seccomp, syscalls
from quilt_agent.helper.process import SetupError
from quilt_agent.helper.protocol import ExecExited, ExecSetupFailed, ExecSpawned, ExecSpec

SETUP_FAILED = 125
# A container always has its own mount namespace; the rest as it was created.
NAMESPACE_FLAGS = {
    "mount": syscalls.CLONE_NEWNS, "uts": syscalls.CLONE_NEWUTS, "ipc": syscalls.CLONE_NEWIPC,
    "net": syscalls.CLONE_NEWNET, "pid": syscalls.CLONE_NEWPID, "cgroup": syscalls.CLONE_NEWCGROUP,
}
_SIGNALS_TO_RESET = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGQUIT, signal.SIGTSTP,
                     signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD)


def namespace_flags(namespaces: tuple[str, ...]) -> int:
    flags = syscalls.CLONE_NEWNS
    for name in namespaces:
        flags |= NAMESPACE_FLAGS.get(name, 0)
    return flags


def run(spec: ExecSpec, agent: socket.socket, stdio: list[int], init_pidfd: int) -> int:
    """The exec helper's body; returns its exit status. stdio: the command's stdin, stdout, stderr."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # only the command is meant to get these
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    syscalls.set_process_name(f"quilt-exec {spec.name}")
    try:
        # Opened while this process still sees the host's /sys/fs/cgroup: the container's mount namespace has
        # its own /sys. Written below, they stay usable after setns.
        procs = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in spec.cgroup_procs]
    except OSError as e:
        gone = e.errno == errno.ENOENT
        protocol.tell(agent, ExecSetupFailed("gone" if gone else "failed", f"opening the container's cgroup: {e}"))
        return 1
    try:
        syscalls.setns(init_pidfd, namespace_flags(spec.namespaces))
    except OSError as e:
        gone = e.errno == errno.ESRCH
        protocol.tell(agent, ExecSetupFailed("gone" if gone else "failed",
                                             "the container's init has exited" if gone
                                             else f"entering the container: {e}"))
        return 1
    os.close(init_pidfd)
    command = process.fork_gated(agent, lambda go_read, err_write: _command(spec, stdio, go_read, err_write))
    pid, go_write, err_read = command.pid, command.go_write, command.err_read
    command_pidfd = os.pidfd_open(pid)  # for the agent, to kill it at its timeout: this pid is ours until waited
    for fd in stdio:
        os.close(fd)  # the command's alone: a pipe's reader sees EOF when the command and its children are done
    # Into the scope before it may exec, as runc and crun join an exec'd process to the container's cgroups:
    # written directly, since a bus round trip to systemd (AttachProcessesToUnit) would cost about a millisecond.
    try:
        for fd in procs:
            os.write(fd, str(pid).encode())
    except OSError as e:
        # ESRCH: it has already ended, its setup failed (bad user, no such directory): err_read says why.
        if e.errno != errno.ESRCH:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            gone = e.errno in (errno.ENOENT, errno.ENODEV)
            protocol.tell(agent, ExecSetupFailed("gone" if gone else "failed", f"joining the container's cgroup: {e}"))
            return 1
    for fd in procs:
        os.close(fd)
    try:
        os.write(go_write, b"g")
    except OSError:
        pass  # it has already ended (EPIPE): err_read and waitpid tell how
    os.close(go_write)
    try:
        socket.send_fds(agent, [protocol.encode(ExecSpawned(pid))], [command_pidfd])
    except OSError:
        pass  # the agent went away: the command runs on, as after an agent restart
    os.close(command_pidfd)
    failure = _read_all(err_read)  # EOF at the exec (close-on-exec) or at the death of the command
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


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _command(spec: ExecSpec, stdio: list[int], go_read: int, err_write: int) -> None:
    """The command's process, inside the container's namespaces, until exec.

    Everything but the exec is done while the helper moves this process into the scope (it waits for go only
    then), so the two overlap. Reports a failure as 'CODE KIND reason' on err_write; 126 and 127 (cannot
    execute, not found) are also written to the command's stderr, as a shell does: they are its exit codes.
    """
    kind = "failed"
    try:
        # Out of the way of 0-2 first: a received fd may itself be 0, 1 or 2.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in stdio]
        os.setsid()  # its own session and process group: the timeout kills the group; a terminal needs it
        for target, fd in enumerate(high):
            os.dup2(fd, target)  # dup2 clears close-on-exec on the target
        if spec.tty:
            try:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # its foreground group: ^C and job control reach the command
            except OSError as e:
                raise SetupError(f"stdin cannot become the controlling terminal: {e.strerror}") from e
        kind = "invalid"
        user = process.resolve_user(spec.user)
        try:
            os.chdir(spec.workdir)
        except OSError as e:
            raise SetupError(f"cannot enter the working directory {spec.workdir}: {e.strerror}") from e
        kind = "failed"
        env = process.environment(spec.env, user)
        process.drop_privileges(user)
        if spec.seccomp:
            seccomp.apply_default()  # the container's filter: an exec is no way around it
        for sig in _SIGNALS_TO_RESET:
            signal.signal(sig, signal.SIG_DFL)  # an ignored signal would stay ignored across exec
        if os.read(go_read, 1) != b"g":
            os._exit(SETUP_FAILED)  # aborted: the helper kills us anyway
        os.closerange(3, err_write)
        os.closerange(err_write + 1, 65536)
        process.execute(spec.command, env)
    except SetupError as e:
        if e.exit_code != SETUP_FAILED:
            try:
                os.write(2, f"quilt exec: {e}\n".encode())
            except OSError:
                pass
        _fail(err_write, e.exit_code, kind, str(e))
    except BaseException as e:  # noqa: BLE001 - whatever happened, the helper must hear of it
        _fail(err_write, SETUP_FAILED, "failed", f"exec setup failed: {e}")


def _fail(err_write: int, code: int, kind: str, reason: str) -> None:
    try:
        os.write(err_write, f"{code} {kind} {reason}".encode())
    finally:
        os._exit(code)
