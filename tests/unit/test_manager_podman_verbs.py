"""Restart, rename and pause in the manager (quilt_agent/manager.py), over the in-memory fakes: a restart that
keeps a remove_on_exit container, what a rename changes (the table, the store, the unit, an event) and what it
refuses, and the states pause and unpause refuse. Freezing itself needs a real cgroup:
tests/integration/cli/test_podman_commands.py runs it in the test host."""
from __future__ import annotations

import asyncio

import pytest

from quilt_agent.errors import AlreadyRunning, InvalidArgument, NameInUse, NoSuchContainer, NotRunning
from quilt_agent.model import State
from tests.unit.manager_fixtures import DEADLINE, Core, create, events
from tests.unit.manager_fixtures import core, zygote  # noqa: F401 - fixtures: a manager on fakes, its fork server

LONG = ["sleep", "30"]


async def test_rename_of_a_stopped_container_changes_its_name_unit_and_row_and_tells_renamed(core: Core) -> None:
    c = await create(core, ["true"], name="web")
    renamed = await core.manager.rename(c.id, "api")
    assert (renamed.id, renamed.name, renamed.unit) == (c.id, "api", "quilt-api.scope")
    assert core.manager.get("api").id == c.id
    with pytest.raises(NoSuchContainer):
        core.manager.get("web")
    await core.store.flush()
    assert [(s.id, s.name, s.spec.name) for s in await core.store.containers()] == [(c.id, "api", "api")]
    (told,) = events(core, c.id, "renamed")
    assert (told["name"], told["old_name"]) == ("api", "web")
    # The old name is free again, and the renamed one runs under its new unit.
    await create(core, ["true"], name="web")
    started = await core.manager.start(c.id)
    assert started.unit == "quilt-api.scope"
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 0


async def test_rename_to_its_own_name_changes_nothing(core: Core) -> None:
    c = await create(core, ["true"], name="web")
    assert (await core.manager.rename(c.id, "web")).name == "web"
    assert events(core, c.id, "renamed") == []


async def test_rename_refuses_a_running_container_a_taken_name_and_a_bad_one(core: Core) -> None:
    running = await create(core, LONG, name="run")
    await core.manager.start(running.id)
    with pytest.raises(AlreadyRunning, match="quilt-run.scope"):
        await core.manager.rename(running.id, "other")
    stopped = await create(core, ["true"], name="stopped")
    with pytest.raises(NameInUse):
        await core.manager.rename(stopped.id, "run")
    with pytest.raises(InvalidArgument):
        await core.manager.rename(stopped.id, "no spaces")
    with pytest.raises(NoSuchContainer):
        await core.manager.rename("nosuch", "x")
    assert sorted(c.name for c in core.manager.list()) == ["run", "stopped"]


async def test_pause_and_unpause_refuse_a_container_that_does_not_run(core: Core) -> None:
    c = await create(core, ["true"], name="web")
    with pytest.raises(NotRunning):
        await core.manager.pause(c.id)
    with pytest.raises(NotRunning):
        await core.manager.unpause(c.id)
    assert core.manager.get(c.id).state is State.CREATED and not core.manager.get(c.id).paused


async def test_unpause_of_a_running_container_that_is_not_paused_is_already_running(core: Core) -> None:
    c = await create(core, LONG, name="web")
    await core.manager.start(c.id)
    with pytest.raises(AlreadyRunning, match="not paused"):
        await core.manager.unpause(c.id)


async def test_restart_stops_and_starts_a_running_container_and_keeps_a_remove_on_exit_one(core: Core) -> None:
    c = await create(core, LONG, name="web", remove_on_exit=True)
    first = await core.manager.start(c.id)
    again = await core.manager.restart(c.id, 0)
    assert again.state is State.RUNNING and again.main_pid != first.main_pid
    assert core.manager.get("web").id == c.id  # its exit removed nothing
    assert events(core, c.id, "removed") == []
    await core.manager.restart(c.id)  # by its stop signal this time
    assert core.manager.get(c.id).state is State.RUNNING


async def test_restart_starts_a_container_that_does_not_run(core: Core) -> None:
    c = await create(core, ["true"], name="web")
    assert (await core.manager.restart(c.id)).state in (State.RUNNING, State.EXITED)
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 0
