"""Volumes on the bus: org.quilt.Runtime.Volume on /org/quilt/Runtime/volume/ID (one object per named volume) and
the Manager's volume methods (VolumeMethods, mixed into ManagerInterface). Thin: parse, look up, authorize, call,
reply; the work is in quilt_agent/volumes.py."""

from collections.abc import Callable
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property, dbus_signal

from quilt_agent.bus.errors import ERROR_NAMES
from quilt_agent.bus import access, caller
from quilt_agent.bus.access import Target
from quilt_agent.bus.guard import (
    PUBLIC, GuardedInterface, cascade, guarded, readable, removable_by_caller, reveal, visible,
)
from quilt_agent.bus.names import VOLUME_INTERFACE
from quilt_agent.bus.fds import closing_fds, received_fd
from quilt_agent.bus.polkit import HOST, MANAGE, Authority
from quilt_agent.errors import NoSuchVolume
from quilt_agent.manager import Manager
from quilt_agent.removal import Removal
from quilt_agent.volume_options import Volume
from quilt_agent.volumes import Volumes

VOLUME_PATH_PREFIX = "/org/quilt/Runtime/volume/"
MANAGER_ARG_NAMES: dict[str, tuple[str, ...]] = {
    "CreateVolume": ("volume",), "GetVolume": ("volume",), "ListVolumes": ("volumes",),
    "PruneVolumes": ("freed",), "VolumeNew": ("id", "volume"), "VolumeRemoved": ("id", "volume"),
}


def volume_path(volume_id: str) -> str:
    return VOLUME_PATH_PREFIX + volume_id


def _unwrap(options: dict[str, Variant]) -> dict[str, Any]:
    return {key: value.value for key, value in options.items()}


async def _remove(authority: Authority, removal: Removal, name_or_id: str, force: bool) -> int:
    """With force, the containers that mount the volume go too: each authorized first. The bytes freed."""
    authorized = await cascade(authority, removal.affected("volume", name_or_id)) if force else []
    return await removal.volume(name_or_id, force, authorized)


class VolumeInterface(GuardedInterface):
    def __init__(self, volume: Volume, volumes: Volumes, removal: Removal, authority: Authority,
                 resolve: Callable[[str, str], Target]) -> None:
        """resolve: the Manager's (its UsedBy are named, and told only to those who may see them)."""
        super().__init__(VOLUME_INTERFACE, authority)
        self._v = volume  # fixed for the object's life: a volume's record never changes
        self._volumes = volumes
        self._removal = removal
        self._resolve = resolve

    def subject(self) -> Target:
        return access.volume(self._v)

    def resolve(self, kind: str, text: str) -> Target:
        return self._resolve(kind, text)

    @dbus_method(name="Remove")
    @guarded(MANAGE, "remove")
    async def remove(self, force: "b") -> None:
        await _remove(self.authority, self._removal, self._v.id, force)

    @dbus_property(access=PropertyAccess.READ, name="Id")
    @readable
    def id_(self) -> "s":
        return self._v.id

    @dbus_property(access=PropertyAccess.READ, name="Name")
    @readable
    def name_(self) -> "s":
        return self._v.name

    @dbus_property(access=PropertyAccess.READ, name="Mountpoint")
    @readable
    def mountpoint(self) -> "s":
        return self._v.mountpoint

    @dbus_property(access=PropertyAccess.READ, name="CreatedAt")
    @readable
    def created_at(self) -> "t":
        return self._v.created_at

    @dbus_property(access=PropertyAccess.READ, name="UsedBy")
    async def used_by(self) -> "as":
        """The names of those the caller may see."""
        await self.check_visible()
        return await visible(self.authority, [u.name for u in self._volumes.used_by(self._v.name)],
                             lambda name: self.resolve("container", name))

    @dbus_property(access=PropertyAccess.READ, name="Labels")
    @readable
    def labels(self) -> "a{ss}":
        return dict(self._v.labels)

    @dbus_property(access=PropertyAccess.READ, name="Owner")
    @readable
    def owner(self) -> "u":
        return self._v.owner_uid


class VolumeMethods(ServiceInterface):
    """The Manager's volume methods and signals, and the export of one object per volume. Mixed into
    ManagerInterface, which has _bus and authority."""

    _bus: MessageBus
    authority: Authority
    resolve: Callable[[str, str], Target]  # GuardedInterface's, as ManagerInterface answers it
    _targets: dict[str, Target]  # ManagerInterface's: what each object path is, for relayed signals

    def _volumes_init(self, volumes: Volumes, removal: Removal) -> None:
        self._volumes = volumes
        self._volume_removal = removal
        self._volume_objects: dict[str, VolumeInterface] = {}
        volumes.subscribe(self)

    def _export_volume(self, v: Volume) -> None:
        obj = VolumeInterface(v, self._volumes, self._volume_removal, self.authority, self.resolve)
        self._volume_objects[v.id] = obj
        self._targets[volume_path(v.id)] = access.volume(v)
        with caller.agent():  # InterfacesAdded: the agent reads the properties
            self._bus.export(volume_path(v.id), obj)

    # volumes.py's VolumeListener
    def volume_added(self, volume: Volume) -> None:
        self._export_volume(volume)
        self.volume_new(volume.id, volume_path(volume.id))

    def volume_removed(self, volume: Volume) -> None:
        obj = self._volume_objects.pop(volume.id, None)
        if obj is not None:
            self._bus.unexport(volume_path(volume.id), obj)
        self.volume_removed_signal(volume.id, volume_path(volume.id))
        self._targets.pop(volume_path(volume.id), None)

    def unknown_volume(self, msg: Message) -> Message | bool | None:
        """Message handler: a call to a volume path without an object is NoSuchVolume naming the id."""
        if (msg.message_type is not MessageType.METHOD_CALL or not msg.path.startswith(VOLUME_PATH_PREFIX)
                or msg.interface not in (VOLUME_INTERFACE, "org.freedesktop.DBus.Properties")
                or msg.path[len(VOLUME_PATH_PREFIX):] in self._volume_objects):
            return None
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True
        error = NoSuchVolume(msg.path[len(VOLUME_PATH_PREFIX):])
        return Message.new_error(msg, ERROR_NAMES[NoSuchVolume], str(error))

    @dbus_method(name="CreateVolume")
    @guarded(MANAGE, "create", subject="volume")
    async def create_volume(self, name: "s", options: "a{sv}") -> "o":
        creds = await self.authority.credentials()
        v = await self._volumes.create(name, _unwrap(options), owner_uid=creds.uid)
        return volume_path(v.id)

    @dbus_method(name="ListVolumes")
    @guarded(PUBLIC)
    async def list_volumes(self) -> "a(sso)":
        return [[v.name, v.mountpoint, volume_path(v.id)]
                for v in await visible(self.authority, self._volumes.list(), access.volume)]

    @dbus_method(name="GetVolume")
    @guarded(PUBLIC)
    async def get_volume(self, name_or_id: "s") -> "o":
        await reveal(self.authority, self.resolve("volume", name_or_id))
        return volume_path(self._volumes.get(name_or_id).id)

    @dbus_method(name="RemoveVolume")
    @guarded(MANAGE, "remove", subject="volume")
    async def remove_volume(self, name: "s", force: "b") -> None:
        await _remove(self.authority, self._volume_removal, name, force)

    @dbus_method(name="PruneVolumes")
    @guarded(MANAGE, "prune volumes")
    async def prune_volumes(self) -> "t":
        # Only what the caller may remove.
        removable = await removable_by_caller(self.authority, self._volumes.list(), access.volume)
        return await self._volumes.prune(only={v.id for v in removable})

    @dbus_signal(name="VolumeNew")
    def volume_new(self, volume_id: str, path: str) -> "so":
        return [volume_id, path]

    @dbus_signal(name="VolumeRemoved")
    def volume_removed_signal(self, volume_id: str, path: str) -> "so":
        return [volume_id, path]


class ContainerCopy(ServiceInterface):
    """The Container's copy methods (quilt_agent/copying.py). CopyTo and CopyFrom name a host path that the agent
    opens as root, as machined's do: they need the host-files action besides manage. CopyToWithFd and
    CopyFromWithFd take a tar stream through a pipe whose other end is the caller's process, which reads or
    writes the host's files with its own rights (quiltctl cp). Mixed into ContainerInterface, which has _manager,
    container_id, authority and subject()."""

    _manager: Manager
    container_id: str
    authority: Authority
    subject: Callable[[], Target | None]  # GuardedInterface's, as ContainerInterface answers it

    @dbus_method(name="CopyTo")
    @guarded(MANAGE, "copy files into")
    async def copy_to(self, host_path: "s", container_path: "s") -> None:
        await self.authority.check(HOST, "copy host files into", self.subject())
        await self._manager.copy(self.container_id, True, host_path, container_path)

    @dbus_method(name="CopyFrom")
    @guarded(MANAGE, "copy files from")
    async def copy_from(self, container_path: "s", host_path: "s") -> None:
        await self.authority.check(HOST, "copy files to the host from", self.subject())
        await self._manager.copy(self.container_id, False, container_path, host_path)

    @dbus_method(name="CopyToWithFd")
    @closing_fds
    @guarded(MANAGE, "copy files into")
    async def copy_to_with_fd(self, archive: "h", container_path: "s") -> None:
        await self._manager.copy_archive(self.container_id, True, container_path, received_fd(archive, "archive"))

    @dbus_method(name="CopyFromWithFd")
    @closing_fds
    @guarded(MANAGE, "copy files from")
    async def copy_from_with_fd(self, container_path: "s", archive: "h") -> None:
        await self._manager.copy_archive(self.container_id, False, container_path, received_fd(archive, "archive"))
