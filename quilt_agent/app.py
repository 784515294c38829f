"""The wiring of the core: every service built once, each handed what it needs through its constructor.

Nothing here speaks D-Bus; daemon.py connects the bus, builds the services here and exports them.
The order is the dependency order: the container table and the store first, then the peers that read them
(images, volumes, networks), then the container lifecycle over those, then the removals that span them.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from quilt_agent import journal, restart, userns
from quilt_agent.config import Paths, config_path
from quilt_agent.containers import ContainerTable
from quilt_agent.helper.forkserver import ForkServer
from quilt_agent.images.service import Images
from quilt_agent.images.store import ImageStore
from quilt_agent.machines import MachineRegistry, registering
from quilt_agent.manager import Manager
from quilt_agent.network.core import Networks
from quilt_agent.removal import Removal
from quilt_agent.scopes import ScopeManager
from quilt_agent.store import StateStore
from quilt_agent.volumes import Volumes

log = logging.getLogger("quilt.app")


@dataclass(frozen=True)
class Services:
    """What the bus layer serves."""

    manager: Manager
    images: Images
    networks: Networks
    volumes: Volumes
    removal: Removal


async def build(paths: Paths, store: StateStore, scopes: ScopeManager, zygote: ForkServer,
                machines: MachineRegistry | None = None) -> Services:
    """Build every service and bring it back to what the store and the system say (recovery)."""
    containers = ContainerTable()
    image_store = await asyncio.to_thread(ImageStore, paths.images, zygote.extract)  # reads every image's record
    images = Images(image_store, containers)
    volumes = Volumes(paths.volumes, store, containers)
    networks = Networks(paths, store, containers)
    ranges = userns.Ranges(userns.load_pool(config_path()), await asyncio.to_thread(userns.host_owned))
    manager = Manager(paths, store, scopes, zygote, containers, images, networks, volumes, ranges,
                      restart.load_backoff(config_path()),
                      machines=machines if registering(config_path()) else None)
    stored = await store.containers()
    await volumes.load()
    await networks.recover(stored)  # before the manager's: a removal it finishes detaches the container's networks
    await manager.recover(stored)
    try:
        await manager.watch_log_drops(journal.DropWatch(), journal.read_drops)
    except OSError as err:  # no journal to read: nothing to count
        log.warning("cannot watch journald's reports of dropped lines: %s", err)
    return Services(manager, images, networks, volumes, Removal(manager, images, volumes, networks))
