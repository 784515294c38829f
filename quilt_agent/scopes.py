"""The systemd client: transient scopes for containers, over org.freedesktop.systemd1.

Like crun's cgroup-systemd.c: StartTransientUnit with the container's pids,
wait for the job (JobRemoved), reset and retry once when a scope of the same
name is left over, StopUnit + ResetFailedUnit on teardown.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Protocol

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from quilt_agent.errors import ContainerFailed, SystemdFailed, TimedOut
from quilt_agent.graceperiod import GracePeriod

log = logging.getLogger("quilt.scopes")


class ScopeManager(Protocol):
    """What the manager needs of systemd: a container's processes in a scope of their own, limits on it, and the
    scope gone again. Scopes is the real one; tests/fakes/scopes.py keeps scopes in memory, and
    tests/contract/scopes.py holds both to the same behaviour."""

    def expect_move(self) -> None:
        """A process is to be moved into a scope's cgroups within milliseconds (by start() or attach(), or by an
        exec joining a running container's): what the kernel will make that move wait for may begin now
        (graceperiod.py). Never blocks, never fails."""
        ...

    async def start(self, unit: str, pids: list[int], description: str, limits: ScopeLimits) -> None:
        """Put pids into a new scope named unit, with limits; return once they are in it. A scope of that name
        whose processes are gone is cleared first. ContainerFailed when one still runs processes, when a pid is
        no running process, or when the name is no scope's."""
        ...

    async def stop(self, unit: str) -> None:
        """End the scope's processes and forget the scope; an unknown unit is no error."""
        ...

    async def attach(self, unit: str, pids: list[int], limits: ScopeLimits) -> None:
        """Put pids into the cgroup of unit, a running service of the host's with Delegate=yes (a generated
        container unit), instead of a scope of their own, with limits for as long as it runs (its KillSignal= and
        TimeoutStopSec= are its unit file's). ContainerFailed when the service does not run or is not delegated."""
        ...

    async def stop_service(self, unit: str) -> None:
        """Stop a service (its processes by its own KillSignal= and TimeoutStopSec=) and wait for it, leaving its
        state for systemd (a failure stays visible); an unknown unit is no error."""
        ...

    async def kill(self, unit: str, sig: int) -> None:
        """Send sig to every process of the scope, as its stop does; an unknown unit is no error."""
        ...

    async def active_scopes(self) -> list[str]:
        """Names of the quilt-*.scope units whose processes still run."""
        ...

    async def stop_cause(self, unit: str) -> str:
        """Why the unit's processes may have ended besides by themselves or by this ScopeManager: "shutdown"
        while the host shuts down, "user" when someone else asked systemd to stop it since it was started
        (`systemctl stop`, `machinectl terminate`), else ""."""
        ...

SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER = "org.freedesktop.systemd1.Manager"
SLICE = "quilt.slice"
# The targets whose start is a shutdown of the host: the stops of scopes it brings are not a user's.
SHUTDOWN_TARGETS = frozenset({"shutdown.target", "poweroff.target", "reboot.target", "halt.target", "kexec.target",
                              "soft-reboot.target"})
JOB_TIMEOUT = 30.0
UINT64_MAX = (1 << 64) - 1
# The OCI runtime spec's default devices, as runc and crun allow them (without /dev/console and the tun device,
# which Quilt gives no container): a device node a container gets hold of by other means, such as one a host
# process made in a volume, then cannot be opened. The nodes are named by number, as runc's systemd driver does,
# so that systemd reads no path (the host's /dev need not hold them); char-pts covers every pseudo-terminal,
# those of the container's own devpts and the caller's terminal that `run -it` passes in.
DEVICE_ALLOW = (
    ("/dev/char/1:3", "rwm"),  # null
    ("/dev/char/1:5", "rwm"),  # zero
    ("/dev/char/1:7", "rwm"),  # full
    ("/dev/char/1:8", "rwm"),  # random
    ("/dev/char/1:9", "rwm"),  # urandom
    ("/dev/char/5:0", "rwm"),  # tty
    ("/dev/char/5:2", "rwm"),  # ptmx
    ("char-pts", "rwm"),
)


@dataclass(frozen=True)
class ScopeLimits:
    """What a scope is given: limits, and how systemd stops it (KillSignal=, then SIGKILL after TimeoutStopSec=:
    `systemctl stop`, `machinectl terminate` and a shutdown of the host stop it so)."""

    memory_max: int = 0  # bytes, 0 = none
    cpu_quota: float = 0.0  # percent of one CPU, 0 = none
    tasks_max: int = 0  # 0 = none
    kill_signal: int = 0  # 0 = systemd's default, SIGTERM
    stop_timeout_usec: int = 0  # 0 = systemd's default (DefaultTimeoutStopSec=)


def _limit_properties(limits: ScopeLimits) -> list[tuple[str, Variant]]:
    props = []
    if limits.memory_max:
        props.append(("MemoryMax", Variant("t", limits.memory_max)))
    if limits.cpu_quota:
        props.append(("CPUQuotaPerSecUSec", Variant("t", round(limits.cpu_quota * 10_000))))
    if limits.tasks_max:
        props.append(("TasksMax", Variant("t", limits.tasks_max)))
    return props


class SystemdError(SystemdFailed):
    """systemd's error reply to a call; name is its D-Bus error name. One left unhandled reaches the agent's
    caller as SystemdFailed, saying which call on which unit systemd refused and in its own words."""

    def __init__(self, name: str, text: str, call: str = "", unit: str = "") -> None:
        about = f"{call} of {unit}" if unit else call
        hint = f" (`systemctl status {unit}` and the agent's journal say more)" if unit else ""
        super().__init__(f"systemd refused {about}: {name}: {text}{hint}" if call else f"{name}: {text}")
        self.name = name
        self.text = text


class Scopes:
    """Creates and tears down the transient scopes of containers."""

    def __init__(self, bus: MessageBus, grace: GracePeriod | None = None) -> None:
        self._bus = bus
        self._grace = grace
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._finished: dict[str, str] = {}  # JobRemoved seen before the job's reply
        self._own: dict[str, int] = {}  # units this client is starting or stopping: their jobs are its own
        self._stop_requested: set[str] = set()  # units whose stop job someone else queued (JobNew)
        self._shutting_down = False

    async def connect(self) -> None:
        for member in ("JobRemoved", "JobNew"):
            await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                             [f"type='signal',sender='{SYSTEMD}',interface='{SYSTEMD_MANAGER}',member='{member}'"])
        self._bus.add_message_handler(self._on_message)
        await self._manager("Subscribe")

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.member == "JobNew" and msg.interface == SYSTEMD_MANAGER:
            unit = msg.body[2]
            if unit in SHUTDOWN_TARGETS:
                self._shutting_down = True
            elif unit.startswith("quilt-") and unit.endswith(".scope") and unit not in self._own:
                self._stop_requested.add(unit)  # a scope is only ever started by its client: this is a stop
        if msg.message_type is MessageType.SIGNAL and msg.member == "JobRemoved" and msg.interface == SYSTEMD_MANAGER:
            _id, job, _unit, result = msg.body
            future = self._waiting.pop(job, None)
            if future is None:
                self._finished[job] = result
                if len(self._finished) > 1000:  # jobs of other clients: keep the buffer bounded
                    self._finished.pop(next(iter(self._finished)))
            elif not future.done():
                future.set_result(result)

    async def _call(self, dest: str, path: str, iface: str, member: str, sig: str = "", body: list | None = None):
        reply = await self._bus.call(Message(destination=dest, path=path, interface=iface, member=member,
                                             signature=sig, body=body or []))
        if reply.message_type is MessageType.ERROR:
            unit = body[0] if body and isinstance(body[0], str) and body[0].endswith((".scope", ".slice", ".service")) \
                else ""
            raise SystemdError(reply.error_name or "error", str(reply.body[0]) if reply.body else "", member, unit)
        return reply.body

    async def _manager(self, member: str, sig: str = "", body: list | None = None):
        return await self._call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, member, sig, body)

    async def _wait_job(self, job: str, unit: str, what: str) -> str:
        if job in self._finished:
            return self._finished.pop(job)
        future = asyncio.get_running_loop().create_future()
        self._waiting[job] = future
        try:
            return await asyncio.wait_for(future, JOB_TIMEOUT)
        except asyncio.TimeoutError:
            raise TimedOut(f"systemd did not finish {what} {unit} within {JOB_TIMEOUT:g} seconds (job {job}): "
                           f"`systemctl status {unit}` and `journalctl -u {unit}` say why") from None
        finally:
            self._waiting.pop(job, None)

    def expect_move(self) -> None:
        if self._grace is not None:
            self._grace.begin()

    async def start(self, unit: str, pids: list[int], description: str, limits: ScopeLimits) -> None:
        """Put pids into a new transient scope under quilt.slice; return once systemd has done it."""
        props = [
            ("Description", Variant("s", description)),
            ("Slice", Variant("s", SLICE)),
            ("PIDs", Variant("au", pids)),
            ("Delegate", Variant("b", True)),
            ("DefaultDependencies", Variant("b", False)),
            ("CollectMode", Variant("s", "inactive-or-failed")),
            ("DevicePolicy", Variant("s", "closed")),
            ("DeviceAllow", Variant("a(ss)", [list(d) for d in DEVICE_ALLOW])),
            # DefaultDependencies= would add these and order the scope after the slice's own dependencies; only
            # these two are wanted: a shutdown stops the scope as `systemctl stop` does, not by its final kill.
            ("Conflicts", Variant("as", ["shutdown.target"])),
            ("Before", Variant("as", ["shutdown.target"])),
        ]
        if limits.kill_signal:
            props.append(("KillSignal", Variant("i", limits.kill_signal)))
        if limits.stop_timeout_usec:
            props += [("TimeoutStopUSec", Variant("t", limits.stop_timeout_usec)), ("SendSIGKILL", Variant("b", True))]
        props += _limit_properties(limits)
        with self._owning(unit):
            self._stop_requested.discard(unit)
            await self._start(unit, props)

    async def _start(self, unit: str, props: list[tuple[str, Variant]]) -> None:
        for attempt in (1, 2):
            try:
                (job,) = await self._manager("StartTransientUnit", "ssa(sv)a(sa(sv))", [unit, "fail", props, []])
            except SystemdError as err:
                if err.name == "org.freedesktop.systemd1.UnitExists" and attempt == 1:
                    await self._clear_stale(unit)
                    continue
                raise ContainerFailed(f"systemd could not create scope {unit}: {err.name}: {err.text}") from err
            result = await self._wait_job(job, unit, "starting")
            if result != "done":
                raise ContainerFailed(f"systemd could not start scope {unit}: job {result}")
            return

    async def _clear_stale(self, unit: str) -> None:
        """A scope of this name is still loaded: a former run whose emptiness systemd has not yet
        noticed, or one left by a crash. Clear it when nothing runs in it; never kill what does."""
        try:
            (path,) = await self._manager("GetUnit", "s", [unit])
            (tasks,) = await self._call(SYSTEMD, path, "org.freedesktop.DBus.Properties", "Get", "ss",
                                        ["org.freedesktop.systemd1.Scope", "TasksCurrent"])
        except SystemdError as err:
            if err.name == "org.freedesktop.systemd1.NoSuchUnit":
                return  # gone meanwhile
            raise
        if tasks.value not in (0, UINT64_MAX):
            raise ContainerFailed(f"scope {unit} already exists and runs {tasks.value} processes "
                                  "that this container did not start")
        log.info("clearing stale scope %s before reuse", unit)
        await self.stop(unit)

    async def stop(self, unit: str) -> None:
        """Stop the scope (its KillSignal=, then SIGKILL to what is left after TimeoutStopSec=) and forget it."""
        if await self._stop_unit(unit):  # the same StopUnit job, whatever the unit's type
            await self.reset_failed(unit)  # not for a unit systemd does not know: it cannot be failed either

    async def attach(self, unit: str, pids: list[int], limits: ScopeLimits) -> None:
        try:
            await self._manager("AttachProcessesToUnit", "ssau", [unit, "", pids])
        except SystemdError as err:
            raise ContainerFailed(f"systemd could not put the container into {unit}: {err.name}: {err.text}") from err
        props = _limit_properties(limits)
        if props:
            await self._manager("SetUnitProperties", "sba(sv)", [unit, True, props])  # runtime: this boot only

    async def stop_service(self, unit: str) -> None:
        await self._stop_unit(unit)

    async def _stop_unit(self, unit: str) -> bool:
        """StopUnit and its job; False if systemd knows no such unit (a scope it collected once empty)."""
        with self._owning(unit):
            try:
                (job,) = await self._manager("StopUnit", "ss", [unit, "replace"])
            except SystemdError as err:
                if err.name != "org.freedesktop.systemd1.NoSuchUnit":
                    raise
                return False
            await self._wait_job(job, unit, "stopping")
            return True

    @contextlib.contextmanager
    def _owning(self, unit: str) -> Iterator[None]:
        """The jobs of unit are this client's meanwhile (counted: a start may clear a stale scope by a stop)."""
        self._own[unit] = self._own.get(unit, 0) + 1
        try:
            yield
        finally:
            self._own[unit] -= 1
            if not self._own[unit]:
                del self._own[unit]

    async def stop_cause(self, unit: str) -> str:
        # A round trip first: systemd's JobNew signals sent before its reply have arrived by then.
        await self._call(SYSTEMD, SYSTEMD_PATH, "org.freedesktop.DBus.Peer", "Ping")
        if self._shutting_down:
            return "shutdown"
        return "user" if unit in self._stop_requested else ""

    async def kill(self, unit: str, sig: int) -> None:
        """KillUnit(who=all): signal every process of the scope, as its stop does, without stopping it."""
        try:
            await self._manager("KillUnit", "ssi", [unit, "all", sig])
        except SystemdError as err:
            # An unknown unit, or one whose processes are gone already.
            if err.name not in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.NoSuchProcess"):
                raise

    async def reset_failed(self, unit: str) -> None:
        try:
            await self._manager("ResetFailedUnit", "s", [unit])
        except SystemdError as err:
            if err.name not in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.systemd1.LoadFailed"):
                raise

    async def active_scopes(self) -> list[str]:
        """Names of the quilt-*.scope units systemd knows that still run."""
        (units,) = await self._manager("ListUnitsByPatterns", "asas", [["active", "activating", "deactivating"],
                                                                         ["quilt-*.scope"]])
        return [u[0] for u in units]
