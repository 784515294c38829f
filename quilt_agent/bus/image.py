"""Images on the bus: org.quilt.Runtime.Image on /org/quilt/Runtime/image/ID (one object per image), and the
Manager's image methods and ImageProgress signal (ImageMethods, mixed into ManagerInterface). Thin: parse,
authorize, call the core (images/service.py), reply."""
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.service import PropertyAccess, dbus_method, dbus_property, dbus_signal

from quilt_agent.bus.errors import ERROR_NAMES
from quilt_agent.bus import access, caller
from quilt_agent.bus.access import Target
from quilt_agent.bus.guard import (
    PUBLIC, GuardedInterface, cascade, guarded, readable, removable_by_caller, reveal, visible,
)
from quilt_agent.bus.names import IMAGE_INTERFACE
from quilt_agent.bus.fds import closing_fds, received_fd
from quilt_agent.bus.polkit import HOST, MANAGE, Authority
from quilt_agent.bus.names import MANAGER_PATH
from quilt_agent.errors import InvalidArgument, NoSuchImage
from quilt_agent.images.service import Images
from quilt_agent.images.store import Image
from quilt_agent.removal import Removal

IMAGE_PATH_PREFIX = "/org/quilt/Runtime/image/"
MANAGER_ARG_NAMES: dict[str, tuple[str, ...]] = {
    "ImportImage": ("image",), "ImportImageWithFd": ("image",), "PullImage": ("image",), "ListImages": ("images",), "GetImage": ("image",),
    "PruneImages": ("bytes_freed",), "ImageProgress": ("job", "phase", "done", "total"),
}


def image_path(image_id: str) -> str:
    return IMAGE_PATH_PREFIX + image_id


def properties(image: Image, config: str) -> dict[str, Any]:
    """The object's property values, by D-Bus name; PropertiesChanged compares these."""
    return {"Id": image.id, "Names": list(image.names), "Digest": image.digest, "Size": image.size,
            "Layers": list(image.layers), "Config": config, "CreatedAt": image.created_at, "Owner": image.owner_uid}


def _unwrap(options: dict[str, Variant]) -> dict[str, Any]:
    return {key: value.value for key, value in options.items()}


class ImageInterface(GuardedInterface):
    """One image. Its properties are read from memory; Config is the image's config JSON, as stored (an
    image's config never changes: its id is the config's digest)."""

    def __init__(self, image: Image, config: str, authority: Authority) -> None:
        super().__init__(IMAGE_INTERFACE, authority)
        self.image = image
        self.config = config

    def subject(self) -> Target:
        return access.image(self.image)

    def changed(self, image: Image) -> None:
        before = properties(self.image, self.config)
        self.image = image
        diff = {k: v for k, v in properties(image, self.config).items() if before.get(k) != v}
        if diff:
            self.emit_properties_changed(diff)

    @dbus_property(access=PropertyAccess.READ, name="Id")
    @readable
    def id_(self) -> "s":
        return self.image.id

    @dbus_property(access=PropertyAccess.READ, name="Names")
    @readable
    def names(self) -> "as":
        return list(self.image.names)

    @dbus_property(access=PropertyAccess.READ, name="Digest")
    @readable
    def digest(self) -> "s":
        return self.image.digest

    @dbus_property(access=PropertyAccess.READ, name="Size")
    @readable
    def size(self) -> "t":
        return self.image.size

    @dbus_property(access=PropertyAccess.READ, name="Layers")
    @readable
    def layers(self) -> "as":
        return list(self.image.layers)

    @dbus_property(access=PropertyAccess.READ, name="Config")
    @readable
    def config_(self) -> "s":
        return self.config

    @dbus_property(access=PropertyAccess.READ, name="CreatedAt")
    @readable
    def created_at(self) -> "t":
        return self.image.created_at

    @dbus_property(access=PropertyAccess.READ, name="SetupBase")
    @readable
    def setup_base(self) -> "s":
        return self.image.setup_base

    @dbus_property(access=PropertyAccess.READ, name="SetupSteps")
    @readable
    def setup_steps(self) -> "as":
        return list(self.image.setup_steps)

    @dbus_property(access=PropertyAccess.READ, name="Owner")
    @readable
    def owner(self) -> "u":
        return self.image.owner_uid


class ImageMethods:
    """The Manager's image methods; mixed into ManagerInterface, which provides authority and _bus."""

    _bus: Any
    authority: Authority
    _targets: dict[str, Target]  # ManagerInterface's: what each object path is, for relayed signals
    resolve: Callable[[str, str], Target]  # GuardedInterface's, as ManagerInterface answers it

    def _images_init(self, images: Images, removal: Removal) -> None:
        self._images = images
        self._image_removal = removal
        self._image_objects: dict[str, ImageInterface] = {}
        # The job of each running import or pull that named one -> the unique name of its caller, "" for root
        # (who gets the broadcasts).
        self._jobs: dict[str, str] = {}
        images.subscribe(self)

    def _export_image(self, image: Image) -> None:
        config = self._images.store.config_bytes(image).decode()
        obj = ImageInterface(image, config, self.authority)
        self._image_objects[image.id] = obj
        self._targets[image_path(image.id)] = access.image(image)
        with caller.agent():  # InterfacesAdded: the agent reads the properties
            self._bus.export(image_path(image.id), obj)

    # --- events from the core ------------------------------------------------------------------

    def image_added(self, image: Image) -> None:
        if image.id not in self._image_objects:
            self._export_image(image)

    def image_changed(self, image: Image) -> None:
        obj = self._image_objects.get(image.id)
        if obj is not None:
            self._targets[image_path(image.id)] = access.image(image)
            obj.changed(image)

    def image_removed(self, image_id: str) -> None:
        obj = self._image_objects.pop(image_id, None)
        if obj is not None:
            self._bus.unexport(image_path(image_id), obj)
        self._targets.pop(image_path(image_id), None)

    def image_progress(self, job: str, phase: str, done: int, total: int) -> None:
        self.image_progress_signal(job, phase, done, total)

    def progress_addressee(self, msg: Message) -> str | None:
        """A job's progress goes to its caller alone when that is not root: for the relay (bus/relay.py)."""
        if msg.member == "ImageProgress" and msg.path == MANAGER_PATH:
            return self._jobs.get(msg.body[0]) or None
        return None

    @asynccontextmanager
    async def _job(self, options: dict[str, Variant]) -> AsyncIterator[None]:
        """The call's progress job, held for its length: no two running calls share one, so that a caller
        receives its own job's progress and no other's."""
        job = options["job"].value if "job" in options else None
        if not isinstance(job, str):  # none asked, or a wrong one that the core names
            yield
            return
        if job in self._jobs:
            raise InvalidArgument(f"Option 'job': '{job}' is the job of another import or pull still running")
        self._jobs[job] = "" if await self._uid() == 0 else caller.current().sender
        try:
            yield
        finally:
            del self._jobs[job]

    async def _uid(self) -> int:
        """The caller's uid: an image it brings into the store is its own."""
        return (await self.authority.credentials()).uid

    def unknown_image(self, msg: Message) -> Message | bool | None:
        """Message handler: a call to an image path that has no object (removed, or a wrong id) is NoSuchImage
        naming the id, as for containers."""
        if (msg.message_type is not MessageType.METHOD_CALL or not msg.path.startswith(IMAGE_PATH_PREFIX)
                or msg.interface not in (IMAGE_INTERFACE, "org.freedesktop.DBus.Properties")
                or msg.path[len(IMAGE_PATH_PREFIX):] in self._image_objects):
            return None
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True
        return Message.new_error(msg, ERROR_NAMES[NoSuchImage], f"No image '{msg.path[len(IMAGE_PATH_PREFIX):]}' known")

    def _path_of(self, image: Image) -> str:
        if image.id not in self._image_objects:  # the listener runs first; this is for safety
            self._export_image(image)
        return image_path(image.id)

    # --- methods -------------------------------------------------------------------------------

    # Options: job s (the id ImageProgress signals carry; default: a new one), ref s (which image of a layout
    # or archive holding several), platform s (os/arch[/variant]); for a rootfs tarball, config defaults:
    # cmd as, entrypoint as, env as, workdir s, user s, labels a{ss}, stop_signal s.
    @dbus_method(name="ImportImage")
    @guarded(MANAGE, "import", subject="image", subject_arg="name")
    async def import_image(self, source: "s", name: "s", options: "a{sv}") -> "o":
        await self.authority.check(HOST, "import a host file as", access.absent("image", name))
        async with self._job(options):
            return self._path_of(await self._images.import_image(source, name, _unwrap(options), await self._uid()))

    # The same, the image read from a file or pipe the caller opened with its own rights (quiltctl image import):
    # a rootfs tarball, an oci-archive or a docker archive (an OCI layout directory: sent as an oci-archive).
    @dbus_method(name="ImportImageWithFd")
    @closing_fds
    @guarded(MANAGE, "import", subject="image", subject_arg="name")
    async def import_image_with_fd(self, archive: "h", name: "s", options: "a{sv}") -> "o":
        fd = received_fd(archive, "archive")
        async with self._job(options):
            return self._path_of(await self._images.import_fd(fd, name, _unwrap(options), await self._uid()))

    # Options: job s, platform s, auth_file s (docker config.json format: a host file the agent reads as root,
    # so it takes the host-files action).
    @dbus_method(name="PullImage")
    @guarded(MANAGE, "pull", subject="image")
    async def pull_image(self, reference: "s", options: "a{sv}") -> "o":
        if "auth_file" in options:
            await self.authority.check(HOST, "read a host file to pull", access.absent("image", reference))
        async with self._job(options):
            return self._path_of(await self._images.pull(reference, _unwrap(options), await self._uid()))

    @dbus_method(name="ListImages")
    @guarded(PUBLIC)
    async def list_images(self) -> "a(ssto)":
        rows = []
        shown = await visible(self.authority, self._images.list(), access.image)
        for image in sorted(shown, key=lambda i: (i.created_at, i.id)):
            for name in image.names or ("",):
                rows.append([image.id, name, image.size, image_path(image.id)])
        return rows

    @dbus_method(name="GetImage")
    @guarded(PUBLIC)
    async def get_image(self, name_or_id: "s") -> "o":
        await reveal(self.authority, self.resolve("image", name_or_id))
        return self._path_of(self._images.get(name_or_id))

    @dbus_method(name="RemoveImage")
    @guarded(MANAGE, "remove", subject="image")
    async def remove_image(self, name_or_id: "s", force: "b") -> None:
        authorized = await cascade(self.authority, self._image_removal.affected("image", name_or_id)) if force else []
        await self._image_removal.image(name_or_id, force, authorized)

    # As podman tag: name (name[:tag], ":latest" when no tag) is added to the image; another image that had it
    # loses it, so that image is authorized too.
    @dbus_method(name="TagImage")
    @guarded(MANAGE, "tag", subject="image")
    async def tag_image(self, name_or_id: "s", name: "s") -> None:
        await self.authority.check(MANAGE, "take the name of", self.resolve("image", name))
        await self._images.tag(name_or_id, name)

    @dbus_method(name="PruneImages")
    @guarded(MANAGE, "prune images")
    async def prune_images(self) -> "t":
        # Only what the caller may remove: the images it may not are kept as if in use.
        images = self._images.list()
        removable = await removable_by_caller(self.authority, images, access.image)
        return await self._images.prune(keep={i.id for i in images} - {i.id for i in removable})

    @dbus_signal(name="ImageProgress")
    def image_progress_signal(self, job: str, phase: str, done: int, total: int) -> "sstt":
        return [job, phase, done, total]
