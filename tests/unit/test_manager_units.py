"""Containers of generated units in the manager (the create option unit), over the in-memory fakes: their
processes join the service instead of a scope, a stop is the service's stop, and a removal leaves the service
alone."""
from __future__ import annotations

import pytest

from quilt_agent.errors import ContainerFailed, InvalidArgument
from quilt_agent.model import State
from tests.unit.manager_fixtures import Core, create
from tests.unit.manager_fixtures import core, zygote  # noqa: F401 - fixtures: a manager on fakes, its fork server

SERVICE = "web.service"


async def test_its_processes_join_the_service_with_the_limits(core: Core) -> None:
    core.scopes.run_service(SERVICE)
    c = await create(core, ["sleep", "30"], unit=SERVICE, memory_max=64 << 20, pids_max=9)
    started = await core.manager.start(c.id)
    assert started.unit == SERVICE
    assert core.scopes.unit_of(started.main_pid) == SERVICE
    limits = core.scopes.units[SERVICE].limits
    assert (limits.memory_max, limits.tasks_max) == (64 << 20, 9)
    assert f"quilt-{c.name}.scope" not in core.scopes.units  # no scope of its own; its monitor's, as always
    assert started.monitor_unit in core.scopes.units


async def test_a_start_into_a_service_that_does_not_run_fails_and_leaves_nothing_running(core: Core) -> None:
    c = await create(core, ["sleep", "30"], unit=SERVICE)
    with pytest.raises(ContainerFailed, match=f"could not put the container into {SERVICE}"):
        await core.manager.start(c.id)
    assert core.manager.get(c.id).state is not State.RUNNING


async def test_a_stop_is_the_services_stop(core: Core) -> None:
    core.scopes.run_service(SERVICE)
    c = await create(core, ["sleep", "30"], unit=SERVICE)
    await core.manager.start(c.id)
    stopped = await core.manager.stop(c.id, 0)
    assert stopped.state is State.EXITED and SERVICE not in core.scopes.services


async def test_a_removal_of_an_ended_container_leaves_its_service_running(core: Core) -> None:
    core.scopes.run_service(SERVICE)
    c = await create(core, ["true"], unit=SERVICE)
    await core.manager.start(c.id)
    await core.manager.wait(c.id)
    await core.manager.remove(c.id, force=False)
    assert SERVICE in core.scopes.services  # a runner replacing its container must not stop its own service


@pytest.mark.parametrize("options, message", [
    ({"unit": "web.scope"}, "Invalid unit 'web.scope'"),
    ({"unit": "../x.service"}, "Invalid unit"),
    ({"unit": 5}, "must be a string"),
    ({"unit": SERVICE, "restart_policy": "always"}, "contradict"),
])
async def test_bad_unit_options_are_refused(core: Core, options: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await create(core, ["true"], **options)
    assert core.manager.list() == []
