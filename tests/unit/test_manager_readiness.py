"""Readiness in the manager (quilt_agent/manager.py, notify.py), over the in-memory fakes, whose commands are
host processes sending to the agent's real notify socket: sdnotify modes, STATUS=, a MAINPID= refused, a
container that never gets ready, WaitCondition, and bad input."""
from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest

from quilt_agent.errors import InvalidArgument
from tests.unit.manager_fixtures import DEADLINE, Core, create, events
from tests.unit.manager_fixtures import core, zygote  # noqa: F401 - fixtures: a manager on fakes, its fork server

NOTIFIER = """
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for message in sys.argv[1:]:
    if message.startswith("sleep "):
        time.sleep(float(message[6:]))
    else:
        s.sendto(message.encode().replace(b"|", b"\\n"), os.environ["NOTIFY_SOCKET"])
time.sleep(30)
"""


def notifier(*messages: str) -> list[str]:
    """A command that sends each message (| for a newline) to its NOTIFY_SOCKET, "sleep N" between, then waits."""
    return [sys.executable, "-c", NOTIFIER, *messages]


async def wait(core: Core, container_id: str, *conditions: str) -> tuple[str, int]:
    return await asyncio.wait_for(core.manager.wait_condition(container_id, list(conditions)), DEADLINE)


async def test_sdnotify_container_is_ready_when_it_says_so_and_keeps_its_status(core: Core) -> None:
    c = await create(core, notifier("STATUS=warming up", "sleep 0.2", "READY=1|STATUS=serving"),
                     sdnotify="container")
    started = await core.manager.start(c.id)
    assert not started.ready
    assert "NOTIFY_SOCKET=/run/notify/notify.sock" in core.manager.environment(c.id)
    assert await wait(core, c.id, "ready") == ("ready", -1)
    ready = core.manager.get(c.id)
    assert ready.ready and ready.notify_status == "serving"
    assert [e["status"] for e in events(core, c.id, "ready")] == ["serving"]
    await core.manager.stop(c.id, 1)
    assert not core.manager.get(c.id).ready
    assert not (core.paths.notify / c.id).exists()  # the agent stops listening with its end


async def test_a_container_that_ends_before_it_is_ready_meets_exited(core: Core) -> None:
    c = await create(core, ["sh", "-c", "sleep 0.2; exit 4"], sdnotify="container")
    await core.manager.start(c.id)
    assert await wait(core, c.id, "ready") == ("exited", 4)
    assert events(core, c.id, "ready") == []


async def test_by_default_a_container_is_ready_once_it_runs(core: Core) -> None:
    c = await create(core, ["sleep", "30"])
    started = await core.manager.start(c.id)
    assert started.ready and started.spec.sdnotify == "conmon"
    assert await wait(core, c.id, "ready") == ("ready", -1)
    assert "NOTIFY_SOCKET" not in " ".join(core.manager.environment(c.id))


async def test_sdnotify_healthy_is_ready_at_the_first_passing_check(core: Core) -> None:
    c = await create(core, ["sleep", "30"], sdnotify="healthy", health_cmd=["true"], health_interval=0.1)
    started = await core.manager.start(c.id)
    assert not started.ready
    assert await wait(core, c.id, "ready") == ("ready", -1)
    assert core.manager.get(c.id).health == "healthy" and len(events(core, c.id, "ready")) == 1


async def test_mainpid_is_refused_with_a_journal_line_and_the_init_stays_main(
        core: Core, caplog: pytest.LogCaptureFixture) -> None:
    c = await create(core, notifier("MAINPID=1", "MAINPID=2", "READY=1"), sdnotify="container")
    started = await core.manager.start(c.id)
    with caplog.at_level(logging.WARNING, logger="quilt.manager"):
        await wait(core, c.id, "ready")
    refusals = [r.getMessage() for r in caplog.records if "MAINPID" in r.getMessage()]
    assert len(refusals) == 1 and "not honoured" in refusals[0]
    assert core.manager.get(c.id).main_pid == started.main_pid


async def test_a_flood_of_notifications_is_taken_a_few_at_a_time(core: Core) -> None:
    flood = notifier(*[f"STATUS=step {i}" for i in range(2000)], "READY=1|STATUS=done")
    c = await create(core, flood, sdnotify="container")
    await core.manager.start(c.id)
    await wait(core, c.id, "ready")
    assert core.manager.get(c.id).notify_status == "done"
    # 2001 datagrams, a status change each, told as a few changes: each NOTIFY_COALESCE interval is one.
    assert core.recorder.changes[c.id] < 100


async def test_wait_condition_healthy_and_unhealthy(core: Core, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    c = await create(core, ["sleep", "30"], health_cmd=["test", "-e", str(flag)], health_interval=0.1,
                     health_retries=1)
    await core.manager.start(c.id)
    assert await wait(core, c.id, "healthy", "unhealthy") == ("unhealthy", -1)
    flag.touch()
    assert await wait(core, c.id, "healthy") == ("healthy", -1)


@pytest.mark.parametrize("options, message", [
    ({"sdnotify": "systemd"}, "Invalid sdnotify 'systemd'"),
    ({"sdnotify": 1}, "Option 'sdnotify' must be a string"),
    ({"sdnotify": "healthy"}, "needs a health check"),
])
async def test_bad_sdnotify_is_refused_and_leaves_nothing(core: Core, options: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await create(core, ["sleep", "1"], **options)
    assert core.manager.list() == []


@pytest.mark.parametrize("conditions", [[], ["stopped"], ["ready", "bogus"]])
async def test_unknown_wait_conditions_are_refused(core: Core, conditions: list[str]) -> None:
    c = await create(core, ["sleep", "1"])
    with pytest.raises(InvalidArgument, match="Invalid wait condition"):
        await core.manager.wait_condition(c.id, conditions)
