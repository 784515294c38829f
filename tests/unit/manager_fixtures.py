"""The container lifecycle core (manager.py and its peers) wired as app.build wires it, over in-memory fakes:
FakeScopes for systemd, FakeForkServer for the fork server (the command runs as a plain host process),
FakeKernel for the network kernel, and a state store: the real one on a file under the test's directory, or
the one in memory (tests/fakes/store.py). Every path of the
agent's is under that directory; nothing touches systemd, the real fork server or the host's network.
"""
from __future__ import annotations

import asyncio
import os
import select
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest

from quilt_agent.userns import Ranges
from quilt_agent.config import Paths
from quilt_agent.containers import ContainerTable
from quilt_agent.images.service import Images
from quilt_agent.images.store import ImageStore
from quilt_agent.manager import Manager
from quilt_agent.errors import NoSuchContainer
from quilt_agent.model import Container
from quilt_agent.network.config import NetworkConfig
from quilt_agent.network.core import Networks
from quilt_agent.network.firewall import Firewall
from quilt_agent.removal import Removal
from quilt_agent.restart import Backoff
from quilt_agent.scopes import ScopeLimits
from quilt_agent.volumes import Volumes
from tests.fakes.helper import FakeForkServer
from tests.fakes.kernel import FakeKernel
from tests.fakes.machines import FakeMachined
from tests.fakes.scopes import FakeScopes
from tests.fakes.store import MemoryStore, StateStore
from tests.imagetools import tar_layer

DEADLINE = 5.0  # seconds any one wait in these tests may take before it fails
NO_NETWORK = {"networks": ["none"]}


@dataclass
class Event:
    kind: str
    container_id: str
    details: dict[str, Any]


class Recorder:
    """A manager Listener that keeps every lifecycle event and lets a test wait for one, with a deadline."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changes: dict[str, int] = {}  # container id -> how many status changes were told
        self.statuses: dict[str, list[Container]] = {}  # container id -> each status told, in order
        self._new = asyncio.Event()

    def container_added(self, container: Container) -> None:
        pass

    def container_changed(self, container: Container) -> None:
        self.changes[container.id] = self.changes.get(container.id, 0) + 1
        self.statuses.setdefault(container.id, []).append(container)

    def container_removed(self, container: Container) -> None:
        pass

    def event(self, kind: str, container: Container, details: dict[str, Any]) -> None:
        self.events.append(Event(kind, container.id, details))
        self._new.set()

    def kinds(self, container_id: str) -> list[str]:
        return [e.kind for e in self.events if e.container_id == container_id]

    async def next(self, kind: str, container_id: str, timeout: float = DEADLINE) -> Event:
        """The first event of kind for the container, waiting for it to come."""
        async def found() -> Event:
            while True:
                for e in self.events:
                    if e.kind == kind and e.container_id == container_id:
                        return e
                self._new.clear()
                await self._new.wait()
        return await asyncio.wait_for(found(), timeout)


class RecordingScopes(FakeScopes):
    """FakeScopes that remember the pids each start was given, refused or not, held by pidfds opened at the
    call: a test can then wait for those very processes to end; and the units stopped, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.given: dict[str, list[int]] = {}  # unit -> pidfds of the pids of its last start
        self.stopped: list[str] = []
        self.expected_at: dict[str, int] = {}  # unit -> how many expect_move() calls came before its last start

    async def stop(self, unit: str) -> None:
        self.stopped.append(unit)
        await super().stop(unit)

    async def start(self, unit: str, pids: list[int], description: str, limits: ScopeLimits) -> None:
        self.expected_at[unit] = self.expected
        fds = []
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                pass
        for fd in self.given.pop(unit, []):
            os.close(fd)
        self.given[unit] = fds
        await super().start(unit, pids, description, limits)

    def close(self) -> None:
        super().close()
        for fds in self.given.values():
            for fd in fds:
                os.close(fd)
        self.given.clear()


async def processes_ended(pidfds: list[int], timeout: float = DEADLINE) -> bool:
    """Whether every process (by pidfd) has exited within timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for fd in pidfds:
        done = loop.create_future()
        loop.add_reader(fd, lambda d=done: d.done() or d.set_result(None))
        try:
            await asyncio.wait_for(done, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
    return all(select.select([fd], [], [], 0)[0] for fd in pidfds)


@dataclass
class Core:
    """What app.build returns, and the fakes under it."""

    paths: Paths
    store: StateStore
    scopes: RecordingScopes
    kernel: FakeKernel
    zygote: FakeForkServer
    containers: ContainerTable
    images: Images
    volumes: Volumes
    networks: Networks
    manager: Manager
    removal: Removal
    recorder: Recorder = field(default_factory=Recorder)


def tiny_rootfs(directory: Path) -> Path:
    """A rootfs tarball of one file: the fake fork server ignores the image's tree, so any valid image serves."""
    path = directory / "tiny.tar"
    path.write_bytes(tar_layer(("etc/", None), ("etc/hostname", b"tiny\n")))
    return path


class RecordedRules(Firewall):
    """The table inet quilt as the networks render it, kept instead of handed to nft."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[dict[str, Any]] = []

    async def apply(self, batch: dict[str, Any]) -> None:
        self.batches.append(batch)


async def build_core(paths: Paths, store: StateStore, scopes: RecordingScopes, kernel: FakeKernel,
                     zygote: FakeForkServer, ranges: Ranges | None = None, backoff: Backoff | None = None,
                     machines: FakeMachined | None = None) -> Core:
    """As app.build, but with the fakes: the network rules are recorded, not applied with nft, and the note of
    ip_forward goes below the test's own directory."""
    containers = ContainerTable()
    image_store = await asyncio.to_thread(ImageStore, paths.images, zygote.extract)
    images = Images(image_store, containers)
    volumes = Volumes(paths.volumes, store, containers)
    networks = Networks(paths, store, containers, kernel=kernel, config=NetworkConfig(), rules=RecordedRules(),
                        forward_note=paths.root / "ip_forward")
    manager = Manager(paths, store, scopes, zygote, containers, images, networks, volumes, ranges, backoff,
                      machines=machines)
    stored = await store.containers()
    await volumes.load()
    await networks.recover(stored)
    await manager.recover(stored)
    core = Core(paths, store, scopes, kernel, zygote, containers, images, volumes, networks, manager,
                Removal(manager, images, volumes, networks))
    manager.subscribe(core.recorder)
    return core


async def make_core(tmp_path: Path, zygote: FakeForkServer, backoff: Backoff, store: StateStore | None = None,
                    run: str = "run", machines: FakeMachined | None = None) -> Core:
    # The notify sockets in a short directory of their own: a socket's path has at most 107 bytes, and the
    # fake's commands, host processes, send to the full path.
    paths = Paths(tmp_path / "state", userdb=tmp_path / "userdb", run=tmp_path / run,
                  notify=Path(tempfile.mkdtemp(prefix="quilt-notify-")))
    core = await build_core(paths, store or MemoryStore(), RecordingScopes(), FakeKernel(), zygote, backoff=backoff,
                            machines=machines)
    if not core.images.list():
        await core.images.import_image(str(tiny_rootfs(tmp_path)), "tiny", {})
    return core


async def tear_down(core: Core) -> None:
    for c in core.manager.list():
        try:
            await asyncio.wait_for(core.manager.remove(c.id, force=True), DEADLINE)
        except NoSuchContainer:
            pass
    core.scopes.close()
    shutil.rmtree(core.paths.notify, ignore_errors=True)


async def create(core: Core, command: list[str], name: str = "", **options: object) -> Container:
    return await core.manager.create(await core.manager.prepare(name, "tiny", command, {**NO_NETWORK, **options}))


async def until(core: Core, container_id: str, kind: str, count: int) -> None:
    """Until the container's count-th event of kind (no sleeps: the recorder wakes on each event)."""
    async def seen() -> None:
        while core.recorder.kinds(container_id).count(kind) < count:
            await core.recorder.next(kind, container_id)  # returns at once once one is there
            await asyncio.sleep(0.005)
    await asyncio.wait_for(seen(), DEADLINE)


def events(core: Core, container_id: str, kind: str) -> list[dict]:
    return [e.details for e in core.recorder.events if e.container_id == container_id and e.kind == kind]


@pytest.fixture(scope="module")
def zygote() -> Iterator[FakeForkServer]:
    """One fake fork server for a test module (import it there): starting one takes a Python interpreter."""
    server = FakeForkServer()
    yield server
    server.close()


@pytest.fixture
async def core(tmp_path: Path, zygote: FakeForkServer) -> AsyncIterator[Core]:
    """A manager on fakes with the default restart backoff (import it, with zygote, where that is what a test needs)."""
    built = await make_core(tmp_path, zygote, Backoff())
    yield built
    await tear_down(built)
