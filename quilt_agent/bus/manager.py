"""org.quilt.Runtime.Manager on /org/quilt/Runtime, and the export of one object per container."""
import asyncio
import functools
from typing import Any, Callable

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, dbus_method, dbus_property, dbus_signal

from quilt_agent import __version__
from quilt_agent.app import Services
from quilt_agent.bus.container import (
    ContainerInterface, properties, property_names, property_variants, state_text,
)
from quilt_agent.bus import access, caller
from quilt_agent.bus.access import Resolver, Target, absent
from quilt_agent.bus.holds import holder_watch
from quilt_agent.bus.guard import BY_METHOD, PUBLIC, GuardedInterface, guarded, reveal, visible
from quilt_agent.bus.errors import ERROR_NAMES
from quilt_agent.bus.events import ARG_NAMES as EVENT_ARG_NAMES
from quilt_agent.bus.events import ManagerEvents
from quilt_agent.bus.network import MANAGER_ARG_NAMES as NETWORK_ARG_NAMES
from quilt_agent.bus.network import NetworkMethods
from quilt_agent.bus.image import MANAGER_ARG_NAMES as IMAGE_ARG_NAMES
from quilt_agent.bus.image import ImageMethods
from quilt_agent.bus.volume import MANAGER_ARG_NAMES as VOLUME_ARG_NAMES
from quilt_agent.bus.volume import VolumeMethods
from quilt_agent.bus.names import (
    CONTAINER_INTERFACE, CONTAINER_PATH_PREFIX, MANAGER_INTERFACE, MANAGER_PATH, NETWORK_PATH_PREFIX, container_path,
)
from quilt_agent.bus.relay import Relay
from quilt_agent.bus.polkit import HOST, MANAGE, PRIVILEGED, Authority
from quilt_agent.errors import InvalidArgument, NoSuchContainer, QuiltError
from quilt_agent.manager import CreatePlan
from quilt_agent.model import Container


EXPORTS_PER_PAUSE = 16


def _unwrap(options: dict[str, Variant]) -> dict[str, Any]:
    return {key: value.value for key, value in options.items()}


def _check_command(command: list[str]) -> list[str]:
    if not isinstance(command, list):
        raise InvalidArgument("The command must be a list of strings")
    return command


class ManagerInterface(ManagerEvents, NetworkMethods, ImageMethods, VolumeMethods, GuardedInterface):
    ARG_NAMES = {"Subscribe": ("sender",), "CreateContainer": ("container",), "RunContainer": ("container",), "GetContainer": ("container",),
                 "ListContainers": ("containers",), "ListContainerProperties": ("containers",),
                 "GetContainerProperties": ("container", "properties"), "StartAtBoot": ("containers",), "ContainerNew": ("id", "container"),
                 "ContainerRemoved": ("id", "container"), **NETWORK_ARG_NAMES, **EVENT_ARG_NAMES,
                 **IMAGE_ARG_NAMES, **VOLUME_ARG_NAMES}

    def __init__(self, services: Services, authority: Authority, bus: MessageBus, relay: Relay) -> None:
        super().__init__(MANAGER_INTERFACE, authority)
        self._relay = relay
        self._targets: dict[str, Target] = {}  # object path -> what it is, kept until its last signal is sent
        self._manager = services.manager
        self._resolver = Resolver(services.manager, services.images, services.networks, services.volumes)
        self._bus = bus
        self._objects: dict[str, ContainerInterface] = {}
        self._manager.subscribe(self)
        self._networks_init(services.networks, services.removal)  # bus/network.py: network objects and signals
        self._images_init(services.images, services.removal)  # bus/image.py: the image objects and methods
        self._volumes_init(services.volumes, services.removal)  # bus/volume.py: the volume objects and methods

    def resolve(self, kind: str, text: str) -> Target:
        return self._resolver.find(kind, text)

    # --- events from the manager: export objects, emit signals -----------------------------------

    async def export_existing(self) -> None:
        """Every object the services know, exported before the name is taken. Each export sends its
        InterfacesAdded: a pause every few objects keeps hundreds of them from holding the loop at once."""
        exports: list[Callable[[], None]] = [
            *(functools.partial(self._export_network, n) for n in self._networks.list()),
            *(functools.partial(self._export_image, i) for i in self._images.list()),
            *(functools.partial(self._export_volume, v) for v in self._volumes.list()),
            *(functools.partial(self._export, c) for c in self._manager.list())]
        for done, export in enumerate(exports, 1):
            export()
            if done % EXPORTS_PER_PAUSE == 0:
                await asyncio.sleep(0)

    def _export(self, c: Container) -> None:
        obj = ContainerInterface(c.id, self._manager, self._networks, self.authority, self._bus)
        obj.last = properties(c)
        self._objects[c.id] = obj
        self._targets[container_path(c.id)] = access.container(c)
        with caller.agent():  # InterfacesAdded: the agent reads the properties
            self._bus.export(container_path(c.id), obj)

    def container_added(self, container: Container) -> None:
        self._export(container)
        self.container_new(container.id, container_path(container.id))

    def container_changed(self, container: Container) -> None:
        obj = self._objects.get(container.id)
        if obj is not None:
            self._targets[container_path(container.id)] = access.container(container)
            obj.changed(container)

    def unknown_container(self, msg: Message) -> Message | bool | None:
        """Message handler: a call to a container path that has no object (removed, or a wrong id) is
        NoSuchContainer naming the id, as machined answers; dbus-fast alone answers UnknownMethod, as if
        Start or Remove did not exist."""
        if (msg.message_type is not MessageType.METHOD_CALL or not msg.path.startswith(CONTAINER_PATH_PREFIX)
                or msg.interface not in (CONTAINER_INTERFACE, "org.freedesktop.DBus.Properties")
                or msg.path[len(CONTAINER_PATH_PREFIX):] in self._objects):
            return None
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True
        error = NoSuchContainer(msg.path[len(CONTAINER_PATH_PREFIX):])
        return Message.new_error(msg, ERROR_NAMES[NoSuchContainer], str(error))

    def container_removed(self, container: Container) -> None:
        obj = self._objects.pop(container.id, None)
        if obj is not None:
            obj.changed(container)
            self._bus.unexport(container_path(container.id), obj)
        self.container_removed_signal(container.id, container_path(container.id))
        self._targets.pop(container_path(container.id), None)  # its last signals are relayed: forgotten

    # --- signals for subscribers other than root (bus/relay.py) ------------------------------------

    def describe_signal(self, msg: Message) -> Target | None:
        """The object a signal is about: by its path, or for the Manager's signals by the object path or the
        container id they carry; None for ImageProgress, which names a job, not an object (it goes to the job's
        caller alone: progress_addressee)."""
        if msg.path.startswith(NETWORK_PATH_PREFIX) and msg.member == "PropertiesChanged":
            return None  # its Containers name every container on it: a subscriber reads them again (Get)
        if msg.path != MANAGER_PATH:
            return self._targets.get(msg.path)
        if msg.member == "Event":
            return self._targets.get(container_path(msg.body[1]))
        if msg.signature == "so":  # ContainerNew, ContainerRemoved, NetworkNew, ..., VolumeRemoved
            return self._targets.get(msg.body[1])
        return None

    @dbus_method(name="Subscribe")
    @guarded(PUBLIC)
    async def subscribe_signals(self) -> "s":
        """Root receives the agent's signals as broadcasts; any other caller, once subscribed, a copy of those
        about the objects it may see, from the connection whose unique name this returns."""
        await self._relay.subscribe(caller.current().sender, await self.authority.credentials())
        return self._relay.name

    @dbus_method(name="Unsubscribe")
    @guarded(PUBLIC)
    async def unsubscribe_signals(self) -> None:
        self._relay.unsubscribe(caller.current().sender)

    # --- methods ---------------------------------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ, name="Version")
    def version(self) -> "s":
        return __version__

    async def _create(self, verb: str, name: str, image: str, command: list[str], options: dict[str, Any],
                      starting: bool = False) -> Container:
        """Resolve what the create names, authorize each object as what it is, then make the container."""
        unwrapped = _unwrap(options)
        creds = await self.authority.credentials()
        if image.startswith("/"):  # read as root for the caller: asked before the file is opened
            await self.authority.check(HOST, f"{verb} a container from a host file", absent("container", name))
        try:
            plan = await self._manager.prepare(name, image, _check_command(command), unwrapped, creds.uid)
        except QuiltError:
            # What a create names is said to be missing or wrong only to a caller who may create at all: names
            # cannot be probed.
            await self.authority.check(MANAGE, verb, absent("container", name))
            raise
        await self._authorize_create(verb, plan)
        return await self._manager.create(plan, starting)

    async def _authorize_create(self, verb: str, plan: CreatePlan) -> None:
        target = access.new_container(plan)
        await self.authority.check(MANAGE, verb, target)
        if access.privileged_options(plan.spec):
            await self.authority.check(PRIVILEGED, verb, target)
        await self.authority.check(MANAGE, "use", access.image(plan.image))
        for network in plan.networks:
            await self.authority.check(MANAGE, "join", access.network(network))
        for joined in plan.joins:
            await self.authority.check(MANAGE, "join the network of", access.container(joined))
        for use in plan.volumes:
            if use.volume is None:
                await self.authority.check(MANAGE, "create", Target("volume", use.name, "", plan.owner_uid))
            else:
                await self.authority.check(MANAGE, "mount read-only" if use.read_only else "mount",
                                           access.volume(use.volume))

    @dbus_method(name="CreateContainer")
    @guarded(BY_METHOD)
    async def create_container(self, name: "s", image: "s", command: "as", options: "a{sv}") -> "o":
        c = await self._create("create", name, image, command, options)
        return container_path(c.id)

    @dbus_method(name="RunContainer")
    @guarded(BY_METHOD)
    async def run_container(self, name: "s", image: "s", command: "as", options: "a{sv}") -> "o":
        # hold_removal is the call's option, not the container's: the caller holds the removal of its
        # remove_on_exit container from before the start (as Container.HoldRemoval would), so an attached client
        # needs one call where it needed create, hold and start.
        options = dict(options)
        hold = options.pop("hold_removal", None)
        if hold is not None and (hold.signature != "b" or not isinstance(hold.value, bool)):
            raise InvalidArgument(f"Option 'hold_removal' must be a boolean, not {hold.value!r}")
        held = hold is not None and hold.value
        if held and not _unwrap(options).get("remove_on_exit"):
            raise InvalidArgument("Option 'hold_removal' needs remove_on_exit: there is no removal to hold")
        c = await self._create("run", name, image, command, options, starting=True)
        watching = None
        if held:
            holder = caller.current().sender
            self._manager.hold_removal(c.id, holder)  # before the start: an exit at once finds it held
            # The bus watches the holder while the container starts (its calls need not wait for each other).
            watching = holder_watch(self._bus, self._manager).watch(holder)
        # A start that fails removes a remove_on_exit container before the reply, as `podman run --rm` does: no
        # exit of its command will come to remove it at, and the caller must not find it afterwards.
        starting = self._manager.start_or_remove(c.id) if held or c.spec.remove_on_exit else self._manager.start(c.id)
        await (asyncio.gather(watching, starting) if watching else starting)
        return container_path(c.id)

    @dbus_method(name="StartAtBoot")
    @guarded(PRIVILEGED, "start the containers of a boot")
    async def start_at_boot(self) -> "ao":
        return [container_path(c.id) for c in await self._manager.start_at_boot()]

    @dbus_method(name="GetContainer")
    @guarded(PUBLIC)
    async def get_container(self, name_or_id: "s") -> "o":
        await reveal(self.authority, self.resolve("container", name_or_id))
        return container_path(self._manager.get(name_or_id).id)

    @dbus_method(name="GetContainerProperties")
    @guarded(PUBLIC)
    async def get_container_properties(self, name_or_id: "s") -> "oa{sv}":
        await reveal(self.authority, self.resolve("container", name_or_id))
        c = self._manager.get(name_or_id)
        return [container_path(c.id), property_variants(c, self._networks.addresses(c.id))]

    @dbus_method(name="ListContainers")
    @guarded(PUBLIC)
    async def list_containers(self) -> "a(ssso)":
        shown = await visible(self.authority, self._manager.list(), access.container)
        return [[c.id, c.name, state_text(c), container_path(c.id)] for c in shown]

    @dbus_method(name="ListContainerProperties")
    @guarded(PUBLIC)
    async def list_container_properties(self, names: "as") -> "a(oa{sv})":
        wanted = property_names(names)
        shown = await visible(self.authority, self._manager.list(), access.container)
        return [[container_path(c.id), property_variants(c, self._networks.addresses(c.id), wanted)] for c in shown]

    @dbus_signal(name="ContainerNew")
    def container_new(self, container_id: str, path: str) -> "so":
        return [container_id, path]

    @dbus_signal(name="ContainerRemoved")
    def container_removed_signal(self, container_id: str, path: str) -> "so":
        return [container_id, path]
