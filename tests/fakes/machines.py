"""Machines in memory: what systemd-machined does with Quilt's registrations, without machined. It refuses a name
that is taken, as machined does, and can be told to be absent or to refuse everything."""
from __future__ import annotations

import asyncio
import os
import select
from dataclasses import dataclass, field

from quilt_agent.machines import MachineError


@dataclass
class FakeMachined:
    present: bool = True
    refuse: str = ""  # a reason: every registration is refused with it
    machines: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # name -> (leader, interfaces)
    registrations: int = 0
    slow: bool = False  # each registration waits for its leader's end first (a command that ends at once)
    late: bool = False  # each registration is made, but answered only once its leader has ended

    async def available(self) -> bool:
        return self.present

    async def register(self, name: str, machine_id: bytes, leader: int, ifnames: list[str]) -> str:
        if self.slow:
            try:
                fd = os.pidfd_open(leader)
            except ProcessLookupError:
                pass
            else:
                select.select([fd], [], [], 5)
                os.close(fd)
            raise MachineError("org.freedesktop.DBus.Error.UnixProcessIdUnknown",
                               f"Failed to determine unit of process {leader} : No such process")
        if self.late:
            await _ended(leader)
        if self.refuse:
            raise MachineError("org.freedesktop.DBus.Error.AccessDenied", self.refuse)
        if name in self.machines:
            raise MachineError("org.freedesktop.machine1.MachineExists", f"Machine '{name}' already exists")
        self.machines[name] = (leader, list(ifnames))
        self.registrations += 1
        return f"/org/freedesktop/machine1/machine/{name.replace('-', '_2d')}"

    async def unregister(self, name: str) -> None:
        self.machines.pop(name, None)

    async def find(self, name: str) -> tuple[str, int]:
        if name not in self.machines:
            return "", 0
        return f"/org/freedesktop/machine1/machine/{name.replace('-', '_2d')}", self.machines[name][0]


async def _ended(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await asyncio.wait_for(done, 10)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
