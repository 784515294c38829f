"""Registration with systemd-machined in the manager (quilt_agent/manager.py, machines.py), over the in-memory
fakes: registered while running under its name or a derived one, unregistered at its end, found again (not
registered twice) after an agent restart, and a host without machined or a refusal leaving the container running."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import AsyncIterator

import pytest

from quilt_agent.errors import CommandNotFound
from quilt_agent.machines import machine_name, registering
from quilt_agent.model import State
from quilt_agent.restart import Backoff
from tests.fakes.helper import FakeForkServer
from tests.fakes.machines import FakeMachined
from tests.fakes.store import MemoryStore
from tests.unit.manager_fixtures import DEADLINE, Core, create, make_core, tear_down
from tests.unit.manager_fixtures import zygote  # noqa: F401 - the fixture: one fake fork server per module


@pytest.fixture
def machined() -> FakeMachined:
    return FakeMachined()


@pytest.fixture
async def core(tmp_path: Path, zygote: FakeForkServer, machined: FakeMachined) -> AsyncIterator[Core]:
    built = await make_core(tmp_path, zygote, Backoff(), machines=machined)
    yield built
    await tear_down(built)


async def test_a_running_container_is_a_machine_until_it_ends(core: Core, machined: FakeMachined) -> None:
    c = await create(core, ["sleep", "30"], "web")
    started = core.manager.get((await core.manager.start(c.id)).id)
    assert machined.machines["web"][0] == started.main_pid
    assert (started.machine_name, started.machine) == ("web", "/org/freedesktop/machine1/machine/web")
    stopped = await core.manager.stop(c.id, 1)
    assert "web" not in machined.machines and (stopped.machine, stopped.machine_name) == ("", "")


async def test_a_name_machined_takes_no_such_is_derived_and_a_taken_one_gets_the_id(core: Core,
                                                                                     machined: FakeMachined) -> None:
    a = await create(core, ["sleep", "30"], "db_1")
    b = await create(core, ["sleep", "30"], "db-1")
    await core.manager.start(a.id)
    await core.manager.start(b.id)
    assert core.manager.get(a.id).machine_name == "db-1"
    assert core.manager.get(b.id).machine_name == f"db-1-{b.id[:8]}"
    assert machine_name("_x_", a.id) == "x" and machine_name("a" * 63, a.id, taken=True).endswith(a.id[:8])


async def test_an_agent_restart_finds_the_registration_and_makes_no_second(tmp_path: Path, zygote: FakeForkServer,
                                                                          machined: FakeMachined) -> None:
    store = MemoryStore()
    first = await make_core(tmp_path, zygote, Backoff(), store=store, machines=machined)
    c = await create(first, ["sleep", "30"], "web")
    await first.manager.start(c.id)
    first.scopes.close()
    second = await make_core(tmp_path, zygote, Backoff(), store=store, run="run", machines=machined)
    try:
        again = second.manager.get(c.id)
        assert again.state is State.RUNNING and again.machine_name == "web"
        assert machined.registrations == 1 and list(machined.machines) == ["web"]
    finally:
        await tear_down(second)


async def test_without_machined_containers_run_unregistered_and_the_journal_says_so_once(
        core: Core, machined: FakeMachined, caplog: pytest.LogCaptureFixture) -> None:
    machined.present = False
    with caplog.at_level(logging.INFO, logger="quilt.manager"):
        for name in ("a", "b"):
            c = await create(core, ["sleep", "30"], name)
            started = await core.manager.start(c.id)
            assert started.state is State.RUNNING and started.machine == ""
    assert sum("systemd-machined is not on this host" in r.getMessage() for r in caplog.records) == 1


async def test_a_refused_registration_leaves_it_running_and_says_why(core: Core, machined: FakeMachined,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    machined.refuse = "not today"
    with caplog.at_level(logging.WARNING, logger="quilt.manager"):
        c = await create(core, ["sleep", "30"], "web")
        started = await core.manager.start(c.id)
    assert started.state is State.RUNNING and started.machine == ""
    assert any("container web is not registered with systemd-machined" in r.getMessage() and "not today"
               in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text, on", [("", True), ("[machines]\nregister = false\n", False),
                                      ("[machines]\nregister = true\n", True), ("[machines]\nregister = 0\n", True)])
def test_the_settings_file_turns_registration_off(tmp_path: Path, text: str, on: bool) -> None:
    settings = tmp_path / "quilt.conf"
    settings.write_text(text)
    assert registering(settings) is on


async def test_a_container_that_ended_before_its_registration_is_no_warning(core: Core, machined: FakeMachined,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    machined.slow = True
    with caplog.at_level(logging.WARNING, logger="quilt.manager"):
        c = await create(core, ["true"], "quick")
        await core.manager.start(c.id)
        await core.manager.wait(c.id)
    assert not any("not registered" in r.getMessage() for r in caplog.records)


async def until_no_machine(machined: FakeMachined) -> bool:
    """Whether machined holds no machine within DEADLINE: the agent unregisters in a task of its own."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while machined.machines:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_a_registration_answered_after_the_run_ended_is_undone(core: Core, machined: FakeMachined) -> None:
    machined.late = True  # registered, but its answer comes after the exit is recorded: the exit unregistered none
    c = await create(core, ["true"], "quick")
    await core.manager.start(c.id)
    assert await core.manager.wait(c.id) == 0
    assert await until_no_machine(machined) and machined.registrations == 1
    assert core.manager.get(c.id).machine_name == ""


async def test_a_start_that_fails_after_its_registration_began_leaves_no_machine(core: Core,
                                                                               machined: FakeMachined) -> None:
    c = await create(core, ["/no/such/command"], "broken")
    with pytest.raises(CommandNotFound):
        await core.manager.start(c.id)
    assert await until_no_machine(machined) and machined.registrations == 1  # registered, then undone
    assert core.manager.get(c.id).machine_name == ""
