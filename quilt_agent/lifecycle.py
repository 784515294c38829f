"""How long the agent lives: systemd's watchdog, and the exit when idle.

The agent is started by the first bus call (bus activation: dbus/org.quilt.Runtime.service names
quilt-agent.service) and exits when nothing needs it, as hostnamed and timedated do; containers do not need
it to run (they live in their own scopes), only to be managed. It is idle when no call arrived for
QUILT_IDLE_EXIT_SEC seconds (the unit's Environment=, 60 by default, 0 for never) and nothing is under way that
an exit would cut short or lose (Manager.activity, calls in progress, followers of its signals).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from typing import Any, Callable, Iterator

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from quilt_agent.bus.names import BUS_NAME
from quilt_agent.model import Container

log = logging.getLogger("quilt")

IDLE_ENV = "QUILT_IDLE_EXIT_SEC"
DEFAULT_IDLE_SECONDS = 60.0


def idle_seconds(environ: dict[str, str] | None = None) -> float:
    """The idle time before the agent exits; 0 = never. A bad value is logged and the default used, as a typo
    in quilt.conf is: it must not keep the agent (and its containers' management) from starting."""
    text = (os.environ if environ is None else environ).get(IDLE_ENV, "").strip()
    if not text:
        return DEFAULT_IDLE_SECONDS
    try:
        seconds = float(text.removesuffix("s"))
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e9:
        log.error("ignoring %s=%s: not a number of seconds (0 for never); using %g", IDLE_ENV, text,
                  DEFAULT_IDLE_SECONDS)
        return DEFAULT_IDLE_SECONDS
    return seconds


def watchdog_seconds(environ: dict[str, str] | None = None) -> float:
    """The watchdog's timeout systemd set for this process (WatchdogSec=), 0 when none. systemd-python has no
    sd_watchdog_enabled(): these are the variables it reads."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", "0") or 0)
    except ValueError:
        return 0.0
    if usec <= 0 or (pid and pid != os.getpid()):
        return 0.0
    return usec / 1e6


async def ping_watchdog(timeout: float, notify: Callable[[str], Any]) -> None:
    """WATCHDOG=1 at half the timeout, from the event loop itself: a loop that is wedged (a blocking call, a
    busy loop) stops pinging, and systemd aborts and restarts the agent. Containers do not notice."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(timeout / 2)


class Calls:
    """Calls in progress, and when the last one arrived or ended (monotonic seconds)."""

    def __init__(self) -> None:
        self.running = 0
        self.last = time.monotonic()
        self._drained: asyncio.Event | None = None

    def touch(self) -> None:
        self.last = time.monotonic()

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        self.running += 1
        self.touch()
        try:
            yield
        finally:
            self.running -= 1
            self.touch()
            if self.running == 0 and self._drained is not None:
                self._drained.set()

    def seen(self, msg: Message) -> None:
        """Message handler: any call (a property read, an introspection) counts as use; never handles it."""
        if msg.message_type is MessageType.METHOD_CALL:
            self.touch()
        return None

    async def drained(self) -> None:
        """Return once no call is in progress."""
        if self.running:
            self._drained = asyncio.Event()
            await self._drained.wait()


# Every exported method counts itself here (bus/guard.py): one agent per process.
CALLS = Calls()


class ContainerEdges:
    """A manager listener: a container that ends or goes counts as use, so the idle time runs from then."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    def container_added(self, container: Container) -> None:
        self._calls.touch()

    def container_changed(self, container: Container) -> None:
        self._calls.touch()

    def container_removed(self, container: Container) -> None:
        self._calls.touch()

    def event(self, kind: str, container: Container, details: dict[str, Any]) -> None:
        self._calls.touch()


_RULE_KEY = re.compile(r"(\w+)='((?:[^']|'\\'')*)'")


def names_quilt(rule: str, unique_name: str) -> bool:
    """Whether a match rule asks for Quilt's messages: from its bus name (or this connection's unique name),
    or of its interfaces or objects; `quiltctl events`, `gdbus monitor --dest org.quilt.Runtime`, a program's
    PropertiesChanged subscription."""
    keys = dict(_RULE_KEY.findall(rule))
    if keys.get("eavesdrop") == "true":
        return False  # a bus monitor's rule takes everything: it asks for nothing of Quilt's
    sender = keys.get("sender", "")
    return (sender in (BUS_NAME, unique_name) or keys.get("interface", "").startswith(BUS_NAME + ".")
            or keys.get("path", "").startswith("/org/quilt/Runtime") or keys.get("path_namespace", "")
            .startswith("/org/quilt/Runtime"))


class Followers:
    """Who listens for the agent's signals, from the bus's own table of match rules (dbus-daemon's
    org.freedesktop.DBus.Debug.Stats, open to root). A bus without it (dbus-broker) cannot tell: followers do not
    keep the agent then, and lose nothing, since their rules name the bus name, which the next agent owns."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._supported = True

    async def count(self) -> int:
        if not self._supported:
            return 0
        try:
            reply = await self._bus.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus.Debug.Stats", member="GetAllMatchRules"))
            error = reply.error_name if reply.message_type is MessageType.ERROR else None
        except Exception as e:  # noqa: BLE001 - the bus is going away: the agent exits for that anyway
            error = str(e)
        if error is not None:
            self._supported = False
            log.info("the bus does not list its match rules (%s): followers of the agent's signals do not keep "
                     "it from exiting when idle", error)
            return 0
        own = self._bus.unique_name or ""
        return sum(1 for connection, rules in reply.body[0].items() if connection != own
                   and any(names_quilt(rule, own) for rule in rules))


async def wait_until_idle(seconds: float, calls: Calls, activity: Callable[[], list[str]],
                          followers: Followers) -> None:
    """Return once no call arrived for `seconds`, none is in progress, and activity() and followers name
    nothing. While something is under way the idle time starts again when it is checked next."""
    while True:
        await asyncio.sleep(max(0.0, calls.last + seconds - time.monotonic()))
        if time.monotonic() - calls.last < seconds:
            continue  # a call came meanwhile
        busy = activity()
        if calls.running:
            busy.append(f"{calls.running} calls in progress")
        if not busy:
            listening = await followers.count()
            if listening:
                busy.append(f"{listening} clients follow its signals")
        if not busy:
            return
        log.debug("idle for %g s but staying: %s", seconds, ", ".join(busy))
        calls.touch()
