"""What systemd refuses, and a job it never finishes, reach the agent's callers named: SystemdFailed with the call,
the unit and systemd's own words; TimedOut naming the unit and the job."""
from __future__ import annotations

import pytest
from dbus_fast import Message

from quilt_agent import scopes
from quilt_agent.errors import SystemdFailed, TimedOut
from quilt_agent.scopes import ScopeLimits, Scopes


class QuietSystemd:
    """A system bus whose systemd answers each call (a job for Start/StopUnit, an error where told) and never
    says that a job is done."""

    def __init__(self, refuse: dict[str, tuple[str, str]] | None = None) -> None:
        self.refuse = refuse or {}
        self.members: list[str] = []

    async def call(self, msg: Message) -> Message:
        self.members.append(msg.member)
        msg.serial = len(self.members)  # a real bus numbers each call; a reply names the one it answers
        if msg.member in self.refuse:
            return Message.new_error(msg, *self.refuse[msg.member])
        if msg.member in ("StartTransientUnit", "StopUnit"):
            return Message.new_method_return(msg, "o", ["/org/freedesktop/systemd1/job/7"])
        return Message.new_method_return(msg)


async def test_a_job_systemd_never_finishes_is_timed_out_naming_the_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scopes, "JOB_TIMEOUT", 0.01)
    with pytest.raises(TimedOut, match=r"systemd did not finish stopping quilt-web\.scope .*job/7"):
        await Scopes(QuietSystemd()).stop("quilt-web.scope")  # type: ignore[arg-type]
    with pytest.raises(TimedOut, match=r"systemd did not finish starting quilt-web\.scope"):
        await Scopes(QuietSystemd()).start("quilt-web.scope", [1], "web", ScopeLimits())  # type: ignore[arg-type]


async def test_a_refusal_from_systemd_is_systemd_failed_with_its_name_and_words() -> None:
    systemd = QuietSystemd({"StopUnit": ("org.freedesktop.DBus.Error.AccessDenied", "Access denied by policy")})
    with pytest.raises(SystemdFailed) as refused:
        await Scopes(systemd).stop("quilt-web.scope")  # type: ignore[arg-type]
    text = str(refused.value)
    assert "StopUnit of quilt-web.scope" in text and "org.freedesktop.DBus.Error.AccessDenied" in text, text
    assert "Access denied by policy" in text and "systemctl status quilt-web.scope" in text, text


async def test_an_unknown_unit_is_no_error_on_stop() -> None:
    systemd = QuietSystemd({"StopUnit": ("org.freedesktop.systemd1.NoSuchUnit", "Unit quilt-web.scope not loaded."),
                            "ResetFailedUnit": ("org.freedesktop.systemd1.NoSuchUnit", "not loaded")})
    await Scopes(systemd).stop("quilt-web.scope")  # type: ignore[arg-type]
    assert systemd.members == ["StopUnit"]  # a unit systemd does not know cannot be failed: no reset asked
