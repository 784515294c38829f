"""The RCU grace period every cgroup move waits for, begun ahead of a start or an exec.

Moving a process into a cgroup, as systemd does with the pids of a new scope and the exec helper with the command
it runs in a container, writes cgroup.procs, which takes the kernel's one cgroup_threadgroup_rwsem (for every
hierarchy, v1 and v2 alike) for writing. A writer that finds it unused first waits for an RCU grace period
(rcu_sync_enter): 8-13 ms on these machines, most of a scope's start. Writers that come while it is in use, or
within about one more grace period after the last, do not wait. So when a start or an exec is coming, the agent
begins that wait itself, in a thread of its own, while it makes the container's directories and forks the monitor
(or the exec helper): it writes its own pid into its own cgroup's cgroup.procs, a move to where it already is,
which changes nothing but takes the rwsem. The moves that follow then find the grace period passed (A/Bs in the
test host: the start's scope phase 16-17 ms without, 7-8 ms with; an exec of /bin/true through the bus 30-32 ms
without, 22-23 ms with).

A cgroup2 mount with `favordynmods` keeps the rwsem ready for good, at some cost to every fork and exit of the
host; this has it ready only around starts and execs. Written by hand: no library does it. When the agent's cgroup
cannot be written (a read-only /sys/fs/cgroup, a host that mounts none), the moves wait for the grace period
themselves, as before, and that is said once.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from quilt_agent import cgroups

log = logging.getLogger("quilt.graceperiod")


class GracePeriod:
    """Begins, on request, a move of the agent into its own cgroup (above), in a thread of its own, one at a time:
    a request made while one is under way is met by it or by the next."""

    def __init__(self, locate: Callable[[], str | None] | None) -> None:
        # Finds the cgroup.procs file to write, at each move (the agent may have been moved meanwhile: writing
        # its former cgroup would move it back); None: never written.
        self._locate = locate
        self._wanted = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    @classmethod
    def of_this_process(cls) -> GracePeriod:
        """Writing this process's own cgroup (procs_file)."""
        return cls(lambda: procs_file(cgroups.process_cgroups(os.getpid())))

    def begin(self) -> None:
        """Never blocks: the move is the thread's."""
        if self._locate is None or self._closed:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="quilt-grace-period", daemon=True)
            self._thread.start()
        self._wanted.set()

    def close(self) -> None:
        """Its thread ends (after the move under way, if any)."""
        self._closed = True
        self._wanted.set()

    def _run(self) -> None:
        while self._locate is not None:
            self._wanted.wait()
            self._wanted.clear()
            if self._closed:
                return
            self._move()

    def _move(self) -> None:
        assert self._locate is not None
        procs = None
        try:
            procs = self._locate()
            if procs is None:
                self._off("no cgroup hierarchy is mounted")
                return
            fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        except OSError as err:
            self._off(f"cannot write {procs}: {os.strerror(err.errno) if err.errno else err}" if procs
                      else f"cannot find the agent's cgroup: {err}")

    def _off(self, why: str) -> None:
        self._locate = None  # once: the next start would fail the same way
        log.info("the kernel's grace period is not begun ahead of starts and execs: %s", why)


def procs_file(dirs: list[cgroups.CgroupDir]) -> str | None:
    """The cgroup.procs of a process's cgroups (as cgroups.py finds them) to write: the unified hierarchy's when
    there is one (systemd's own on a hybrid host), else systemd's named v1 one, else any; None without any."""
    if not dirs:
        return None
    best = min(dirs, key=lambda d: (d.hierarchy.version != 2, "name=systemd" not in d.hierarchy.controllers))
    return os.path.join(best.path, "cgroup.procs")
