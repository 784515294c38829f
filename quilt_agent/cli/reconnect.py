"""Riding out a restart of quilt-agent (a crash, an upgrade, an idle exit) in the verbs that last: logs -f, events,
wait, stats, and attached run and exec waiting for the exit code.

The agent going away shows in two ways: a call under way fails (the bus answers NoReply for a recipient that
disconnected, ServiceUnknown or NameHasNoOwner for a name with no owner; a stopping agent answers its pending
calls itself), and the bus's NameOwnerChanged for org.quilt.Runtime (Client.watch_agent). Either way the verb
then calls the agent again: the bus starts it for that call (bus activation) if systemd has not already
(Restart=on-failure), and the call is answered once it has recovered its containers and owns its name. The verb
resumes from where it was (each says how); it gives up after QUILTCTL_RECONNECT_TIMEOUT seconds (default 60),
with one line and status 125.

It works on either transport: on the asyncio loop (with_async_client) it waits with asyncio, driven on the
blocking one (with_client: a foreground run's Wait) it sleeps.
"""
from __future__ import annotations

import os
import time

from quilt_agent.api import Calls, ClientError
from quilt_agent.bus.names import NO_SUCH_CONTAINER, TIMED_OUT
from quilt_agent.cli.context import in_event_loop

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing only for the checker: `exec` runs this module on cli/quick.py's path
    from typing import Awaitable, Callable, TypeVar

    T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0
TIMEOUT_ENV = "QUILTCTL_RECONNECT_TIMEOUT"  # seconds to wait for the agent to come back; 0: do not wait
RETRY_INTERVAL = 0.2  # between calls while the agent is away (each may itself wait for its start)

NO_REPLY = "org.freedesktop.DBus.Error.NoReply"
# What the bus answers a call to an agent that went away, or that is not back yet.
GONE_ERRORS = frozenset({
    NO_REPLY,  # "Message recipient disconnected from message bus without replying"
    "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.TimedOut",  # the bus's activation timeout: a start that took too long
})
# The bus's activation failed (org.freedesktop.DBus.Error.Spawn.*), or systemd's start of the unit did
# (org.freedesktop.systemd1.*: a failed start, the start limit): Restart= or the next call may still bring it.
GONE_PREFIXES = ("org.freedesktop.DBus.Error.Spawn.", "org.freedesktop.systemd1.")
# A stopping agent ends the calls it was answering (bus/guard.py, STOPPING_ERROR) with this text.
STOPPING_TEXT = "The agent stopped before the call finished"


class AgentGone(ClientError):
    """The agent went away and did not come back in time, or took with it what the verb waited for: one line
    (the message, as the agent's own declared errors are printed), status 125."""

    def __init__(self, message: str, name: str = TIMED_OUT) -> None:
        super().__init__(name, message)


class TimeoutSetting(ValueError):
    """QUILTCTL_RECONNECT_TIMEOUT is not a number of seconds."""


def reconnect_timeout() -> float:
    """Seconds to wait for a restarted agent (QUILTCTL_RECONNECT_TIMEOUT, default 60)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e9:
        raise TimeoutSetting(f"{TIMEOUT_ENV}={text!r}: give the seconds to wait for quilt-agent to come back "
                             f"after a restart (a number, 0 not to wait; default {DEFAULT_TIMEOUT:g})")
    return seconds


def agent_gone(error: BaseException) -> bool:
    """Whether a failed call failed because the agent went away (or is not back yet), not for its own reason."""
    if not isinstance(error, ClientError):
        return False
    if error.name in GONE_ERRORS or error.name.startswith(GONE_PREFIXES):
        return True
    return error.message.startswith(STOPPING_TEXT)


class Session:
    """A long verb's hold on the agent across its restarts: call() repeats a call that a restart cut short,
    come_back() waits for the agent. restarts counts the restarts ridden out.

    Only an agent that was there can come back: until a call has been answered (reached), an unreachable agent
    fails the verb at once, as any one-shot verb (no agent installed, no bus), instead of after the timeout."""

    def __init__(self, client: Calls, timeout: float | None = None, reached: bool = False) -> None:
        self._client = client
        self.timeout = reconnect_timeout() if timeout is None else timeout
        self.restarts = 0
        self.reached = reached

    async def come_back(self) -> None:
        """The agent went away: return once it answers again (our call starts it if nothing else has), or raise
        AgentNotReachable after the timeout."""
        self.restarts += 1
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                if await _within(self._client.ping_agent(), remaining):
                    return
                break
            except ClientError as e:
                if not agent_gone(e):
                    raise
            await _pause(min(RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
        raise AgentGone(f"quilt-agent did not come back within {self.timeout:g} s after it went away "
                        f"(journalctl -u quilt-agent may say why; {TIMEOUT_ENV} sets how long to wait)")

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """make(), made again after each restart of the agent that cut it short."""
        while True:
            try:
                result = await make()
                self.reached = True
                return result
            except ClientError as e:
                if not agent_gone(e) or not self.reached:
                    raise
            await self.come_back()


async def exit_code_from_history(client: Calls, container_id: str, since_usec: int) -> int | None:
    """The exit code the agent recorded for a container that is gone since (remove_on_exit, or a removal
    meanwhile): its last 'exited' event at or after since_usec; None if there is none."""
    code = None
    for event in await client.list_events(since_usec, 0):
        if event.container_id == container_id and event.kind == "exited":
            code = int(event.details.get("exit_code", -1))
    return code


async def name_from_history(client: Calls, container_id: str, since_usec: int) -> str:
    """The name of a container that is gone since, from its events at or after since_usec; "" if none has it."""
    for event in await client.list_events(since_usec, 0):
        if event.container_id == container_id and event.details.get("name"):
            return str(event.details["name"])
    return ""


async def wait_for_exit(session: Session, client: Calls, path: str, container_id: str, since_usec: int) -> int:
    """The container's exit code, through Wait, asked again after each restart of the agent. A container gone
    meanwhile (the agent removed it: remove_on_exit, and it exited while the agent was away) still has its exit
    code in the events history."""
    gone = (NO_SUCH_CONTAINER, "org.freedesktop.DBus.Error.UnknownObject",
            "org.freedesktop.DBus.Error.UnknownMethod", "org.freedesktop.DBus.Error.UnknownInterface")
    try:
        return await session.call(lambda: client.wait(path))
    except ClientError as e:
        if e.name not in gone:
            raise
        code = await session.call(lambda: exit_code_from_history(client, container_id, since_usec))
        if code is None:
            raise
        return code


def checked_timeout() -> float:
    """reconnect_timeout(), or the command ends with one line and status 125 for a bad setting."""
    from quilt_agent.cli.context import fail

    try:
        return reconnect_timeout()
    except TimeoutSetting as e:
        fail(str(e))


async def _pause(seconds: float) -> None:
    if in_event_loop():
        import asyncio

        await asyncio.sleep(seconds)
    else:
        time.sleep(seconds)  # driven on the blocking transport: nothing else runs meanwhile


async def _within(call: Awaitable[None], seconds: float) -> bool:
    """Await call, for at most `seconds` on the loop (the blocking transport's call ends at the bus's own
    activation timeout); False if that passed first."""
    if not in_event_loop():
        await call
        return True
    import asyncio

    try:
        await asyncio.wait_for(call, seconds)
    except asyncio.TimeoutError:
        return False
    return True
