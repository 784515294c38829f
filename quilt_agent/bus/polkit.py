"""Authorization: root passes; everyone else is asked of polkit, asynchronously, as machined does."""
from collections import OrderedDict
from typing import NamedTuple

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from quilt_agent.bus import caller
from quilt_agent.errors import AccessDenied

READ = "org.quilt.runtime.read"
MANAGE = "org.quilt.runtime.manage"
EXEC = "org.quilt.runtime.exec"
# Host paths that the agent opens as root for a caller: bind mounts, image paths, copies to and from paths.
HOST = "org.quilt.runtime.host"

POLKIT = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 1
KINDS = ("container", "image", "network", "volume")


class Subject(NamedTuple):
    """What a call is about: its kind (one of KINDS) and the name the caller gave or the object has."""
    kind: str
    name: str


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

    async def check(self, action: str, verb: str, subject: Subject | None = None) -> None:
        """Raise AccessDenied unless the current caller may do `verb` (an action of the policy) on `subject`.
        polkit's details: verb, and the subject's name under its kind ("container": "web", "image": "debian:12")."""
        who = caller.current()
        if await self._uid(who.sender) == 0:
            return
        details = {"verb": verb}
        if subject and subject.name:
            details[subject.kind] = subject.name
        who_asks = ("system-bus-name", {"name": Variant("s", who.sender)})
        reply = await self._bus.call(Message(
            destination=POLKIT, path=POLKIT_PATH, interface=POLKIT_INTERFACE, member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[who_asks, action, details, ALLOW_USER_INTERACTION if who.interactive else 0, ""]))
        if reply.message_type is MessageType.ERROR:
            raise AccessDenied(f"Authorization check for {action} failed: {reply.body[0] if reply.body else ''}")
        authorized, _challenge, _details = reply.body[0]
        if not authorized:
            target = f" {subject.kind} '{subject.name}'" if subject and subject.name else ""
            raise AccessDenied(f"Not authorized to {verb}{target} (polkit action {action})")
