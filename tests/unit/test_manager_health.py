"""Health checks in the manager (quilt_agent/manager.py, health.py), over the in-memory fakes (a check is a host
process there): the status a container goes through, the start period, the timeout, a command that cannot run,
what health_on_failure does, a check run by hand, and options that need a check."""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from quilt_agent.errors import InvalidArgument, NotRunning
from quilt_agent.model import State
from quilt_agent.restart import Backoff
from tests.fakes.helper import FakeForkServer
from tests.unit.manager_fixtures import Core, create, events, make_core, tear_down, until
from tests.unit.manager_fixtures import zygote  # noqa: F401 - the fixture: one fake fork server per module

LONG = ["sleep", "30"]
FAST = {"health_interval": 0.1, "health_timeout": 2}


@pytest.fixture
async def core(tmp_path: Path, zygote: FakeForkServer) -> AsyncIterator[Core]:
    built = await make_core(tmp_path, zygote, Backoff(delay=0.02, max_delay=0.02, steps=0))
    yield built
    await tear_down(built)


def statuses(core: Core, container_id: str) -> list[str]:
    return [e["status"] for e in events(core, container_id, "health_status")]


async def test_a_container_goes_from_starting_to_healthy_to_unhealthy_and_back(core: Core, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    flag.touch()
    c = await create(core, LONG, health_cmd=["test", "-e", str(flag)], health_retries=2, **FAST)
    started = await core.manager.start(c.id)
    assert started.health == "starting"
    await until(core, c.id, "health_status", 1)
    assert core.manager.get(c.id).health == "healthy"
    flag.unlink()
    await until(core, c.id, "health_status", 2)
    status, streak, checks = core.manager.health_log(c.id)
    assert (status, streak) == ("unhealthy", 2)
    assert [r.exit_code for r in checks[-2:]] == [1, 1] and all(r.end >= r.start for r in checks)
    flag.touch()
    await until(core, c.id, "health_status", 3)
    assert statuses(core, c.id) == ["healthy", "unhealthy", "healthy"]
    assert core.manager.health_log(c.id)[1] == 0
    assert core.manager.get(c.id).state is State.RUNNING  # health_on_failure none: left alone


async def test_failures_in_the_start_period_do_not_make_it_unhealthy(core: Core) -> None:
    c = await create(core, LONG, health_cmd=["false"], health_retries=1, health_start_period=30, **FAST)
    await core.manager.start(c.id)
    for _ in range(3):
        status, result = await core.manager.health_check(c.id)
        assert (status, result.exit_code) == ("starting", 1)
    assert core.manager.health_log(c.id)[1] == 0 and statuses(core, c.id) == []


async def test_a_check_that_outlives_its_timeout_is_killed_and_fails(core: Core) -> None:
    c = await create(core, LONG, health_cmd=["sleep", "30"], health_timeout=0.2, health_retries=1,
                     health_interval=60)
    await core.manager.start(c.id)
    status, result = await core.manager.health_check(c.id)
    assert status == "unhealthy" and result.exit_code == -1
    assert "did not end within 0.2 s" in result.output and result.end - result.start < 5_000_000


async def test_a_check_command_that_does_not_exist_makes_it_unhealthy_with_the_error_kept(core: Core) -> None:
    c = await create(core, LONG, health_cmd=["/no/such/check"], health_retries=1, health_interval=60)
    await core.manager.start(c.id)
    status, result = await core.manager.health_check(c.id)
    assert status == "unhealthy" and result.exit_code == 127
    assert "/no/such/check" in result.output
    assert core.manager.get(c.id).state is State.RUNNING


@pytest.mark.parametrize("action, state", [("kill", State.EXITED), ("stop", State.EXITED)])
async def test_kill_and_stop_on_failure_end_it_and_leave_its_policy_to_decide(core: Core, action: str,
                                                                              state: State) -> None:
    c = await create(core, LONG, health_cmd=["false"], health_retries=1, health_on_failure=action, **FAST)
    await core.manager.start(c.id)
    await until(core, c.id, "exited", 1)
    ended = core.manager.get(c.id)
    assert ended.state is state and ended.health == "unhealthy" and not ended.user_stopped
    assert ended.exit_code == (137 if action == "kill" else 143)


async def test_kill_on_failure_with_a_restart_policy_brings_it_back(core: Core) -> None:
    c = await create(core, LONG, health_cmd=["false"], health_retries=1, health_on_failure="kill",
                     restart_policy="always", **FAST)
    await core.manager.start(c.id)
    await until(core, c.id, "started", 2)
    assert core.manager.get(c.id).health in ("starting", "unhealthy")
    assert events(core, c.id, "restarting")[0]["exit_code"] == 137


async def test_restart_on_failure_stops_and_starts_it_again_counting_the_restart(core: Core) -> None:
    c = await create(core, LONG, health_cmd=["false"], health_retries=1, health_on_failure="restart", **FAST)
    await core.manager.start(c.id)
    await until(core, c.id, "started", 2)
    restarting = events(core, c.id, "restarting")
    assert restarting[0]["reason"] == "unhealthy" and restarting[0]["attempt"] == 1
    assert core.manager.get(c.id).restart_count >= 1
    assert core.recorder.kinds(c.id)[:6] == ["created", "started", "health_status", "exited", "restarting",
                                             "started"]


async def test_a_user_stop_ends_the_checks(core: Core) -> None:
    c = await create(core, LONG, health_cmd=["true"], **FAST)
    await core.manager.start(c.id)
    await until(core, c.id, "health_status", 1)
    await core.manager.stop(c.id, 1)
    with pytest.raises(NotRunning):
        await core.manager.health_check(c.id)
    assert core.manager.get(c.id).health == "healthy"  # the last verdict stays for inspect


async def test_a_container_without_a_check_has_no_health_and_refuses_a_check(core: Core) -> None:
    c = await create(core, LONG)
    started = await core.manager.start(c.id)
    assert started.health == "" and started.spec.health_cmd == ()
    with pytest.raises(InvalidArgument, match="has no health check"):
        await core.manager.health_check(c.id)


@pytest.mark.parametrize("options, message", [
    ({"health_interval": 5}, "Option 'health_interval' needs a health check: give health_cmd"),
    ({"health_cmd": [], "health_retries": 2}, "health_cmd is empty"),
    ({"health_on_failure": "kill"}, "needs a health check"),
])
async def test_health_options_without_a_check_are_refused_and_leave_nothing(core: Core, options: dict,
                                                                            message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await create(core, LONG, **options)
    assert core.manager.list() == []
