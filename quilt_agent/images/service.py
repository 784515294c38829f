"""The core API for images: import, pull, list, get, remove, prune, with progress; and what a container takes
from its image. Knows nothing of D-Bus: the bus layer (bus/image.py) calls it and listens to it.

The store (store.py) and the registry client (registry.py) block: their work runs in worker threads, and
their progress comes back to the event loop through call_soon_threadsafe.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import stat
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from quilt_agent import pipes
from quilt_agent.containers import ContainerTable, User
from quilt_agent.errors import ImageInUse, ImageInvalid, InvalidArgument, NoSuchImage
from quilt_agent.images import archive, oci, reference, registry
from quilt_agent.images.store import Image, ImageStore, ImportOptions
from quilt_agent.model import OPTION_PARSERS, parse_env

log = logging.getLogger("quilt.images")

PROGRESS_INTERVAL = 0.1  # seconds between two ImageProgress signals of one phase (its first and last always go)
_JOB_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class Listener(Protocol):
    """What the bus layer subscribes with."""

    def image_added(self, image: Image) -> None: ...

    def image_changed(self, image: Image) -> None: ...

    def image_removed(self, image_id: str) -> None: ...

    def image_progress(self, job: str, phase: str, done: int, total: int) -> None: ...


# Removes the containers that use an image removed with force (removal.py), before the image goes.
RemoveUsers = Callable[[list[User]], Awaitable[None]]


@dataclass(frozen=True)
class ContainerDefaults:
    """What a new container takes from its image's config, merged with what the caller gave."""

    command: tuple[str, ...]
    fields: dict[str, Any]  # ContainerSpec fields: env, workdir, user, labels, stop_signal, health_*


class Images:
    def __init__(self, store: ImageStore, containers: ContainerTable) -> None:
        self.store = store
        self._containers = containers  # read only: who uses an image
        self._listeners: list[Listener] = []
        self._known: dict[str, Image] = {i.id: i for i in store.list()}
        self._configs: dict[str, oci.ImageConfig] = {}
        # Removal and resolution exclude each other: a create never gets an image that is being removed,
        # and a removal sees every create that holds its image (ContainerTable.image_users).
        self._lock = asyncio.Lock()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- reads ------------------------------------------------------------------------------------

    def list(self) -> list[Image]:
        return list(self._known.values())

    def get(self, ref: str) -> Image:
        if not ref:
            raise InvalidArgument("No image given: name an image or give its id")
        return self.store.get(ref)

    def known(self, image_id: str) -> Image | None:
        return self._known.get(image_id)

    # --- import and pull ----------------------------------------------------------------------------

    async def import_image(self, source: str, name: str, options: dict[str, Any], owner_uid: int = 0) -> Image:
        job, rest = _job(options)
        opts = _import_options(rest)
        path = Path(source)
        if not source or not path.is_absolute():
            raise InvalidArgument(f"Image source '{source}' is not an absolute path")
        if name:
            reference.normalize_name(name)  # a bad name is refused before anything is read
        image = await self._run(job, self.store.import_path, path, name, opts, owner_uid=owner_uid)
        log.info("Imported image %s from '%s'%s", image.id[:12], source, f" as {name}" if name else "")
        return image

    async def import_fd(self, fd: int, name: str, options: dict[str, Any], owner_uid: int = 0) -> Image:
        """Import from a file or pipe the caller opened (fd is the caller's to close): a regular file is read in
        place, through its own open file and never by a name in the caller's tree; a pipe's stream is first kept
        in a file of the store's, removed after the import."""
        job, rest = _job(options)
        opts = _import_options(rest)
        if name:
            reference.normalize_name(name)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & os.O_PATH or (flags & os.O_ACCMODE) not in (os.O_RDONLY, os.O_RDWR):
            # Read again by its /proc link as root, an fd the caller could not read from would be a way around
            # the file's permissions.
            raise InvalidArgument("The image's file descriptor must be open for reading (not O_PATH)")
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise InvalidArgument("An image is sent as a file or a stream: send a directory (an OCI layout) as "
                                  "an oci-archive (a tar of it)")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            raise InvalidArgument("The image's file descriptor must be a regular file, a pipe or a socket")
        own = os.dup(fd)
        try:
            if stat.S_ISREG(mode):
                path = Path(f"/proc/{os.getpid()}/fd/{own}")  # not self: the unpacking runs in a child process
                image = await self._run(job, self.store.import_path, path, name, opts, owner_uid=owner_uid)
            else:
                spool = self.store.work_file(".tar")
                try:
                    await asyncio.to_thread(pipes.spool, own, str(spool))
                    image = await self._run(job, self.store.import_path, spool, name, opts, owner_uid=owner_uid)
                finally:
                    await asyncio.to_thread(spool.unlink, True)
        finally:
            os.close(own)
        log.info("Imported image %s from a caller's stream%s", image.id[:12], f" as {name}" if name else "")
        return image

    async def pull(self, ref_text: str, options: dict[str, Any], owner_uid: int = 0) -> Image:
        job, rest = _job(options)
        opts = _pull_options(rest)
        ref = reference.parse(ref_text)
        config = registry.RegistryConfig.load()
        return await self._run(job, registry.pull, self.store, ref, opts, config=config, owner_uid=owner_uid)

    async def _run(self, job: str, fn: Any, *args: Any, **kwargs: Any) -> Image:
        loop = asyncio.get_running_loop()
        last: dict[str, float] = {}

        def progress(phase: str, done: int, total: int) -> None:  # in a worker thread
            now = time.monotonic()
            first = phase not in last
            if first or done >= total or now - last[phase] >= PROGRESS_INTERVAL:
                last[phase] = now
                loop.call_soon_threadsafe(self._progress, job, phase, done, total)

        try:
            image = await asyncio.to_thread(fn, *args, progress=progress, **kwargs)
        finally:
            self._sync()
        self._progress(job, f"done {image.id}", image.size, image.size)
        return image

    def _progress(self, job: str, phase: str, done: int, total: int) -> None:
        for listener in self._listeners:
            listener.image_progress(job, phase, done, total)

    # --- for containers -----------------------------------------------------------------------------

    async def resolve(self, image: str, need_command: bool, owner_uid: int = 0) -> Image:
        """The image a create names: a path (imported, once, as owner_uid's if new), an id or a name.
        need_command: the create gave none, so the image must have one; a rootfs tarball never does, and is
        refused before it is read."""
        if not image:
            raise InvalidArgument("No image given: name an image or give an absolute path to a rootfs tarball")
        if image.startswith("/"):
            path = Path(image)
            if need_command and os.path.lexists(path):
                kind, _ = await asyncio.to_thread(archive.detect, path)
                if kind == archive.ROOTFS:
                    raise InvalidArgument("The command is empty: give at least the program to run (a rootfs "
                                          "tarball has no default command)")
            for _ in range(2):
                found = await asyncio.to_thread(self.store.import_path, path, owner_uid=owner_uid)
                self._sync()
                async with self._lock:
                    # Removed meanwhile by a RemoveImage: import it again (its layers went with it).
                    if self.store.find(found.id) is not None:
                        return found
            raise NoSuchImage(f"Image '{image}' was removed while it was being imported")
        async with self._lock:
            try:
                return self.store.get(image)
            except NoSuchImage:
                raise NoSuchImage(f"No image '{image}' known (give an image name or id, or an absolute path "
                                  "to an image file)") from None

    async def defaults(self, image: Image, command: tuple[str, ...], fields: dict[str, Any]) -> ContainerDefaults:
        # An image's config never changes (its id is the config's digest): read and parse it once.
        config = self._configs.get(image.id)
        if config is None:
            config = self._configs[image.id] = await asyncio.to_thread(self.store.image_config, image)
        return container_defaults(image, config, command, fields)

    # --- setup cache (quilt_agent/setup.py) ---------------------------------------------------------

    async def setup_image(self, key: str) -> Image | None:
        """The cached setup image for key. Under the removal lock: a prune cannot take it between this answer
        and the caller's noting that a container uses it (which the caller does before its next await)."""
        async with self._lock:
            return self.store.setup_image(key)

    async def commit_setup(self, base: Image, layer: Path, key: str, steps: tuple[str, ...],
                           owner_uid: int = 0) -> Image:
        """Record a container's setup result (a layer tar) as a cache image over base; owner_uid: the container's."""
        try:
            image = await asyncio.to_thread(self.store.commit_layer, base.id, layer, key, steps, owner_uid)
        finally:
            self._sync()
        log.info("Cached the setup of image %s as image %s", base.id[:12], image.id[:12])
        return image

    # --- names ----------------------------------------------------------------------------------

    async def tag(self, ref: str, name: str) -> Image:
        """Add name to the image ref names (NoSuchImage, InvalidArgument for a bad name); an image that had the
        name loses it, as with podman tag."""
        image = self.get(ref)
        async with self._lock:  # not while a removal of it is under way
            try:
                tagged = await asyncio.to_thread(self.store.tag, image.id, name)
            finally:
                self._sync()
        log.info("Tagged image %s as %s", image.id[:12], name)
        return tagged

    # --- removal --------------------------------------------------------------------------------

    async def remove(self, ref: str, remove_users: RemoveUsers | None = None) -> None:
        """As `podman rmi`: a name that is one of several of its image only loses that name; otherwise the
        image goes, with its layers no other image has. Used by containers: ImageInUse, unless remove_users
        (a removal with force) removes them first, with no create resolving the image meanwhile."""
        image = self.get(ref)
        if self.store.is_name(ref) and len(image.names) > 1:
            await asyncio.to_thread(self.store.untag, ref)
            self._sync()
            return
        async with self._lock:
            users = self.users_of(image.id)
            if users and remove_users is None:
                raise ImageInUse(f"Image '{ref}' is in use by {len(users)} container(s): "
                                 f"{', '.join(u.name for u in users)} (remove them first, or use force)")
            if users and remove_users is not None:
                await remove_users(users)
                if left := self.users_of(image.id):
                    raise ImageInUse(f"Image '{ref}' is still in use: {', '.join(u.name for u in left)}")
            try:
                freed = await asyncio.to_thread(self.store.remove, image.id)
            finally:
                self._sync()
        log.info("Removed image %s (%s), %d bytes freed", image.id[:12], ", ".join(image.names) or "no name", freed)

    async def prune(self, keep: Collection[str] = ()) -> int:
        """Remove the images no container uses; keep: ids of images to keep besides."""
        async with self._lock:
            keep = set(self._containers.image_users()) | set(keep)
            try:
                freed, removed = await asyncio.to_thread(self.store.prune, keep)
            finally:
                self._sync()
        log.info("Pruned %d images, %d bytes freed", len(removed), freed)
        return freed

    def users_of(self, image_id: str) -> list[User]:
        return list(self._containers.image_users().get(image_id, []))

    def _sync(self) -> None:
        """Tell the listeners what changed in the store since last time: images added, renamed, removed."""
        now = {i.id: i for i in self.store.list()}
        before, self._known = self._known, now
        for image_id, image in now.items():
            if image_id not in before:
                for listener in self._listeners:
                    listener.image_added(image)
            elif before[image_id] != image:
                for listener in self._listeners:
                    listener.image_changed(image)
        for image_id in before.keys() - now.keys():
            self._configs.pop(image_id, None)
            for listener in self._listeners:
                listener.image_removed(image_id)


def container_defaults(image: Image, config: oci.ImageConfig, command: tuple[str, ...],
                       fields: dict[str, Any]) -> ContainerDefaults:
    """Docker's rules: a command given replaces Cmd and keeps Entrypoint; the image's Env is beneath the
    caller's; WorkingDir and User apply unless given; Labels are merged, the caller's winning. An entrypoint
    given replaces the image's and drops its Cmd too (as Podman's --entrypoint). publish_all publishes each of
    its ExposedPorts not published already to a free host port."""
    out = dict(fields)
    entrypoint = out.pop("entrypoint", None)
    argv = config.command(command) if entrypoint is None else entrypoint + command
    if not argv or not argv[0]:
        what = "has no Entrypoint or Cmd" if entrypoint is None else "is run with an empty entrypoint"
        raise InvalidArgument("The command is empty: give at least the program to run (image "
                              f"'{image.names[0] if image.names else image.id[:12]}' {what})")
    if out.pop("publish_all", False):
        published = {m.rsplit(":", 1)[-1] for m in out.get("ports", ())}  # "80/tcp" of "[IP:]HOST:80/tcp"
        out["ports"] = tuple(out.get("ports", ())) + tuple(f"0:{p}" for p in config.exposed_ports
                                                            if p not in published)
    given = {e.partition("=")[0] for e in fields.get("env", ())}
    out["env"] = tuple(e for e in config.env if e.partition("=")[0] not in given) + tuple(fields.get("env", ()))
    if "workdir" not in fields and config.workdir:
        out["workdir"] = os.path.normpath(os.path.join("/", config.workdir))
    if "user" not in fields and config.user:
        try:
            out["user"] = OPTION_PARSERS["user"][1](config.user)
        except InvalidArgument:
            raise ImageInvalid(f"Image '{image.id[:12]}' is invalid: its config's User '{config.user}' is not "
                               "uid[:gid] or name[:group]") from None
    if config.labels:
        out["labels"] = {**config.labels, **fields.get("labels", {})}
    if config.stop_signal and "stop_signal" not in fields:
        out["stop_signal"] = oci.parse_signal(config.stop_signal, f"image {image.id[:12]}: StopSignal")
    # Its HEALTHCHECK: each part unless given (a --health-interval alone changes the image's check's interval).
    if fields.get("health_cmd") != ():  # none at all: not even the image's times
        out.update({key: value for key, value in config.health.items() if key not in fields})
    return ContainerDefaults(argv, out)


def _job(options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The progress job id: the caller's (to match ImageProgress signals to its call), or a new one."""
    rest = dict(options)
    job = rest.pop("job", None)
    if job is None:
        return secrets.token_hex(8), rest
    if not isinstance(job, str) or not job or len(job) > 64 or not set(job) <= _JOB_CHARS:
        raise InvalidArgument(f"Option 'job' must be 1 to 64 letters, digits, '_', '-' or '.', not {job!r}")
    return job, rest


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"Option '{key}' must be a string, not {value!r}")
    return value


def _platform(value: Any) -> oci.Platform:
    try:
        return oci.Platform.parse(_string("platform", value))
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


def _strings(key: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"Option '{key}' must be a list of strings, not {value!r}")
    return list(value)


def _change(key: str, value: Any) -> Any:
    """A config change for a rootfs tarball's image, checked as the same option of a container is."""
    if key in ("cmd", "entrypoint"):
        return _strings(key, value)
    if key == "env":
        return list(parse_env("env", value))
    if key in ("workdir", "user", "labels"):
        return OPTION_PARSERS[key][1](value)
    if key == "stop_signal":
        oci.parse_signal(_string(key, value), "Option 'stop_signal'")
        return value
    raise AssertionError(key)


IMPORT_OPTIONS = ("job", "ref", "platform", "cmd", "entrypoint", "env", "workdir", "user", "labels", "stop_signal")
PULL_OPTIONS = ("job", "platform", "auth_file")


def _import_options(options: dict[str, Any]) -> ImportOptions:
    ref, platform, changes = "", None, {}
    for key, value in options.items():
        if key == "ref":
            ref = _string(key, value)
        elif key == "platform":
            platform = _platform(value)
        elif key in IMPORT_OPTIONS:
            changes[key] = _change(key, value)
        else:
            raise InvalidArgument(f"Unknown option '{key}': known options are {', '.join(sorted(IMPORT_OPTIONS))}")
    return ImportOptions(ref=ref, platform=platform, changes=changes)


def _pull_options(options: dict[str, Any]) -> registry.PullOptions:
    platform, auth_file = None, None
    for key, value in options.items():
        if key == "platform":
            platform = _platform(value)
        elif key == "auth_file":
            auth_file = Path(_string(key, value))
            if not auth_file.is_absolute():
                raise InvalidArgument(f"Option 'auth_file' must be an absolute path, not '{value}'")
        else:
            raise InvalidArgument(f"Unknown option '{key}': known options are {', '.join(sorted(PULL_OPTIONS))}")
    return registry.PullOptions(platform=platform, auth_file=auth_file)
