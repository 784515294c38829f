"""Authority's questions to polkit, asked of a fake bus that answers like polkit and counts what waits."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from dbus_fast import Message, MessageType, Variant

from quilt_agent.bus import caller
from quilt_agent.bus.access import Target
from quilt_agent.bus.guard import visible
from quilt_agent.bus.polkit import Authority

USER = 1000


class PolkitBus:
    """Answers GetConnectionCredentials with an unprivileged user, CheckAuthorization with yes after a moment,
    and records how many calls waited for their reply at once (dbus-daemon refuses a connection more than 128)."""

    def __init__(self) -> None:
        self.waiting = 0
        self.most = 0
        self.questions = 0

    async def call(self, msg: Message) -> SimpleNamespace:
        if msg.member == "GetConnectionCredentials":
            return _reply({"UnixUserID": Variant("u", USER), "ProcessID": Variant("u", 1)})
        self.questions += 1
        self.waiting += 1
        self.most = max(self.most, self.waiting)
        try:
            await asyncio.sleep(0.001)
            return _reply([True, False, {}])
        finally:
            self.waiting -= 1


def _reply(value: object) -> SimpleNamespace:
    return SimpleNamespace(message_type=MessageType.METHOD_RETURN, body=[value])


def _as_caller() -> None:
    caller.CALLER.set(caller.Caller(":1.42", False))


def test_a_long_list_asks_polkit_a_bounded_number_of_questions_at_once() -> None:
    bus = PolkitBus()
    authority = Authority(bus)  # type: ignore[arg-type]
    targets = [Target("container", f"c{i}", f"{i:064x}", owner_uid=0) for i in range(500)]

    async def listing() -> list[Target]:
        _as_caller()
        return await visible(authority, targets, lambda t: t)

    shown = asyncio.run(listing())
    assert shown == targets
    assert bus.questions == 500  # one each: nothing was skipped
    assert bus.most > 1, "the questions were asked one by one"
    assert bus.most <= Authority.MAX_QUESTIONS, bus.most
    assert Authority.MAX_QUESTIONS < 128  # the system bus's max_replies_per_connection


def test_the_owner_of_an_object_is_not_asked_about() -> None:
    bus = PolkitBus()
    authority = Authority(bus)  # type: ignore[arg-type]

    async def read() -> bool:
        _as_caller()
        return await authority.may_read(Target("container", "mine", "f" * 64, owner_uid=USER))

    assert asyncio.run(read()) and bus.questions == 0


