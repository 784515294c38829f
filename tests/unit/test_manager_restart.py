"""Restart policies in the manager (quilt_agent/manager.py, restart.py), over the in-memory fakes: which exits
bring a container back, after what wait, what a user's stop, a removal, systemd's stop and a shutdown do to a
pending restart, and what an agent restart and a boot do."""
from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import AsyncIterator

import pytest

from quilt_agent.errors import AlreadyRunning, InvalidArgument
from quilt_agent.model import Container, State
from quilt_agent.restart import Backoff
from tests.fakes.helper import FakeForkServer
from tests.fakes.store import MemoryStore
from tests.unit.manager_fixtures import Core, create, events, make_core, tear_down, until
from tests.unit.manager_fixtures import zygote  # noqa: F401 - the fixture: one fake fork server per module

LONG = ["sleep", "30"]
QUICK = Backoff(delay=0.02, max_delay=0.16, steps=3, reset_after=10)
SLOW = Backoff(delay=30, max_delay=30, steps=0)  # a restart stays pending for the whole test


@pytest.fixture
async def quick(tmp_path: Path, zygote: FakeForkServer) -> AsyncIterator[Core]:
    core = await make_core(tmp_path, zygote, QUICK)
    yield core
    await tear_down(core)


@pytest.fixture
async def slow(tmp_path: Path, zygote: FakeForkServer) -> AsyncIterator[Core]:
    core = await make_core(tmp_path, zygote, SLOW)
    yield core
    await tear_down(core)


async def test_on_failure_restarts_a_failing_container_up_to_its_maximum(quick: Core) -> None:
    c = await create(quick, ["sh", "-c", "exit 3"], restart_policy="on-failure", restart_max=2)
    await quick.manager.start(c.id)
    await until(quick, c.id, "exited", 3)  # the first run and two restarts
    await quick.store.flush()
    await asyncio.sleep(0.1)  # long enough for a third restart at the back-off's wait, were one planned
    done = quick.manager.get(c.id)
    assert (done.state, done.exit_code, done.restart_count, done.restart_at) == (State.EXITED, 3, 2, 0)
    assert quick.recorder.kinds(c.id).count("started") == 3
    assert [e["attempt"] for e in events(quick, c.id, "restarting")] == [1, 2]
    assert all(e["exit_code"] == 3 for e in events(quick, c.id, "restarting"))
    assert (await quick.store.containers())[0].restart_count == 2


async def test_on_failure_leaves_a_clean_exit(quick: Core) -> None:
    c = await create(quick, ["true"], restart_policy="on-failure")
    await quick.manager.start(c.id)
    await quick.manager.wait(c.id)
    await asyncio.sleep(0.1)
    assert "restarting" not in quick.recorder.kinds(c.id)
    assert quick.manager.get(c.id).state is State.EXITED


async def test_always_restarts_a_clean_exit_with_a_growing_wait(quick: Core) -> None:
    c = await create(quick, ["true"], restart_policy="always")
    await quick.manager.start(c.id)
    await until(quick, c.id, "restarting", 5)
    waits = [e["delay_usec"] / 1e6 for e in events(quick, c.id, "restarting")]
    assert waits[:4] == pytest.approx([0.02, 0.04, 0.08, 0.16], rel=0.01) and waits[4] == pytest.approx(0.16)
    # Each restart started no sooner than its wait after the exit it answers.
    exits = [e["time"] for e in events(quick, c.id, "exited")]
    starts = [e["time"] for e in events(quick, c.id, "started")][1:]
    assert all(start - end >= wait * 1e6 for end, start, wait in zip(exits, starts, waits))
    await quick.manager.stop(c.id, 1)


async def test_a_user_stop_is_not_a_failure_and_a_start_counts_again(quick: Core) -> None:
    c = await create(quick, LONG, restart_policy="always")
    await quick.manager.start(c.id)
    stopped = await quick.manager.stop(c.id, 5)
    await asyncio.sleep(0.1)
    assert stopped.user_stopped and "restarting" not in quick.recorder.kinds(c.id)
    again = await quick.manager.start(c.id)
    assert not again.user_stopped and again.restart_count == 0
    await quick.manager.kill(c.id, 9)
    await quick.manager.wait(c.id)
    await asyncio.sleep(0.1)
    assert "restarting" not in quick.recorder.kinds(c.id) and quick.manager.get(c.id).user_stopped


async def test_a_signal_that_does_not_end_it_keeps_the_policy(quick: Core) -> None:
    c = await create(quick, ["sh", "-c", "trap 'exit 4' USR1; sleep 30 & wait"], restart_policy="on-failure")
    await quick.manager.start(c.id)
    await asyncio.sleep(0.1)  # the trap is set
    await quick.manager.kill(c.id, 10)  # SIGUSR1: the container decides, and fails
    await until(quick, c.id, "restarting", 1)
    await quick.manager.stop(c.id, 1)


async def test_a_stop_by_systemd_leaves_it_stopped_and_a_shutdown_leaves_the_boot_to_decide(quick: Core) -> None:
    by_user = await create(quick, LONG, name="by-user", restart_policy="always")
    at_shutdown = await create(quick, LONG, name="at-shutdown", restart_policy="always")
    for c in (by_user, at_shutdown):
        await quick.manager.start(c.id)
    await quick.scopes.stop_by_host(by_user.unit)
    await quick.manager.wait(by_user.id)
    quick.scopes.shutting_down = True
    await quick.scopes.stop_by_host(at_shutdown.unit)
    await quick.manager.wait(at_shutdown.id)
    await asyncio.sleep(0.1)
    assert quick.manager.get(by_user.id).user_stopped
    # Told in the same change as its end: nobody sees it exited and not yet stopped by a user.
    ended = [s for s in quick.recorder.statuses[by_user.id] if s.state is State.EXITED]
    assert ended and all(s.user_stopped for s in ended)
    assert not quick.manager.get(at_shutdown.id).user_stopped
    assert "restarting" not in quick.recorder.kinds(by_user.id) + quick.recorder.kinds(at_shutdown.id)


async def test_a_stop_or_forced_removal_wins_over_a_pending_restart(slow: Core) -> None:
    stopped = await create(slow, ["false"], name="stopped", restart_policy="always")
    removed = await create(slow, ["false"], name="removed", restart_policy="always")
    for c in (stopped, removed):
        await slow.manager.start(c.id)
        await until(slow, c.id, "restarting", 1)
        assert slow.manager.get(c.id).restart_at > 0
    with pytest.raises(AlreadyRunning, match="waiting to be restarted"):
        await slow.manager.remove(removed.id, force=False)
    await slow.manager.remove(removed.id, force=True)
    after = await slow.manager.stop(stopped.id, 1)
    assert (after.restart_at, after.user_stopped, after.state) == (0, True, State.EXITED)
    assert not slow.manager._restart_timers  # nothing is left to fire
    assert "pending" not in " ".join(slow.manager.activity())


async def test_a_restart_that_cannot_run_fails_once_and_says_why(quick: Core, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    c = await create(quick, ["false"], restart_policy="always", volumes=[f"{data}:/data"])
    await quick.manager.start(c.id)
    shutil.rmtree(data)  # what the next start binds is gone
    await until(quick, c.id, "failed", 1)
    await asyncio.sleep(0.1)
    failed = quick.manager.get(c.id)
    assert failed.state is State.FAILED and "restart failed" in failed.failure_reason
    assert quick.recorder.kinds(c.id).count("restarting") == 1 and failed.restart_at == 0


async def test_a_pending_restart_survives_an_agent_restart_and_a_boot_starts_only_its_policies(
        tmp_path: Path, zygote: FakeForkServer) -> None:
    store = MemoryStore()
    first = await make_core(tmp_path, zygote, SLOW, store)
    pending = await create(first, ["false"], name="pending", restart_policy="always")
    await first.manager.start(pending.id)
    await until(first, pending.id, "restarting", 1)
    await store.flush()
    first.manager._cancel_restart(pending.id)  # the agent goes: its timers with it

    again = await make_core(tmp_path, zygote, SLOW, store)  # the same boot: the wait goes on
    assert again.manager.get(pending.id).restart_at > 0 and pending.id in again.manager._restart_timers
    assert "waiting to be restarted" in " ".join(again.manager.activity())
    again.manager._cancel_restart(pending.id)
    made = {name: await create(again, LONG, name=name, restart_policy=policy) for name, policy in (
        ("always", "always"), ("unless", "unless-stopped"), ("unless-stopped", "unless-stopped"),
        ("on-failure", "on-failure"))}
    for c in made.values():
        await again.manager.start(c.id)
    await again.manager.stop(made["unless-stopped"].id, 1)  # a user's stop
    again.scopes.shutting_down = True  # the host shuts down: systemd stops the rest
    for name in ("always", "unless", "on-failure"):
        await again.scopes.stop_by_host(made[name].unit)
        await again.manager.wait(made[name].id)
    await store.flush()

    booted = await make_core(tmp_path, zygote, SLOW, store, run="run-after-boot")
    assert booted.manager.get(pending.id).restart_at == 0  # a reboot cut the wait short: the boot decides
    started = {c.name for c in await booted.manager.start_at_boot()}
    assert started == {"pending", "always", "unless"}
    assert booted.manager.get(made["on-failure"].id).state is State.EXITED
    assert booted.manager.get(made["unless-stopped"].id).state is State.EXITED
    await tear_down(booted)
    first.scopes.close()
    again.scopes.close()


@pytest.mark.parametrize("options, message", [
    ({"restart_policy": "sometimes"}, "Invalid restart_policy"),
    ({"restart_policy": "always", "restart_max": 3}, "needs restart_policy 'on-failure'"),
    ({"restart_policy": "on-failure", "restart_max": -1}, "Invalid restart_max"),
    ({"restart_policy": "always", "remove_on_exit": True}, "contradict"),
])
async def test_bad_restart_options_are_refused_and_leave_nothing(quick: Core, options: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await create(quick, ["true"], **options)
    assert quick.manager.list() == []
