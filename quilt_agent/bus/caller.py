"""Who is calling: dbus-fast does not tell a method its caller, so a message handler does.

The handler runs for every incoming message before dispatch; dbus-fast starts
async methods as tasks in that same call stack, and a task copies the context
when it is created, so each method sees its own caller in CALLER.
tests/integration/bus/test_caller.py keeps this true across dbus-fast upgrades.
"""
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from dbus_fast import Message, MessageFlag, MessageType


@dataclass(frozen=True)
class Caller:
    sender: str
    interactive: bool  # the caller allows polkit to ask a password (ALLOW_INTERACTIVE_AUTHORIZATION)
    # The fds that came with the call (UNIX_FD): the method's to close. dbus-fast hands an 'h' argument over
    # as the fd itself only when the message has fds; otherwise it is the bare index from the body.
    unix_fds: tuple[int, ...] = ()


CALLER: ContextVar[Caller | None] = ContextVar("quilt_caller", default=None)


def remember(msg: Message) -> None:
    """Message handler: never handles the message, only records who sent it."""
    if msg.message_type is MessageType.METHOD_CALL and msg.sender:
        CALLER.set(Caller(msg.sender, bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION),
                          tuple(msg.unix_fds or ())))
    return None


def current() -> Caller:
    caller = CALLER.get()
    if caller is None:
        raise RuntimeError("no caller known: is caller.remember installed as a message handler?")
    return caller


@contextmanager
def agent() -> Iterator[None]:
    """What runs inside is the agent's own doing, for no caller: the property values of the InterfacesAdded
    signal dbus-fast sends when an object is exported (signals reach only whom the bus policy lets them)."""
    token = CALLER.set(None)
    try:
        yield
    finally:
        CALLER.reset(token)
