"""One container's monitor and, forked from it, the container's init until it execs.

The monitor stays the parent of the container's init, like Podman's conmon:
it waits for it and writes how it ended to the container's exit file, so the
exit code is known even when the agent is stopped or restarted meanwhile.
The init lives in the container's scope, the monitor in its own beside it (as
conmon does): a stop of the container's scope, which ends in SIGKILL to every
process in it, never ends the monitor before it has written the exit.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import socket
import sys
import termios
import time

from quilt_agent import journal
from quilt_agent.helper import namespaces, pack, process, protocol, rootfs, seccomp, steps, syscalls, userns
from quilt_agent.helper.oom import OomWatch
from quilt_agent.helper.process import SetupError
from quilt_agent.helper.protocol import (INIT_TARGET, Abort, ExecFailed, Go, LaunchSpec, MonitorForked, SetupDone,
                                         Spawned, Started)

SETUP_FAILED = 125
# What the init writes on its status pipe before its end: its setup steps begin (the container is started),
# they succeeded and the monitor may pack the layer (the init waits for another Go byte).
MARK_SETUP = b"setup"
MARK_SNAPSHOT = b"snapshot"


def start_time(pid: int) -> int:
    """A process's start time in clock ticks: with the pid, it names the process uniquely."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def run(spec: LaunchSpec, agent: socket.socket, stdio: list[int] | None = None) -> int:
    """The monitor's body; returns its exit status. stdio: the caller's stdin, stdout and stderr for the
    container's init instead of /dev/null and the journal (StartWithFds: `quiltctl run -it`)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # only the container's init is meant to get these
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    me = os.getpid()
    born = start_time(me)
    protocol.send(agent, MonitorForked(monitor_pid=me, monitor_start=born))  # first: see MonitorForked
    syscalls.set_process_name(f"quilt-mon {spec.name}")  # what ps and top show; after: it takes a while
    # The user namespace is made here, in the host's pid namespace, where its child is found by its pid; a failure
    # is the init's to report, as every setup failure is.
    userns_fd, userns_error = -1, ""
    if spec.id_map:
        try:
            userns_fd = userns.make(spec.id_map)
        except SetupError as e:
            userns_error = str(e)
    output, output_error = None, ""
    if spec.log_dir and not stdio:
        try:
            output = _Output.make(spec)
        except SetupError as e:
            output_error = str(e)
    namespaces.unshare_pid(spec.namespaces)
    init = process.fork_gated(agent, lambda go_read, err_write: _container_init(
        spec, go_read, err_write, stdio, userns_fd, userns_error, output, output_error))
    if userns_fd >= 0:
        os.close(userns_fd)  # the init's
    if output:
        output.close_init_ends()
    pid, go_write, err_read = init.pid, init.go_write, init.err_read
    for fd in stdio or ():
        os.close(fd)  # the init's alone: the caller sees the end of its pipes or terminal when the container ends
    protocol.send(agent, Spawned(init_pid=pid))  # the agent waits on this
    # Only now, after the fork: the container's init must not inherit -1000, or the OOM killer could never
    # pick its processes and a hog would stall at memory_max instead of being killed.
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")  # the OOM killer must pick the container's processes, not its monitor
    except OSError:
        pass  # lowering it needs CAP_SYS_RESOURCE, which some hosts (this one's test host) do not give
    try:
        message = protocol.decode(agent.recv(protocol.MAX_MESSAGE), Go, Abort)
    except (OSError, protocol.ProtocolError):
        message = Abort("the agent went away before the container started")
    if isinstance(message, Abort):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return 1
    try:
        os.write(go_write, b"g")
    except OSError:
        pass  # the init died during setup: its reason is in the error pipe
    oom = OomWatch(pid)  # the init is in the container's scope from Go on
    failure, told = _follow_init(spec, agent, err_read, go_write)
    os.close(go_write)
    os.close(err_read)
    if not told:
        if failure:
            code, _, reason = failure.partition(" ")
            code, _, exhausted = code.partition("@")
            protocol.tell(agent, ExecFailed(reason=reason, exit_code=int(code), exhausted=exhausted))
        else:
            protocol.tell(agent, Started())
    if not failure and spec.monitor:
        _hand_over(spec, pid, oom, output)  # returns only if the exec failed: then this process waits, as before
    if output:
        output.abandon()
    status = _wait(pid, oom)
    # A failure after the start was told (a setup step) makes the container failed, not merely exited.
    _record_exit(spec.exit_file, status, oom.finish(), failure.partition(" ")[2], failed=bool(failure) and told)
    return 0


def _hand_over(spec: LaunchSpec, pid: int, oom: OomWatch, output: _Output | None) -> None:
    """Become quilt-monitor (monitor/quilt-monitor.c), which waits for the init and records its end as _wait and
    _record_exit do, for a tenth of this process's memory. The exec keeps what the agent knows this process by
    (its pid and start time), its scope, its ignored signals and its child. Only once the command runs: a failed
    start's reason, and the setup steps' work, are this module's."""
    watch = oom.handed_over()
    relay = output.handed_over(spec) if output else []
    kept = {*watch[:2], *relay[:1], *relay[3:]}
    # Nothing else crosses the exec (the agent's socket came without close-on-exec): marked, not closed, so that
    # this process still holds what it had should the exec fail.
    for fd in (int(name) for name in os.listdir("/proc/self/fd")):
        if fd > 2 and str(fd) not in kept:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own fd, closed already
    try:
        os.execv(spec.monitor, ["quilt-mon", spec.name, str(pid), spec.exit_file, *watch, *relay])
    except OSError as e:
        sys.stderr.write(f"quilt-mon {spec.name}: cannot run {spec.monitor} ({e.strerror}): waiting in Python\n")


class _Output:
    """The container's stdout and stderr with the log drivers k8s-file and journald+file: pipes, whose read ends
    quilt-monitor relays to the log file in the container's directory, and with journald+file the journald streams
    it forwards them to. The init connects those (journald takes their unit from the process that connected them:
    the container's), the monitor writes to them."""

    def __init__(self, directory: int, out: tuple[int, int], err: tuple[int, int], forward: tuple[int, int]) -> None:
        self.directory, self.out, self.err, self.forward = directory, out, err, forward

    @classmethod
    def make(cls, spec: LaunchSpec) -> _Output:
        if not spec.monitor or not os.access(spec.monitor, os.X_OK):
            # The Python monitor never reads the pipes: a container would stall once one is full.
            raise SetupError(f"the log driver {spec.log_driver} needs quilt-monitor, and "
                             f"{spec.monitor or 'none'} cannot be run: reinstall quilt-runtime")
        made: list[int] = []
        try:
            made.append(os.open(spec.log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC))
            made.extend(os.pipe2(os.O_CLOEXEC))
            made.extend(os.pipe2(os.O_CLOEXEC))
            if spec.log_driver == "journald+file":
                made.extend((journal.stream_socket(), journal.stream_socket()))
            else:
                made.extend((-1, -1))
        except OSError as e:
            for fd in made:
                if fd >= 0:
                    os.close(fd)
            raise SetupError(f"cannot set up the container's log file: {e.strerror}",
                             exhausted="open-files" if e.errno in (errno.EMFILE, errno.ENFILE) else "") from e
        return cls(made[0], (made[1], made[2]), (made[3], made[4]), (made[5], made[6]))

    def init_fds(self) -> tuple[int, ...]:
        return (self.out[1], self.err[1], *(fd for fd in self.forward if fd >= 0))

    def close_init_ends(self) -> None:
        os.close(self.out[1])
        os.close(self.err[1])

    def handed_over(self, spec: LaunchSpec) -> list[str]:
        """quilt-monitor's arguments for the log file, with their fds left open across its exec."""
        fds = (self.directory, self.out[0], self.err[0], *(fd for fd in self.forward if fd >= 0))
        for fd in fds:
            os.set_inheritable(fd, True)
        return [str(self.directory), str(spec.log_max_size), str(spec.log_max_files), str(self.out[0]),
                str(self.err[0]), str(self.forward[0]), str(self.forward[1])]

    def abandon(self) -> None:
        """quilt-monitor could not be run: the container's writes fail (EPIPE) rather than stall once a pipe is
        full, and the journal says why (the hand-over's line)."""
        for fd in (self.directory, self.out[0], self.err[0], *self.forward):
            if fd >= 0:
                os.close(fd)


def _wait(pid: int, oom: OomWatch) -> int:
    """Wait for the init's end, watching for OOM kills meanwhile; its wait status."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if oom.fd >= 0:
        poller.register(oom.fd, oom.events)
    try:
        while not any(fd == pidfd for fd, _ in poller.poll()):
            if not oom.fired():
                poller.unregister(oom.fd)
    finally:
        os.close(pidfd)
    return os.waitpid(pid, 0)[1]


def _follow_init(spec: LaunchSpec, agent: socket.socket, err_read: int, go_write: int) -> tuple[str, bool]:
    """Read the init's status pipe to its end (the exec closes it): marker lines as setup goes on, then
    "CODE reason" if it failed. Returns that text and whether the start was told to the agent already."""
    told = False
    buffer = b""
    while chunk := os.read(err_read, 4096):
        buffer += chunk
        while (line := buffer.partition(b"\n")[0]) in (MARK_SETUP, MARK_SNAPSHOT) and b"\n" in buffer:
            buffer = buffer.partition(b"\n")[2]
            if line == MARK_SETUP:
                protocol.tell(agent, Started())  # the container runs from here, while its setup steps do
                told = True
            else:
                protocol.tell(agent, _snapshot(spec))
                try:
                    os.write(go_write, b"g")  # the init may exec the command now
                except OSError:
                    pass
    return buffer.decode("utf-8", "replace"), told


def _snapshot(spec: LaunchSpec) -> SetupDone:
    """Pack the container's layer, as the setup steps left it, for the setup cache."""
    skip = tuple(target for _, target in spec.bind_files)  # Quilt's own /etc files, bound over placeholders
    try:
        pack.pack(spec.upper, spec.setup_layer, skip, spec.id_first)
    except OSError as e:
        return SetupDone(error=str(e))
    return SetupDone(layer=spec.setup_layer)


def _record_exit(exit_file: str, status: int, oom_killed: bool, reason: str, failed: bool = False) -> None:
    finished = time.time_ns() // 1000  # first: as close to the reaping as can be
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        code = 128 + sig
    else:
        sig, code = 0, os.WEXITSTATUS(status)
    result = {"exit_code": code, "exit_signal": sig, "oom_killed": oom_killed, "reason": reason,
              "finished_at": finished, "failed": failed}
    tmp = f"{exit_file}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.rename(tmp, exit_file)


def _container_init(spec: LaunchSpec, go_read: int, err_write: int, stdio: list[int] | None = None,
                    userns_fd: int = -1, userns_error: str = "", output: _Output | None = None,
                    output_error: str = "") -> None:
    """The container's first process, until exec. Reports failure as 'CODE reason' on err_write."""
    try:
        # Not dumpable until its exec: the setup steps and execs run beside it in the container while it holds
        # its pipes to the monitor. And what it inherited goes: 0-2 were the agent's own journal stream.
        process.make_undumpable()
        kept = ((userns_fd,) if userns_fd >= 0 else ()) + (output.init_fds() if output else ())
        process.close_fds_except((0, 1, 2, go_read, err_write, *(stdio or ()), *kept))
        null = os.open("/dev/null", os.O_RDWR)
        for fd in {0, 1, 2} - {null, *(stdio or ())}:
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
        if stdio:
            out, err = stdio[1], stdio[2]  # the caller's: this run's output is not in the journal
        elif spec.log_driver == "none":
            out = err = os.open("/dev/null", os.O_WRONLY)
        elif output_error:
            raise SetupError(output_error)
        elif output:
            if output.forward[0] >= 0:
                _journal_streams(spec, output.forward)
            out, err = output.out[1], output.err[1]
        else:
            out, err = _journal_streams(spec)
        setup_streams = steps.open_streams(spec.name, spec.unit) if spec.setup else None
        if spec.netns:
            # The namespace Quilt made for the container (its interfaces are being set up meanwhile; the agent
            # says Go once they are), or the one of the container it shares.
            namespaces.join_net(spec.netns)
        namespaces.unshare_early(tuple(n for n in spec.namespaces if n != "net") if spec.netns else spec.namespaces)
        if "net" in spec.namespaces and not spec.netns:
            namespaces.allow_ping()  # before the rootfs: /proc/sys is read-only in it
        if spec.id_map and userns_fd < 0:
            raise SetupError(userns_error)
        if userns_fd >= 0 and "net" in spec.namespaces:
            userns.allow_low_ports()  # before the rootfs, as allow_ping
        try:
            rootfs.build(spec.lower, spec.upper, spec.work, spec.merged, spec.namespaces, spec.bind_files,
                          spec.mounts, spec.tmpfs, spec.read_only, userns_fd, spec.id_first, spec.init,
                          spec.notify_dir)
        except OSError as e:
            raise SetupError(f"setting up the root filesystem failed: {e}") from e
        if "uts" in spec.namespaces and spec.hostname:
            socket.sethostname(spec.hostname)
        if "net" in spec.namespaces:
            namespaces.loopback_up()
        if userns_fd >= 0:
            # Last: what was made above belongs to the host's namespace, out of the reach of the container's root.
            userns.join(userns_fd)
        process.limit_bounding_set(spec.capabilities)  # while the agent waits for systemd: it needs no cgroup
        if os.read(go_read, 1) != b"g":
            os._exit(SETUP_FAILED)
        namespaces.unshare_cgroup(spec.namespaces)
        process.drop_held_capabilities(spec.capabilities)  # before anything of the image is read
        user = process.resolve_user(spec.user)
        try:
            workdir = process.open_workdir(spec.workdir, owner=user)
        except OSError as e:
            raise SetupError(f"cannot create the working directory {spec.workdir}: {e.strerror}") from e
        process.switch_user(user)
        if spec.seccomp:
            _seccomp()
        try:
            os.fchdir(workdir)  # as the user: its search permission is checked here
        except OSError as e:
            raise SetupError(f"cannot enter the working directory {spec.workdir}: {e.strerror}", 126) from e
        finally:
            os.close(workdir)
        # The monitor ignores these; an ignored signal stays ignored across exec, and a shell
        # could then not even trap it.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        env = process.environment(spec.env, user)
        if setup_streams:
            _setup(spec, setup_streams, env, go_read, err_write)
        os.close(go_read)
        null = stdio[0] if stdio else os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        if spec.tty:
            # Its own session, with the caller's terminal as its controlling one: ^C and job control work.
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        os.closerange(3, err_write)
        os.closerange(err_write + 1, 65536)
        if spec.init:
            # The command is looked up now, so that a missing one fails as without the init (127, 126).
            process.execute((INIT_TARGET, "--", process.find_program(spec.command[0], env), *spec.command[1:]), env)
        process.execute(spec.command, env)
    except SetupError as e:
        _fail(err_write, e.exit_code, str(e), e.exhausted)
    except BaseException as e:  # noqa: BLE001 - whatever happened, the monitor must hear of it
        _fail(err_write, SETUP_FAILED, f"container setup failed: {e}")


def _seccomp() -> None:
    try:
        seccomp.apply_default()
    except OSError as e:
        raise SetupError(f"the seccomp filter could not be installed: {e}") from e


def _setup(spec: LaunchSpec, streams: tuple[int, int], env: dict[str, str], go_read: int, err_write: int) -> None:
    """Run the setup steps (helper/steps.py); with a cache to fill, let the monitor pack the layer first."""
    os.write(err_write, MARK_SETUP + b"\n")

    def snapshot() -> None:
        os.write(err_write, MARK_SNAPSHOT + b"\n")
        if os.read(go_read, 1) != b"g":
            raise SetupError("the container's monitor went away during setup")

    steps.run(streams, spec.setup, env, spec.setup_cached, snapshot if spec.setup_layer else None)


def _journal_streams(spec: LaunchSpec, sockets: tuple[int, int] | None = None) -> tuple[int, int]:
    """The container's stdout and stderr: journald streams of its own (connecting the sockets if given)."""
    try:
        if sockets:
            journal.connect_stream(sockets[0], spec.name, spec.unit, journal.PRIORITY_STDOUT)
            journal.connect_stream(sockets[1], spec.name, spec.unit, journal.PRIORITY_STDERR)
            return sockets
        return (journal.open_stream(spec.name, spec.unit, journal.PRIORITY_STDOUT),
                journal.open_stream(spec.name, spec.unit, journal.PRIORITY_STDERR))
    except OSError as e:
        if e.errno in (errno.EPIPE, errno.ECONNRESET):
            # journald hangs up at once on a stream beyond its limit (STDOUT_STREAMS_MAX, 4096 in systemd 252,
            # not configurable), saying "Too many stdout streams, refusing connection" in its own journal.
            raise SetupError("journald refused the container's output stream: it takes at most 4096 at once, "
                             "and each running container holds 2 (`journalctl -u systemd-journald` says so); "
                             "stop or remove containers to start more", exhausted="journald-streams") from e
        raise SetupError(f"cannot connect the container's output to journald: {e.strerror}") from e


def _fail(err_write: int, code: int, reason: str, exhausted: str = "") -> None:
    try:
        # "CODE reason", or "CODE@LIMIT reason" when a limit of the host's ran out.
        os.write(err_write, f"{code}@{exhausted} {reason}".encode() if exhausted else f"{code} {reason}".encode())
    finally:
        os._exit(code)
