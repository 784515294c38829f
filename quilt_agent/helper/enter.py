"""Entering a running container: the forked side of Exec.

The fork server forks one exec helper per request. The helper forks an
intermediate process, which joins the container's cgroups (its scope) while it
still sees the host's /sys/fs/cgroup, closes those files, enters the
container's namespaces through a pidfd of the container's init (one atomic
setns, and no pid that could be reused meanwhile), then forks the process that
will run the command (a pid namespace applies only to the children of whoever
enters it) and exits. The command therefore runs in the scope from its first
instruction, and no host fd ever reaches the container's pid namespace, as runc
does since CVE-2016-9962 and CVE-2019-5736. The helper, a child subreaper,
inherits the command, stays outside (in none of the container's namespaces or
cgroups), the parent of the command, and reports how it ended.

Everything from the helper on is not dumpable until the command's exec: the
command is visible in the container from its fork, and a root process there
must not ptrace it or take its fds with pidfd_getfd (its pipes to the helper).
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import termios
from typing import NoReturn

from quilt_agent.helper import process, protocol, seccomp, syscalls
from quilt_agent.helper.process import SetupError
from quilt_agent.helper.protocol import ExecExited, ExecSetupFailed, ExecSpawned, ExecSpec

SETUP_FAILED = 125
# A container always has its own mount namespace; the rest as it was created.
NAMESPACE_FLAGS = {
    "mount": syscalls.CLONE_NEWNS, "uts": syscalls.CLONE_NEWUTS, "ipc": syscalls.CLONE_NEWIPC,
    "net": syscalls.CLONE_NEWNET, "pid": syscalls.CLONE_NEWPID, "cgroup": syscalls.CLONE_NEWCGROUP,
    "user": syscalls.CLONE_NEWUSER,
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
    process.make_undumpable()  # before the forks: the command inherits it
    # The command is forked by the intermediate process, which exits: it becomes this process's child.
    syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    go_read, go_write, err_read, err_write = process.gate_pipes()
    report_read, report_write = os.pipe2(os.O_CLOEXEC)
    try:
        entering = os.fork()
    except OSError as e:
        protocol.tell(agent, ExecSetupFailed("failed", f"forking into the container: {e}"))
        return 1
    if entering == 0:
        _enter(spec, stdio, init_pidfd, go_read, err_write, report_write)
    for fd in (go_read, err_write, report_write, init_pidfd, *stdio):
        os.close(fd)  # stdio: the command's alone, a pipe's reader sees EOF when the command and its children end
    report = _read_all(report_read)  # EOF once the intermediate process has exited and the command closed its copy
    os.close(report_read)
    os.waitpid(entering, 0)
    word, _, rest = report.partition(" ")
    if word != "pid":
        os.close(go_write)  # a command forked before a failure reads EOF and exits
        os.close(err_read)
        kind, reason = (word, rest) if word in ("gone", "failed") else ("failed", "entering the container failed")
        protocol.tell(agent, ExecSetupFailed(kind, reason))
        return 1
    pid = int(rest)
    command_pidfd = os.pidfd_open(pid)  # for the agent, to kill it at its timeout: this pid is ours until waited
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


def _enter(spec: ExecSpec, stdio: list[int], init_pidfd: int, go_read: int, err_write: int,
           report_write: int) -> NoReturn:
    """The intermediate process: into the scope, then the namespaces, then fork the command. Writes 'pid PID' (the
    command's pid on the host) or 'KIND reason' on report_write, and exits."""
    def fail(kind: str, reason: str) -> NoReturn:
        try:
            os.write(report_write, f"{kind} {reason}".encode())
        finally:
            os._exit(1)

    try:
        # Nothing the fork server or the helper had open goes further than this, the agent's socket included.
        process.close_fds_except((*stdio, init_pidfd, go_read, err_write, report_write))
        try:
            # Itself, not the command: the files are open only while this process is outside the container's
            # namespaces, and closed before anything is forked into them. Written directly, since a bus round
            # trip to systemd (AttachProcessesToUnit) would cost about a millisecond.
            for path in spec.cgroup_procs:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
        except OSError as e:
            gone = e.errno in (errno.ENOENT, errno.ENODEV)  # the scope was removed: the container has ended
            fail("gone" if gone else "failed", f"joining the container's cgroup: {e}")
        try:
            syscalls.setns(init_pidfd, namespace_flags(spec.namespaces))
        except OSError as e:
            if e.errno == errno.ESRCH:
                fail("gone", "the container's init has exited")
            fail("failed", f"entering the container: {e}")
        os.close(init_pidfd)
        try:
            pid = os.fork()
        except OSError as e:
            fail("failed", f"starting the command: {e}")  # EAGAIN: the container is at its pids limit
        if pid == 0:
            _command(spec, stdio, go_read, err_write)
            os._exit(SETUP_FAILED)  # not reached: _command execs or exits
        os.write(report_write, f"pid {pid}".encode())
    except BaseException as e:  # noqa: BLE001 - whatever happened, the helper must hear of it
        fail("failed", f"entering the container: {e}")
    os._exit(0)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _command(spec: ExecSpec, stdio: list[int], go_read: int, err_write: int) -> None:
    """The command's process, inside the container's namespaces and scope, until exec.

    It closes every other fd first, drops to the container's capabilities, no_new_privs and seccomp filter
    before it reads anything of the container's (its /etc/passwd, its working directory), and waits for the
    helper's go (the helper knows its pid then) before it execs. Reports a failure as 'CODE KIND reason' on
    err_write; 126 and 127 (cannot execute, not found) are also written to the command's stderr, as a shell does:
    they are its exit codes.
    """
    kind = "failed"
    try:
        process.close_fds_except((*stdio, go_read, err_write))  # the intermediate's report pipe among them
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
        process.drop_capabilities(spec.capabilities)
        if spec.seccomp:
            seccomp.apply_default()  # the container's filter: an exec is no way around it
        kind = "invalid"
        user = process.resolve_user(spec.user)
        try:
            workdir = process.open_workdir(spec.workdir)
        except OSError as e:
            raise SetupError(f"cannot enter the working directory {spec.workdir}: {e.strerror}") from e
        try:
            process.switch_user(user)
            os.fchdir(workdir)  # as the user: its search permission is checked here
        except OSError as e:
            raise SetupError(f"cannot enter the working directory {spec.workdir}: {e.strerror}") from e
        finally:
            os.close(workdir)
        kind = "failed"
        env = process.environment(spec.env, user)
        for sig in _SIGNALS_TO_RESET:
            signal.signal(sig, signal.SIG_DFL)  # an ignored signal would stay ignored across exec
        if os.read(go_read, 1) != b"g":
            os._exit(SETUP_FAILED)  # aborted: the helper kills us anyway
        process.close_fds_except((0, 1, 2, err_write))
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
