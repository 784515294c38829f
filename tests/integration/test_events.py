"""Lifecycle events: the Manager's Event signal, the stored history (ListEvents) and `quiltctl events`."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from quilt_agent.client import Client, ClientError, Event
from tests.integration.waiting import log_line, subscribed, until

ERR = "org.quilt.Runtime.Error."
MiB = 1 << 20
QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
# Becomes a memory hog once told to (SIGUSR1): busybox tail keeps growing its buffer on /dev/zero.
HOG = "trap 'go=1' USR1; echo ready; while [ -z \"$go\" ]; do sleep 0.02; done; exec tail /dev/zero"


async def events_of(queue: asyncio.Queue[Event], container_id: str, last: str, timeout: float = 20) -> list[Event]:
    """The container's events from the queue, up to the first of kind `last`."""
    got: list[Event] = []
    async with asyncio.timeout(timeout):
        while not got or got[-1].kind != last:
            event = await queue.get()
            if event.container_id == container_id:
                got.append(event)
    return got


async def test_a_container_created_started_oom_killed_and_removed_tells_each_edge(client: Client, busybox_tar: Path,
                                                                               name: str) -> None:
    queue = await client.watch_events()
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", HOG], {"memory_max": 32 * MiB})
    cid = (await client.properties(path))["Id"]
    await log_line(client, path, "ready")
    await client.kill(path, 10)  # SIGUSR1: go
    assert await client.wait(path) == 137
    await client.remove(path)
    events = await events_of(queue, cid, "removed")
    assert [e.kind for e in events] == ["created", "started", "oom", "exited", "removed"]
    assert all(e.details["name"] == name and e.details["time"] == e.time for e in events)
    times = [e.time for e in events]
    assert times == sorted(times)
    exited = events[3]
    assert exited.details["exit_code"] == 137 and exited.details["oom_killed"] is True
    # The same events are stored, with the same times.
    stored = [e for e in await client.list_events(since=times[0]) if e.container_id == cid]
    assert [(e.time, e.kind, e.details) for e in stored] == [(e.time, e.kind, e.details) for e in events]


async def test_event_signals_travel_with_their_documented_types(client: Client, busybox_tar: Path,
                                                                name: str) -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    seen: list[Message] = []
    bus.add_message_handler(lambda m: seen.append(m) if m.message_type is MessageType.SIGNAL
                            and m.member == "Event" else None)
    try:
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                               body=["type='signal',sender='org.quilt.Runtime',member='Event'"]))
        path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "exit 3"], {})
        await client.wait(path)
        await until(lambda: any(m.body[0] == "exited" for m in seen), "no exited Event signal")
    finally:
        bus.disconnect()
    exited = next(m for m in seen if m.body[0] == "exited")
    assert (exited.path, exited.interface, exited.signature) == ("/org/quilt/Runtime", "org.quilt.Runtime.Manager",
                                                                 "ssa{sv}")
    details = exited.body[2]
    assert {k: v.signature for k, v in details.items()} == {"name": "s", "time": "t", "exit_code": "i",
                                                           "oom_killed": "b"}
    assert details["exit_code"].value == 3 and details["oom_killed"].value is False


async def test_a_failed_start_tells_failed_with_the_reason(client: Client, busybox_tar: Path, name: str) -> None:
    queue = await client.watch_events()
    with pytest.raises(ClientError):
        await client.run_container(name, str(busybox_tar), ["/no/such/program"], {})
    cid = (await client.properties(await client.get_container(name)))["Id"]
    events = await events_of(queue, cid, "failed")
    assert [e.kind for e in events] == ["created", "failed"]
    assert "/no/such/program" in events[1].details["reason"]


async def test_list_events_since_and_until(client: Client, busybox_tar: Path, name: str) -> None:
    first = await client.create_container(f"{name}-1", str(busybox_tar), ["/bin/true"], {})
    middle = time.time_ns() // 1000
    await until(lambda: time.time_ns() // 1000 > middle, "the clock stood still")  # the second is after middle
    second = await client.create_container(f"{name}-2", str(busybox_tar), ["/bin/true"], {})
    ids = {(await client.properties(p))["Id"]: n for p, n in ((first, "1"), (second, "2"))}
    mine = lambda events: [ids[e.container_id] for e in events if e.container_id in ids]  # noqa: E731
    assert mine(await client.list_events()) == ["1", "2"]
    assert mine(await client.list_events(since=middle)) == ["2"]
    assert mine(await client.list_events(until=middle)) == ["1"]
    with pytest.raises(ClientError) as err:
        await client._call("/org/quilt/Runtime", "org.quilt.Runtime.Manager", "ListEvents", "a{sv}",
                           [{"bogus": Variant("t", 1)}])
    assert err.value.name == ERR + "InvalidArgument" and "Unknown event option 'bogus'" in err.value.message


async def test_quiltctl_events_prints_them_as_they_come_and_the_history_since(client: Client, busybox_tar: Path,
                                                                              name: str) -> None:
    proc = await asyncio.create_subprocess_exec(QUILTCTL, "events", "--json", stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # From its match rule on the bus on, the Event signals reach it.
        await subscribed(proc.pid, "member='Event'")
        path = await client.run_container(name, str(busybox_tar), ["/bin/true"], {})
        await client.wait(path)
        cid = (await client.properties(path))["Id"]
        lines = []
        async with asyncio.timeout(10):
            while len(lines) < 3:
                event = json.loads(await proc.stdout.readline())
                if event["container_id"] == cid:
                    lines.append(event["kind"])
        assert lines == ["created", "started", "exited"]
    finally:
        proc.terminate()
        await proc.wait()
    # The history, then nothing more to wait for: --until has passed.
    result = subprocess.run([QUILTCTL, "events", "--since", "5m", "--until", "0s"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    mine = [line for line in result.stdout.splitlines() if f"(name={name}" in line]
    assert [line.split()[2] for line in mine] == ["created", "started", "exited"]
    assert mine[2].endswith(f"(name={name}, exit_code=0, oom_killed=False)")
