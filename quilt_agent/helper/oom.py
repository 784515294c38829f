"""Whether the kernel's OOM killer struck in a container's memory cgroup, watched by its monitor.

The monitor lives in a scope of its own, beside the container's, so it reads the container's counters from
outside. It opens them while the container runs and watches them as conmon does: systemd removes the cgroup as
soon as its last process is gone, which can be before the monitor has reaped the container's init, so a count
read only at the end could be lost. On cgroup v2, memory.events is polled (a change raises POLLPRI); on v1, an
eventfd registered on memory.oom_control through cgroup.event_control fires at each OOM (and at the cgroup's
removal, when the file can no longer be read).
"""
from __future__ import annotations

import os
import select

V1_ROOT = "/sys/fs/cgroup/memory"
V2_ROOT = "/sys/fs/cgroup"


def _memory_cgroup(pid: int) -> tuple[str, bool] | None:
    """The directory of pid's memory cgroup and whether it is a v1 one; None when it has none."""
    unified = None
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                return V1_ROOT + path, True
            if not controllers:
                unified = path
    if unified is not None and os.path.exists(f"{V2_ROOT}{unified}/memory.events"):
        return V2_ROOT + unified, False
    return None


def _count(fd: int) -> int | None:
    """The oom_kill count of an open memory.events or memory.oom_control; None once the cgroup is gone."""
    try:
        text = os.pread(fd, 4096, 0).decode()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


class OomWatch:
    """Watches one container's memory cgroup from the time it runs; `killed` once the OOM killer struck."""

    def __init__(self, init_pid: int) -> None:
        self.killed = False
        self.fd = -1  # what to poll, for `events`; -1 when nothing is watched
        self.events = 0
        self._counter = -1
        try:
            found = _memory_cgroup(init_pid)
        except OSError:
            return  # the init is gone already: what killed it is in its exit status
        if found is None:
            return
        directory, v1 = found
        try:
            self._counter = os.open(f"{directory}/{'memory.oom_control' if v1 else 'memory.events'}",
                                    os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # the cgroup is gone meanwhile, or the kernel has no such file
        if not v1:
            self.fd, self.events = self._counter, select.POLLPRI
            return
        event = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            with open(f"{directory}/cgroup.event_control", "w") as control:
                control.write(f"{event} {self._counter}")
        except OSError:
            os.close(event)  # the final count decides
            return
        self.fd, self.events = event, select.POLLIN

    def fired(self) -> bool:
        """The polled fd was ready: note an OOM kill. Returns whether to keep watching."""
        count = _count(self._counter)
        if count is None:
            return False  # the cgroup was removed
        if self.fd != self._counter:
            try:
                os.eventfd_read(self.fd)
            except BlockingIOError:
                return True
            # v1 notifies an OOM before its kill is counted: with the cgroup still there, this was one.
            self.killed = True
        self.killed = self.killed or count > 0
        return True

    def finish(self) -> bool:
        """After the init's end: whether the OOM killer struck, by what was seen and a last count if it can."""
        if self._counter >= 0:
            count = _count(self._counter)
            self.killed = self.killed or bool(count)
        self.close()
        return self.killed

    def handed_over(self) -> list[str]:
        """What quilt-monitor takes over the watch with: the counter's fd, the polled one's, and how it is polled
        ("pri" on v2, "in" on v1, "-" for none), with both fds left open across its exec."""
        for fd in {self.fd, self._counter} - {-1}:
            os.set_inheritable(fd, True)
        kind = {select.POLLPRI: "pri", select.POLLIN: "in"}.get(self.events, "-") if self.fd >= 0 else "-"
        return [str(self._counter), str(self.fd), kind]

    def close(self) -> None:
        for fd in {self.fd, self._counter} - {-1}:
            os.close(fd)
        self.fd = self._counter = -1
