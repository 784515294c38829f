"""The agent's idle exit and watchdog settings, and what keeps it from exiting (lifecycle.py)."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from quilt_agent import lifecycle
from quilt_agent.lifecycle import Calls


@pytest.mark.parametrize(("value", "seconds"), [
    (None, 60.0), ("", 60.0), ("2", 2.0), ("0", 0.0), ("1.5", 1.5), ("90s", 90.0),
    ("soon", 60.0), ("-1", 60.0), ("nan", 60.0),
])
def test_idle_seconds_from_the_environment(value: str | None, seconds: float) -> None:
    assert lifecycle.idle_seconds({} if value is None else {"QUILT_IDLE_EXIT_SEC": value}) == seconds


def test_watchdog_seconds_only_for_this_process() -> None:
    mine = str(os.getpid())
    assert lifecycle.watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": mine}) == 30.0
    assert lifecycle.watchdog_seconds({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert lifecycle.watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) == 0.0  # a parent's
    assert lifecycle.watchdog_seconds({}) == 0.0
    assert lifecycle.watchdog_seconds({"WATCHDOG_USEC": "x"}) == 0.0


async def test_the_watchdog_is_pinged_at_half_its_timeout() -> None:
    pings: list[float] = []
    task = asyncio.ensure_future(lifecycle.ping_watchdog(0.2, lambda state: pings.append(time.monotonic())))
    # Real time on purpose: the pinger's own timer is what is measured. 0.35 s of a 0.2 s timeout holds the pings
    # at 0, 0.1, 0.2 and 0.3 s with 0.05 s to spare either side of the last one.
    await asyncio.sleep(0.35)
    task.cancel()
    assert len(pings) == 4  # at 0, 0.1, 0.2, 0.3
    assert all(0.08 < b - a < 0.15 for a, b in zip(pings, pings[1:]))


@pytest.mark.parametrize(("rule", "quilt"), [
    ("type='signal',sender='org.quilt.Runtime',path='/org/quilt/Runtime',interface='org.quilt.Runtime.Manager',"
     "member='Event'", True),  # quiltctl events
    ("type='signal',sender='org.quilt.Runtime'", True),  # gdbus monitor --dest org.quilt.Runtime
    ("type='signal',sender=':1.42'", True),  # the agent's own unique name
    ("type='signal',interface='org.freedesktop.DBus.Properties',path='/org/quilt/Runtime/container/ab'", True),
    ("type='signal',path_namespace='/org/quilt/Runtime'", True),
    # systemd watching the name's owner for BusName=: about the name, not a follower of its signals
    ("type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',interface='org.freedesktop.DBus',"
     "member='NameOwnerChanged',arg0='org.quilt.Runtime'", False),
    ("type='signal',sender='org.freedesktop.systemd1',member='JobRemoved'", False),
    ("eavesdrop='true',sender='org.quilt.Runtime'", False),
])
def test_which_match_rules_follow_quilt(rule: str, quilt: bool) -> None:
    assert lifecycle.names_quilt(rule, ":1.42") is quilt


class NoFollowers:
    def __init__(self, count: int = 0) -> None:
        self.n = count

    async def count(self) -> int:
        return self.n


async def test_idle_waits_for_calls_activity_and_followers() -> None:
    calls = Calls()
    busy = ["1 containers running"]
    followers = NoFollowers(1)
    started = time.monotonic()
    idle = asyncio.ensure_future(lifecycle.wait_until_idle(0.1, calls, lambda: list(busy), followers))  # type: ignore[arg-type]
    # Each 0.25 s below is two and a half idle times (0.1 s) of the real idle timer: long enough that the agent
    # would have gone idle by then were it not for what holds it; nothing to wait on, as it must not happen.
    await asyncio.sleep(0.25)
    assert not idle.done()  # a container runs
    busy.clear()
    await asyncio.sleep(0.25)
    assert not idle.done()  # a client follows the signals
    followers.n = 0
    with calls.call():  # a call in progress
        await asyncio.sleep(0.25)
        assert not idle.done()
    ended = time.monotonic()
    await asyncio.wait_for(idle, 1)
    assert time.monotonic() - ended >= 0.1  # the idle time runs from the call's end
    assert time.monotonic() - started >= 0.85


async def test_each_call_starts_the_idle_time_again() -> None:
    calls = Calls()
    idle = asyncio.ensure_future(lifecycle.wait_until_idle(0.2, calls, list, NoFollowers()))  # type: ignore[arg-type]
    for _ in range(4):
        # A call every 0.1 s, half the idle time: each must push the idle exit back, so the timer never runs out.
        await asyncio.sleep(0.1)
        calls.touch()
    last = time.monotonic()
    await asyncio.wait_for(idle, 1)
    assert 0.18 <= time.monotonic() - last < 0.3


async def test_drained_returns_when_the_last_call_ends() -> None:
    calls = Calls()
    await asyncio.wait_for(calls.drained(), 0.1)  # none: at once

    async def one() -> None:
        with calls.call():
            await asyncio.sleep(0.1)  # a call that lasts: drained() must wait for its end, not return at once

    task = asyncio.ensure_future(one())
    await asyncio.sleep(0)  # one turn of the loop, no duration: the task runs up to its first await, inside the call
    assert calls.running == 1
    await asyncio.wait_for(calls.drained(), 1)
    assert calls.running == 0 and task.done()
