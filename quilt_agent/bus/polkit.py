"""Authorization: root passes; everyone else is asked of polkit, asynchronously, as machined does."""
from collections import OrderedDict

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from quilt_agent.bus import caller
from quilt_agent.errors import AccessDenied

READ = "org.quilt.runtime.read"
MANAGE = "org.quilt.runtime.manage"
EXEC = "org.quilt.runtime.exec"

POLKIT = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 1


class Authority:
    UID_CACHE = 4096

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        # A bus never gives a unique name to a second connection, so a sender's uid cannot change:
        # remembered, it saves a round trip to the bus on every call of a connected client.
        self._uids: OrderedDict[str, int] = OrderedDict()

    async def _uid(self, sender: str) -> int:
        if sender in self._uids:
            return self._uids[sender]
        uid = await self._ask_uid(sender)
        self._uids[sender] = uid
        if len(self._uids) > self.UID_CACHE:
            self._uids.popitem(last=False)
        return uid

    async def _ask_uid(self, sender: str) -> int:
        reply = await self._bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                             interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
                                             signature="s", body=[sender]))
        if reply.message_type is MessageType.ERROR:
            raise AccessDenied(f"Cannot tell who {sender} is: {reply.body[0] if reply.body else reply.error_name}")
        return int(reply.body[0])

    async def check(self, action: str, verb: str, container: str = "") -> None:
        """Raise AccessDenied unless the current caller may do `verb` (an action of the policy)."""
        who = caller.current()
        if await self._uid(who.sender) == 0:
            return
        details = {"verb": verb}
        if container:
            details["container"] = container
        subject = ("system-bus-name", {"name": Variant("s", who.sender)})
        reply = await self._bus.call(Message(
            destination=POLKIT, path=POLKIT_PATH, interface=POLKIT_INTERFACE, member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[subject, action, details, ALLOW_USER_INTERACTION if who.interactive else 0, ""]))
        if reply.message_type is MessageType.ERROR:
            raise AccessDenied(f"Authorization check for {action} failed: {reply.body[0] if reply.body else ''}")
        authorized, _challenge, _details = reply.body[0]
        if not authorized:
            target = f" on container '{container}'" if container else ""
            raise AccessDenied(f"Not authorized to {verb}{target} (polkit action {action})")
