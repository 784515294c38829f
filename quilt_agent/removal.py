"""Removals that take containers with them: an image, volume or network removed with force first removes the
containers that use it (as `podman rmi -f`, `podman volume rm -f`, `podman network rm -f` do).

The one place where the container lifecycle (manager.py) and its peers (images, volumes, networks) meet, so
that neither reaches the other: each peer says who uses what it holds and refuses to remove it while in use;
this module removes those containers through the manager, then asks the peer again.
"""
from __future__ import annotations

import logging

from quilt_agent.containers import User
from quilt_agent.errors import NoSuchContainer
from quilt_agent.images.service import Images
from quilt_agent.manager import Manager
from quilt_agent.network.core import Networks
from quilt_agent.volumes import Volumes

log = logging.getLogger("quilt.removal")


class Removal:
    def __init__(self, manager: Manager, images: Images, volumes: Volumes, networks: Networks) -> None:
        self._manager = manager
        self._images = images
        self._volumes = volumes
        self._networks = networks

    async def image(self, ref: str, force: bool) -> None:
        async def remove_users(users: list[User]) -> None:
            await self._remove_containers([u.id for u in users], f"it uses image {ref}, removed with force")
        await self._images.remove(ref, remove_users if force else None)

    async def volume(self, name_or_id: str, force: bool) -> int:
        """The bytes freed."""
        if not force:
            return await self._volumes.remove(name_or_id)
        volume = self._volumes.get(name_or_id)
        await self._remove_containers([u.id for u in self._volumes.used_by(volume.name)],
                                      f"it uses volume {volume.name}, removed with force")
        return await self._volumes.remove(volume.id, cascaded=True)

    async def network(self, name_or_id: str, force: bool) -> None:
        if not force:
            return await self._networks.remove(name_or_id)
        network = self._networks.get(name_or_id)
        await self._remove_containers(self._networks.removal_order(network.id),
                                      f"it uses network {network.name}, removed with force")
        await self._networks.remove(network.id, cascaded=True)

    async def _remove_containers(self, container_ids: list[str], why: str) -> None:
        for container_id in container_ids:
            if not container_id:
                continue  # a create still under way, which no removal can stop: the peer refuses then
            try:
                name = self._manager.get(container_id).name
                log.info("Removing container %s: %s", name, why)
                await self._manager.remove(container_id, force=True)
            except NoSuchContainer:
                pass  # removed meanwhile
