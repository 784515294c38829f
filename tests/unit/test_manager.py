"""The container lifecycle (quilt_agent/manager.py) and the removals that span it (removal.py), over in-memory
fakes (tests/unit/manager_fixtures.py): the state machine, its named errors, and what each edge leaves in the
table, the store, the scopes and the container's directory."""
from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from quilt_agent.config import Paths
from quilt_agent.errors import (
    AccessDenied, AlreadyRunning, ContainerFailed, ImageInUse, InvalidArgument, NameInUse, NetworkInUse, NoSuchContainer,
    NoSuchNetwork, NotRunning, ResourceExhausted, VolumeInUse,
)
from quilt_agent.model import Container, State
from quilt_agent.network import netns
from quilt_agent.network.model import DEFAULT_NETWORK, host_ifname, link_alias
from quilt_agent.scopes import ScopeLimits
from quilt_agent.store import Store
from tests.fakes.helper import FakeForkServer
from tests.fakes.kernel import FakeKernel
from tests.fakes.store import MemoryStore, StateStore
from quilt_agent.userns import RANGE_SIZE, Pool, Ranges
from tests.unit.manager_fixtures import DEADLINE, Core, RecordingScopes, build_core, processes_ended, tiny_rootfs
from tests.unit.manager_fixtures import zygote  # noqa: F401 - the fixture: one fake fork server per module

NO_NETWORK = {"networks": ["none"]}
LONG = ["sleep", "30"]  # ends only when signalled: each test that starts it stops, kills or removes it


async def open_store(kind: str, paths: Paths) -> StateStore:
    if kind == "memory":
        return MemoryStore()
    return await Store.open(paths.database)


@pytest.fixture(params=["sqlite", "memory"])
async def core(request: pytest.FixtureRequest, tmp_path: Path, zygote: FakeForkServer) -> AsyncIterator[Core]:
    paths = Paths(tmp_path / "state", userdb=tmp_path / "userdb", run=tmp_path / "run",
                  notify=tmp_path / "notify")
    store = await open_store(request.param, paths)
    scopes = RecordingScopes()
    built = await build_core(paths, store, scopes, FakeKernel(), zygote)
    await built.images.import_image(str(tiny_rootfs(tmp_path)), "tiny", {})
    try:
        yield built
    finally:
        for c in built.manager.list():
            try:
                await asyncio.wait_for(built.manager.remove(c.id, force=True), DEADLINE)
            except NoSuchContainer:
                pass
        scopes.close()
        await store.close()


async def create(core: Core, command: list[str], name: str = "", **options: object) -> Container:
    return await core.manager.create(await core.manager.prepare(name, "tiny", command, {**NO_NETWORK, **options}))


async def stored(core: Core) -> dict[str, Container]:
    await core.store.flush()
    return {c.id: c for c in await core.store.containers()}


@dataclass
class Gate:
    """A fifo a command blocks reading until the test opens the gate. The test holds it open read-write from
    the start, so a line written before the command opens it is still there when it does."""

    path: Path
    fd: int

    def open(self) -> None:
        os.write(self.fd, b"go\n")


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    path = tmp_path / "gate"
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    yield Gate(path, fd)
    os.close(fd)


# --- create ---------------------------------------------------------------------------------------


async def test_create_stores_a_created_container_and_tells_created(core: Core) -> None:
    c = await create(core, ["true"], name="web")
    assert c.state is State.CREATED and core.manager.get("web").id == c.id
    row = (await stored(core))[c.id]
    assert row.state is State.CREATED and row.name == "web"
    assert core.paths.container(c.id).is_dir()
    assert core.recorder.kinds(c.id) == ["created"]


async def test_create_with_a_taken_name_is_refused_and_leaves_nothing_behind(core: Core) -> None:
    first = await create(core, ["true"], name="web")
    with pytest.raises(NameInUse):
        await create(core, ["true"], name="web")
    assert [c.id for c in core.manager.list()] == [first.id]
    assert list(await stored(core)) == [first.id]
    assert [d.name for d in core.paths.containers.iterdir()] == [first.id]


# --- start, exit, wait ----------------------------------------------------------------------------


async def test_start_runs_the_command_and_its_exit_is_recorded_with_its_code(core: Core, gate: Gate) -> None:
    c = await create(core, ["sh", "-c", f"read x < {gate.path}; exit 3"])
    started = await core.manager.start(c.id)
    assert started.state is State.RUNNING and started.main_pid > 0
    assert (await stored(core))[c.id].monitor_pid == started.monitor_pid  # recorded for recover()
    gate.open()
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 3
    done = core.manager.get(c.id)
    assert done.state is State.EXITED and done.exit_code == 3 and done.main_pid == 0
    exited = await core.recorder.next("exited", c.id)
    assert exited.details["exit_code"] == 3
    assert core.recorder.kinds(c.id) == ["created", "started", "exited"]
    row = (await stored(core))[c.id]
    assert row.state is State.EXITED and row.exit_code == 3


async def test_a_create_to_be_started_and_every_start_tell_the_scopes_before_a_scope_starts(core: Core) -> None:
    # What the scopes are told lets the real ones begin the kernel's wait that systemd's moves need (graceperiod.py).
    plain = await create(core, ["true"])
    assert core.scopes.expected == 0  # a create alone is no start
    c = await core.manager.create(await core.manager.prepare("", "tiny", ["true"], NO_NETWORK), starting=True)
    assert core.scopes.expected == 1
    await core.manager.start(c.id)
    assert core.scopes.expected_at[c.unit] == core.scopes.expected_at[c.monitor_unit] == 2  # and again by the start
    await core.manager.start(plain.id)
    assert core.scopes.expected_at[plain.unit] == 3


async def test_an_exec_tells_the_scopes_before_its_process_joins_the_container(core: Core) -> None:
    c = await create(core, LONG)
    await core.manager.start(c.id)
    told = core.scopes.expected
    result = await core.manager.exec(c.id, ["true"], {})
    assert result.exit_code == 0 and core.scopes.expected == told + 1


async def test_wait_on_a_created_container_returns_the_code_of_its_next_run(core: Core) -> None:
    c = await create(core, ["sh", "-c", "exit 5"])
    waiting = asyncio.ensure_future(core.manager.wait(c.id))
    await asyncio.sleep(0)  # let it block on the created container: no timing depends on this
    assert not waiting.done()
    await core.manager.start(c.id)
    assert await asyncio.wait_for(waiting, DEADLINE) == 5


async def test_an_exited_container_starts_again(core: Core) -> None:
    c = await create(core, ["sh", "-c", "exit 4"])
    await core.manager.start(c.id)
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 4
    await core.manager.start(c.id)
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 4
    assert core.recorder.kinds(c.id).count("exited") == 2


async def test_a_missing_command_fails_the_start_with_127(core: Core) -> None:
    c = await create(core, ["/nonexistent/program"])
    with pytest.raises(ContainerFailed):
        await core.manager.start(c.id)
    failed = core.manager.get(c.id)
    assert failed.state is State.FAILED and failed.exit_code == 127 and failed.failure_reason
    assert "failed" in core.recorder.kinds(c.id)
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 127


async def test_start_of_a_running_container_is_refused(core: Core) -> None:
    c = await create(core, LONG)
    await core.manager.start(c.id)
    with pytest.raises(AlreadyRunning):
        await core.manager.start(c.id)
    assert core.manager.get(c.id).state is State.RUNNING


# --- kill, stop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["start", "remove", "wait", "kill"])
async def test_a_call_on_an_unknown_container_is_no_such_container(core: Core, verb: str) -> None:
    args = {"start": (), "remove": (True,), "wait": (), "kill": (signal.SIGTERM,)}[verb]
    with pytest.raises(NoSuchContainer):
        await getattr(core.manager, verb)("0" * 64, *args)


async def test_kill_of_a_created_container_is_refused(core: Core) -> None:
    c = await create(core, LONG)
    with pytest.raises(NotRunning):
        await core.manager.kill(c.id, signal.SIGTERM)


@pytest.mark.parametrize("sig", [0, 99, -1])
async def test_kill_with_an_invalid_signal_is_refused(core: Core, sig: int) -> None:
    c = await create(core, LONG)
    await core.manager.start(c.id)
    with pytest.raises(InvalidArgument):
        await core.manager.kill(c.id, sig)
    assert core.manager.get(c.id).state is State.RUNNING


async def test_kill_delivers_the_signal_and_the_exit_says_so(core: Core) -> None:
    c = await create(core, LONG)
    await core.manager.start(c.id)
    await core.manager.kill(c.id, signal.SIGKILL)
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 128 + signal.SIGKILL
    assert core.manager.get(c.id).exit_signal == signal.SIGKILL


async def test_stop_ends_a_running_container_with_the_stop_signal(core: Core) -> None:
    c = await create(core, LONG)
    await core.manager.start(c.id)
    stopped = await asyncio.wait_for(core.manager.stop(c.id, 5), DEADLINE)
    assert stopped.state is State.EXITED
    assert stopped.exit_signal == signal.SIGTERM and stopped.exit_code == 128 + signal.SIGTERM


async def test_stop_of_a_created_container_changes_nothing(core: Core) -> None:
    c = await create(core, LONG)
    assert (await core.manager.stop(c.id, 1)).state is State.CREATED


# --- remove ---------------------------------------------------------------------------------------


async def test_remove_of_a_running_container_needs_force(core: Core) -> None:
    c = await create(core, LONG)
    await core.manager.start(c.id)
    with pytest.raises(AlreadyRunning):
        await core.manager.remove(c.id, force=False)
    assert core.manager.get(c.id).state is State.RUNNING
    assert c.id in await stored(core)


async def test_removing_an_ended_container_of_its_own_pid_namespace_leaves_its_empty_scope_to_systemd(
        core: Core) -> None:
    c = await create(core, ["true"])
    await core.manager.start(c.id)
    await core.manager.wait(c.id)
    await core.manager.remove(c.id, force=False)
    assert c.unit not in core.scopes.stopped and not core.scopes.loaded(c.unit)


async def test_removing_an_ended_container_of_the_hosts_pid_namespace_stops_its_scope(core: Core) -> None:
    # Its init's end ended nothing else: what it left running is ended by the scope's stop.
    c = await create(core, ["true"], namespaces=["mount", "uts", "ipc", "net", "cgroup"])
    await core.manager.start(c.id)
    await core.manager.wait(c.id)
    await core.manager.remove(c.id, force=False)
    assert core.scopes.stopped == [c.unit]


async def test_remove_with_force_kills_and_forgets_a_running_container(core: Core) -> None:
    c = await create(core, LONG)
    started = await core.manager.start(c.id)
    assert sorted(await core.scopes.active_scopes()) == [c.unit, c.monitor_unit]
    pids = core.scopes.given[c.unit] + core.scopes.given[c.monitor_unit]
    await asyncio.wait_for(core.manager.remove(c.id, force=True), DEADLINE)
    with pytest.raises(NoSuchContainer):
        core.manager.get(c.id)
    assert c.id not in await stored(core)
    assert not core.paths.container(c.id).exists()
    assert await core.scopes.active_scopes() == [] and not core.scopes.loaded(c.unit)
    assert await processes_ended(pids), f"monitor {started.monitor_pid} or init {started.main_pid} still runs"
    assert core.recorder.kinds(c.id)[-1] == "removed"


async def test_a_waiter_on_a_container_removed_before_it_ran_is_told_it_is_gone(core: Core) -> None:
    c = await create(core, LONG)
    waiting = asyncio.ensure_future(core.manager.wait(c.id))
    await asyncio.sleep(0)  # let it block on the created container: no timing depends on this
    assert not waiting.done()
    await asyncio.wait_for(core.manager.remove(c.id, force=True), DEADLINE)
    with pytest.raises(NoSuchContainer):
        await asyncio.wait_for(waiting, DEADLINE)


async def test_remove_on_exit_removes_the_container_after_its_exit(core: Core) -> None:
    c = await create(core, ["sh", "-c", "exit 0"], remove_on_exit=True)
    await core.manager.start(c.id)
    await core.recorder.next("removed", c.id)
    assert core.recorder.kinds(c.id)[-2:] == ["exited", "removed"]
    assert core.manager.list() == [] and await stored(core) == {}
    assert not core.paths.container(c.id).exists()


# --- scopes ---------------------------------------------------------------------------------------


async def test_a_scope_refused_at_start_fails_it_and_leaves_no_process(core: Core) -> None:
    c = await create(core, LONG)
    # A scope of the container's name that runs a process of its own: systemd refuses the name, and the
    # container's own processes must not outlive the refusal.
    squatter = subprocess.Popen(["sleep", "30"])
    try:
        await core.scopes.start(c.unit, [squatter.pid], "not Quilt's", ScopeLimits())
        with pytest.raises(ContainerFailed):
            await core.manager.start(c.id)
        assert await processes_ended(core.scopes.given[c.unit] + core.scopes.given.get(c.monitor_unit, []))
        assert core.manager.get(c.id).state is not State.RUNNING
        assert squatter.poll() is None  # what Quilt did not start is left alone
    finally:
        squatter.kill()
        squatter.wait()
    # Once the other scope's processes are gone, the name is free again: the container starts.
    assert (await core.manager.start(c.id)).state is State.RUNNING


# --- recovery -------------------------------------------------------------------------------------


async def test_recover_records_an_unknown_exit_for_a_running_container_whose_monitor_is_gone(
        core: Core, zygote: FakeForkServer) -> None:
    c = await create(core, LONG)
    gone = subprocess.Popen(["true"])
    gone.wait()
    # As the agent left it when it died: running, with a monitor that ended without an exit file.
    await core.store.update_status(c.with_(state=State.RUNNING, monitor_pid=gone.pid, monitor_start=1,
                                           main_pid=gone.pid, started_at=c.created_at + 1))
    again = await build_core(core.paths, core.store, RecordingScopes(), FakeKernel(), zygote)
    recovered = again.manager.get(c.id)
    assert recovered.state is State.EXITED and recovered.exit_code == -1
    assert "unknown" in recovered.failure_reason and recovered.monitor_pid == 0
    assert (await stored(again))[c.id].state is State.EXITED
    again.containers.clear()  # the fixture's core removes it


async def test_recover_removes_the_directory_of_a_create_that_did_not_finish(core: Core,
                                                                             zygote: FakeForkServer) -> None:
    stray = core.paths.container("0" * 64)
    (stray / "upper").mkdir(parents=True)
    await build_core(core.paths, core.store, RecordingScopes(), FakeKernel(), zygote)
    assert not stray.exists()



async def test_user_namespace_ranges_run_out_by_name_and_come_back_once_the_files_are_gone(
        core: Core, zygote: FakeForkServer) -> None:
    pool = Pool(600000, 600000 + RANGE_SIZE - 1)  # one range
    small = await build_core(core.paths, core.store, RecordingScopes(), FakeKernel(), zygote, Ranges(pool, []))
    first = await create(small, ["true"], name="a", userns="auto")
    assert first.id_first == 600000 and (await stored(small))[first.id].id_first == 600000
    with pytest.raises(ResourceExhausted, match=r"All 1 user namespace ranges"):
        await create(small, ["true"], name="b", userns="auto")
    assert [c.name for c in small.manager.list()] == ["a"]  # nothing of b
    await small.manager.remove(first.id, force=False)
    again = await create(small, ["true"], name="b", userns="auto")
    assert again.id_first == 600000
    # An agent started again holds the stored range: none is left for another.
    restarted = await build_core(core.paths, core.store, RecordingScopes(), FakeKernel(), zygote, Ranges(pool, []))
    with pytest.raises(ResourceExhausted):
        await create(restarted, ["true"], name="c", userns="auto")
    await restarted.manager.remove(again.id, force=False)
    small.containers.clear()

# --- create: prepared (resolved, nothing made), then made -------------------------------------------


async def test_prepare_resolves_what_a_create_names_and_makes_nothing(core: Core) -> None:
    await core.volumes.create("kept", {}, owner_uid=1000)
    plan = await core.manager.prepare("web", "tiny", ["true"], {**NO_NETWORK, "volumes": ["kept:/a:ro", "fresh:/b",
                                                                                          "/c"]}, owner_uid=1000)
    assert plan.spec.name == "web" and plan.image.names == ("tiny:latest",) and plan.owner_uid == 1000
    assert [(u.name, u.read_only, u.volume.name if u.volume else None) for u in plan.volumes] == [
        ("kept", True, "kept"), ("fresh", False, None)]  # the anonymous one (/c) is the container's own
    assert core.manager.list() == [] and [v.name for v in core.volumes.list()] == ["kept"]


async def test_a_container_and_the_volumes_its_create_makes_belong_to_the_caller(core: Core) -> None:
    c = await core.manager.create(await core.manager.prepare("web", "tiny", ["true"],
                                                             {**NO_NETWORK, "volumes": ["fresh:/b"]}, owner_uid=1000))
    assert c.owner_uid == 1000 and core.volumes.find("fresh").owner_uid == 1000
    assert (await stored(core))[c.id].owner_uid == 1000


async def test_a_create_whose_volume_another_caller_made_meanwhile_is_refused_and_leaves_nothing(core: Core) -> None:
    plan = await core.manager.prepare("web", "tiny", ["true"], {**NO_NETWORK, "volumes": ["fresh:/b", "/c"]},
                                      owner_uid=1000)
    await core.volumes.create("fresh", {}, owner_uid=2000)  # while the plan was being authorized
    with pytest.raises(AccessDenied, match="Volume 'fresh' changed"):
        await core.manager.create(plan)
    assert core.manager.list() == [] and await stored(core) == {}
    assert [v.name for v in core.volumes.list()] == ["fresh"]  # the anonymous volume made for it is gone


async def test_a_create_whose_network_was_made_again_meanwhile_is_refused(core: Core) -> None:
    await core.networks.create("back", {})
    plan = await core.manager.prepare("web", "tiny", ["true"], {"networks": ["back"]})
    await core.removal.network("back", False)
    await core.networks.create("back", {}, owner_uid=2000)
    with pytest.raises(AccessDenied, match="changed while the create was being authorized"):
        await core.manager.create(plan)
    assert core.manager.list() == []


# --- removals that take containers with them ------------------------------------------------------


async def test_image_removal_is_refused_while_a_container_uses_it(core: Core) -> None:
    c = await create(core, ["true"])
    with pytest.raises(ImageInUse):
        await core.removal.image("tiny", force=False)
    assert core.manager.get(c.id).state is State.CREATED and core.images.list()


async def test_image_removal_with_force_removes_its_containers_first(core: Core) -> None:
    idle = await create(core, ["true"])
    running = await create(core, LONG)
    await core.manager.start(running.id)
    affected = core.removal.affected("image", "tiny")
    assert {c.id for c in affected} == {idle.id, running.id}
    await asyncio.wait_for(core.removal.image("tiny", force=True, authorized=[c.id for c in affected]), DEADLINE)
    assert core.manager.list() == [] and await stored(core) == {}
    assert core.images.list() == []
    assert {idle.id, running.id} <= {e.container_id for e in core.recorder.events if e.kind == "removed"}


async def test_volume_removal_is_refused_while_a_container_uses_it(core: Core) -> None:
    c = await create(core, ["true"], volumes=["data:/data"])
    with pytest.raises(VolumeInUse):
        await core.removal.volume("data", force=False)
    assert core.manager.get(c.id) and [v.name for v in core.volumes.list()] == ["data"]


async def test_volume_removal_with_force_removes_its_containers_first(core: Core) -> None:
    c = await create(core, LONG, volumes=["data:/data"])
    await core.manager.start(c.id)
    assert [a.id for a in core.removal.affected("volume", "data")] == [c.id]
    await asyncio.wait_for(core.removal.volume("data", force=True, authorized=[c.id]), DEADLINE)
    assert core.manager.list() == [] and await stored(core) == {}
    assert core.volumes.list() == []


@pytest.mark.parametrize("kind, name", [("image", "tiny"), ("volume", "data"), ("network", "back")])
async def test_a_removal_with_force_that_would_take_an_unauthorized_container_changes_nothing(
        core: Core, kind: str, name: str) -> None:
    await core.networks.create("back", {})
    first = await create_on(core, ["true"], networks=["back"], volumes=["data:/data"])
    second = await create_on(core, LONG, networks=["back"], volumes=["data:/data"])
    await core.manager.start(second.id)
    assert {c.id for c in core.removal.affected(kind, name)} == {first.id, second.id}
    remove = getattr(core.removal, kind)
    with pytest.raises(AccessDenied, match=f"Container '{second.name}' came to use"):
        await remove(name, True, authorized=[first.id])  # as if second came while the removal was authorized
    assert [c.id for c in core.manager.list()] == [first.id, second.id]
    assert core.manager.get(second.id).state is State.RUNNING
    assert core.images.list() and core.volumes.find("data") and core.networks.get("back")


# --- containers on a network ----------------------------------------------------------------------


async def create_on(core: Core, command: list[str], name: str = "", **options: object) -> Container:
    """A container on the networks the options name, on the default network when they name none."""
    return await core.manager.create(await core.manager.prepare(name, "tiny", command, dict(options)))



async def test_an_alias_may_not_take_another_owners_name_on_a_shared_network(core: Core) -> None:
    await core.networks.create("back", {})
    await core.manager.create(await core.manager.prepare("db", "tiny", ["true"], {"networks": ["back"]}, 0))
    plan = await core.manager.prepare("spy", "tiny", ["true"], {"networks": ["back"], "aliases": ["db"]}, 1000)
    with pytest.raises(AccessDenied, match="The name 'db' on network 'back' is another owner's"):
        await core.manager.create(plan)
    assert [c.name for c in core.manager.list()] == ["db"] and core.networks.lookup(
        core.networks.get("back").id, "db") == [core.networks.addresses(core.manager.get("db").id)[0][1]]
    # The same owner's containers share an alias, as Podman's do; another network is another namespace of names.
    await core.manager.create(await core.manager.prepare("db2", "tiny", ["true"], {"networks": ["back"],
                                                                                   "aliases": ["db"]}, 0))
    await core.manager.create(await core.manager.prepare("spy", "tiny", ["true"], {"aliases": ["db"]}, 1000))

def links_of(core: Core, container_id: str) -> list[str]:
    """The host's links that are the container's: by its veth names, or by its alias."""
    return [name for name, link in core.kernel.host.links.items()
            if name.startswith(host_ifname(container_id, 0)[:-1]) or link.alias == link_alias(container_id)]


async def test_a_container_created_without_networks_gets_an_address_on_the_default_network(core: Core) -> None:
    c = await create_on(core, ["true"])
    default = core.networks.get(DEFAULT_NETWORK)
    assert c.spec.networks == (DEFAULT_NETWORK,)
    [(network, address)] = core.networks.addresses(c.id)
    assert network == DEFAULT_NETWORK and address != default.gateway
    assert ipaddress.IPv4Address(address) in default.network
    assert core.networks.container_names(default.id) == [c.name]


async def test_two_containers_on_the_default_network_get_different_addresses(core: Core) -> None:
    first = await create_on(core, ["true"], networks=[DEFAULT_NETWORK])
    second = await create_on(core, ["true"], networks=[DEFAULT_NETWORK])
    assert core.networks.addresses(first.id) != core.networks.addresses(second.id)


async def test_a_container_on_the_default_network_starts_in_its_namespace_and_exits_with_its_code(
        core: Core, gate: Gate) -> None:
    c = await create_on(core, ["sh", "-c", f"read x < {gate.path}; exit 3"], networks=[DEFAULT_NETWORK])
    [(_, address)] = core.networks.addresses(c.id)
    default = core.networks.get(DEFAULT_NETWORK)
    started = await core.manager.start(c.id)
    assert started.state is State.RUNNING
    inside = core.kernel.pinned[netns.path_for(c.id)]
    assert inside.links["eth0"].up and (address, default.prefixlen) in inside.links["eth0"].addresses
    assert inside.default_gateway == default.gateway
    host_end = core.kernel.host.links[host_ifname(c.id, 0)]
    assert (host_end.up, host_end.master, host_end.alias) == (True, default.bridge, link_alias(c.id))
    gate.open()
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 3
    assert core.manager.get(c.id).state is State.EXITED


async def test_remove_of_a_container_on_the_default_network_frees_its_address_and_leaves_no_links(
        core: Core) -> None:
    c = await create_on(core, ["sh", "-c", "exit 0"], networks=[DEFAULT_NETWORK])
    [(_, address)] = core.networks.addresses(c.id)
    await core.manager.start(c.id)
    assert await asyncio.wait_for(core.manager.wait(c.id), DEADLINE) == 0
    assert links_of(core, c.id)
    await core.manager.remove(c.id, force=False)
    assert core.networks.addresses(c.id) == []
    assert netns.path_for(c.id) not in core.kernel.pinned
    assert links_of(core, c.id) == []
    again = await create_on(core, ["true"], networks=[DEFAULT_NETWORK], ip=address)
    assert core.networks.addresses(again.id) == [(DEFAULT_NETWORK, address)]


async def test_a_container_created_after_another_gets_a_namespace_made_ahead(core: Core) -> None:
    first = await create_on(core, ["true"])
    await core.manager.start(first.id)

    async def pool_filled() -> None:
        while not core.kernel.held:
            await asyncio.sleep(0.001)
    await asyncio.wait_for(pool_filled(), DEADLINE)
    ahead = set(map(id, core.kernel.held.values()))
    second = await create_on(core, ["sh", "-c", "exit 6"])
    await core.manager.start(second.id)
    inside = core.kernel.pinned[netns.path_for(second.id)]
    assert id(inside) in ahead  # pinned, not made at its create
    [(_, address)] = core.networks.addresses(second.id)
    assert any(a == address for a, _ in inside.links["eth0"].addresses)
    assert await asyncio.wait_for(core.manager.wait(second.id), DEADLINE) == 6


async def test_network_removal_is_refused_while_a_container_uses_it(core: Core) -> None:
    await core.networks.create("back", {})
    c = await create_on(core, ["true"], networks=["back"])
    with pytest.raises(NetworkInUse):
        await core.removal.network("back", force=False)
    assert core.networks.get("back") and core.manager.get(c.id).state is State.CREATED


async def test_network_removal_with_force_removes_its_containers_and_their_links_first(core: Core) -> None:
    back = await core.networks.create("back", {})
    idle = await create_on(core, ["true"], networks=["back"])
    running = await create_on(core, LONG, networks=["back"])
    other = await create_on(core, ["true"], networks=[DEFAULT_NETWORK])
    await core.manager.start(running.id)
    assert back.bridge in core.kernel.host.links
    authorized = [c.id for c in core.removal.affected("network", "back")]
    assert set(authorized) == {idle.id, running.id}
    await asyncio.wait_for(core.removal.network("back", force=True, authorized=authorized), DEADLINE)
    assert [c.id for c in core.manager.list()] == [other.id] and list(await stored(core)) == [other.id]
    with pytest.raises(NoSuchNetwork):
        core.networks.get("back")
    assert {idle.id, running.id} <= {e.container_id for e in core.recorder.events if e.kind == "removed"}
    for c in (idle, running):
        assert netns.path_for(c.id) not in core.kernel.pinned and links_of(core, c.id) == []
    assert back.bridge not in core.kernel.host.links
