"""cli/reconnect.py and the verbs that use it, against fakes: which failures mean the agent went away, how long
quiltctl waits for it, and that `events` prints every event once across a restart."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from click.testing import CliRunner

from quilt_agent.api import ClientError
from quilt_agent.replies import Event
from quilt_agent.cli import reconnect
from quilt_agent.cli.context import CliState
from quilt_agent.cli.main import cli
from quilt_agent.client import AgentWatch, Client

NO_REPLY = "org.freedesktop.DBus.Error.NoReply"


@pytest.mark.parametrize("name, text, gone", [
    (NO_REPLY, "Message recipient disconnected from message bus without replying", True),
    ("org.freedesktop.DBus.Error.ServiceUnknown", "not activatable", True),
    ("org.freedesktop.DBus.Error.NameHasNoOwner", "no owner", True),
    ("org.freedesktop.systemd1.BadUnitSetting", "masked", True),
    ("org.freedesktop.DBus.Error.Spawn.ChildExited", "exited", True),
    ("org.quilt.Runtime.Error.Failed", "The agent stopped before the call finished (systemd stopped or restarted "
                                       "it): call again", True),
    ("org.quilt.Runtime.Error.Failed", "something else failed", False),
    ("org.quilt.Runtime.Error.NoSuchContainer", "No container 'x'", False),
    ("org.freedesktop.DBus.Error.AccessDenied", "denied", False),
])
def test_only_the_agent_going_away_counts_as_gone(name: str, text: str, gone: bool) -> None:
    assert reconnect.agent_gone(ClientError(name, text)) is gone


def test_the_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(reconnect.TIMEOUT_ENV, raising=False)
    assert reconnect.reconnect_timeout() == 60.0
    monkeypatch.setenv(reconnect.TIMEOUT_ENV, "2.5")
    assert reconnect.reconnect_timeout() == 2.5
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(reconnect.TIMEOUT_ENV, bad)
        with pytest.raises(reconnect.TimeoutSetting, match=reconnect.TIMEOUT_ENV):
            reconnect.reconnect_timeout()


class Flaky:
    """Fails `failures` calls with NoReply, then answers; the ping answers after `down` pings."""

    def __init__(self, failures: int, down: int = 0) -> None:
        self.failures, self.down = failures, down
        self.pings = 0
        self.calls = 0

    async def call(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise ClientError(NO_REPLY, "gone")
        return "answer"

    async def ping_agent(self) -> None:
        self.pings += 1
        if self.pings <= self.down:
            raise ClientError("org.freedesktop.DBus.Error.ServiceUnknown", "not yet")


def test_a_call_cut_by_a_restart_is_made_again_once_the_agent_answers() -> None:
    flaky = Flaky(failures=1, down=2)
    session = reconnect.Session(flaky, timeout=5, reached=True)  # type: ignore[arg-type]
    assert asyncio.run(session.call(flaky.call)) == "answer"
    assert (flaky.calls, flaky.pings, session.restarts) == (2, 3, 1)


def test_an_agent_never_reached_fails_at_once() -> None:
    flaky = Flaky(failures=5)
    session = reconnect.Session(flaky, timeout=5)  # type: ignore[arg-type]
    with pytest.raises(ClientError) as caught:
        asyncio.run(session.call(flaky.call))
    assert caught.value.name == NO_REPLY and flaky.pings == 0


def test_an_agent_that_does_not_come_back_is_given_up_after_the_timeout() -> None:
    flaky = Flaky(failures=1, down=1000)
    session = reconnect.Session(flaky, timeout=0.5, reached=True)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(reconnect.AgentGone) as caught:
        asyncio.run(session.call(flaky.call))
    assert 0.5 <= time.monotonic() - started < 2
    assert caught.value.message.startswith("quilt-agent did not come back within 0.5 s")
    assert caught.value.name == "org.quilt.Runtime.Error.TimedOut"


def test_the_blocking_transport_waits_without_a_loop() -> None:
    flaky = Flaky(failures=1, down=1)
    session = reconnect.Session(flaky, timeout=5, reached=True)  # type: ignore[arg-type]
    coroutine = session.call(flaky.call)
    # Driven as wire.drive does: nothing but the calls is awaited, so it runs to its end in one send().
    with pytest.raises(StopIteration) as done:
        coroutine.send(None)
    assert done.value.value == "answer"


class Restarting(Client):
    """events' client: one event by the signal, then the agent restarts, and its history tells that event again,
    another of the same microsecond, and one after."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.watch = AgentWatch(":1.1")
        self.listed = 0

    async def connect(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def watch_agent(self) -> AgentWatch:
        return self.watch

    async def watch_events(self) -> Any:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, queue.put_nowait, Event(self.at, "started", "a" * 64, {"name": "a"}))
        loop.call_later(0.1, self.watch._update, "")
        loop.call_later(0.15, self.watch._update, ":1.2")
        return queue

    async def renew_event_watch(self) -> None:
        pass

    async def ping_agent(self) -> None:
        pass

    async def list_events(self, since: int = 0, until: int = 0) -> list[Event]:
        self.listed += 1
        if self.listed == 1:
            return []  # --until's history at the start
        # From the last printed event's microsecond: the signal's the first time (the agent went), the history's
        # own last the second (another agent came).
        assert since == (self.at if self.listed == 2 else self.at + 1)
        history = [Event(self.at, "started", "a" * 64, {"name": "a"}),
                   Event(self.at, "created", "b" * 64, {"name": "b"}),
                   Event(self.at + 1, "exited", "a" * 64, {"name": "a", "exit_code": 7})]
        return [e for e in history if e.time >= since]


def test_events_across_a_restart_are_each_printed_once_those_of_the_same_microsecond_too() -> None:
    now = int(time.time() * 1e6)
    fake = Restarting(now)
    result = CliRunner().invoke(cli, ["events", "--json", "--until", str((now + 1_000_000) / 1e6)],
                                obj=CliState(client_factory=lambda: fake))
    assert result.exit_code == 0, result.output
    printed = [(e["time"], e["kind"], e["container_id"][:1]) for e in map(json.loads, result.stdout.splitlines())]
    assert printed == [(now, "started", "a"), (now, "created", "b"), (now + 1, "exited", "a")]
    assert fake.listed == 3


class History:
    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.asked: list[tuple[int, int]] = []

    async def list_events(self, since: int, limit: int) -> list[Event]:
        self.asked.append((since, limit))
        return self.events


def test_a_gone_containers_name_comes_from_its_events_since_the_run_began() -> None:
    history = History([Event(5, "created", "other", {"name": "db"}), Event(6, "created", "c1", {"name": "web"}),
                       Event(9, "removed", "c1", {"name": "web"})])
    assert asyncio.run(reconnect.name_from_history(history, "c1", 4)) == "web"  # type: ignore[arg-type]
    assert history.asked == [(4, 0)]
    assert asyncio.run(reconnect.name_from_history(history, "c2", 4)) == ""  # type: ignore[arg-type]
