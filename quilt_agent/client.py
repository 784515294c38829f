"""A small async client for quilt-agent's D-Bus API (see dbus/org.quilt.Runtime.xml).

It sends plain dbus_fast.Message calls: no introspection round-trip and no XML to ship as package data, and a
call costs one message each way. The signatures written here are the contract's; the integration test that
checks the live objects against the XML is what keeps the two in step.
"""

from __future__ import annotations

import asyncio
import os
from types import TracebackType
from typing import Any, Mapping, Sequence

from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

# The calls, errors and option tables are quilt_agent.api's, the records quilt_agent.replies'; importers of this module find them here too.
from quilt_agent import api
from quilt_agent.api import (  # noqa: F401
    CONTAINER_OPTION_SIGNATURES, EXEC_OPTION_SIGNATURES, FOLLOW_OPTION_SIGNATURES, IMPORT_OPTION_SIGNATURES,
    LOG_OPTION_SIGNATURES, NETWORK_OPTION_SIGNATURES, PROPERTIES_INTERFACE, PULL_OPTION_SIGNATURES,
    AgentNotReachable, Calls, ClientError, error_for, unwrap,
)
from quilt_agent.replies import (  # noqa: F401
    ContainerEntry, Event, ExecOutput, ImageEntry, ImageProgress, LogLine, NetworkEntry,
)
from quilt_agent.bus.names import BUS_NAME, MANAGER_INTERFACE, MANAGER_PATH

class Client(Calls):
    """One connection to the system bus (or to `bus_address`), talking to org.quilt.Runtime.

    `interactive` sets ALLOW_INTERACTIVE_AUTHORIZATION on every call, as systemctl and busctl do from a
    terminal, so polkit may ask the user for a password instead of refusing outright.
    """

    def __init__(self, bus_address: str | None = None, *, interactive: bool = False) -> None:
        self._bus_address = bus_address
        self._flags = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE
        self._bus: MessageBus | None = None

    async def connect(self) -> None:
        # Unix fds negotiated for ExecWithFds and FollowLogs (one more line in the handshake, nothing per call).
        bus = MessageBus(bus_address=self._bus_address, bus_type=BusType.SYSTEM, negotiate_unix_fd=True)
        try:
            await bus.connect()
        except Exception as e:
            # OSError for a missing or refusing socket, dbus-fast's AuthError for a refused handshake, EOFError
            # for a bus that hangs up: to the user they are all "cannot talk to the agent".
            bus.disconnect()
            detail = f"cannot connect to {self._address()}: {_describe(e)}"
            raise AgentNotReachable("org.freedesktop.DBus.Error.NoServer", detail) from e
        self._bus = bus

    def _address(self) -> str:
        # dbus-fast's own lookup is private (dbus_fast._private.address); this is the same rule, for messages.
        return (
            self._bus_address
            or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
            or "unix:path=/var/run/dbus/system_bus_socket"
        )

    def close(self) -> None:
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        bus = self._bus
        self.close()
        if bus is not None:
            # Let the reader see the socket close before the loop goes away, or asyncio.run() warns about it.
            try:
                await asyncio.wait_for(bus.wait_for_disconnect(), timeout=1.0)
            except Exception:
                pass

    async def _call_message(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        unix_fds: Sequence[int] = (),
        destination: str = BUS_NAME,
    ) -> Message:  # type: ignore[override]
        """The reply itself, for its fds: an 'h' in its body is an index into reply.unix_fds (ours to close)."""
        if self._bus is None:
            raise RuntimeError("Client.connect() has not been called")
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
            flags=self._flags,
            unix_fds=list(unix_fds),
        )
        try:
            reply = await self._bus.call(message)
        except (OSError, EOFError) as e:
            raise AgentNotReachable("org.freedesktop.DBus.Error.Disconnected", _describe(e)) from e
        if reply.message_type == MessageType.ERROR:
            name = reply.error_name or "org.freedesktop.DBus.Error.Failed"
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else name
            raise error_for(name, text)
        return reply

    def _variant(self, signature: str, value: Any) -> Variant:
        return Variant(signature, value)

    # Signals: these need the loop, so only this transport has them.

    async def watch_events(self) -> asyncio.Queue[Event]:
        """From now on, each Event signal of the agent, in order, into the returned queue."""
        if self._bus is None:
            raise RuntimeError("Client.connect() has not been called")
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def on_message(msg: Message) -> None:
            if (msg.message_type is MessageType.SIGNAL and msg.interface == MANAGER_INTERFACE
                    and msg.member == "Event" and msg.path == MANAGER_PATH):
                kind, cid, details = msg.body
                plain = unwrap(details)
                queue.put_nowait(Event(int(plain.get("time", 0)), kind, cid, plain))

        self._bus.add_message_handler(on_message)
        await self.renew_event_watch()
        return queue

    async def renew_event_watch(self) -> None:
        """After a restart of the agent, the queue of watch_events goes on getting its Event signals: for root
        the match on the agent's name holds over any owner; anyone else subscribes again, with the new agent."""
        await self._call_message("/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                                 [f"type='signal',sender='{await self._signal_sender()}',path='{MANAGER_PATH}',"
                                  f"interface='{MANAGER_INTERFACE}',member='Event'"], destination="org.freedesktop.DBus")

    async def watch_agent(self) -> AgentWatch:
        """From now on, who owns org.quilt.Runtime: a restart of the agent (a crash, an upgrade, an idle exit)
        shows as the owner going and another coming. Subscribing to the bus's own signal does not start the
        agent."""
        if self._bus is None:
            raise RuntimeError("Client.connect() has not been called")
        bus_name = "org.freedesktop.DBus"
        await self._call_message("/org/freedesktop/DBus", bus_name, "AddMatch", "s",
                                 [f"type='signal',sender='{bus_name}',interface='{bus_name}',"
                                  f"member='NameOwnerChanged',arg0='{BUS_NAME}'"], destination=bus_name)
        try:
            (owner,) = (await self._call_message("/org/freedesktop/DBus", bus_name, "GetNameOwner", "s",
                                                 [BUS_NAME], destination=bus_name)).body
        except ClientError:
            owner = ""  # NameHasNoOwner: not running now (the next call to it starts it)
        watch = AgentWatch(str(owner))

        def on_message(msg: Message) -> None:
            if (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                    and msg.interface == bus_name and msg.body and msg.body[0] == BUS_NAME):
                watch._update(str(msg.body[2]))

        self._bus.add_message_handler(on_message)
        return watch

    async def watch_image_progress(self, job: str) -> asyncio.Queue[ImageProgress]:
        """From now on, each ImageProgress signal of job (the 'job' option of an import or pull), in order."""
        if self._bus is None:
            raise RuntimeError("Client.connect() has not been called")
        queue: asyncio.Queue[ImageProgress] = asyncio.Queue()

        def on_message(msg: Message) -> None:
            if (msg.message_type is MessageType.SIGNAL and msg.interface == MANAGER_INTERFACE
                    and msg.member == "ImageProgress" and msg.path == MANAGER_PATH and msg.body[0] == job):
                _, phase, done, total = msg.body
                queue.put_nowait(ImageProgress(phase, int(done), int(total)))

        sender = await self._signal_sender()
        self._bus.add_message_handler(on_message)
        await self._call_message("/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s",
                                 [f"type='signal',sender='{sender}',path='{MANAGER_PATH}',"
                                  f"interface='{MANAGER_INTERFACE}',member='ImageProgress',arg0='{job}'"],
                                 destination="org.freedesktop.DBus")
        return queue


class AgentWatch:
    """Who owns org.quilt.Runtime, kept up to date from the bus's NameOwnerChanged: the agent's unique name, ""
    while no agent runs. Each change of owner (an agent gone, a new one there) counts one generation."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.generation = 0
        self._changed = asyncio.Event()

    def _update(self, owner: str) -> None:
        if owner != self.owner:
            self.owner = owner
            self.generation += 1
            self._changed.set()
            self._changed = asyncio.Event()

    async def changed(self, since_generation: int) -> None:
        """Return once the owner has changed after generation since_generation."""
        while self.generation == since_generation:
            await self._changed.wait()


def wrap_options(options: Mapping[str, Any] | None, signatures: Mapping[str, str]) -> dict[str, Variant]:
    """api.wrap_options with dbus-fast's Variant."""
    return api.wrap_options(options, signatures, Variant)


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror  # str() of an OSError starts with "[Errno 2]", which says nothing to a user
    return str(error) or type(error).__name__
