"""remove_on_exit held for an attached client (Manager.hold_removal): the container stays after its exit while a
holder is there, and goes when the last holder leaves, or at once when none held it; Wait answers the exit code
even when the removal came first. Over the in-memory fakes (tests/unit/manager_fixtures.py)."""
from __future__ import annotations

import asyncio

import pytest

from quilt_agent import manager as manager_module
from quilt_agent.errors import CommandNotFound, InvalidArgument
from quilt_agent.model import State
from tests.fakes.helper import FakeForkServer
from tests.fakes.kernel import FakeKernel
from tests.unit.manager_fixtures import DEADLINE, Core, RecordingScopes, build_core, create
from tests.unit.manager_fixtures import core, zygote  # noqa: F401 - fixtures: a manager on fakes, its fork server

LONG = ["sleep", "30"]


async def test_a_held_container_stays_after_its_exit_until_its_holder_leaves(core: Core) -> None:
    c = await create(core, ["sh", "-c", "exit 3"], remove_on_exit=True)
    core.manager.hold_removal(c.id, ":1.7")
    await core.manager.start(c.id)
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 3
    await core.recorder.next("exited", c.id)
    assert core.manager.get(c.id).state is State.EXITED  # its exit code and logs are there to read
    assert await core.manager.logs(c.id) == []
    assert any("held for their attached clients" in busy for busy in core.manager.activity())
    core.manager.release_holder(":1.9")  # someone else leaving changes nothing
    assert core.manager.get(c.id).state is State.EXITED
    core.manager.release_holder(":1.7")
    await core.recorder.next("removed", c.id)
    assert core.manager.list() == []
    assert not any("held" in busy for busy in core.manager.activity())


async def test_a_holder_gone_before_the_exit_leaves_it_to_be_removed_at_the_exit(core: Core) -> None:
    c = await create(core, LONG, remove_on_exit=True)
    core.manager.hold_removal(c.id, ":1.7")
    await core.manager.start(c.id)
    core.manager.release_holder(":1.7")
    assert core.manager.get(c.id).state is State.RUNNING
    await core.manager.kill(c.id, 9)
    await core.recorder.next("removed", c.id)
    assert core.manager.list() == []


async def test_a_holder_may_remove_it_itself_and_leave_after(core: Core) -> None:
    c = await create(core, ["true"], remove_on_exit=True)
    core.manager.hold_removal(c.id, ":1.7")
    await core.manager.start(c.id)
    await asyncio.wait_for(core.manager.wait(c.id), DEADLINE)
    await core.manager.remove(c.id, force=False)
    core.manager.release_holder(":1.7")
    assert core.recorder.kinds(c.id).count("removed") == 1


async def test_only_a_remove_on_exit_container_can_be_held(core: Core) -> None:
    c = await create(core, ["true"])
    with pytest.raises(InvalidArgument, match="remove_on_exit"):
        core.manager.hold_removal(c.id, ":1.7")


async def test_wait_answers_the_exit_code_of_an_unheld_container_removed_at_its_exit(core: Core) -> None:
    c = await create(core, ["sh", "-c", "exit 5"], remove_on_exit=True)
    waiting = asyncio.ensure_future(core.manager.wait(c.id))
    await asyncio.sleep(0)  # let it block on the created container: no timing depends on this
    await core.manager.start(c.id)
    assert await asyncio.wait_for(waiting, DEADLINE) == 5
    await core.recorder.next("removed", c.id)


async def test_an_agent_that_starts_again_removes_the_exited_containers_it_held(core: Core,
                                                                                  zygote: FakeForkServer) -> None:
    # Holds do not outlive the agent: the client that held it cannot hold it with the next one.
    c = await create(core, ["sh", "-c", "exit 3"], remove_on_exit=True)
    kept = await create(core, ["true"], remove_on_exit=True)  # created, never started: it stays
    core.manager.hold_removal(c.id, ":1.7")
    await core.manager.start(c.id)
    await core.recorder.next("exited", c.id)
    await core.store.flush()
    again = await build_core(core.paths, core.store, RecordingScopes(), FakeKernel(), zygote)
    try:
        assert [x.id for x in again.manager.list()] == [kept.id]
    finally:
        again.scopes.close()


async def test_a_held_start_that_fails_removes_the_container_and_raises_the_starts_error(core: Core) -> None:
    c = await create(core, ["/no/such/program"], remove_on_exit=True)
    core.manager.hold_removal(c.id, ":1.7")
    with pytest.raises(CommandNotFound):
        await core.manager.start_or_remove(c.id)
    assert [x.id for x in core.manager.list()] == []


async def test_the_journal_is_synced_at_a_held_containers_exit_and_its_read_asks_no_more(
        core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(manager_module.journal, "synchronize", lambda: asked.append("sync") or True)
    held = await create(core, ["true"], remove_on_exit=True)
    core.manager.hold_removal(held.id, ":1.7")
    await core.manager.start(held.id)
    await asyncio.wait_for(core.manager.wait(held.id), DEADLINE)
    # Asked at the exit, before any read: the holder's read comes next.
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not asked and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.005)
    assert asked == ["sync"]
    assert await core.manager.logs(held.id) == [] and await core.manager.logs(held.id) == []
    assert asked == ["sync"]  # and the reads ask no more
    plain = await create(core, ["true"])
    await core.manager.start(plain.id)
    await asyncio.wait_for(core.manager.wait(plain.id), DEADLINE)
    assert await core.manager.logs(plain.id) == [] and await core.manager.logs(plain.id) == []
    assert asked == ["sync", "sync"]  # nobody attached: the first read asks, once
