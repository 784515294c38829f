"""org.quilt.Runtime.Container on /org/quilt/Runtime/container/ID: one object per container."""
import signal
from typing import Any

from dbus_fast import Variant
from dbus_fast.service import PropertyAccess, dbus_method, dbus_property

from quilt_agent.bus import container_io
from quilt_agent.bus.container_io import ContainerIO
from quilt_agent.bus.guard import GuardedInterface, guarded
from quilt_agent.bus.network import CONTAINER_ARG_NAMES as NETWORK_ARG_NAMES
from quilt_agent.bus.network import ContainerNetwork
from quilt_agent.bus.volume import ContainerCopy
from quilt_agent.bus.names import CONTAINER_INTERFACE
from quilt_agent.bus.polkit import MANAGE, READ, Authority, Subject
from quilt_agent.errors import InvalidArgument
from quilt_agent.manager import Manager
from quilt_agent.model import Container, effective_hostname

LOG_OPTIONS = {"lines": int, "since": int, "setup": bool}


def properties(c: Container) -> dict[str, Any]:
    """The object's property values, by D-Bus name; PropertiesChanged compares these."""
    return {
        "Id": c.id, "Name": c.name, "Image": c.spec.image, "Command": list(c.spec.command),
        "State": c.state.value, "ExitCode": c.exit_code, "ExitSignal": c.exit_signal, "OOMKilled": c.oom_killed,
        "FailureReason": c.failure_reason, "MainPID": c.main_pid, "Unit": c.unit,
        "Hostname": effective_hostname(c.spec), "WorkingDirectory": c.spec.workdir, "User": c.spec.user or "0",
        "Namespaces": list(c.spec.namespaces), "CreatedAt": c.created_at, "StartedAt": c.started_at,
        "FinishedAt": c.finished_at, "MemoryMax": c.spec.memory_max, "PidsMax": c.spec.pids_max,
        "CPUQuota": c.spec.cpu_quota, "StopTimeout": c.spec.stop_timeout,
        "StopSignal": c.spec.stop_signal or signal.SIGTERM, "RemoveOnExit": c.spec.remove_on_exit,
        "Labels": dict(c.spec.labels), "Setup": list(c.spec.setup), "SetupImage": c.setup_image,
        "Seccomp": c.spec.seccomp,
    }


def _log_options(options: dict[str, Variant]) -> tuple[int, int, bool]:
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
    return lines, since, bool(options["setup"].value) if "setup" in options else False


class ContainerInterface(ContainerIO, ContainerNetwork, ContainerCopy, GuardedInterface):
    ARG_NAMES = {"Wait": ("exit_code",), "GetLogs": ("lines",), "GetEnvironment": ("environment",),
                 **container_io.ARG_NAMES, **NETWORK_ARG_NAMES}

    def __init__(self, container_id: str, manager: Manager, authority: Authority) -> None:
        super().__init__(CONTAINER_INTERFACE, authority)
        self.container_id = container_id
        self._manager = manager
        self.last: dict[str, Any] = {}

    def subject(self) -> Subject:
        return Subject("container", self._c.name)

    @property
    def _c(self) -> Container:
        return self._manager.get(self.container_id)

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

    @dbus_method(name="Wait")
    @guarded(READ, "wait for")
    async def wait(self) -> "i":
        return await self._manager.wait(self.container_id)

    @dbus_method(name="GetLogs")
    @guarded(READ, "read the logs of")
    async def get_logs(self, options: "a{sv}") -> "a(tss)":
        lines, since, setup = _log_options(options)
        return [[line.usec, line.stream, line.text]
                for line in await self._manager.logs(self.container_id, since_usec=since, last=lines, setup=setup)]

    @dbus_method(name="GetEnvironment")
    @guarded(MANAGE, "read the environment of")
    async def get_environment(self) -> "as":
        return self._manager.environment(self.container_id)

    # Properties: answered by dbus-fast itself from memory, without a polkit check,
    # like machined's; the environment is not among them for that reason.
    @dbus_property(access=PropertyAccess.READ, name="Id")
    def id_(self) -> "s":
        return self._c.id

    @dbus_property(access=PropertyAccess.READ, name="Name")
    def name_(self) -> "s":
        return self._c.name

    @dbus_property(access=PropertyAccess.READ, name="Image")
    def image(self) -> "s":
        return self._c.spec.image

    @dbus_property(access=PropertyAccess.READ, name="Command")
    def command(self) -> "as":
        return list(self._c.spec.command)

    @dbus_property(access=PropertyAccess.READ, name="State")
    def state(self) -> "s":
        return self._c.state.value

    @dbus_property(access=PropertyAccess.READ, name="ExitCode")
    def exit_code(self) -> "i":
        return self._c.exit_code

    @dbus_property(access=PropertyAccess.READ, name="ExitSignal")
    def exit_signal(self) -> "i":
        return self._c.exit_signal

    @dbus_property(access=PropertyAccess.READ, name="OOMKilled")
    def oom_killed(self) -> "b":
        return self._c.oom_killed

    @dbus_property(access=PropertyAccess.READ, name="FailureReason")
    def failure_reason(self) -> "s":
        return self._c.failure_reason

    @dbus_property(access=PropertyAccess.READ, name="MainPID")
    def main_pid(self) -> "u":
        return self._c.main_pid

    @dbus_property(access=PropertyAccess.READ, name="Unit")
    def unit(self) -> "s":
        return self._c.unit

    @dbus_property(access=PropertyAccess.READ, name="Hostname")
    def hostname(self) -> "s":
        return properties(self._c)["Hostname"]

    @dbus_property(access=PropertyAccess.READ, name="WorkingDirectory")
    def working_directory(self) -> "s":
        return self._c.spec.workdir

    @dbus_property(access=PropertyAccess.READ, name="User")
    def user(self) -> "s":
        return properties(self._c)["User"]

    @dbus_property(access=PropertyAccess.READ, name="Namespaces")
    def namespaces(self) -> "as":
        return list(self._c.spec.namespaces)

    @dbus_property(access=PropertyAccess.READ, name="CreatedAt")
    def created_at(self) -> "t":
        return self._c.created_at

    @dbus_property(access=PropertyAccess.READ, name="StartedAt")
    def started_at(self) -> "t":
        return self._c.started_at

    @dbus_property(access=PropertyAccess.READ, name="FinishedAt")
    def finished_at(self) -> "t":
        return self._c.finished_at

    @dbus_property(access=PropertyAccess.READ, name="MemoryMax")
    def memory_max(self) -> "t":
        return self._c.spec.memory_max

    @dbus_property(access=PropertyAccess.READ, name="PidsMax")
    def pids_max(self) -> "t":
        return self._c.spec.pids_max

    @dbus_property(access=PropertyAccess.READ, name="CPUQuota")
    def cpu_quota(self) -> "d":
        return self._c.spec.cpu_quota

    @dbus_property(access=PropertyAccess.READ, name="StopSignal")
    def stop_signal(self) -> "i":
        return self._c.spec.stop_signal or signal.SIGTERM

    @dbus_property(access=PropertyAccess.READ, name="StopTimeout")
    def stop_timeout(self) -> "u":
        return self._c.spec.stop_timeout

    @dbus_property(access=PropertyAccess.READ, name="RemoveOnExit")
    def remove_on_exit(self) -> "b":
        return self._c.spec.remove_on_exit

    @dbus_property(access=PropertyAccess.READ, name="Labels")
    def labels(self) -> "a{ss}":
        return dict(self._c.spec.labels)

    @dbus_property(access=PropertyAccess.READ, name="Seccomp")
    def seccomp(self) -> "s":
        return self._c.spec.seccomp

    @dbus_property(access=PropertyAccess.READ, name="Setup")
    def setup(self) -> "as":
        return list(self._c.spec.setup)

    @dbus_property(access=PropertyAccess.READ, name="SetupImage")
    def setup_image(self) -> "s":
        return self._c.setup_image
