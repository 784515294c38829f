"""The one core API: create, start, stop, kill, remove, wait, logs, get, list.

Knows nothing of D-Bus: the bus layer calls it and subscribes to its events.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal as signals
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Coroutine, Protocol

from quilt_agent import cgroups, copying, filetree, freezer, health, journal, logfile, pipes, restart, userdb
from quilt_agent import stdio as caller_stdio
from quilt_agent.config import Paths
from quilt_agent.containers import ContainerTable
from quilt_agent.execs import ExecOptions, Executor, ExecResult, exec_environment, parse_exec_options
from quilt_agent.logfollow import LogFollowers, parse_follow_options
from quilt_agent.errors import (
    AccessDenied, AlreadyRunning, CommandNotExecutable, CommandNotFound, ContainerFailed, InvalidArgument, NameInUse,
    NoSuchContainer, NoSuchVolume, NotRunning, NotSupported, QuiltError, ResourceExhausted, TimedOut, TooLarge,
    VolumeInUse,
)
from quilt_agent.helper import protocol
from quilt_agent.helper.monitor import start_time
from quilt_agent.helper.protocol import ExecFailed, Go, LaunchSpec, MonitorForked, SetupDone, Spawned, Started
from quilt_agent.helper.forkserver import ForkServer
from quilt_agent.images.service import Images
from quilt_agent.images.store import Image
from quilt_agent.machines import MachineError, MachineRegistry, machine_name
from quilt_agent.network.core import Networks
from quilt_agent.network.model import Network
from quilt_agent.notify import CONTAINER_SOCKET, Notification, NotifySockets
from quilt_agent.model import (
    FILE_LOG_DRIVERS, Container, ContainerSpec, ExitStatus, State, capability_mask, effective_hostname, generate_name,
    new_id, now_usec, parse_options, validate_command, validate_name,
)
from quilt_agent.scopes import ScopeLimits, ScopeManager
from quilt_agent.setup import cache_key as setup_cache_key
from quilt_agent.setup import identifier as setup_identifier
from quilt_agent.userns import IdRange, Pool, Ranges
from quilt_agent.store import StateStore
from quilt_agent.volume_options import Volume, check_host_paths, name_anonymous, named_volumes, parse_volume
from quilt_agent.volumes import Volumes

log = logging.getLogger("quilt.manager")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE = 10.0  # how long to wait for a SIGKILLed container's monitor to report
NOTIFY_COALESCE = 0.02  # seconds over which a container's notifications are taken as one (a flood is one write)
WAIT_CONDITIONS = ("exited", "running", "ready", "healthy", "unhealthy")
# journalctl MESSAGE_ID=... finds every edge of a kind, as with systemd's own catalog ids.
MESSAGE_IDS = {
    "created": "4dac182fa45d471899d4bbbddde4cfdd", "started": "0600d97482a4436296a92545868adc16",
    "failed": "27db21ceddd04a2abcef2b86a8bbafec", "exited": "9b8ed616097b49b295ba9b1c596e866a",
    "oom": "422374fe993343f6b7e031c6aac193f3", "removed": "530128e8449a46459221e6547e06467f",
    "restarting": "0b3f4e3cf4a24c55a86bd1b4e3b6e0a1", "health_status": "c1d3d0b6a0b94b0e9d3f5b8e2a7c4f61",
    "ready": "5e0c2a7d94b34f1f8c6a3b2d1e0f9a87", "paused": "7a1f0c3e5b9d4e2a8c6f1b3d5e7a9c0b",
    "unpaused": "2b8e4d6f0a1c4b3e9d7f5a2c4e6b8d01", "renamed": "9d3c5e7a1b2f4c6e8a0d2b4f6c8e0a13",
    "logs_dropped": "e3f1b6a2c9d84f0e8b7a5c3d1e2f4a6b", "log_write_failed": "8f2a4c6e0b1d4f3a9c5e7b2d4f6a8c10",
}


DROP_WATCH_PAUSE = 0.25  # seconds between two looks at journald's reports of dropped lines
# The most lines (and bytes of text) one GetLogs reply carries. A reply is marshalled whole in the agent's event
# loop (~2.5 us a line: 40,000 lines held it over 100 ms in the test host), and the system bus refuses a message
# over 32 MiB (dbus-daemon's max_message_size). More is streamed, through FollowLogs.
MAX_LOG_REPLY_LINES = 20_000
MAX_LOG_REPLY_BYTES = 16 << 20


def _one_reply(c: Container, lines: list[journal.LogLine]) -> list[journal.LogLine]:
    """The lines, if one GetLogs reply carries them; else TooLarge, saying how to read them."""
    if len(lines) > MAX_LOG_REPLY_LINES or sum(len(line.text.encode()) for line in lines) > MAX_LOG_REPLY_BYTES:
        many = f"more than {MAX_LOG_REPLY_LINES}" if len(lines) > MAX_LOG_REPLY_LINES else str(len(lines))
        raise TooLarge(f"The lines asked for of container {c.name}'s log are {many}: more than one reply "
                       f"carries ({MAX_LOG_REPLY_LINES} lines, {MAX_LOG_REPLY_BYTES >> 20} MiB). Ask for fewer "
                       "(lines, since), or read it through FollowLogs with follow false, which streams any "
                       "number (`quiltctl logs` does)")
    return lines


class DropSource(Protocol):
    """journald's reports of dropped lines as they come (journal.DropWatch): fileno() turns readable when there
    may be new ones, new() returns them."""

    def fileno(self) -> int: ...

    def new(self) -> list[journal.Drop]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class VolumeUse:
    """A named volume a create mounts: the volume, or None when the create will make it."""

    name: str
    read_only: bool
    volume: Volume | None


@dataclass(frozen=True)
class CreatePlan:
    """A create checked and resolved, nothing made yet: what the caller is authorized for (bus/access.py)."""

    spec: ContainerSpec
    image: Image
    owner_uid: int
    volumes: tuple[VolumeUse, ...]  # named volumes, not the anonymous ones made for the container alone
    networks: tuple[Network, ...]  # the named networks it joins
    joins: tuple[Container, ...]  # container:NAME: the container named, and the namespace's owner if another

    @property
    def host_paths(self) -> tuple[str, ...]:
        return tuple(m.source for m in map(parse_volume, self.spec.volumes) if m.source.startswith("/"))


class Listener(Protocol):
    """What the bus layer subscribes with; events flow up only this way."""

    def container_added(self, container: Container) -> None: ...

    def container_changed(self, container: Container) -> None: ...

    def container_removed(self, container: Container) -> None: ...

    def event(self, kind: str, container: Container, details: dict[str, Any]) -> None:
        """A lifecycle edge (created, started, failed, oom, exited, removed); details hold "name" and "time"
        (usec) and what the kind adds (exit_code, oom_killed, reason)."""


@dataclass
class _Runtime:
    """What the agent holds for a running container (not stored: rebuilt from /proc at start)."""

    monitor_pidfd: int = -1
    init_pidfd: int = -1
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Keeping this run's setup result for the cache (_cache_setup): its exit is told once that is done, so
    # that a container started after Wait returned finds the cache.
    caching: asyncio.Task[None] | None = None
    # The end (finished_at) after which the journal was last made to store every line already written: a read
    # after a container ended waits for that once, not at every read.
    journal_synced: int = 0
    # The same, begun when the exit was recorded for an attached client, which reads the log right after.
    journal_sync: asyncio.Future[bool] | None = None
    output_to_caller: bool = False  # this run's output went to the caller's stdio (StartWithFds), not to a log
    # Set (and replaced) at each change of the container: what WaitCondition waits on.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Its notifications not applied yet (NOTIFY_COALESCE), and whether a MAINPID= was refused this run.
    notified: dict[str, Any] = field(default_factory=dict)
    mainpid_refused: bool = False
    # The exit code last recorded: a Wait woken by the exit still answers it when remove_on_exit took the
    # container before the waiter ran.
    exit_code: int | None = None
    # The init had ended when its monitor did, in a pid namespace of its own: the kernel ended every process of
    # that namespace with it, so nothing is left in the container's scope and systemd stops and collects the empty
    # scope by itself. A removal then needs no StopUnit job of its own (two round trips and the job, a few ms of
    # every `run --rm`). With the host's pid namespace, processes the init left behind may still run in the scope:
    # a removal stops it.
    scope_emptied: bool = False


class Manager:
    """The container lifecycle. Its peers, each given here by the wiring (app.py): the images a container runs,
    its networks (addresses, namespaces and veths, names, published ports) and its named volumes."""

    def __init__(self, paths: Paths, store: StateStore, scopes: ScopeManager, zygote: ForkServer, containers: ContainerTable,
                 images: Images, networks: Networks, volumes: Volumes, ranges: Ranges | None = None,
                 backoff: restart.Backoff | None = None, notify: NotifySockets | None = None,
                 machines: MachineRegistry | None = None) -> None:
        self._paths = paths
        self._ranges = ranges or Ranges(Pool(), [])  # host ids for containers in their own user namespace
        self._store = store
        self._scopes = scopes
        self._zygote = zygote
        self._containers = containers
        self._images = images
        self._networks = networks
        self._volumes = volumes
        self._runtime: dict[str, _Runtime] = {}
        self._listeners: list[Listener] = []
        self._loop = asyncio.get_running_loop()
        self._executor = Executor(zygote)
        self._log_followers = LogFollowers()
        self._listeners.append(self._log_followers)  # each follow ends with its container
        # Exits being recorded, and what they and the restarts set off (removals, machine unregistrations): tracked
        # so that none is collected while it runs, and an idle agent does not exit under them.
        self._exiting: set[asyncio.Task[None]] = set()
        self._backoff = backoff or restart.Backoff()
        self._restart_timers: dict[str, asyncio.TimerHandle] = {}  # container id -> its pending restart
        self._health = health.Schedule(self._timed_health_check)  # timers of the running containers with a check
        self._notify = notify or NotifySockets(paths.notify)  # NOTIFY_SOCKETs of sdnotify=container ones
        self._machines = machines  # systemd-machined (machines.py); None: containers are not registered
        self._machined: bool | None = None  # whether the host has machined: asked once, at the first registration
        # remove_on_exit containers whose removal waits, after their exit, for these callers (bus unique names)
        # to read the exit code and the last lines (hold_removal); not kept over a restart of the agent.
        self._holds: dict[str, set[str]] = {}
        self._restarting: set[str] = set()  # containers a Restart stops and starts: their exit removes nothing
        self._drop_watch: DropSource | None = None
        self._drops_seen: set[tuple[str, int, str]] = set()  # (unit, usec, source) of the reports counted
        self._noting: set[asyncio.Task[None]] = set()
        self._drop_looking = False  # a worker thread reads _drop_watch: it is closed only after

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- reads: from memory, never waiting on systemd or a container ---------------------------

    def list(self) -> list[Container]:
        return sorted(self._containers.values(), key=lambda c: c.created_at)

    def get(self, name_or_id: str) -> Container:
        return self._containers.find(name_or_id)

    def activity(self) -> list[str]:
        """What an exit of the agent now would cut short or give up, in words; empty when nothing. The agent
        exits when idle only then (lifecycle.py): containers that exist but do not run need nothing of it,
        but one that publishes ports does, since the agent holds its host ports bound (network/core.py)."""
        busy = []
        running = sum(1 for c in self._containers.values() if c.state is State.RUNNING)
        if running:
            busy.append(f"{running} containers running")
        # A failed start's monitor still exiting keeps its pidfd though the state says failed.
        if (self._containers.creating or self._exiting or any(c.state is State.REMOVING for c in self._containers.values())
                or any(rt.lock.locked() or rt.caching is not None or rt.monitor_pidfd >= 0
                       for cid, rt in self._runtime.items() if self._containers.get(cid, None) is None
                       or self._containers[cid].state is not State.RUNNING)):
            busy.append("containers being created, started, stopped or removed")
        if waiting := sum(1 for c in self._containers.values() if c.restart_at):
            busy.append(f"{waiting} containers waiting to be restarted")
        if followers := len(self._log_followers):
            busy.append(f"{followers} logs followed")
        if held := sum(1 for cid in self._holds if cid in self._containers):
            busy.append(f"{held} containers held for their attached clients (--rm)")
        if published := [c.name for c in self._containers.values() if c.spec.ports]:
            busy.append(f"host ports held for {', '.join(published)}")
        return busy

    def environment(self, container_id: str) -> list[str]:
        return list(self._full_env(self._get(container_id).spec))

    # --- create ----------------------------------------------------------------------------------

    async def prepare(self, name: str, image: str, command: list[str], options: dict[str, Any],
                      owner_uid: int = 0) -> CreatePlan:
        """Check a create and resolve everything it names, changing nothing (but for an image given as a path,
        imported): the bus layer authorizes the plan's objects, then create(plan) makes the container."""
        fields = parse_options(options)
        name = validate_name(name) if name else self._free_name()
        # Every argument is checked before the image is imported: a refused call leaves no new image behind.
        # An empty command means the image's (Entrypoint + Cmd), as in Docker.
        command = validate_command(command) if command else ()
        if self._containers.name_taken(name):
            raise NameInUse(name)
        if fields.get("init") and not os.access(self._paths.init, os.X_OK):
            raise InvalidArgument(f"Option 'init': the init program {self._paths.init} is not installed "
                                  "(Debian package catatonit)")
        if fields.get("volumes"):
            fields["volumes"], fields["anonymous_volumes"] = name_anonymous(fields["volumes"])
        img = await self._images.resolve(image, need_command=not command and not fields.get("entrypoint"),
                                         owner_uid=owner_uid)
        defaults = await self._images.defaults(img, command, fields)
        spec = ContainerSpec(name=name, image=image, image_id=img.id, command=defaults.command, **defaults.fields)
        if not spec.health_cmd and (given := [k for k in (*health.TIMING_FIELDS, "health_on_failure") if k in fields]):
            why = "health_cmd is empty" if "health_cmd" in fields else "give health_cmd (the image has no HEALTHCHECK)"
            raise InvalidArgument(f"Option '{given[0]}' needs a health check: {why}")
        if spec.sdnotify == "healthy" and not spec.health_cmd:
            raise InvalidArgument("Option sdnotify 'healthy' needs a health check: give health_cmd (the image has "
                                  "no HEALTHCHECK)")
        protocol.check_size(spec, "The container's command, environment, labels and setup steps")
        volumes = tuple(VolumeUse(m.source, m.read_only, self._volumes.find(m.source))
                        for m in map(parse_volume, spec.volumes)
                        if m.named and m.source not in spec.anonymous_volumes)
        return CreatePlan(spec=spec, image=img, owner_uid=owner_uid, volumes=volumes,
                          networks=self._networks.named_networks(spec.networks),
                          joins=self._networks.namespace_owners(spec.networks))

    async def create(self, plan: CreatePlan, starting: bool = False) -> Container:
        """Make the container a prepared (and authorized) plan describes. What the plan resolved must still be
        what it names: an object that changed meanwhile (removed and made again by someone else) was not the
        one authorized, and the create is refused, leaving nothing. starting: it is started next (RunContainer)."""
        spec, name = plan.spec, plan.spec.name
        if starting:
            self._scopes.expect_move()  # its wait runs while the container is made and forked
        # Checked again now: another create may have taken the name while the image was imported; from
        # here until the container is in the table, the table holds the name (the insert awaits).
        if self._containers.name_taken(name):
            raise NameInUse(name)
        self._check_unchanged(plan)
        # Host paths are looked at only now, once authorized: whether a path exists is the host's to tell.
        check_host_paths(spec.volumes)  # NoSuchPath: never created silently
        made = await self._volumes.ensure(named_volumes(spec.volumes), plan.owner_uid)  # first use makes it, as Podman
        container = Container(id=new_id(), spec=spec, created_at=now_usec(), owner_uid=plan.owner_uid)
        try:
            for use in plan.volumes:
                volume = next(v for v in made if v.name == use.name)
                if (volume.id != use.volume.id) if use.volume else (volume.owner_uid != plan.owner_uid):
                    raise AccessDenied(f"Volume '{use.name}' changed while the create was being authorized: "
                                       "call again")
            if spec.userns == "auto":
                container = container.with_(id_first=self._ranges.take(container.id).first)
            # Addresses, ports and names are taken before anything is stored: a refusal leaves nothing behind.
            container = self._networks.reserve(container)
            await self._store_new(container, plan.image.id)
        except BaseException:
            self._ranges.release(container.id)  # nothing of it was stored: no file has its ids
            await self._remove_anonymous_volumes(spec)  # made for this container alone
            raise
        self._containers[container.id] = container
        self._runtime[container.id] = _Runtime()
        if container.id_first >= 0:
            userdb.register(container.name, container.id_first, self._paths.userdb)
        self._networks.created(container)  # addresses to the store; namespace and veths made meanwhile
        # Exported before the next await: from now on ListContainers and GetContainer return its path.
        for listener in self._listeners:
            listener.container_added(container)
        await self._event("created", container, "created container %s (%s)", name, container.id[:12])
        return container

    def _check_unchanged(self, plan: CreatePlan) -> None:
        if plan.networks != self._networks.named_networks(plan.spec.networks) or (
                [c.id for c in plan.joins] != [c.id for c in self._networks.namespace_owners(plan.spec.networks)]):
            raise AccessDenied(f"A network or container that container '{plan.spec.name}' would join changed while "
                               "the create was being authorized: call again")

    async def _store_new(self, container: Container, image_id: str) -> None:
        """Its directories and its row; the name, image and volumes held meanwhile (ContainerTable.hold)."""
        name, spec = container.name, container.spec
        directory = self._paths.container(container.id)
        # In use from here (prune, RemoveImage, RemoveVolume).
        self._containers.hold(name, image_id, tuple(named_volumes(spec.volumes)))
        try:
            _make_directories(directory)  # four mkdirs on the agent's own disk: sooner done than a hop to a thread
            await self._store.insert_container(container)
        except BaseException:
            self._networks.release(container.id)
            await asyncio.to_thread(filetree.remove_tree, directory, ignore_errors=True)
            raise
        finally:
            self._containers.release(name)

    async def _remove_anonymous_volumes(self, spec: ContainerSpec) -> None:
        """The volumes made for `-v DEST` go with their container (as `podman run --rm` and `rm -v` do)."""
        for volume in spec.anonymous_volumes:
            try:
                await self._volumes.remove(volume)
            except (VolumeInUse, NoSuchVolume):
                pass  # another container mounts it by name, or it is gone already

    def _free_name(self) -> str:
        taken = {c.name for c in self._containers.values()}
        while (name := generate_name()) in taken:
            pass
        return name

    # --- start -----------------------------------------------------------------------------------

    async def start_or_remove(self, container_id: str) -> Container:
        """start, for a remove_on_exit container: a start that fails removes it at once, as `podman run --rm`
        does, rather than when its monitor's end is recorded (a held removal would never come); the start's error
        is raised."""
        try:
            return await self.start(container_id)
        except QuiltError:
            try:
                await self.remove(container_id, True)
            except QuiltError:
                pass  # the start's error is the one to report; the hold ends with its holder
            raise

    async def start(self, container_id: str, stdio: tuple[int, int, int] | None = None, tty: bool = False) -> Container:
        """stdio: the caller's stdin, stdout and stderr for this run instead of /dev/null and the journal
        (still the caller's to close); tty: stdin is a terminal, to be the init's controlling one."""
        if tty and stdio is None:
            raise InvalidArgument("Option 'tty' needs the caller's terminal: use StartWithFds with a terminal as stdin")
        rt = self._runtime[self._get(container_id).id]
        async with rt.lock:
            c = self._get(container_id)
            if c.state is State.RUNNING:
                raise AlreadyRunning(c.name)
            if not c.state.can_start():
                raise NotRunning(c.name, c.state.value)
            # A user's start: a pending restart is this one, and the policy counts from here again.
            self._cancel_restart(c.id)
            c = c.with_(restart_count=0, restart_streak=0, restart_at=0, user_stopped=False)
            if stdio is None:
                return await self._launch(c, rt, None, tty)
            relays = caller_stdio.prepare(stdio)  # a regular file is relayed, never handed to the container
            try:
                return await self._launch(c, rt, relays.fds, tty)
            finally:
                relays.close_handed()

    async def _launch(self, c: Container, rt: _Runtime, stdio: tuple[int, int, int] | None = None,
                      tty: bool = False) -> Container:
        """Run c again: with sdnotify=container, the agent listens on its NOTIFY_SOCKET from before it starts
        until its exit is recorded."""
        rt.mainpid_refused = False
        rt.notified.clear()
        if c.spec.sdnotify != "container":
            return await self._spawn(c, rt, stdio, tty, "")
        notify_dir = self._notify.open(c.id, max(c.id_first, 0), self._notified)
        try:
            return await self._spawn(c, rt, stdio, tty, str(notify_dir))
        except BaseException:
            if rt.monitor_pidfd < 0:  # nothing runs that could send to it, nor will its exit close it
                self._notify.close(c.id)
            raise

    async def _spawn(self, c: Container, rt: _Runtime, stdio: tuple[int, int, int] | None, tty: bool,
                     notify_dir: str) -> Container:
        self._scopes.expect_move()  # a start of its own (StartContainer, a restart); RunContainer's began earlier
        directory = self._paths.container(c.id)
        exit_file = directory / "exit.json"
        exit_file.unlink(missing_ok=True)
        image = self._images.get(c.spec.image_id)  # from the catalog in memory: no thread needed
        cached, setup_layer = await self._setup_plan(c, image)
        # Noted before the next await: from here a prune sees the cached setup image in use.
        c = self._containers[c.id] = c.with_(setup_image=cached.id if cached else "")
        mounts = self._volumes.resolve(c.spec.volumes)  # NoSuchPath if a host path went away since create
        net = await self._networks.launch(c, effective_hostname(c.spec))  # the namespace to join, the /etc files
        spec = LaunchSpec(
            container_id=c.id, name=c.name, unit=c.unit, lower=(cached or image).lower,
            upper=str(directory / "upper"),
            work=str(directory / "work"), merged=str(directory / "merged"), exit_file=str(exit_file),
            command=c.spec.command, env=exec_environment(self._full_env(c.spec), ExecOptions(tty=tty)),
            workdir=c.spec.workdir, user=c.spec.user,
            hostname=effective_hostname(c.spec), namespaces=c.spec.namespaces,
            netns=net.netns, bind_files=net.files, tty=tty,
            mounts=mounts,
            tmpfs=tuple(tuple(t.split(":", 1)) for t in c.spec.tmpfs), read_only=c.spec.read_only,
            setup=c.spec.setup, setup_layer=setup_layer, setup_cached=cached.id if cached else "",
            seccomp=c.spec.seccomp != "unconfined",
            id_map=IdRange(c.id_first).id_map() if c.id_first >= 0 else "", id_first=c.id_first,
            init=str(self._paths.init) if c.spec.init else "", notify_dir=notify_dir,
            capabilities=capability_mask(c.spec), monitor=str(self._paths.monitor), log_driver=c.spec.log_driver,
            log_dir=str(directory) if c.spec.log_driver in FILE_LOG_DRIVERS else "",
            log_max_size=c.spec.log_max_size, log_max_files=c.spec.log_max_files,
        )
        rt.exited.clear()  # the same Event: a Wait() on a created container is woken by this run's exit
        rt.scope_emptied = False
        rt.output_to_caller = stdio is not None
        t0 = time.perf_counter()
        registering: asyncio.Task[tuple[str, str] | None] | None = None
        try:
            sock = await self._zygote.spawn(spec, stdio or ())
            keep_sock = False
            try:
                forked, spawned, t1 = await self._into_scopes(c, rt, sock)
                c = c.with_(monitor_pid=forked.monitor_pid, monitor_start=forked.monitor_start,
                            main_pid=spawned.init_pid, exit_code=-1, exit_signal=0, oom_killed=False, failure_reason="",
                            started_at=now_usec(), finished_at=0, health="starting" if c.spec.health_cmd else "",
                            ready=False, notify_status="")
                # Recorded before Go: if the agent dies now, the restarted one finds the monitor.
                await self._store.update_status(c)
                self._containers[c.id] = c
                self._watch(c.id, rt)
                # machined is asked now, while the command is set up and exec'd: the leader is in its scope.
                registering = self._begin_registration(c)
                t2 = time.perf_counter()
                protocol.send(sock, Go())
                reply = protocol.decode(await self._loop.sock_recv(sock, protocol.MAX_MESSAGE), Started, ExecFailed)
                if setup_layer and isinstance(reply, Started):
                    # The setup steps run now; once they succeed, the monitor packs their layer for the cache.
                    keep_sock = True
                    rt.caching = self._loop.create_task(self._cache_setup(c, image, sock, Path(setup_layer)))
            except protocol.ProtocolError as err:
                raise ContainerFailed(f"Container '{c.name}' failed to start: the helper said {err}") from err
            finally:
                if not keep_sock:
                    sock.close()
            # The monitor's exit may have been recorded meanwhile (a command that ends at once): build on that.
            c = self._get(c.id)
            if isinstance(reply, ExecFailed):
                c = await self._set(c.with_(state=State.FAILED, failure_reason=reply.reason, exit_code=reply.exit_code))
                await self._event("failed", c, "container %s failed to start: %s", c.name, reply.reason,
                                  reason=reply.reason)
                if reply.exhausted:
                    raise ResourceExhausted(f"Container '{c.name}' failed to start: {reply.reason}")
                failed = {127: CommandNotFound, 126: CommandNotExecutable}.get(reply.exit_code, ContainerFailed)
                raise failed(f"Container '{c.name}' failed to start: {reply.reason}")
            if c.monitor_pid:  # still running: its exit is not recorded yet
                c = await self._set(c.with_(state=State.RUNNING, ready=c.ready or c.spec.sdnotify == "conmon"))
                if c.spec.health_cmd:
                    self._health.watch(c.id, c.spec.health_interval)
            t3 = time.perf_counter()
            await self._event("started", c, "started container %s, init pid %d, in %.1f ms (fork %.1f, scope %.1f, "
                              "exec %.1f)", c.name, c.main_pid, (t3 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3,
                              (t3 - t2) * 1e3)
        except BaseException:
            if registering is not None:
                self._abandon_registration(c, registering)
            raise
        if registering is not None:
            # Taken after its started event: an exit recorded while machined answers must not come before it.
            try:
                registered = await asyncio.shield(registering)  # a cancelled start leaves it to the undo below
            except BaseException:
                self._abandon_registration(c, registering)
                raise
            c = await self._take_registration(c, registered)
        return c

    async def _into_scopes(self, c: Container, rt: _Runtime,
                           sock: socket.socket) -> tuple[MonitorForked, Spawned, float]:
        """The monitor's first word and the init's pid, each put into its scope as it comes (the monitor's scope
        begun at once: protocol.MonitorForked says why), and the container's network ready; with the time Spawned
        came (the start's phases). On any failure the monitor is told to abort, and the pidfds opened here are
        closed."""
        forked = protocol.decode(await self._loop.sock_recv(sock, protocol.MAX_MESSAGE), MonitorForked)
        rt.monitor_pidfd = os.pidfd_open(forked.monitor_pid)
        monitor_scope = self._loop.create_task(self._start_monitor_scope(c, forked.monitor_pid))
        try:
            spawned = protocol.decode(await self._loop.sock_recv(sock, protocol.MAX_MESSAGE), Spawned)
            spawned_at = time.perf_counter()
            rt.init_pidfd = os.pidfd_open(spawned.init_pid)
            await self._start_scopes(c, spawned.init_pid, monitor_scope)
            await self._networks.ready(c)  # interfaces, address, route, ports: before the command runs
        except BaseException as err:
            # Abort first: the monitor kills the init at once, and its scope, begun or not, ends empty.
            with contextlib.suppress(OSError):  # a monitor gone before its Spawned hears nothing
                protocol.send(sock, protocol.Abort(str(err)))
            try:
                await asyncio.wait([monitor_scope])  # its failure, if any, is told by the one raised here
                if not monitor_scope.cancelled():
                    monitor_scope.exception()
            finally:
                self._close_pidfds(rt)  # even if this wait is cancelled: no pidfd outlives a start that failed
            raise
        return forked, spawned, spawned_at

    async def _start_monitor_scope(self, c: Container, monitor_pid: int) -> None:
        """The monitor into a scope of its own, begun as soon as it exists (protocol.MonitorForked says why)."""
        # The monitor ignores SIGTERM: at a shutdown, its scope's stop waits for it to record the container's end.
        stop_usec = max(1, c.spec.stop_timeout * 1_000_000) + int(KILL_GRACE * 1_000_000)
        await self._scopes.start(c.monitor_unit, [monitor_pid], f"Quilt monitor of container {c.name}",
                                 ScopeLimits(stop_timeout_usec=stop_usec))

    async def _start_scopes(self, c: Container, init_pid: int, monitor_scope: asyncio.Task[None]) -> None:
        """The container's init into its scope, with its limits and its stop settings (what `systemctl stop`
        does to it), beside the monitor's scope begun before; both done."""
        stop_usec = max(1, c.spec.stop_timeout * 1_000_000)  # 0 would be no timeout at all for systemd
        limits = ScopeLimits(c.spec.memory_max, c.spec.cpu_quota, c.spec.pids_max,
                             kill_signal=c.spec.stop_signal or signals.SIGTERM, stop_timeout_usec=stop_usec)
        if c.spec.unit:  # a generated unit's service: its processes are the container's, stopped by its settings
            container = self._scopes.attach(c.unit, [init_pid], limits)
        else:
            container = self._scopes.start(c.unit, [init_pid], f"Quilt container {c.name}", limits)
        results = await asyncio.gather(container, monitor_scope, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the monitor, told to abort, kills the init: both scopes then end by themselves

    async def _setup_plan(self, c: Container, image: Image) -> tuple[Image | None, str]:
        """How this start treats the setup steps: a cached setup image to start from instead of running them,
        or where the monitor is to pack their result for the cache ("" = not cached)."""
        if not c.spec.setup or not c.spec.setup_cache:
            return None, ""
        cached = await self._images.setup_image(setup_cache_key(image.id, c.spec.user, c.spec.setup, c.owner_uid))
        if cached is not None:
            return cached, ""
        if await asyncio.to_thread(_has_files, self._paths.container(c.id) / "upper"):
            # Files copied in before the steps ran, or left by an earlier start: not the steps' result alone.
            log.info("The setup of container %s is not cached: its layer has files from before its steps", c.name)
            return None, ""
        layer = self._paths.container(c.id) / "setup-layer.tar"
        layer.unlink(missing_ok=True)
        return None, str(layer)

    async def _cache_setup(self, c: Container, image: Image, sock: socket.socket, layer: Path) -> None:
        """Wait for the monitor's word that the setup steps succeeded, then keep their layer as a cache image.
        Nothing comes when a step fails or the container is stopped first: the socket just ends."""
        try:
            try:
                done = protocol.decode(await self._loop.sock_recv(sock, protocol.MAX_MESSAGE), SetupDone)
            except (OSError, protocol.ProtocolError):
                return
            finally:
                sock.close()
            if done.error:
                log.warning("The setup of container %s is not cached: %s", c.name, done.error)
                return
            key = setup_cache_key(image.id, c.spec.user, c.spec.setup, c.owner_uid)
            if await self._images.setup_image(key) is None:  # another container's may have landed meanwhile
                await self._images.commit_setup(image, layer, key, c.spec.setup, c.owner_uid)
        except Exception:  # noqa: BLE001 - the cache is an optimisation: the container runs on regardless
            log.exception("Could not cache the setup of container %s", c.name)
        finally:
            await asyncio.to_thread(layer.unlink, True)

    def _full_env(self, spec: ContainerSpec) -> tuple[str, ...]:
        # Never the agent's own environment: only defaults, then what the caller gave.
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": effective_hostname(spec), "container": "quilt"}
        env.update(e.split("=", 1) for e in spec.env)
        if spec.sdnotify == "container":
            env["NOTIFY_SOCKET"] = CONTAINER_SOCKET
        return tuple(f"{k}={v}" for k, v in env.items())

    # --- exits -----------------------------------------------------------------------------------

    def _watch(self, container_id: str, rt: _Runtime) -> None:
        """Learn of the monitor's exit: its pidfd becomes readable."""
        self._loop.add_reader(rt.monitor_pidfd, self._monitor_exited, container_id)

    def _monitor_exited(self, container_id: str) -> None:
        rt = self._runtime.get(container_id)
        if rt is None or rt.monitor_pidfd < 0:
            return
        self._loop.remove_reader(rt.monitor_pidfd)
        c = self._containers.get(container_id)
        rt.scope_emptied = c is not None and "pid" in c.spec.namespaces and self._init_ended(container_id)
        self._close_pidfds(rt)
        self._track(self._record_exit(container_id))

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work as a task of its own, kept in _exiting until done: never collected while it runs, and the
        agent does not exit idle under it."""
        task = self._loop.create_task(work)
        self._exiting.add(task)
        task.add_done_callback(self._exiting.discard)

    def _close_pidfds(self, rt: _Runtime) -> None:
        for attr in ("monitor_pidfd", "init_pidfd"):
            fd = getattr(rt, attr)
            if fd >= 0:
                os.close(fd)
                setattr(rt, attr, -1)

    def _read_exit(self, container_id: str) -> ExitStatus:
        try:
            data = json.loads((self._paths.container(container_id) / "exit.json").read_text())
            return ExitStatus(**data)
        except (OSError, ValueError, TypeError):
            return ExitStatus(exit_code=-1, reason="exit status unknown: the container's monitor ended "
                                                   "without recording one", finished_at=now_usec())

    async def _record_exit(self, container_id: str, plan_restart: bool = True) -> None:
        c = self._containers.get(container_id)
        rt = self._runtime.get(container_id)
        if c is None or rt is None or c.state is State.REMOVING:
            return  # removed, or being removed (a failed start's monitor may exit that late)
        if rt.caching is not None:
            await asyncio.wait([rt.caching])  # it logs its own failures
            rt.caching = None
            c = self._containers.get(container_id)
            if c is None or c.state is State.REMOVING:
                return
        self._health.forget(container_id)
        self._notify.close(container_id)
        if c.machine_name:
            # Not waited for: the exit is recorded, and Wait answered, without a round trip to machined. Its name is
            # free for another registration all the same: machined answers this agent's calls in the order sent.
            self._track(self._unregister_machine(c))
        status = self._read_exit(container_id)

        def ended(c: Container) -> Container:
            state = State.FAILED if c.state is State.FAILED or status.failed or (
                status.reason and status.exit_code in (125, 126, 127) and c.state is not State.RUNNING) else State.EXITED
            return c.with_(state=state, exit_code=status.exit_code, exit_signal=status.exit_signal,
                           oom_killed=status.oom_killed, finished_at=status.finished_at or now_usec(),
                           main_pid=0, monitor_pid=0, monitor_start=0, ready=False, machine="", paused=False,
                           machine_name="", failure_reason=c.failure_reason or status.reason)

        cause = ""
        if plan_restart and restart.wanted(ended(c)):
            # Asked before the end is told: whoever sees the container ended sees, in the same change, whether a
            # stop through systemd (`systemctl stop`, `machinectl terminate`) keeps its policy from restarting it.
            cause = await self._stop_cause(c)
            c = self._containers.get(container_id)  # (a failed start's container may be removed meanwhile)
            if c is None or c.state is State.REMOVING:
                return
        c = await self._set(ended(c).with_(user_stopped=c.user_stopped or cause == "user"))
        if c.oom_killed:
            await self._event("oom", c, "container %s was killed for lack of memory", c.name)
        if status.failed:
            await self._event("failed", c, "container %s failed: %s", c.name, c.failure_reason,
                              reason=c.failure_reason)
        await self._event("exited", c, "container %s exited with code %d", c.name, c.exit_code,
                          exit_code=c.exit_code, oom_killed=c.oom_killed)
        if plan_restart and not cause and restart.wanted(c):  # (at a shutdown, start_at_boot() decides)
            c = await self._plan_restart(c)
        if (self._holds.get(c.id) and c.spec.log_driver not in (*FILE_LOG_DRIVERS, "none")
                and not rt.output_to_caller):
            self._begin_journal_sync(c, rt)
        rt.exit_code = c.exit_code
        rt.exited.set()
        if (c.spec.remove_on_exit and c.id in self._containers and not self._holds.get(c.id)
                and c.id not in self._restarting):
            await self._remove_on_exit(c)

    async def _remove_on_exit(self, c: Container) -> None:
        try:
            await self.remove(c.id, force=False)
        except NoSuchContainer:
            pass  # removed meanwhile (by its holder, as quiltctl run --rm does once it has the exit)
        except Exception:  # noqa: BLE001 - logged; the container stays for the user to remove
            log.exception("could not remove container %s after its exit", c.name)

    # --- remove_on_exit held for an attached client ------------------------------------------------

    def hold_removal(self, container_id: str, holder: str) -> None:
        """Keep the remove_on_exit container, once exited, until `holder` has removed it or is gone (the bus
        layer calls release_holder then): the attached client reads the exit code and the last lines of the
        output first, and the container goes whatever becomes of the client."""
        c = self._get(container_id)
        if not c.spec.remove_on_exit:
            raise InvalidArgument(f"Container {c.name} was not created with remove_on_exit: there is no removal "
                                  "to hold")
        self._holds.setdefault(c.id, set()).add(holder)

    def release_holder(self, holder: str) -> None:
        """`holder` has left the bus: the exited containers it alone held are removed now."""
        for cid, holders in list(self._holds.items()):
            holders.discard(holder)
            if holders:
                continue
            del self._holds[cid]
            c = self._containers.get(cid)
            if (c is not None and c.spec.remove_on_exit and c.state in (State.EXITED, State.FAILED)
                    and cid not in self._restarting):
                self._track(self._remove_on_exit(c))

    # --- restarts by policy (restart.py) ------------------------------------------------------------

    async def _plan_restart(self, c: Container) -> Container:
        """c ended by no stop through systemd and its policy wants it back: schedule the restart after the
        back-off's wait."""
        c = self._get(c.id)
        if c.state not in (State.EXITED, State.FAILED) or c.restart_at:
            return c  # started again meanwhile
        streak = self._backoff.streak(c)
        wait = self._backoff.wait(streak)
        c = await self._set(c.with_(restart_streak=streak, restart_at=now_usec() + int(wait * 1e6)))
        await self._event("restarting", c, "container %s exited with code %d; restart %d in %.3g s", c.name,
                          c.exit_code, c.restart_count + 1, wait, exit_code=c.exit_code, attempt=c.restart_count + 1,
                          delay_usec=int(wait * 1e6), at=c.restart_at)
        self._schedule_restart(c)
        return c

    async def _stop_cause(self, c: Container) -> str:
        try:
            cause = await self._scopes.stop_cause(c.unit)
        except Exception:  # noqa: BLE001 - a failure here must not keep the exit from being recorded
            log.exception("cannot tell whether systemd was asked to stop container %s; taking it for a crash", c.name)
            return ""
        if cause:
            log.info("container %s was stopped through systemd (%s): its restart policy leaves it stopped", c.name,
                     "the host shuts down" if cause == "shutdown" else "a user's stop")
        return cause

    def _schedule_restart(self, c: Container) -> None:
        self._cancel_restart(c.id)
        wait = max(0.0, (c.restart_at - now_usec()) / 1e6)
        self._restart_timers[c.id] = self._loop.call_later(wait, self._restart_due, c.id)

    def _cancel_restart(self, container_id: str) -> None:
        timer = self._restart_timers.pop(container_id, None)
        if timer is not None:
            timer.cancel()

    def _restart_due(self, container_id: str) -> None:
        self._restart_timers.pop(container_id, None)
        self._track(self._restart(container_id))

    async def _restart(self, container_id: str) -> None:
        rt = self._runtime.get(container_id)
        if rt is None:
            return
        async with rt.lock:
            c = self._containers.get(container_id)
            # Removed, started by a user, or stopped by one meanwhile: nothing is pending any more.
            if c is None or not c.restart_at or c.state not in (State.EXITED, State.FAILED):
                return
            cause = await self._stop_cause(c)  # a stop through systemd asked during the back-off's wait
            if cause:
                await self._set(c.with_(restart_at=0, user_stopped=cause == "user"))
                return
            c = await self._set(c.with_(restart_at=0, restart_count=c.restart_count + 1))
            try:
                await self._launch(c, rt)
            except Exception as err:  # noqa: BLE001 - a restart has no caller: the journal and an event say why
                if rt.monitor_pidfd >= 0:
                    return  # the command failed to start: its exit is recorded as any, and the policy decides
                # Nothing ran (its image or a host path is gone, systemd refused the scope): trying again would
                # fail the same way, so it fails once, saying why, and stays.
                reason = f"restart failed: {err}"
                if not isinstance(err, QuiltError):
                    log.exception("restarting container %s", c.name)
                c = await self._set(self._get(c.id).with_(state=State.FAILED, failure_reason=reason))
                await self._event("failed", c, "container %s could not be restarted: %s", c.name, err, reason=reason)

    async def start_at_boot(self) -> list[Container]:
        """Start what the host's boot should bring back (quilt-restart.service calls this once per boot): every
        container with policy always, and those with unless-stopped that no user stopped. One that fails to
        start is logged and left; the others start regardless."""
        started = []
        for c in self.list():
            if not restart.at_boot(c) or c.state is State.RUNNING or not c.state.can_start():
                continue
            try:
                started.append(await self.start(c.id))
            except QuiltError as err:
                log.error("container %s was not started at boot: %s", c.name, err)
        return started

    # --- stop, kill, wait ------------------------------------------------------------------------

    async def kill(self, container_id: str, sig: int) -> None:
        c = self._get(container_id)
        if not 1 <= sig < signals.NSIG:
            raise InvalidArgument(f"Invalid signal {sig}")
        rt = self._runtime[c.id]
        if c.state is not State.RUNNING or rt.init_pidfd < 0:
            raise NotRunning(c.name, c.state.value)
        ending = sig in (signals.SIGKILL, signals.SIGTERM, signals.SIGINT, signals.SIGQUIT, c.spec.stop_signal)
        if ending:
            # A user ending it (not one asking it to reload, say): no restart policy brings it back.
            c = await self._set(c.with_(user_stopped=True))
        try:
            signals.pidfd_send_signal(rt.init_pidfd, sig)
        except ProcessLookupError:
            raise NotRunning(c.name, "exiting") from None
        if ending and c.paused:
            # Sent first, then thawed: it runs again only to meet the signal. Another signal (HUP, USR1) waits,
            # pending, for the unpause, as Podman leaves a paused container paused.
            await self._thaw(c, ending=True)

    async def stop(self, container_id: str, timeout: int) -> Container:
        """As systemd stops the container's scope (`systemctl stop`): the stop signal (the image's StopSignal,
        else SIGTERM) to every process in it, then SIGKILL after timeout seconds (0 = the container's
        stop_timeout, which is the scope's TimeoutStopSec=)."""
        c = self._get(container_id)
        if c.state is not State.RUNNING:
            if c.restart_at:  # waiting to be restarted: it stays stopped
                self._cancel_restart(c.id)
                return await self._set(c.with_(restart_at=0, user_stopped=True))
            return c  # as podman stop: stopping a stopped container is done already
        c = await self._set(c.with_(user_stopped=True))  # no restart policy brings it back
        if c.paused:
            c = await self._thaw(c, ending=True)  # a frozen process would not run its stop signal's handler
        if c.spec.unit:
            await self._stop_service(c)
        else:
            await self._stop(c, timeout or c.spec.stop_timeout)
        return self._get(c.id)

    async def _stop_service(self, c: Container) -> None:
        """A container of a generated unit stops with its service, which systemd stops by the unit's KillSignal= and
        TimeoutStopSec=: stopping only the container would be a crash to the service (and its Restart=)."""
        await self._scopes.stop_service(c.unit)
        try:
            await asyncio.wait_for(self._runtime[c.id].exited.wait(), KILL_GRACE)
        except asyncio.TimeoutError:
            await self._kill_and_wait(c)

    async def _stop(self, c: Container, timeout: float) -> None:
        sig = c.spec.stop_signal or signals.SIGTERM
        if not c.spec.unit:
            await self._scopes.kill(c.unit, sig)
        else:  # its service's other processes (the unit's runner) are not the container's
            try:
                signals.pidfd_send_signal(self._runtime[c.id].init_pidfd, sig)
            except (ProcessLookupError, OSError):
                pass
        try:
            await asyncio.wait_for(self._runtime[c.id].exited.wait(), timeout)
        except asyncio.TimeoutError:
            await self._kill_and_wait(c)

    async def _kill_and_wait(self, c: Container) -> None:
        rt = self._runtime[c.id]
        try:
            if rt.init_pidfd >= 0:
                signals.pidfd_send_signal(rt.init_pidfd, signals.SIGKILL)  # also when a failed start left no scope
        except ProcessLookupError:
            pass
        if not c.spec.unit:  # a service's other processes are not the container's
            await self._scopes.kill(c.unit, signals.SIGKILL)  # every process: also those of a host pid namespace
        try:
            await asyncio.wait_for(rt.exited.wait(), KILL_GRACE)
        except asyncio.TimeoutError:
            await self._scopes.stop(c.monitor_unit)  # the monitor is stuck: end it
            await asyncio.wait_for(rt.exited.wait(), KILL_GRACE)

    async def wait(self, container_id: str) -> int:
        c = self._get(container_id)
        rt = self._runtime[c.id]
        while c.state not in (State.EXITED, State.FAILED):
            if c.state is State.REMOVING:
                raise NoSuchContainer(c.name)
            await rt.exited.wait()
            now = self._containers.get(c.id)
            if (now is None or now.state is State.REMOVING) and rt.exit_code is not None:
                return rt.exit_code  # it exited, and its removal (remove_on_exit, rm) came first
            if now is None:
                raise NoSuchContainer(c.name)
            c = now
        return c.exit_code

    async def wait_condition(self, container_id: str, conditions: list[str]) -> tuple[str, int]:
        """Wait until one of the conditions holds (WAIT_CONDITIONS, as `podman wait --condition`); the one met
        and the exit code (-1 unless exited). A container that ends meets no condition but exited: that is
        then answered, whatever was asked, so that nobody waits for a readiness that cannot come."""
        unknown = [x for x in conditions if x not in WAIT_CONDITIONS]
        if unknown or not conditions:
            raise InvalidArgument(f"Invalid wait condition '{unknown[0] if unknown else ''}': choose among "
                                  f"{', '.join(WAIT_CONDITIONS)}")
        c = self._get(container_id)
        rt = self._runtime[c.id]
        while True:
            changed = rt.changed
            c = self._get(c.id)
            if c.state is State.REMOVING:
                raise NoSuchContainer(c.name)
            met = self._condition(c, conditions)
            if met:
                return met, c.exit_code if met == "exited" else -1
            await changed.wait()

    @staticmethod
    def _condition(c: Container, conditions: list[str]) -> str:
        running = c.state is State.RUNNING
        held = {"exited": c.state in (State.EXITED, State.FAILED), "running": running,
                "ready": running and c.ready, "healthy": running and c.health == "healthy",
                "unhealthy": running and c.health == "unhealthy"}
        met = next((x for x in conditions if held[x]), "")
        if not met and held["exited"] and c.started_at and not c.restart_at:
            return "exited"  # ended, and nothing pending brings it back: the others cannot hold
        return met

    def _notified(self, container_id: str, note: Notification) -> None:
        """A datagram on the container's NOTIFY_SOCKET (in the loop): applied NOTIFY_COALESCE later, with whatever
        else comes meanwhile, so that a container sending in a loop costs one status change per interval."""
        rt = self._runtime.get(container_id)
        c = self._containers.get(container_id)
        if rt is None or c is None or c.state is not State.RUNNING:
            return
        if note.mainpid is not None and not rt.mainpid_refused:
            rt.mainpid_refused = True
            log.warning("container %s sent MAINPID=%d: not honoured, its init (pid %d) stays its main process",
                        c.name, note.mainpid, c.main_pid, extra={"CONTAINER_NAME": c.name})
        pending = not rt.notified
        if note.ready:
            rt.notified["ready"] = True
        if note.status is not None:
            rt.notified["notify_status"] = note.status
        if pending and rt.notified:
            self._loop.call_later(NOTIFY_COALESCE, self._apply_notified, container_id)

    def _apply_notified(self, container_id: str) -> None:
        rt = self._runtime.get(container_id)
        c = self._containers.get(container_id)
        if rt is None or c is None or not rt.notified:
            return
        changes, rt.notified = rt.notified, {}
        if c.state is not State.RUNNING:
            return
        becomes_ready = bool(changes.get("ready")) and not c.ready
        changes["ready"] = c.ready or becomes_ready
        if all(getattr(c, key) == value for key, value in changes.items()):
            return
        self._track(self._take_notified(c.with_(**changes), becomes_ready))

    async def _take_notified(self, c: Container, becomes_ready: bool) -> None:
        c = await self._set(c)
        if becomes_ready:
            await self._event("ready", c, "container %s is ready%s", c.name,
                              f": {c.notify_status}" if c.notify_status else "", status=c.notify_status)

    # --- remove ----------------------------------------------------------------------------------

    async def remove(self, container_id: str, force: bool) -> None:
        c = self._get(container_id)
        self._networks.check_removable(c)  # no container may be left sharing its network namespace
        rt = self._runtime[c.id]
        if c.restart_at and not force:
            raise AlreadyRunning(c.name, "it is waiting to be restarted: stop it first or remove it with force")
        self._cancel_restart(c.id)  # a removal wins over a pending restart
        if c.state is State.RUNNING:
            if not force:
                raise AlreadyRunning(c.name, "stop it first or remove it with force")
            c = await self._set(c.with_(user_stopped=True))  # its end is no reason to restart it
            if c.paused:
                c = await self._thaw(c, ending=True)
            if c.spec.unit:
                await self._stop_service(c)
            else:
                await self._kill_and_wait(c)  # as docker rm -f: SIGKILL, no grace period
        elif rt.monitor_pidfd >= 0:
            # A failed start's monitor still exiting: it writes the exit file into the directory removed below.
            await self._kill_and_wait(c)
        async with rt.lock:
            # Another remove that finished first leaves no container (_get raises). One in state REMOVING
            # is a remove that did not finish (an error, or the agent died: recover() calls this): finish it.
            c = self._get(c.id)
            if c.state is not State.REMOVING:
                c = await self._set(c.with_(state=State.REMOVING))
            if not c.spec.unit and not rt.scope_emptied:
                # (A generated unit's service is systemd's: its runner may be replacing the container.) StopUnit +
                # ResetFailedUnit: what runs in it ends now, and the scope is gone, not when systemd notices.
                await self._scopes.stop(c.unit)
            await self._networks.detach(c)  # its names at once, then its veths, namespace and rules
            directory = self._paths.container(c.id)
            try:
                # Its upper directory is the container's to fill, at any depth.
                await asyncio.to_thread(filetree.remove_tree, directory)
                # Its ids may serve another container only now: no file of its own is left with them.
                self._ranges.release(c.id)
                if c.id_first >= 0:
                    userdb.unregister(c.name, c.id_first, self._paths.userdb)
            except OSError:
                # Not a reason to keep the container: recover() removes what is left at the next start, before
                # its range is handed out again (recover holds only the ranges of stored containers).
                log.exception("removing container %s: files left in %s", c.name, directory)
            # Deleted only once the files are gone: until then an agent that dies finds the REMOVING row and
            # finishes the removal at its next start, anonymous volumes included.
            await self._store.delete_container(c.id)
            await self._event("removed", c, "removed container %s", c.name)
            self._health.drop(c.id)
            self._holds.pop(c.id, None)
            del self._containers[c.id]
            rt.exited.set()  # wake waiters: they find it gone
            rt.changed.set()
            if rt.monitor_pidfd >= 0:
                # Never leave a reader behind the runtime: _monitor_exited could not remove it, and the
                # readable pidfd would spin the loop forever.
                self._loop.remove_reader(rt.monitor_pidfd)
                self._close_pidfds(rt)
            del self._runtime[c.id]
        for listener in self._listeners:
            listener.container_removed(c)
        await self._remove_anonymous_volumes(c.spec)

    # --- restart, pause, rename, export -----------------------------------------------------------

    async def restart(self, container_id: str, timeout: int | None = None) -> Container:
        """As podman restart: a running (or paused) container is stopped as Stop does (timeout None: its own stop
        timeout; 0: SIGKILL at once), then started as Start does; one that does not run is just started. Done here
        rather than by the caller's Stop and Start so that a remove_on_exit container survives its stop."""
        c = self._get(container_id)
        self._restarting.add(c.id)
        try:
            if c.state is State.RUNNING:
                if timeout == 0:
                    try:
                        await self.kill(c.id, signals.SIGKILL)
                    except NotRunning:
                        pass  # it ended meanwhile
                    await self.wait(c.id)
                else:
                    await self.stop(c.id, timeout or 0)
            elif c.restart_at:
                await self.stop(c.id, 0)  # its pending restart is this one
            return await self.start(c.id)
        finally:
            self._restarting.discard(c.id)


    async def pause(self, container_id: str) -> Container:
        """Freeze every process of the running container (freezer.py): the container's cgroup, not a signal, so
        the processes cannot tell. NotRunning unless it runs (or when paused already); NotSupported on a host
        without the cgroup v2 freezer, or for a container of a generated unit (its processes share the service's
        cgroup with the unit's runner)."""
        rt = self._runtime[self._get(container_id).id]
        async with rt.lock:
            c = self._get(container_id)
            if c.state is not State.RUNNING or rt.init_pidfd < 0 or c.paused:
                raise NotRunning(c.name, "paused" if c.paused else c.state.value)
            if c.spec.unit:
                raise NotSupported(f"Container '{c.name}' runs in the cgroup of {c.spec.unit}, beside the unit's own "
                                   f"processes: it cannot be paused alone (`systemctl freeze {c.spec.unit}` freezes "
                                   "the whole service on a cgroup v2 host)")
            await self._freeze(c, True)
            c = self._get(c.id)
            if c.state is not State.RUNNING:  # it ended while the kernel froze it
                raise NotRunning(c.name, c.state.value)
            c = await self._set(c.with_(paused=True))
            await self._event("paused", c, "paused container %s", c.name)
            return c

    async def unpause(self, container_id: str) -> Container:
        """Thaw a paused container. NotRunning unless it runs; AlreadyRunning when it runs unpaused."""
        c = self._get(container_id)
        rt = self._runtime[c.id]
        async with rt.lock:
            c = self._get(container_id)
            if c.state is not State.RUNNING or rt.init_pidfd < 0:
                raise NotRunning(c.name, c.state.value)
            if not c.paused:
                raise AlreadyRunning(c.name, "it is not paused")
            return await self._thaw(c)

    async def _thaw(self, c: Container, ending: bool = False) -> Container:
        """ending: it is being stopped or killed, so a process that ended meanwhile (a SIGKILL needs no thaw on
        cgroup v2) is no error."""
        try:
            await self._freeze(c, False)
        except NotRunning:
            if not ending:
                raise
        current = self._containers.get(c.id)
        if current is None or not current.paused:
            return current or c  # its exit (or removal) was recorded meanwhile: nothing is paused any more
        c = await self._set(current.with_(paused=False))
        await self._event("unpaused", c, "unpaused container %s", c.name)
        return c

    async def _freeze(self, c: Container, frozen: bool) -> None:
        try:
            await asyncio.to_thread(freezer.set_frozen, c.main_pid, frozen)
        except ProcessLookupError:
            raise NotRunning(c.name, "exiting") from None

    async def rename(self, container_id: str, new_name: str) -> Container:
        """Give a container that does not run a new name, checked as at create: NameInUse when another container
        has it, AlreadyRunning when it runs (its scope, quilt-NAME.scope, its monitor's and its machine are named
        after it while it runs). The hostname follows the name unless one was given. Its networks' name servers
        answer for the new name at once, its user namespace's user is renamed; the output of its earlier runs stays
        in the journal under the old scope's name, which its logs no longer read."""
        c = self._get(container_id)
        new_name = validate_name(new_name)
        rt = self._runtime[c.id]
        async with rt.lock:
            c = self._get(container_id)
            if c.state is State.REMOVING:
                raise NoSuchContainer(c.name)
            if c.state is State.RUNNING:
                raise AlreadyRunning(c.name, f"stop it first: its scope {c.unit} is named after it while it runs")
            if new_name == c.name:
                return c
            if self._containers.name_taken(new_name):
                raise NameInUse(new_name)
            old = c.name
            renamed = c.with_(spec=replace(c.spec, name=new_name))
            self._networks.rename(c, new_name)  # AccessDenied first, when the new name is another's on a network
            # In the table before the write is awaited: a create meanwhile finds the new name taken.
            self._containers[c.id] = renamed
            try:
                await self._store.rename_container(c.id, renamed.spec)
            except BaseException:
                self._networks.rename(renamed, old)
                self._containers[c.id] = c
                raise
            if c.id_first >= 0:
                userdb.unregister(old, c.id_first, self._paths.userdb)
                userdb.register(new_name, c.id_first, self._paths.userdb)
            c = await self._set(renamed)
            await self._event("renamed", c, "renamed container %s to %s", old, new_name, old_name=old)
            return c

    async def export(self, container_id: str, fd: int) -> None:
        """The container's root filesystem (its image's layers and its own changes, not its volumes, tmpfs or
        /proc, /sys and /dev) as a tar stream written to fd, running or not; fd is the caller's to close."""
        stream = pipes.stream(fd, writing=True)
        first = self._get(container_id).id_first

        def run(root: int) -> None:
            with stream:
                copying.export_root(root, stream, first)
        await self._streamed_on_tree(container_id, stream, run)

    # --- exec ------------------------------------------------------------------------------------

    async def exec(self, container_id: str, command: list[str], options: dict[str, Any],
                   stdio: tuple[int, int, int] | None = None) -> ExecResult:
        """Run a command inside a running container (execs.py); stdio None collects its output."""
        c = self._get(container_id)
        opts = parse_exec_options(options)
        rt = self._runtime[c.id]
        if c.state is not State.RUNNING or rt.init_pidfd < 0:
            raise NotRunning(c.name, c.state.value)
        if c.paused:
            raise NotRunning(c.name, "paused")  # a process joining its cgroup would be frozen too, as Podman refuses
        self._scopes.expect_move()  # the exec helper writes the command's process into the scope's cgroups
        if stdio is None:
            return await self._executor.run(c, rt.init_pidfd, command, opts, self._full_env(c.spec), None)
        relays = caller_stdio.prepare(stdio)  # a regular file is relayed, never handed to the container
        try:
            return await self._executor.run(c, rt.init_pidfd, command, opts, self._full_env(c.spec), relays.fds)
        finally:
            await relays.drained()

    # --- machines (machines.py) -------------------------------------------------------------------

    async def _register_machine(self, c: Container) -> Container:
        """Register the running container with systemd-machined (_machine_registration) and note its machine."""
        return await self._take_registration(c, await self._machine_registration(c))

    def _begin_registration(self, c: Container) -> asyncio.Task[tuple[str, str] | None] | None:
        """_machine_registration under way while the start goes on, begun before Go (the init, waiting for it,
        is alive: machined is asked even if the command then ends at once); None when the host's machines are
        not kept. Its result is for _take_registration, or _abandon_registration if the start fails."""
        if self._machines is None:
            return None
        return self._loop.create_task(self._machine_registration(c, leader_alive=True))

    async def _machine_registration(self, c: Container, leader_alive: bool = False) -> tuple[str, str] | None:
        """Register the running container with systemd-machined, under its name or a derived one; one already
        registered with this leader (the agent restarted) is found, not registered twice. Its machine's path and
        name; None when it is not registered (a refusal is logged, and the container runs on)."""
        if self._machines is None or not c.main_pid or (not leader_alive and self._init_ended(c.id)):
            return None  # (one that ended at once: nothing to register, and machined would refuse its gone leader)
        try:
            if self._machined is None:
                self._machined = await self._machines.available()
                if not self._machined:
                    log.info("systemd-machined is not on this host: containers are not registered as machines "
                             "(install systemd-container for machinectl to know them)")
            if not self._machined:
                return None
            for taken in (False, True):
                name = machine_name(c.name, c.id, taken)
                path = await self._register_as(c, name)
                if path:
                    return path, name
            raise MachineError("MachineExists", f"machines '{machine_name(c.name, c.id)}' and "
                                                f"'{machine_name(c.name, c.id, True)}' are others'")
        except (MachineError, OSError) as err:
            if not self._init_ended(c.id):  # one that ended at once has nothing to register: no warning
                log.warning("container %s is not registered with systemd-machined: %s", c.name, err,
                            extra={"CONTAINER_NAME": c.name})
            return None

    async def _take_registration(self, c: Container, registered: tuple[str, str] | None) -> Container:
        """Note the machine registered for c's run, unless that run is over: then its exit, recorded without
        the machine, did not unregister it, and it is unregistered here."""
        if registered is None:
            return c
        path, name = registered
        current = self._containers.get(c.id)
        if current is None or current.main_pid != c.main_pid or current.state is not State.RUNNING:
            self._track(self._unregister_machine(c.with_(machine_name=name)))
            return current or c
        return await self._set(current.with_(machine=path, machine_name=name))

    def _abandon_registration(self, c: Container, registering: asyncio.Task[tuple[str, str] | None]) -> None:
        """A start that failed after its registration began: the machine, once registered, is unregistered."""
        async def undo() -> None:
            try:
                registered = await registering
            except Exception:  # noqa: BLE001 - logged: the start's own error is the one its caller gets
                log.exception("registering container %s with systemd-machined", c.name)
                return
            if registered is not None:
                await self._unregister_machine(c.with_(machine_name=registered[1]))
        self._track(undo())

    async def _register_as(self, c: Container, name: str) -> str:
        """Its machine's path under this name, registered now or ours already (from before an agent restart); ""
        when another machine has the name. Registered first and looked up only if the name is taken: one round trip
        to machined for a start, where a look first would make two."""
        for _ in range(2):
            try:
                return await self._machines.register(name, bytes.fromhex(c.id[:32]), c.main_pid,
                                                     self._networks.host_interfaces(c.id))
            except MachineError as err:
                if not err.name.endswith(".MachineExists"):
                    raise
            path, leader = await self._machines.find(name)
            if path:
                return path if leader == c.main_pid else ""
            # Unregistered between the two calls: registered again once.
        return ""

    def _init_ended(self, container_id: str) -> bool:
        rt = self._runtime.get(container_id)
        if rt is None or rt.init_pidfd < 0:
            return True
        # poll, not select: a host with hundreds of containers gives the agent fds beyond select()'s 1024.
        poller = select.poll()
        poller.register(rt.init_pidfd, select.POLLIN)
        return bool(poller.poll(0))

    async def _unregister_machine(self, c: Container) -> None:
        if self._machines is None or not c.machine_name:
            return
        try:
            await self._machines.unregister(c.machine_name)
        except (MachineError, OSError) as err:
            log.warning("could not unregister container %s from systemd-machined: %s", c.name, err)

    # --- health checks (health.py) ------------------------------------------------------------------

    async def health_check(self, container_id: str) -> tuple[str, health.Result]:
        """Run the container's check now, as its timer does, and take its verdict; the status after it."""
        c = self._get(container_id)
        if not c.spec.health_cmd:
            raise InvalidArgument(f"Container '{c.name}' has no health check")
        rt = self._runtime[c.id]
        if c.state is not State.RUNNING or rt.init_pidfd < 0:
            raise NotRunning(c.name, c.state.value)
        if c.paused:
            raise NotRunning(c.name, "paused")  # its timer's checks wait for the unpause: frozen is not unhealthy
        start = now_usec()
        try:
            done = await self._executor.run(c, rt.init_pidfd, c.spec.health_cmd,
                                            ExecOptions(timeout=c.spec.health_timeout), self._full_env(c.spec))
            code, output = done.exit_code, health.output_text(done.stdout, done.stderr)
        except TimedOut:
            code, output = -1, f"the check did not end within {c.spec.health_timeout:g} s and was killed"
        except NotRunning:
            raise
        except QuiltError as err:  # it could not run at all (its user is gone from the image, say): a failure
            code, output = -1, str(err)
        result = health.Result(start, now_usec(), code, output)
        return await self._judge_health(c.id, result), result

    async def _timed_health_check(self, container_id: str) -> None:
        try:
            await self.health_check(container_id)
        except (NotRunning, NoSuchContainer):
            pass  # it ended meanwhile: its exit stops the timer

    async def _judge_health(self, container_id: str, result: health.Result) -> str:
        c = self._containers.get(container_id)
        if c is None or c.state is not State.RUNNING or result.start < c.started_at:
            return c.health if c else ""  # it ended (or ran again) meanwhile: this check judged another run
        checks = self._health.logs.setdefault(c.id, health.Log())
        checks.results.append(result)
        in_start_period = result.start < c.started_at + int(c.spec.health_start_period * 1e6)
        status, checks.failing_streak = health.judge(c.health or "starting", checks.failing_streak,
                                                     result.exit_code == 0, in_start_period, c.spec.health_retries)
        if status == c.health:
            return status
        becomes_ready = status == "healthy" and c.spec.sdnotify == "healthy" and not c.ready
        c = await self._set(c.with_(health=status, ready=c.ready or becomes_ready))
        await self._event("health_status", c, "container %s is %s: its health check exited with code %d%s", c.name,
                          status, result.exit_code, f" ({result.output.strip()[:200]})" if status == "unhealthy"
                          else "", status=status, exit_code=result.exit_code)
        if becomes_ready:
            await self._event("ready", c, "container %s is ready: its health check passed", c.name, status="")
        if status == "unhealthy" and c.spec.health_on_failure != "none":
            self._track(self._act_on_unhealthy(c.id))
        return status

    async def _act_on_unhealthy(self, container_id: str) -> None:
        """health_on_failure: kill or stop it (not a user's stop: its restart policy decides what follows), or
        stop it and start it again."""
        c = self._get(container_id)
        action = c.spec.health_on_failure
        log.warning("container %s is unhealthy: %s it", c.name, {"kill": "killing", "stop": "stopping",
                                                                 "restart": "restarting"}[action])
        try:
            if action == "kill":
                await self._kill_and_wait(c)
            else:
                await self._stop(c, c.spec.stop_timeout)
            if action != "restart":
                return
            rt = self._runtime[c.id]
            async with rt.lock:
                c = self._get(c.id)
                if c.state not in (State.EXITED, State.FAILED) or c.user_stopped:
                    return  # started or stopped by a user meanwhile
                c = await self._set(c.with_(restart_count=c.restart_count + 1))
                await self._event("restarting", c, "container %s was unhealthy; restart %d now", c.name,
                                  c.restart_count, exit_code=c.exit_code, attempt=c.restart_count, delay_usec=0,
                                  at=now_usec(), reason="unhealthy")
                await self._launch(c, rt)
        except NoSuchContainer:
            pass  # removed meanwhile
        except Exception as err:  # noqa: BLE001 - no caller: the journal says why
            log.error("acting on the unhealthy container %s (%s) failed: %s", c.name, action, err)

    def health_log(self, container_id: str) -> tuple[str, int, list[health.Result]]:
        """Its status, failing streak and last checks (since the agent started), oldest first."""
        c = self._get(container_id)
        checks = self._health.logs.get(c.id) or health.Log()
        return c.health, checks.failing_streak, list(checks.results)

    # --- copy ------------------------------------------------------------------------------------

    async def copy(self, container_id: str, into: bool, source: str, dest: str) -> None:
        """CopyTo (into: host source -> container dest) and CopyFrom (copying.py), the host's side a path the agent
        opens itself (the bus layer lets only root, or a caller allowed the host-files action, name one)."""
        copying.check_path(source, "container" if not into else "host")
        copying.check_path(dest, "container" if into else "host")
        run = copying.copy_to if into else copying.copy_from
        first = self._get(container_id).id_first

        def copy(root: int) -> None:
            with copying.as_container_root(first):
                run(root, source, dest, first)
        await self._on_tree(container_id, copy)

    async def copy_archive(self, container_id: str, into: bool, path: str, fd: int) -> None:
        """CopyToWithFd (into: a tar stream read from fd -> path in the container) and CopyFromWithFd (path ->
        a tar stream written to fd): the host's side is the caller's own process, with its own rights. fd is
        the caller's to close."""
        copying.check_path(path, "container")
        stream = pipes.stream(fd, writing=not into)
        first = self._get(container_id).id_first

        def run(root: int) -> None:
            with stream, copying.as_container_root(first):
                if into:
                    copying.archive_to(root, stream, path, first)
                else:
                    copying.archive_from(root, path, stream, first)
        await self._streamed_on_tree(container_id, stream, run)

    async def _streamed_on_tree(self, container_id: str, stream: Any, fn: Callable[[int], None]) -> None:
        """_on_tree for a function that writes or reads `stream`, closed after whatever happened."""
        try:
            await self._on_tree(container_id, fn)
        finally:
            if not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass  # the peer went away: the tree walk's own error says so

    async def _on_tree(self, container_id: str, fn: Callable[[int], None]) -> None:
        """fn(root fd) in a worker thread: a running container's tree through its init's root, another's through
        its overlay and volumes mounted for fn alone (copying.stopped_tree), under the container's lock so that
        no start mounts the same upper directory meanwhile."""
        c = self._get(container_id)
        rt = self._runtime[c.id]
        if c.state is State.RUNNING and rt.init_pidfd >= 0:
            try:
                root = copying.running_root(c.main_pid, rt.init_pidfd)
            except (ProcessLookupError, FileNotFoundError):
                raise NotRunning(c.name, "exiting") from None
            try:
                return await asyncio.to_thread(fn, root)
            finally:
                os.close(root)
        async with rt.lock:
            c = self._get(c.id)
            if c.state is State.RUNNING:
                raise AlreadyRunning(c.name, "it started meanwhile: copy again")
            image = self._images.get(c.setup_image or c.spec.image_id)
            directory = self._paths.container(c.id)
            mounts = self._volumes.resolve(c.spec.volumes)  # its volumes, as `podman cp` sees them
            userns_fd = -1
            if c.id_first >= 0:  # its tree as it sees it: the layers and volumes idmapped as when it runs
                userns_fd = await asyncio.to_thread(self._zygote.user_namespace, IdRange(c.id_first).id_map())
            try:
                await asyncio.to_thread(copying.stopped_tree, image.lower, str(directory / "upper"),
                                        str(directory / "work"), str(directory / "merged"), mounts, fn, userns_fd)
            finally:
                if userns_fd >= 0:
                    os.close(userns_fd)

    # --- logs ------------------------------------------------------------------------------------

    async def logs(self, container_id: str, since_usec: int = 0, last: int = 0,
                   setup: bool = False, dropped: bool = False) -> list[journal.LogLine]:
        """setup: only the lines of the setup steps. dropped: with a line of stream "dropped" (its text the count)
        where journald reported dropping lines of the container's unit, among the lines it kept."""
        c = self._get(container_id)
        if not setup:
            self._check_logged(c)
            if c.spec.log_driver in FILE_LOG_DRIVERS:
                # Complete once the container has ended: its monitor writes the last lines before recording the end.
                directory = str(self._paths.container(c.id))
                return await asyncio.to_thread(
                    lambda: _one_reply(c, logfile.read_lines(directory, since_usec, last, 0, dropped,
                                                             MAX_LOG_REPLY_LINES)))
        rt = self._runtime[c.id]
        # Its last lines may still be on their way into the journal once it ended: `quiltctl run` reads them right
        # after. Asked once an end, and in the read's own worker thread: one hop to a thread instead of two;
        # begun already at the end for an attached client (_begin_journal_sync).
        sync = c.state is not State.RUNNING and c.finished_at and rt.journal_synced != c.finished_at
        if sync and rt.journal_sync is not None:
            await asyncio.wait([rt.journal_sync])
            sync = rt.journal_synced != c.finished_at  # still, if that one was for an earlier end or failed
        # A former container of the same name had the same unit: only lines since this one was made.
        since = max(since_usec, c.created_at)
        identifier = setup_identifier(c.name) if setup else ""

        def read() -> list[journal.LogLine]:  # all of it in a worker thread: a log may hold 100,000s of lines
            if sync:
                journal.synchronize()
                rt.journal_synced = c.finished_at
            return _one_reply(c, journal.read_lines(c.unit, since, last, identifier, MAX_LOG_REPLY_LINES, dropped))

        return await asyncio.to_thread(read)

    def _begin_journal_sync(self, c: Container, rt: _Runtime) -> None:
        """Have journald store the ended container's last lines now, in a worker thread, for the read its
        attached client makes next (logs() waits for it instead of asking again): a round trip less after Wait."""
        def synced(future: asyncio.Future[bool]) -> None:
            if not future.cancelled() and future.exception() is None and future.result():
                rt.journal_synced = c.finished_at  # (unconfirmed, it is left to the read, which asks again)
            if rt.journal_sync is future:
                rt.journal_sync = None

        rt.journal_sync = self._loop.run_in_executor(None, journal.synchronize)
        rt.journal_sync.add_done_callback(synced)

    async def watch_log_drops(self, watch: DropSource, past: Callable[[], list[journal.Drop]]) -> None:
        """Count journald's reports of dropped lines onto their containers (Container.logs_dropped): past() gives
        those of this boot so far, then watch each one journald writes (a "logs_dropped" event each)."""
        self._drop_watch = watch  # first: a report written meanwhile is in both, and counted once
        for drop in await asyncio.to_thread(past):
            await self._note_drop(drop, tell=False)
        self._loop.add_reader(watch.fileno(), self._drops_reported)

    def _rewatch_drops(self, watch: DropSource) -> None:
        if watch is self._drop_watch:  # not closed meanwhile
            self._loop.add_reader(watch.fileno(), self._drops_reported)

    def unwatch_log_drops(self) -> None:
        watch, self._drop_watch = self._drop_watch, None
        if watch is None:
            return
        self._loop.remove_reader(watch.fileno())
        if not self._drop_looking:
            watch.close()
        # else the look under way in a worker thread still reads it: it is closed when that look ends

    def _drops_reported(self) -> None:
        watch = self._drop_watch
        assert watch is not None
        # The fd turns readable at every line any unit logs: looked at a few times a second at most, one look at a
        # time, and in a worker thread (reading the journal may wait on its files).
        self._loop.remove_reader(watch.fileno())
        self._drop_looking = True
        task = self._loop.create_task(self._look_for_drops(watch))
        self._noting.add(task)
        task.add_done_callback(self._noting.discard)

    async def _look_for_drops(self, watch: DropSource) -> None:
        reading = self._loop.run_in_executor(None, watch.new)
        try:
            drops = await asyncio.shield(reading)
        except asyncio.CancelledError:
            # The agent exits while the worker thread reads: the watch is closed once the read is over, not under it.
            def over(_: object) -> None:
                self._drop_looking = False
                if watch is not self._drop_watch:
                    watch.close()
            reading.add_done_callback(over)
            raise
        except Exception:  # noqa: BLE001 - a look that fails is logged; the watch goes on
            log.exception("reading the journal's reports of dropped lines")
            drops = []
        self._drop_looking = False
        if watch is self._drop_watch:
            self._loop.call_later(DROP_WATCH_PAUSE, self._rewatch_drops, watch)
        else:  # unwatched while it was read
            watch.close()
            drops = []
        for drop in drops:
            await self._note_drop(drop, tell=True)

    async def _note_drop(self, drop: journal.Drop, tell: bool) -> None:
        key = (drop.unit or drop.container, drop.usec, drop.source)
        if key in self._drops_seen:
            return
        self._drops_seen.add(key)
        # journald's reports name the unit, the monitor's the container (whose unit may be a service of the host's)
        c = next((c for c in self._containers.values() if drop.usec >= c.created_at
                  and (c.name == drop.container if drop.container else c.unit == drop.unit)), None)
        if c is None:
            return
        in_file = c.spec.log_driver in FILE_LOG_DRIVERS
        if drop.source == journal.JOURNALD and in_file:
            return  # journald+file: the log file, which `quiltctl logs` reads, has every line journald dropped
        if drop.count == 0:  # a log file's write failed: the lines are counted from now on, and reported later
            if tell:
                await self._event("log_write_failed", c, "container %s's log file: %s", c.name, drop.reason,
                                  reason=drop.reason, at=drop.usec)
            return
        c = await self._set(c.with_(logs_dropped=c.logs_dropped + drop.count,
                                    logs_dropped_at=max(c.logs_dropped_at, drop.usec)))
        if not tell:
            return
        if drop.source == journal.JOURNALD:
            await self._event("logs_dropped", c, "journald dropped %d lines of container %s (its rate limit for "
                              "%s); `quiltctl logs` marks where", drop.count, c.name, c.unit, count=drop.count,
                              at=drop.usec)
        else:
            await self._event("logs_dropped", c, "%d lines of container %s could not be written to its log file; "
                              "`quiltctl logs` marks where", drop.count, c.name, count=drop.count, at=drop.usec)

    # --- stats -----------------------------------------------------------------------------------

    def stats(self, container_id: str) -> cgroups.Stats:
        """What the kernel counts for the container's scope (cgroups.py): the container's processes alone, its
        monitor being in a scope of its own."""
        c = self._get(container_id)
        if c.state is not State.RUNNING or not c.main_pid:
            raise NotRunning(c.name, c.state.value)
        try:
            return cgroups.read_stats(c.main_pid)  # a few small cgroupfs reads: never waits on a disk
        except OSError:
            raise NotRunning(c.name, "exited") from None

    def follow_logs(self, container_id: str, options: dict[str, Any]) -> int:
        """Start following the container's log (logfollow.py); return the read end of the pipe (the caller's)."""
        c = self._get(container_id)
        follow = parse_follow_options(options)
        if not follow.setup:
            self._check_logged(c)
        in_file = c.spec.log_driver in FILE_LOG_DRIVERS and not follow.setup
        directory = str(self._paths.container(c.id)) if in_file else ""
        return self._log_followers.start(c, follow, directory)

    @staticmethod
    def _check_logged(c: Container) -> None:
        if c.spec.log_driver == "none":
            # As Podman's logs: no empty answer that could pass for a silent container.
            raise NotSupported(f"Container '{c.name}' has the log driver none: nothing of its output is kept "
                               "(its setup steps' lines are: logs --setup)")

    async def events(self, since_usec: int = 0, until_usec: int = 0) -> list[tuple[int, str, str, dict[str, Any]]]:
        """The stored lifecycle events (time, kind, container id, details), oldest first; until 0 = no end."""
        await self._store.flush()  # with every event told so far: a client that saw the signal finds its row
        rows = await self._store.events(since_usec)
        return [row for row in rows if not until_usec or row[0] <= until_usec]

    # --- recovery --------------------------------------------------------------------------------

    async def recover(self, stored: list[Container]) -> None:
        """Reconcile the stored containers with what runs: called once at start, after the networks recovered
        (removals below detach networks) and before the bus name is taken.

        At the first start since the host booted, the containers that ran ended with the boot: their exits are
        recorded without restarting any; start_at_boot() starts those whose policy says so."""
        booted = await asyncio.to_thread(_first_start_since_boot, self._paths.run)
        for c in stored:
            self._containers[c.id] = c
            if c.id_first >= 0:
                self._ranges.restore(c.id, c.id_first)
                userdb.register(c.name, c.id_first, self._paths.userdb)  # /run was emptied by a reboot
            rt = self._runtime[c.id] = _Runtime()
            if c.state is State.REMOVING:
                try:
                    await self.remove(c.id, force=True)
                except Exception:
                    # One container that cannot be removed must not keep the runtime down: it stays 'removing',
                    # and a later remove, or the next start, tries again.
                    log.exception("cannot finish removing container %s", c.name)
                continue
            if c.monitor_pid and self._alive(c.monitor_pid, c.monitor_start):
                try:
                    rt.monitor_pidfd = os.pidfd_open(c.monitor_pid)
                    rt.init_pidfd = os.pidfd_open(c.main_pid) if c.main_pid else -1
                except ProcessLookupError:
                    pass
                if rt.monitor_pidfd >= 0:
                    if c.state is not State.RUNNING:
                        c = await self._set(c.with_(state=State.RUNNING, started_at=c.started_at or now_usec()))
                    if c.main_pid and freezer.is_frozen(c.main_pid):  # paused before the agent went: still
                        c = await self._set(c.with_(paused=True))
                    self._watch(c.id, rt)
                    if c.spec.health_cmd:
                        self._health.watch(c.id, c.spec.health_interval)
                    if c.spec.sdnotify == "container":  # a socket of this agent's, where the container looks
                        self._notify.open(c.id, max(c.id_first, 0), self._notified)
                    c = await self._register_machine(c)  # again: machined may have restarted meanwhile too
                    log.info("reattached to running container %s", c.name)
                    continue
            if c.state is State.RUNNING or c.monitor_pid:
                # From the exit file, or unknown if the monitor left none.
                await self._record_exit(c.id, plan_restart=not booted)
        for c in list(self._containers.values()):
            if c.spec.remove_on_exit and c.state in (State.EXITED, State.FAILED) and c.id in self._containers:
                # Held for an attached client when the agent went: holds do not outlive it, so it goes now.
                await self._remove_on_exit(c)
                continue
            if c.restart_at and c.state is not State.RUNNING:
                if booted:
                    await self._set(c.with_(restart_at=0))  # the restart a reboot cut short: the boot decides
                else:
                    self._schedule_restart(c)  # the agent went away while it waited
        await asyncio.to_thread(_remove_strays, self._paths.containers, set(self._containers))
        units = {unit for c in self._containers.values() for unit in (c.unit, c.monitor_unit)}
        for unit in await self._scopes.active_scopes():
            if unit not in units:
                log.warning("scope %s runs but no container of Quilt's owns it; leaving it alone", unit)

    @staticmethod
    def _alive(pid: int, start: int) -> bool:
        try:
            return start_time(pid) == start
        except (OSError, ValueError, IndexError):
            return False

    # --- helpers ---------------------------------------------------------------------------------

    async def _event(self, kind: str, c: Container, text: str, *args: Any, **details: Any) -> None:
        """A lifecycle edge: stored in the events table, told to the listeners (the Event signal) and logged as a
        structured journal entry. The signal and the row carry the same time, so a client reading the history
        while it listens can tell the two apart from duplicates.

        The insert is queued in order with the other writes, not awaited: no caller waits for history.
        """
        at = now_usec()
        stored = {"name": c.name, **details}
        self._store.add_event(kind, c.id, stored, time=at)
        for listener in self._listeners:
            listener.event(kind, c, {**stored, "time": at})
        log.info(text, *args, extra={"MESSAGE_ID": MESSAGE_IDS[kind], "CONTAINER_NAME": c.name,
                                     "CONTAINER_ID_FULL": c.id, "QUILT_EVENT": kind})

    def _get(self, container_id: str) -> Container:
        c = self._containers.get(container_id)
        if c is None:
            raise NoSuchContainer(container_id)
        return c

    async def _set(self, c: Container) -> Container:
        """Take a new status: in memory and to the listeners at once, to the database in order.

        The write is queued behind the store's earlier statements; a crash before it lands loses nothing
        that recover() does not rebuild from the monitors and their exit files.
        """
        if c.id not in self._containers:
            return c  # removed meanwhile: it must not come back
        self._containers[c.id] = c
        rt = self._runtime.get(c.id)
        if rt is not None:  # wake WaitCondition's waiters, who take a new Event before they look again
            rt.changed.set()
            rt.changed = asyncio.Event()
        self._store.update_status(c)
        for listener in self._listeners:
            listener.container_changed(c)
        return c


def _has_files(directory: Path) -> bool:
    with os.scandir(directory) as it:
        return next(it, None) is not None


def _make_directories(directory: Path) -> None:
    for sub in ("upper", "work", "merged"):
        (directory / sub).mkdir(parents=True, mode=0o755)


def _first_start_since_boot(run: Path) -> bool:
    """Whether the agent starts for the first time since the host booted; notes that it has."""
    note = run / "booted"
    if note.exists():
        return False
    run.mkdir(parents=True, exist_ok=True)
    note.touch()
    return True


def _remove_strays(containers: Path, known: set[str]) -> None:
    """The directories of creates that did not finish (the agent died between the directory and the row)."""
    if not containers.is_dir():
        return
    for d in containers.iterdir():
        if d.name not in known:
            log.warning("removing %s: left by a create that did not finish", d)
            try:
                filetree.remove_tree(d)
            except OSError:
                log.exception("cannot remove %s", d)
