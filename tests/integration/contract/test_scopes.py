"""The scope contract (tests/contract/scopes.py) against the real Scopes, on the test host's system bus and
systemd: what the fake lets pass, systemd does too."""
from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import AsyncIterator

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from quilt_agent.graceperiod import GracePeriod
from quilt_agent.scopes import SYSTEMD, SYSTEMD_MANAGER, SYSTEMD_PATH, UINT64_MAX, ScopeLimits, Scopes
from tests.contract.scopes import ScopesContract, ScopeView


class SystemdProbe:
    """Asks the kernel which cgroup holds a process, and systemd what a unit was given."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus

    async def unit_of(self, pid: int) -> str | None:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return None
        # The unified line ("0::/quilt.slice/U.scope"), else systemd's own hierarchy on a hybrid host.
        for line in sorted(lines, key=lambda l: not l.startswith(("0::", "1:name=systemd:"))):
            units = [part for part in line.split(":", 2)[2].split("/") if part.endswith((".scope", ".service"))]
            if units:
                return units[-1]
        return None

    async def _call(self, path: str, iface: str, member: str, sig: str, body: list) -> list:
        reply = await self._bus.call(Message(destination=SYSTEMD, path=path, interface=iface, member=member,
                                             signature=sig, body=body))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply.body

    async def stop_as_host(self, unit: str) -> None:
        await asyncio.to_thread(subprocess.run, ["systemctl", "stop", unit], check=True)

    async def run_service(self, unit: str) -> None:
        await asyncio.to_thread(subprocess.run, ["systemd-run", "--quiet", "--collect", f"--unit={unit}",
                                                 "-p", "Delegate=yes", "sleep", "600"], check=True)

    async def loaded(self, unit: str) -> bool:
        out = await asyncio.to_thread(subprocess.run, ["systemctl", "show", "-P", "LoadState", unit],
                                      capture_output=True, text=True, check=True)
        return out.stdout.strip() == "loaded"

    async def scope(self, unit: str) -> ScopeView:
        (path,) = await self._call(SYSTEMD_PATH, SYSTEMD_MANAGER, "GetUnit", "s", [unit])
        kind = "Service" if unit.endswith(".service") else "Scope"

        async def get(iface: str, name: str) -> object:
            (value,) = await self._call(path, "org.freedesktop.DBus.Properties", "Get", "ss",
                                        [f"org.freedesktop.systemd1.{kind if iface == 'Scope' else iface}", name])
            return value.value

        def limit(value: int) -> int:
            return 0 if value == UINT64_MAX else value

        cpu = limit(await get("Scope", "CPUQuotaPerSecUSec"))
        # systemd's defaults read as ScopeLimits' 0: SIGTERM, and the manager's DefaultTimeoutStopUSec.
        kill_signal = await get("Scope", "KillSignal")
        stop_timeout = await get("Scope", "TimeoutStopUSec")
        (default_timeout,) = await self._call(SYSTEMD_PATH, "org.freedesktop.DBus.Properties", "Get", "ss",
                                              [SYSTEMD_MANAGER, "DefaultTimeoutStopUSec"])
        limits = ScopeLimits(memory_max=limit(await get("Scope", "MemoryMax")), cpu_quota=cpu / 10_000,
                             tasks_max=limit(await get("Scope", "TasksMax")),
                             kill_signal=0 if kill_signal == signal.SIGTERM else kill_signal,
                             stop_timeout_usec=0 if stop_timeout == default_timeout.value else stop_timeout)
        return ScopeView(await get("Unit", "Description"), limits)


@pytest.fixture
async def bus() -> AsyncIterator[MessageBus]:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    yield bus
    bus.disconnect()


class TestSystemdScopes(ScopesContract):
    @pytest.fixture
    async def scopes(self, bus: MessageBus) -> Scopes:
        scopes = Scopes(bus, GracePeriod.of_this_process())
        await scopes.connect()
        return scopes

    @pytest.fixture
    def probe(self, bus: MessageBus) -> SystemdProbe:
        return SystemdProbe(bus)
