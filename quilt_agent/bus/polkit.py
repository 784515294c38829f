"""Authorization: root passes; everyone else is asked of polkit, asynchronously, as machined does. Every decision
on an action that changes something (all but read) is written to the journal as an audit record:
`journalctl QUILT_RESULT=denied` answers who tried what."""
import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from systemd import journal

from quilt_agent.bus import caller
from quilt_agent.bus.access import Target
from quilt_agent.errors import AccessDenied

READ = "org.quilt.runtime.read"
MANAGE = "org.quilt.runtime.manage"
EXEC = "org.quilt.runtime.exec"
# Host paths that the agent opens as root for a caller: an image given as a path, CopyTo/CopyFrom's host paths,
# a pull's auth_file.
HOST = "org.quilt.runtime.host"
# What hands the host to a container: host paths bound in, the host's namespaces kept, no seccomp filter.
PRIVILEGED = "org.quilt.runtime.manage-privileged"

POLKIT = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 1
KINDS = ("container", "image", "network", "volume")
# journalctl MESSAGE_ID=... finds every authorization decision.
AUDIT_MESSAGE_ID = "6f2b7b5d2c0a4e43a3a1c1d6f1f0a9e2"
# How long a read decision (polkit's answer to may this caller see this object) is reused: a GetAll's
# properties and a list's objects are decided once, not per property.
READ_DECISION_TTL = 2.0

log = logging.getLogger("quilt.bus")


@dataclass(frozen=True)
class Credentials:
    uid: int
    pid: int


class Authority:
    CACHE = 4096
    # The system bus lets a connection wait for at most 128 replies at once (dbus-daemon's
    # max_replies_per_connection); a list of a few hundred objects, each asked of polkit together, would have its
    # calls beyond that refused, and the list with them. The agent's other calls (systemd, machined) need room too.
    MAX_QUESTIONS = 32

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._questions = asyncio.Semaphore(self.MAX_QUESTIONS)
        # A bus never gives a unique name to a second connection, so a sender's credentials cannot change:
        # remembered, they save a round trip to the bus on every call of a connected client.
        self._credentials: OrderedDict[str, Credentials] = OrderedDict()
        self._reads: OrderedDict[tuple[str, str, str], tuple[float, asyncio.Future[bool]]] = OrderedDict()

    async def is_root(self) -> bool:
        return (await self.credentials()).uid == 0

    async def credentials(self) -> Credentials:
        """The current caller's uid and pid."""
        sender = caller.current().sender
        if sender in self._credentials:
            return self._credentials[sender]
        reply = await self._bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                             interface="org.freedesktop.DBus", member="GetConnectionCredentials",
                                             signature="s", body=[sender]))
        if reply.message_type is MessageType.ERROR:
            raise AccessDenied(f"Cannot tell who {sender} is: {reply.body[0] if reply.body else reply.error_name}")
        found = reply.body[0]
        creds = Credentials(int(found["UnixUserID"].value), int(found["ProcessID"].value) if "ProcessID" in found
                            else 0)
        self._credentials[sender] = creds
        if len(self._credentials) > self.CACHE:
            self._credentials.popitem(last=False)
        return creds

    async def check(self, action: str, verb: str, target: Target | None = None) -> None:
        """Raise AccessDenied unless the current caller may do `verb` (an action of the policy) on `target`.
        A read of an object its caller owns needs no polkit."""
        if not await self.allows(action, verb, target, caller.current().interactive):
            raise AccessDenied(f"Not authorized to {verb}{f' {target}' if target else ''} (polkit action {action})")

    async def allows(self, action: str, verb: str, target: Target | None = None, interactive: bool = False) -> bool:
        """check()'s decision, as a boolean; by default polkit asks no password (a prune's objects, one by one)."""
        creds = await self.credentials()
        allowed = await self._decide(creds, action, verb, target, interactive)
        if action != READ:
            _audit(creds, action, verb, target, allowed)
        return allowed

    async def may_read(self, target: Target) -> bool:
        """Whether the current caller may see `target` at all (lists, lookups, properties): root and its owner
        may; anyone else if polkit grants the read action without asking (a list asks no password)."""
        return await self.may_read_as(caller.current().sender, await self.credentials(), target)

    async def may_read_as(self, sender: str, creds: Credentials, target: Target) -> bool:
        """may_read for a given bus name: a signal's subscriber (bus/relay.py)."""
        if creds.uid == 0 or creds.uid == target.owner_uid:
            return True
        key = (sender, target.kind, target.id or target.name)
        now = time.monotonic()
        cached = self._reads.get(key)
        if cached is None or now - cached[0] > READ_DECISION_TTL:
            # One question for concurrent readers (a GetAll's properties ask together).
            decision = asyncio.ensure_future(self._decide(creds, READ, "see", target, False, sender))
            self._reads[key] = cached = (now, decision)
            if len(self._reads) > self.CACHE:
                self._reads.popitem(last=False)
        return await asyncio.shield(cached[1])

    async def _decide(self, creds: Credentials, action: str, verb: str, target: Target | None,
                      interactive: bool, sender: str = "") -> bool:
        if creds.uid == 0:
            return True
        if action == READ and target is not None and target.owner_uid == creds.uid:
            return True
        details = {"verb": verb}
        if target is not None:
            details.update(target.details(creds.uid))
        who_asks = ("system-bus-name", {"name": Variant("s", sender or caller.current().sender)})
        async with self._questions:
            reply = await self._bus.call(Message(
                destination=POLKIT, path=POLKIT_PATH, interface=POLKIT_INTERFACE, member="CheckAuthorization",
                signature="(sa{sv})sa{ss}us",
                body=[who_asks, action, details, ALLOW_USER_INTERACTION if interactive else 0, ""]))
        if reply.message_type is MessageType.ERROR:
            raise AccessDenied(f"Authorization check for {action} failed: {reply.body[0] if reply.body else ''}")
        authorized, _challenge, _details = reply.body[0]
        return bool(authorized)


def _audit(creds: Credentials, action: str, verb: str, target: Target | None, allowed: bool) -> None:
    result = "allowed" if allowed else "denied"
    what = f" {target}" if target else ""
    journal.send(f"uid {creds.uid} (pid {creds.pid}): {verb}{what}: {result} ({action})",
                 MESSAGE_ID=AUDIT_MESSAGE_ID, PRIORITY=str(journal.LOG_INFO if allowed else journal.LOG_NOTICE),
                 SYSLOG_IDENTIFIER="quilt-agent", QUILT_ACTION=action, QUILT_VERB=verb,
                 QUILT_OBJECT_KIND=target.kind if target else "", QUILT_OBJECT_NAME=target.name if target else "",
                 QUILT_OBJECT_ID=target.id if target else "", QUILT_CALLER_UID=str(creds.uid),
                 QUILT_CALLER_PID=str(creds.pid), QUILT_RESULT=result)
