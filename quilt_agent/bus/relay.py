"""Signals for callers other than root.

The bus policy (dbus/org.quilt.Runtime.conf) delivers the agent's broadcasts to root alone: a broadcast reaches
every subscriber at once and cannot leave out what one of them may not see. A caller that calls
Manager.Subscribe gets instead, from a second connection of the agent's that owns no name (so that the policy's
deny, which is about the owner of org.quilt.Runtime, does not match it), a copy of each signal about an object
it may see, addressed to it alone: filtered at the source, per subscriber, in the order they were sent.

dbus-fast sends every signal through MessageBus.send (its own InterfacesAdded and PropertiesChanged too), so
RelayingBus, the agent's main connection, hands each broadcast to the Relay as it goes out.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface

from quilt_agent.bus.access import Target
from quilt_agent.bus.polkit import Authority, Credentials
from quilt_agent.errors import ResourceExhausted

log = logging.getLogger("quilt.bus")

MAX_SUBSCRIBERS = 256
# A subscriber that does not read its signals is dropped rather than kept in memory without bound.
MAX_BACKLOG = 10000


@dataclass
class _Subscriber:
    sender: str
    credentials: Credentials
    queue: asyncio.Queue[tuple[Message, Target]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class RelayingBus(MessageBus):
    """The agent's main connection: each broadcast it sends is also handed to `relay` (set once it is made)."""

    relay: Relay | None = None

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        # dbus-fast reads every property through its getter for InterfacesAdded, each async one (a container's
        # 68, bus/guard.py's readable) in a task of its own: about 1 ms of the loop per container made. An object
        # that has its values at hand (added_properties(): what GetAll answers) sends them in one go.
        added = getattr(interface, "added_properties", None)
        try:
            values = None if added is None or self._disconnected else added()
        except Exception:  # noqa: BLE001 - logged; dbus-fast's own way then sends what its getters give
            log.exception("the properties of %s for its InterfacesAdded", path)
            values = None
        if values is None:
            super()._emit_interface_added(path, interface)
            return
        # Sent within export: before the ContainerNew that follows it, as the object is there before it is told.
        self.send(Message.new_signal(path=path, interface="org.freedesktop.DBus.ObjectManager",
                                     member="InterfacesAdded", signature="oa{sa{sv}}",
                                     body=[path, {interface.name: values}]))

    def send(self, msg: Message) -> asyncio.Future:
        sent = super().send(msg)
        if self.relay is not None and msg.message_type is MessageType.SIGNAL and not msg.destination:
            self.relay.forward(msg)
        return sent


class Relay:
    def __init__(self, authority: Authority) -> None:
        self._authority = authority
        self._describe: Callable[[Message], Target | None] = lambda msg: None
        self._addressee: Callable[[Message], str | None] = lambda msg: None
        self._bus: MessageBus | None = None
        self._subscribers: dict[str, _Subscriber] = {}

    async def connect(self) -> None:
        self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        self._bus.add_message_handler(self._gone)

    def describe_with(self, describe: Callable[[Message], Target | None],
                      addressee: Callable[[Message], str | None] = lambda msg: None) -> None:
        """describe: the object a signal is about, or None for a signal no subscriber gets (the bus layer's
        ManagerInterface knows the objects by path). addressee: the one caller a signal is for, subscribed or
        not, or None (an image job's progress is for the caller who started it)."""
        self._describe = describe
        self._addressee = addressee

    @property
    def name(self) -> str:
        """The unique name the copies come from: what a subscriber matches on (sender='...')."""
        assert self._bus is not None and self._bus.unique_name is not None
        return self._bus.unique_name

    async def subscribe(self, sender: str, credentials: Credentials) -> None:
        """Root is not registered: the broadcasts reach it."""
        if credentials.uid == 0 or sender in self._subscribers:
            return
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise ResourceExhausted(f"{MAX_SUBSCRIBERS} callers are subscribed already: try again later")
        assert self._bus is not None
        # Told when the subscriber leaves the bus, to forget it.
        await self._bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="AddMatch", signature="s",
            body=[f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{sender}'"]))
        subscriber = _Subscriber(sender, credentials)
        subscriber.task = asyncio.create_task(self._deliver(subscriber), name=f"relay to {sender}")
        self._subscribers[sender] = subscriber

    def unsubscribe(self, sender: str) -> None:
        subscriber = self._subscribers.pop(sender, None)
        if subscriber is not None and subscriber.task is not None:
            subscriber.task.cancel()

    def forward(self, msg: Message) -> None:
        addressee = self._addressee(msg)
        if addressee is not None:
            self._send(addressee, msg)
            return
        if not self._subscribers:
            return
        target = self._describe(msg)  # now: the object may be gone by the time the copy is sent
        if target is None:
            return
        for subscriber in list(self._subscribers.values()):
            if subscriber.queue.qsize() >= MAX_BACKLOG:
                log.warning("dropping the signal subscription of %s: %d signals unread", subscriber.sender,
                            MAX_BACKLOG)
                self.unsubscribe(subscriber.sender)
                continue
            subscriber.queue.put_nowait((msg, target))

    async def _deliver(self, subscriber: _Subscriber) -> None:
        while True:
            msg, target = await subscriber.queue.get()
            try:
                if not await self._authority.may_read_as(subscriber.sender, subscriber.credentials, target):
                    continue
            except Exception as err:  # noqa: BLE001 - polkit unreachable: the copy is not sent, the relay goes on
                log.warning("not relaying %s.%s to %s: %s", msg.interface, msg.member, subscriber.sender, err)
                continue
            self._send(subscriber.sender, msg)

    def _send(self, destination: str, msg: Message) -> None:
        assert self._bus is not None
        self._bus.send(Message(destination=destination, path=msg.path, interface=msg.interface, member=msg.member,
                               message_type=MessageType.SIGNAL, signature=msg.signature, body=msg.body))

    def _gone(self, msg: Message) -> None:
        if (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.sender == "org.freedesktop.DBus" and len(msg.body) == 3 and not msg.body[2]):
            self.unsubscribe(msg.body[0])

    def close(self) -> None:
        for sender in list(self._subscribers):
            self.unsubscribe(sender)
        if self._bus is not None:
            self._bus.disconnect()
