"""Waiting on a state instead of for a while: what the integration tests wait on, each with a deadline.

Where something tells when it happens (a line in the log, a reply that can only come after, a match rule on the
bus, a terminal's foreground process group), these wait for exactly that; `until` polls a condition for the
rest, at a short interval, and fails naming what never came.
"""
from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from quilt_agent.client import Client

T = TypeVar("T")


async def until(check: Callable[[], T | Awaitable[T]], what: str | Callable[[], str], timeout: float = 10.0,
                interval: float = 0.02) -> T:
    """Poll check() (a function or a coroutine function) until it returns something true; return that. `what`
    says what never came: a text, or a function that tells it from the state at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"{what if isinstance(what, str) else what()} (within {timeout} s)"
        await asyncio.sleep(interval)


def until_now(check: Callable[[], T], what: str | Callable[[], str], timeout: float = 10.0,
              interval: float = 0.02) -> T:
    """until() for code outside the event loop (fixtures, blocking helpers): the same polling, blocking."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what if isinstance(what, str) else what()} (within {timeout} s)"
        time.sleep(interval)
    return value


async def log_line(client: Client, path: str, text: str, timeout: float = 10.0) -> list[str]:
    """The container's log lines once one of them is `text`: journald writes them a moment after the container."""
    async def lines() -> list[str] | None:
        got = [line.text for line in await client.get_logs(path, {})]
        return got if text in got else None

    return await until(lines, f"no line {text!r} in the log of {path}", timeout)


async def reached_agent(client: Client, path: str) -> None:
    """Every call this client sent before has reached the agent: the bus delivers one connection's messages in
    order and the agent reads them in order, so a reply to a later call means the earlier ones were received
    (a Wait sent before is then in progress there, not still on its way)."""
    await client.get_property(path, "State")


async def bus_call(bus: MessageBus, member: str, signature: str = "", body: list | None = None,
                   interface: str = "org.freedesktop.DBus") -> list:
    reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface=interface, member=member, signature=signature, body=body or []))
    assert reply.message_type is MessageType.METHOD_RETURN, (member, reply.error_name, reply.body)
    return reply.body


async def match_rules_of(pid: int) -> list[str]:
    """The match rules the bus holds for the connections of process pid (the daemon's Debug.Stats, root only)."""
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        (names,) = await bus_call(bus, "ListNames")
        mine = set()
        for name in names:
            if not name.startswith(":"):
                continue
            reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                           interface="org.freedesktop.DBus", member="GetConnectionUnixProcessID",
                                           signature="s", body=[name]))
            if reply.message_type is MessageType.METHOD_RETURN and reply.body[0] == pid:
                mine.add(name)
        (rules,) = await bus_call(bus, "GetAllMatchRules", interface="org.freedesktop.DBus.Debug.Stats")
        return [rule for name, list_ in rules.items() if name in mine for rule in list_]
    finally:
        bus.disconnect()


async def subscribed(pid: int, needle: str, timeout: float = 10.0) -> list[str]:
    """Once process pid has a match rule on the bus containing needle (it follows those signals from then on)."""
    async def rules() -> list[str]:
        return [rule for rule in await match_rules_of(pid) if needle in rule]

    return await until(rules, f"process {pid} never subscribed to {needle!r}", timeout, interval=0.05)


# --- processes ---------------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command's name: [0] is the state, [1] ppid, [2] pgrp, [5] tpgid."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def processes(argv: list[str]) -> list[int]:
    """The pids whose command line is exactly argv (containers' processes included: the test host sees them)."""
    want = b"\0".join(a.encode() for a in argv) + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/cmdline").read_bytes() == want:
                    found.append(int(entry))
            except OSError:
                pass  # gone meanwhile
    return found


async def in_foreground(argv: list[str], timeout: float = 10.0) -> int:
    """The pid of the one process running argv once it runs as its terminal's foreground process group (what ^C
    and ^Z reach), not stopped."""
    def foreground() -> int | None:
        for pid in processes(argv):
            try:
                fields = _stat(pid)
            except OSError:
                continue
            if fields[0] != "T" and fields[2] == fields[5]:
                return pid
        return None

    return await until(foreground, f"{' '.join(argv)} never ran in the terminal's foreground", timeout)
