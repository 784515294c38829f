"""Who holds the removal of a remove_on_exit container (Container.HoldRemoval): a caller on the bus, for as
long as it stays there. The manager keeps the holds (Manager.hold_removal); this tells it when a holder has left
the bus (NameOwnerChanged of its unique name to ""), killed or not, so that nothing held outlives its holder.
"""
from __future__ import annotations

import asyncio
import logging

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from quilt_agent.manager import Manager

log = logging.getLogger("quilt.bus")

_BUS = "org.freedesktop.DBus"


class HolderWatch:
    """The holders' departures, watched on one bus connection (the agent's)."""

    def __init__(self, bus: MessageBus, manager: Manager) -> None:
        self._bus = bus
        self._manager = manager
        self._watched: set[str] = set()
        bus.add_message_handler(self._on_message)

    async def watch(self, holder: str) -> None:
        """Release `holder`'s holds once it leaves the bus; at once if it has already gone."""
        if holder in self._watched:
            return
        self._watched.add(holder)
        # Both sent at once: the bus answers in order, so the match is in place before NameHasOwner is answered,
        # and a holder gone before that (no signal will tell it) is found by the answer.
        _, reply = await asyncio.gather(
            self._bus_call("AddMatch", f"type='signal',sender='{_BUS}',interface='{_BUS}',"
                                       f"member='NameOwnerChanged',arg0='{holder}'"),
            self._bus_call("NameHasOwner", holder))
        if reply is None or not reply.body[0]:
            self._gone(holder)

    def _on_message(self, msg: Message) -> None:
        if (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged" and msg.sender == _BUS
                and len(msg.body) == 3 and msg.body[0] in self._watched and not msg.body[2]):
            self._gone(msg.body[0])

    def _gone(self, holder: str) -> None:
        self._watched.discard(holder)
        self._manager.release_holder(holder)
        task = asyncio.ensure_future(self._bus_call(
            "RemoveMatch", f"type='signal',sender='{_BUS}',interface='{_BUS}',member='NameOwnerChanged',"
                           f"arg0='{holder}'"))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    async def _bus_call(self, member: str, arg: str) -> Message | None:
        try:
            reply = await self._bus.call(Message(destination=_BUS, path="/org/freedesktop/DBus", interface=_BUS,
                                                 member=member, signature="s", body=[arg]))
        except Exception as err:  # noqa: BLE001 - the bus is going away with the agent: holds go with it
            log.warning("%s for a holder of a removal failed: %s", member, err)
            return None
        if reply is not None and reply.message_type is MessageType.ERROR:
            log.warning("%s for a holder of a removal failed: %s", member, reply.body)
            return None
        return reply


_PENDING: set[asyncio.Future[Message | None]] = set()  # strong references until each call is done


_WATCHES: dict[int, HolderWatch] = {}  # by id() of the bus: one handler and one match per holder on each


def holder_watch(bus: MessageBus, manager: Manager) -> HolderWatch:
    """The one HolderWatch of this bus connection (made at the first hold)."""
    watch = _WATCHES.get(id(bus))
    if watch is None or watch._bus is not bus:
        watch = _WATCHES[id(bus)] = HolderWatch(bus, manager)
    return watch
