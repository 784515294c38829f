"""org.quilt.Runtime.Container on /org/quilt/Runtime/container/ID: one object per container."""
import dataclasses
import re
import signal
from dataclasses import dataclass
from typing import Any, Callable

from dbus_fast import Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import PropertyAccess, dbus_method, dbus_property

from quilt_agent import capabilities
from quilt_agent.bus import container_io
from quilt_agent.bus.container_io import ContainerIO
from quilt_agent.bus.fds import closing_fds, received_fd
from quilt_agent.bus.guard import GuardedInterface, guarded, readable
from quilt_agent.bus import caller
from quilt_agent.bus.holds import holder_watch
from quilt_agent.bus.network import CONTAINER_ARG_NAMES as NETWORK_ARG_NAMES
from quilt_agent.bus.network import ContainerNetwork
from quilt_agent.bus.volume import ContainerCopy
from quilt_agent.bus.names import CONTAINER_INTERFACE
from quilt_agent.bus import access
from quilt_agent.bus.access import Target
from quilt_agent.bus.polkit import MANAGE, READ, Authority
from quilt_agent.errors import InvalidArgument
from quilt_agent.manager import Manager
from quilt_agent.network.core import Networks
from quilt_agent.model import Container, effective_hostname
from quilt_agent.userns import IdRange

LOG_OPTIONS = {"lines": int, "since": int, "setup": bool, "dropped": bool}


@dataclass(frozen=True)
class Property:
    """One property of org.quilt.Runtime.Container: its D-Bus name, its wire type and its value."""

    name: str
    signature: str
    value: Callable[[Container], Any]


# The one list of the object's properties, in the contract's order (dbus/org.quilt.Runtime.xml; Addresses and Ports
# are bus/network.py's): the exported properties are made from it (below ContainerInterface), and PropertiesChanged
# compares its values.
# Properties are answered by dbus-fast itself from memory, without a polkit check, like machined's; the environment
# is not among them for that reason.
PROPERTIES: tuple[Property, ...] = (
    Property("Id", "s", lambda c: c.id),
    Property("Name", "s", lambda c: c.name),
    Property("Image", "s", lambda c: c.spec.image),
    Property("Command", "as", lambda c: list(c.spec.command)),
    Property("State", "s", lambda c: state_text(c)),
    Property("ExitCode", "i", lambda c: c.exit_code),
    Property("ExitSignal", "i", lambda c: c.exit_signal),
    Property("OOMKilled", "b", lambda c: c.oom_killed),
    Property("FailureReason", "s", lambda c: c.failure_reason),
    Property("MainPID", "u", lambda c: c.main_pid),
    Property("Unit", "s", lambda c: c.unit),
    Property("Hostname", "s", lambda c: effective_hostname(c.spec)),
    Property("WorkingDirectory", "s", lambda c: c.spec.workdir),
    Property("User", "s", lambda c: c.spec.user or "0"),
    Property("Namespaces", "as", lambda c: list(c.spec.namespaces)),
    Property("CreatedAt", "t", lambda c: c.created_at),
    Property("StartedAt", "t", lambda c: c.started_at),
    Property("FinishedAt", "t", lambda c: c.finished_at),
    Property("MemoryMax", "t", lambda c: c.spec.memory_max),
    Property("PidsMax", "t", lambda c: c.spec.pids_max),
    Property("CPUQuota", "d", lambda c: c.spec.cpu_quota),
    Property("StopSignal", "i", lambda c: c.spec.stop_signal or signal.SIGTERM),
    Property("StopTimeout", "u", lambda c: c.spec.stop_timeout),
    Property("RemoveOnExit", "b", lambda c: c.spec.remove_on_exit),
    Property("Labels", "a{ss}", lambda c: dict(c.spec.labels)),
    Property("Seccomp", "s", lambda c: c.spec.seccomp),
    Property("Setup", "as", lambda c: list(c.spec.setup)),
    Property("SetupImage", "s", lambda c: c.setup_image),
    Property("Owner", "u", lambda c: c.owner_uid),
    Property("UserNamespace", "s", lambda c: "host" if c.id_first < 0 else str(IdRange(c.id_first))),
    Property("Init", "b", lambda c: c.spec.init),
    Property("RestartPolicy", "s", lambda c: c.spec.restart_policy),
    Property("RestartMax", "u", lambda c: c.spec.restart_max),
    Property("RestartCount", "u", lambda c: c.restart_count),
    Property("Restarting", "b", lambda c: c.restart_at > 0),
    Property("RestartAt", "t", lambda c: c.restart_at),
    Property("StoppedByUser", "b", lambda c: c.user_stopped),
    Property("Health", "s", lambda c: c.health),
    Property("HealthCommand", "as", lambda c: list(c.spec.health_cmd)),
    Property("HealthInterval", "t", lambda c: _usec(c.spec.health_interval)),
    Property("HealthTimeout", "t", lambda c: _usec(c.spec.health_timeout)),
    Property("HealthStartPeriod", "t", lambda c: _usec(c.spec.health_start_period)),
    Property("HealthRetries", "u", lambda c: c.spec.health_retries),
    Property("HealthOnFailure", "s", lambda c: c.spec.health_on_failure),
    Property("Networks", "as", lambda c: list(c.spec.networks)),
    Property("NetworkAliases", "as", lambda c: list(c.spec.aliases)),
    Property("IP", "s", lambda c: c.spec.ip),
    Property("Volumes", "as", lambda c: list(c.spec.volumes)),
    Property("AnonymousVolumes", "as", lambda c: list(c.spec.anonymous_volumes)),
    Property("Tmpfs", "as", lambda c: list(c.spec.tmpfs)),
    Property("ReadOnly", "b", lambda c: c.spec.read_only),
    Property("SdNotify", "s", lambda c: c.spec.sdnotify),
    Property("LogDriver", "s", lambda c: c.spec.log_driver),
    Property("LogMaxSize", "t", lambda c: c.spec.log_max_size),
    Property("LogMaxFiles", "u", lambda c: c.spec.log_max_files),
    Property("Machine", "o", lambda c: c.machine or "/"),
    Property("MachineName", "s", lambda c: c.machine_name),
    Property("Ready", "b", lambda c: c.ready),
    Property("NotifyStatus", "s", lambda c: c.notify_status),
    Property("LogLinesDropped", "t", lambda c: c.logs_dropped),
    Property("LogLinesDroppedAt", "t", lambda c: c.logs_dropped_at),
    Property("CapAdd", "as", lambda c: list(c.spec.cap_add)),
    Property("CapDrop", "as", lambda c: list(c.spec.cap_drop)),
    Property("Capabilities", "as", lambda c: list(capabilities.effective(c.spec.cap_add, c.spec.cap_drop))),
    Property("AddHosts", "as", lambda c: list(c.spec.add_hosts)),
    Property("DNSServers", "as", lambda c: list(c.spec.dns_servers)),
    Property("DNSSearch", "as", lambda c: list(c.spec.dns_search)),
    Property("DNSOptions", "as", lambda c: list(c.spec.dns_options)),
)


_BY_NAME = {prop.name: prop for prop in PROPERTIES}
_NETWORK_PROPERTIES = ("Addresses", "Ports")  # bus/network.py's, on the same object


def property_names(names: list[str]) -> tuple[str, ...] | None:
    """The properties a caller asked for, checked: None (all of them) for none."""
    unknown = sorted(set(names) - set(_BY_NAME) - set(_NETWORK_PROPERTIES))
    if unknown:
        raise InvalidArgument(f"Unknown container property '{unknown[0]}'")
    return tuple(dict.fromkeys(names)) or None


def property_variants(c: Container, addresses: list[tuple[str, str]],
                      names: tuple[str, ...] | None = None) -> dict[str, Variant]:
    """What GetAll answers on the container's object (bus/network.py's Addresses and Ports included), each in its
    Variant, or only `names` of it: what ListContainerProperties answers per container."""
    wanted = names if names is not None else (*_BY_NAME, *_NETWORK_PROPERTIES)
    values = {}
    for name in wanted:
        if name == "Addresses":
            values[name] = Variant("a(ss)", [list(pair) for pair in addresses])
        elif name == "Ports":
            values[name] = Variant("as", list(c.spec.ports))
        else:
            prop = _BY_NAME[name]
            values[name] = Variant(prop.signature, prop.value(c))
    return values


def state_text(c: Container) -> str:
    """Its state as callers see it: "paused" is a running container whose processes are frozen (Pause), as
    Podman shows one, though the core keeps it running (it has its processes, its scope and its addresses)."""
    return "paused" if c.paused and c.state.value == "running" else c.state.value


def _usec(seconds: float) -> int:
    return round(seconds * 1e6)


def properties(c: Container) -> dict[str, Any]:
    """The object's property values, by D-Bus name; PropertiesChanged compares these."""
    return {prop.name: prop.value(c) for prop in PROPERTIES}


def _attribute(dbus_name: str) -> str:
    """The Python attribute a property is exported as: OOMKilled -> oom_killed_ (the trailing _ keeps it from
    shadowing a ServiceInterface attribute such as `name`)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", dbus_name).lower() + "_"


def _exported(prop: Property) -> Any:
    """A read-only dbus-fast property that reads prop's value from the container the object stands for."""
    def getter(self: "ContainerInterface") -> Any:
        return prop.value(self._c)  # NoSuchContainer when removed meanwhile: answered as a method would be

    getter.__name__ = getter.__qualname__ = _attribute(prop.name)
    getter.__annotations__ = {"return": prop.signature}  # dbus-fast reads the wire type from the annotation
    return dbus_property(access=PropertyAccess.READ, name=prop.name)(readable(getter))


def _export_properties(cls: type) -> type:
    """Class decorator: each of PROPERTIES becomes a read-only property of the interface."""
    for prop in PROPERTIES:
        attribute = _attribute(prop.name)
        if hasattr(cls, attribute):
            raise TypeError(f"{cls.__name__}.{attribute} exists: property {prop.name} would replace it")
        setattr(cls, attribute, _exported(prop))
    return cls


def _log_options(options: dict[str, Variant]) -> tuple[int, int, bool, bool]:
    for key, value in options.items():
        if key not in LOG_OPTIONS:
            raise InvalidArgument(f"Unknown log option '{key}': known options are {', '.join(LOG_OPTIONS)}")
        if LOG_OPTIONS[key] is bool:
            if not isinstance(value.value, bool):
                raise InvalidArgument(f"Log option '{key}' must be a boolean, not {value.value!r}")
        elif not isinstance(value.value, int) or isinstance(value.value, bool) or value.value < 0:
            raise InvalidArgument(f"Log option '{key}' must be an unsigned integer, not {value.value!r}")
    lines = options["lines"].value if "lines" in options else 0
    since = options["since"].value if "since" in options else 0
    setup = bool(options["setup"].value) if "setup" in options else False
    return lines, since, setup, bool(options["dropped"].value) if "dropped" in options else False


@_export_properties
class ContainerInterface(ContainerIO, ContainerNetwork, ContainerCopy, GuardedInterface):
    ARG_NAMES = {"Wait": ("exit_code",), "WaitCondition": ("condition", "exit_code"), "GetLogs": ("lines",), "GetEnvironment": ("environment",),
                 "RunHealthCheck": ("status", "exit_code", "output"),
                 "GetHealthLog": ("status", "failing_streak", "checks"),
                 **container_io.ARG_NAMES, **NETWORK_ARG_NAMES}

    def __init__(self, container_id: str, manager: Manager, networks: Networks, authority: Authority,
                 bus: MessageBus) -> None:
        super().__init__(CONTAINER_INTERFACE, authority)
        self.container_id = container_id
        self._manager = manager
        self._networks = networks
        self._bus = bus  # the bus it is exported on: FollowLogs waits there until its reply is sent
        self.last: dict[str, Any] = {}

    def subject(self) -> Target:
        return access.container(self._c)

    @property
    def _c(self) -> Container:
        return self._manager.get(self.container_id)

    def added_properties(self) -> dict[str, Variant]:
        """What GetAll answers, for its InterfacesAdded (bus/relay.py's RelayingBus)."""
        return property_variants(self._c, self._networks.addresses(self.container_id))

    def changed(self, c: Container) -> None:
        """Emit PropertiesChanged for what differs from the last values sent."""
        now = properties(c)
        diff = {k: v for k, v in now.items() if self.last.get(k) != v}
        self.last = now
        if diff:
            self.emit_properties_changed(diff)

    @dbus_method(name="Start")
    @guarded(MANAGE, "start")
    async def start(self) -> None:
        await self._manager.start(self.container_id)

    @dbus_method(name="Stop")
    @guarded(MANAGE, "stop")
    async def stop(self, timeout_seconds: "u") -> None:
        await self._manager.stop(self.container_id, timeout_seconds)

    @dbus_method(name="Kill")
    @guarded(MANAGE, "kill")
    async def kill(self, signal: "i") -> None:
        await self._manager.kill(self.container_id, signal)

    @dbus_method(name="Remove")
    @guarded(MANAGE, "remove")
    async def remove(self, force: "b") -> None:
        await self._manager.remove(self.container_id, force)

    @dbus_method(name="HoldRemoval")
    @guarded(MANAGE, "hold the removal of")
    async def hold_removal(self) -> None:
        # The caller (quiltctl run --rm) reads the exit code and the last lines once it has exited, then removes
        # it; if the caller leaves the bus first (killed, its terminal closed), the agent removes it then.
        holder = caller.current().sender
        self._manager.hold_removal(self.container_id, holder)
        await holder_watch(self._bus, self._manager).watch(holder)

    @dbus_method(name="Restart")
    @guarded(MANAGE, "restart")
    async def restart(self, options: "a{sv}") -> None:
        unknown = sorted(set(options) - {"timeout"})
        if unknown:
            raise InvalidArgument(f"Unknown restart option '{unknown[0]}': the known option is timeout")
        timeout = options["timeout"].value if "timeout" in options else None
        if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0):
            raise InvalidArgument(f"Restart option 'timeout' must be an unsigned integer, not {timeout!r}")
        await self._manager.restart(self.container_id, timeout)

    @dbus_method(name="Pause")
    @guarded(MANAGE, "pause")
    async def pause(self) -> None:
        await self._manager.pause(self.container_id)

    @dbus_method(name="Unpause")
    @guarded(MANAGE, "unpause")
    async def unpause(self) -> None:
        await self._manager.unpause(self.container_id)

    @dbus_method(name="Rename")
    @guarded(MANAGE, "rename")
    async def rename(self, name: "s") -> None:
        # A rule may grant by a container's name: the container as it would be named must be the caller's to
        # manage too, or a rename would move it under another rule.
        await self.authority.check(MANAGE, "rename to", dataclasses.replace(self.subject(), name=name))
        await self._manager.rename(self.container_id, name)

    @dbus_method(name="Export")
    @closing_fds
    @guarded(MANAGE, "export")
    async def export(self, archive: "h") -> None:
        await self._manager.export(self.container_id, received_fd(archive, "archive"))

    @dbus_method(name="Wait")
    @guarded(READ, "wait for")
    async def wait(self) -> "i":
        return await self._manager.wait(self.container_id)

    @dbus_method(name="WaitCondition")
    @guarded(READ, "wait for")
    async def wait_condition(self, conditions: "as") -> "si":
        met, code = await self._manager.wait_condition(self.container_id, list(conditions))
        return [met, code]

    @dbus_method(name="GetLogs")
    @guarded(READ, "read the logs of")
    async def get_logs(self, options: "a{sv}") -> "a(tss)":
        lines, since, setup, dropped = _log_options(options)
        # journal.LogLine is the (tss) struct itself: no copy of each line here
        return await self._manager.logs(self.container_id, since_usec=since, last=lines, setup=setup,
                                        dropped=dropped)

    @dbus_method(name="GetEnvironment")
    @guarded(MANAGE, "read the environment of")
    async def get_environment(self) -> "as":
        return self._manager.environment(self.container_id)

    @dbus_method(name="RunHealthCheck")
    @guarded(MANAGE, "run the health check of")
    async def run_health_check(self) -> "sis":
        status, result = await self._manager.health_check(self.container_id)
        return [status, result.exit_code, result.output]

    @dbus_method(name="GetHealthLog")
    @guarded(READ, "read the health checks of")
    async def get_health_log(self) -> "sua(ttis)":
        status, streak, results = self._manager.health_log(self.container_id)
        return [status, streak, [[r.start, r.end, r.exit_code, r.output] for r in results]]
