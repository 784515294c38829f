"""Scopes in memory: what systemd does with a container's transient scope, without systemd.

It checks what systemd checks (the name is a scope's, each pid a running process), refuses a name whose scope
still runs processes, clears one whose processes are gone, and stop signals the processes it was given (by
pidfd, so never a process that took a dead one's pid), kills them after the stop timeout and waits for their
end, as StopUnit's job does.
"""
from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import select
import signal
import time
from dataclasses import dataclass, field, replace

from quilt_agent.errors import ContainerFailed
from quilt_agent.scopes import ScopeLimits

# systemd's unit_name_is_valid for a plain name: these characters, at most 255 of them, and a type's suffix.
_UNIT_TYPES = "service|socket|target|device|mount|automount|swap|timer|path|slice|scope"
_UNIT_NAME = re.compile(rf"[A-Za-z0-9:_.\\-]+\.({_UNIT_TYPES})")
_MAX_UNIT_NAME = 255
ACTIVE_PATTERN = "quilt-*.scope"  # the real active_scopes' ListUnitsByPatterns
DEFAULT_STOP_TIMEOUT = 90.0  # systemd's DefaultTimeoutStopSec=
KILL_TIMEOUT = 5.0


def _exited(pidfd: int) -> bool:
    """A pidfd is readable once its process has exited (a zombie counts as exited, as for systemd's cgroup)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


@dataclass
class FakeScope:
    description: str
    limits: ScopeLimits
    pidfds: dict[int, int] = field(default_factory=dict)  # pid -> pidfd, opened at start

    def live_pids(self) -> list[int]:
        return [pid for pid, fd in self.pidfds.items() if not _exited(fd)]

    def close(self) -> None:
        for fd in self.pidfds.values():
            os.close(fd)
        self.pidfds.clear()


class FakeScopes:
    """A ScopeManager whose units are records in a dict."""

    def __init__(self) -> None:
        self.units: dict[str, FakeScope] = {}
        self.host_stops: set[str] = set()  # units stopped through stop_by_host, as with `systemctl stop`
        self.shutting_down = False  # what a test sets for a host that shuts down
        self.services: set[str] = set()  # running services with Delegate=yes: what attach() may use
        self.expected = 0  # expect_move() calls: a kernel's wait there is none of here to begin

    def expect_move(self) -> None:
        self.expected += 1

    def run_service(self, unit: str, limits: ScopeLimits = ScopeLimits()) -> None:
        """A running service of the host's with Delegate=yes (what `systemd-run -p Delegate=yes` is for the real
        one), its main process left out: the fake holds only the processes it is given."""
        self.units[unit] = FakeScope(f"service {unit}", limits)
        self.services.add(unit)

    async def attach(self, unit: str, pids: list[int], limits: ScopeLimits) -> None:
        scope = self.units.get(unit)
        if unit not in self.services or scope is None:
            raise ContainerFailed(f"systemd could not put the container into {unit}: "
                                  f"org.freedesktop.systemd1.NoSuchUnit: Unit {unit} not loaded.")
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                raise ContainerFailed(f"systemd could not put the container into {unit}: "
                                      f"org.freedesktop.DBus.Error.UnixProcessIdUnknown: Process {pid} does not "
                                      "exist.") from None
            for other in self.units.values():
                if pid in other.pidfds:
                    os.close(other.pidfds.pop(pid))
            scope.pidfds[pid] = fd
        scope.limits = replace(scope.limits, memory_max=limits.memory_max, cpu_quota=limits.cpu_quota,
                               tasks_max=limits.tasks_max)

    async def stop_service(self, unit: str) -> None:
        if unit in self.units:
            self.services.discard(unit)
            await self.stop(unit)

    async def start(self, unit: str, pids: list[int], description: str, limits: ScopeLimits) -> None:
        refused = f"systemd could not create scope {unit}: org.freedesktop.DBus.Error."
        valid = _UNIT_NAME.fullmatch(unit) if len(unit) <= _MAX_UNIT_NAME else None
        if valid is None:
            raise ContainerFailed(refused + "InvalidArgs: Invalid unit name or type.")
        if valid.group(1) != "scope":  # the properties are checked against the type: another one has no PIDs
            raise ContainerFailed(refused + "PropertyReadOnly: Cannot set property PIDs, or unknown property.")
        self.host_stops.discard(unit)
        old = self.units.get(unit)
        if old is not None:
            live = old.live_pids()
            if live:
                raise ContainerFailed(f"scope {unit} already exists and runs {len(live)} processes "
                                      "that this container did not start")
            self._forget(unit)  # a former run whose processes are gone: cleared, as the real one does
        if not pids:
            raise ContainerFailed(refused + "InvalidArgs: Failed to set unit properties: Invalid argument")
        pidfds: dict[int, int] = {}
        try:
            for pid in pids:
                try:
                    pidfds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    raise ContainerFailed(refused + f"UnixProcessIdUnknown: Process with ID {pid} does not exist.") \
                        from None
        except BaseException:
            for fd in pidfds.values():
                os.close(fd)
            raise
        for other in self.units.values():  # a process is in one cgroup: systemd moves it out of the old scope
            for pid in pidfds.keys() & other.pidfds.keys():
                os.close(other.pidfds.pop(pid))
        self.units[unit] = FakeScope(description, limits, pidfds)

    async def stop(self, unit: str) -> None:
        """As systemd's stop: the kill signal to every process, SIGKILL to what is left after the stop timeout."""
        scope = self.units.get(unit)
        if scope is None:
            return
        try:
            await self.kill(unit, scope.limits.kill_signal or signal.SIGTERM)
            timeout = scope.limits.stop_timeout_usec / 1e6 or DEFAULT_STOP_TIMEOUT
            await _until_ended(scope, time.monotonic() + timeout)
            await self.kill(unit, signal.SIGKILL)
            if not await _until_ended(scope, time.monotonic() + KILL_TIMEOUT):
                raise ContainerFailed(f"scope {unit}: processes {scope.live_pids()} outlived SIGKILL")
        finally:
            self._forget(unit)

    async def kill(self, unit: str, sig: int) -> None:
        scope = self.units.get(unit)
        for fd in scope.pidfds.values() if scope else ():
            try:
                signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                pass

    async def stop_cause(self, unit: str) -> str:
        return "shutdown" if self.shutting_down else "user" if unit in self.host_stops else ""

    async def stop_by_host(self, unit: str) -> None:
        """What `systemctl stop` of the unit does, seen from the client: the stop, and its stop_cause."""
        if unit in self.units:
            self.host_stops.add(unit)
        await self.stop(unit)

    async def active_scopes(self) -> list[str]:
        return [u for u, s in self.units.items() if fnmatch.fnmatchcase(u, ACTIVE_PATTERN) and s.live_pids()]

    def loaded(self, unit: str) -> bool:
        """Whether systemd would still have the unit: a scope whose processes have all ended it stops and collects
        by itself (CollectMode=inactive-or-failed), as soon as it notices; a service stays."""
        scope = self.units.get(unit)
        return scope is not None and (unit in self.services or bool(scope.live_pids()))

    def unit_of(self, pid: int) -> str | None:
        """The unit holding pid while it runs (what /proc/PID/cgroup tells of the real one)."""
        for unit, scope in self.units.items():
            fd = scope.pidfds.get(pid)
            if fd is not None and not _exited(fd):
                return unit
        return None

    def close(self) -> None:
        for unit in list(self.units):
            self._forget(unit)

    def _forget(self, unit: str) -> None:
        scope = self.units.pop(unit, None)
        if scope is not None:
            scope.close()


async def _until_ended(scope: FakeScope, deadline: float) -> bool:
    """Whether every process of the scope ended before deadline (monotonic seconds)."""
    while scope.live_pids():
        if time.monotonic() > deadline:
            return False
        await _readable(list(scope.pidfds.values()), deadline - time.monotonic())
    return True


async def _readable(fds: list[int], timeout: float) -> None:
    """Until one of fds is readable (a process exited) or timeout passes."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    for fd in fds:
        loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, max(timeout, 0))
    except asyncio.TimeoutError:
        pass
    finally:
        for fd in fds:
            loop.remove_reader(fd)
