"""org.quilt.Runtime's calls, written once for the two ways of reaching it.

`Calls` holds every method call of the API (see dbus/org.quilt.Runtime.xml) as an `async def` over one
primitive, `_call_message`. quilt_agent.client.Client sends them with dbus-fast on an asyncio loop (programs,
tests, and quiltctl's streaming commands); quilt_agent.wire.BlockingClient sends them on a plain blocking socket,
where a call never suspends, so quiltctl's one-shot commands run them without importing asyncio or dbus-fast
(which together cost ~70 ms of start-up). This module imports neither.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

from quilt_agent.bus.names import (
    BUS_NAME, CONTAINER_INTERFACE, IMAGE_INTERFACE, MANAGER_INTERFACE, MANAGER_PATH, NETWORK_INTERFACE, VOLUME_INTERFACE,
)

# typing, dataclasses and the records of replies (quilt_agent.replies) are imported only where needed: a one-shot
# quiltctl command loads this module, and each module it loads costs it a millisecond or more (see wire.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Protocol, Sequence

    from quilt_agent.replies import ContainerEntry, Event, ExecOutput, ImageEntry, LogLine, NetworkEntry

    class Reply(Protocol):
        """What a transport's call returns: the reply's body, and the fds it carried ('h' values index them)."""

        body: list[Any]
        unix_fds: list[int]


PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"

# Errors that mean "nobody answers on org.quilt.Runtime" rather than "the agent refused": the CLI words them
# the same way as a missing bus.
_UNREACHABLE_ERRORS = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.NoServer",
        "org.freedesktop.DBus.Error.Disconnected",
    }
)
# Bus activation's failures: dbus-daemon's own (Spawn.*), and systemd's for SystemdService= relayed by it
# ("Unit quilt-agent.service is masked." is org.freedesktop.systemd1.UnitMasked). The agent itself never
# answers with these names, so they too mean the agent is not there.
_UNREACHABLE_ERROR_PREFIXES = ("org.freedesktop.DBus.Error.Spawn.", "org.freedesktop.systemd1.")

# The wire type of each key of CreateContainer/RunContainer's a{sv}, as documented in the XML.
CONTAINER_OPTION_SIGNATURES: dict[str, str] = {
    "env": "as",
    "workdir": "s",
    "user": "s",
    "hostname": "s",
    "memory_max": "t",
    "cpu_quota": "d",
    "pids_max": "t",
    "namespaces": "as",
    "remove_on_exit": "b",
    "hold_removal": "b",  # RunContainer's own, with remove_on_exit
    "stop_timeout": "u",
    "labels": "a{ss}",
    "networks": "as",
    "aliases": "as",
    "ip": "s",
    "ports": "as",
    "volumes": "as",
    "tmpfs": "as",
    "read_only": "b",
    "setup": "as",
    "setup_cache": "b",
    "seccomp": "s",
    "userns": "s",
    "init": "b",
    "restart_policy": "s",
    "restart_max": "u",
    "health_cmd": "as",
    "health_interval": "d",
    "health_timeout": "d",
    "health_start_period": "d",
    "health_retries": "u",
    "health_on_failure": "s",
    "sdnotify": "s",
    "log_driver": "s",
    "log_max_size": "t",
    "log_max_files": "u",
    "log_rate_limit_burst": "u",
    "log_rate_limit_interval": "t",
    "unit": "s",
    "entrypoint": "as",
    "cap_add": "as",
    "cap_drop": "as",
    "stop_signal": "s",
    "add_hosts": "as",
    "dns_servers": "as",
    "dns_search": "as",
    "dns_options": "as",
    "publish_all": "b",
}

NETWORK_OPTION_SIGNATURES: dict[str, str] = {
    "subnet": "s",
    "gateway": "s",
    "internal": "b",
    "dns": "b",
}

EXEC_OPTION_SIGNATURES: dict[str, str] = {
    "env": "as",
    "workdir": "s",
    "user": "s",
    "timeout": "u",
    "tty": "b",
}

FOLLOW_OPTION_SIGNATURES: dict[str, str] = {
    "after_cursor": "s",
    "end_marker": "b",
    "lines": "u",
    "since": "t",
    "until": "t",
    "follow": "b",
    "setup": "b",
    "dropped": "b",
}

LOG_OPTION_SIGNATURES: dict[str, str] = {
    "lines": "u",
    "since": "t",
    "setup": "b",
    "dropped": "b",
}


# The wire type of each key of ImportImage's and PullImage's a{sv}, as documented in the XML.
IMPORT_OPTION_SIGNATURES: dict[str, str] = {
    "job": "s",
    "ref": "s",
    "platform": "s",
    "cmd": "as",
    "entrypoint": "as",
    "env": "as",
    "workdir": "s",
    "user": "s",
    "labels": "a{ss}",
    "stop_signal": "s",
}

PULL_OPTION_SIGNATURES: dict[str, str] = {
    "job": "s",
    "platform": "s",
    "auth_file": "s",
}


class ClientError(Exception):
    """An error reply from the bus or the agent; `name` is the D-Bus error name, `message` its text."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


class AgentNotReachable(ClientError):
    """No system bus, or nobody owns org.quilt.Runtime on it."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(name, f"quilt-agent is not reachable on the system bus: {detail}")


def is_variant(value: Any) -> bool:
    """dbus-fast's Variant and wire.Variant alike: a value with its own signature."""
    return hasattr(value, "signature") and hasattr(value, "value") and not isinstance(value, type)


def error_for(name: str, text: str) -> ClientError:
    """The exception for an error reply: AgentNotReachable when it means nobody answers for the agent."""
    if name in _UNREACHABLE_ERRORS or name.startswith(_UNREACHABLE_ERROR_PREFIXES):
        return AgentNotReachable(name, text)
    return ClientError(name, text)


def _coerce(signature: str, value: Any) -> Any:
    # dbus-fast's marshaller is strict about Python types (an int for "d" packs, a tuple for "as" may not), so
    # normalise the obvious cases here instead of letting a marshalling error surface from deep inside send.
    if signature == "d":
        return float(value)
    if signature in ("t", "u"):
        return int(value)
    if signature == "b":
        return bool(value)
    if signature == "as":
        return [str(v) for v in value]
    if signature == "a{ss}":
        return {str(k): str(v) for k, v in dict(value).items()}
    return value


def wrap_options(options: Mapping[str, Any] | None, signatures: Mapping[str, str],
                 variant: Callable[[str, Any], Any]) -> dict[str, Any]:
    """Turn plain Python values into the a{sv} the agent expects.

    A value that already is a Variant is passed through untouched, so a caller can send a key this client does
    not know (an agent newer than the client, or a test of the agent's unknown-key rejection).
    """
    wrapped: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if is_variant(value):
            wrapped[key] = value
            continue
        signature = signatures.get(key)
        if signature is None:
            raise ValueError(f"unknown option '{key}' (pass a Variant to send it anyway)")
        wrapped[key] = variant(signature, _coerce(signature, value))
    return wrapped


def unwrap(value: Any) -> Any:
    """Strip Variants at any depth, so callers get plain str/int/list/dict values (JSON-ready)."""
    if is_variant(value):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


class Calls(ABC):
    """The API's method calls; a transport subclass supplies _call_message and _variant."""

    @abstractmethod
    async def _call_message(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        unix_fds: Sequence[int] = (),
        destination: str = BUS_NAME,
    ) -> Reply:
        """The reply itself, for its fds: an 'h' in its body is an index into reply.unix_fds (ours to close)."""

    @abstractmethod
    def _variant(self, signature: str, value: Any) -> Any:
        """`value` in the transport's Variant of `signature`."""

    def _wrap(self, options: Mapping[str, Any] | None, signatures: Mapping[str, str]) -> dict[str, Any]:
        return wrap_options(options, signatures, self._variant)

    async def _call(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
    ) -> list[Any]:
        return list((await self._call_message(path, interface, member, signature, body)).body)

    # org.quilt.Runtime.Manager

    async def create_container(
        self, name: str, image: str, command: Sequence[str], options: Mapping[str, Any] | None = None
    ) -> str:
        body = [name, image, list(command), self._wrap(options, CONTAINER_OPTION_SIGNATURES)]
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "CreateContainer", "ssasa{sv}", body)
        return str(path)

    async def run_container(
        self, name: str, image: str, command: Sequence[str], options: Mapping[str, Any] | None = None
    ) -> str:
        body = [name, image, list(command), self._wrap(options, CONTAINER_OPTION_SIGNATURES)]
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "RunContainer", "ssasa{sv}", body)
        return str(path)

    async def get_container(self, name_or_id: str) -> str:
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "GetContainer", "s", [name_or_id])
        return str(path)

    async def list_containers(self) -> list[ContainerEntry]:
        (rows,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "ListContainers")
        from quilt_agent.replies import ContainerEntry

        return [ContainerEntry(id=i, name=n, state=s, path=p) for i, n, s, p in rows]

    async def get_container_properties(self, name_or_id: str) -> tuple[str, dict[str, Any]]:
        """(object path, the properties GetAll would answer on it) of one container, in one call."""
        path, props = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "GetContainerProperties", "s", [name_or_id])
        return str(path), {key: unwrap(value) for key, value in props.items()}

    async def list_container_properties(self, names: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
        """(object path, the properties GetAll would answer on it) of every container, in one call; only those
        `names` if any are given."""
        (rows,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "ListContainerProperties", "as", [list(names)])
        return [(str(path), {key: unwrap(value) for key, value in props.items()}) for path, props in rows]

    async def version(self) -> str:
        (value,) = await self._call(
            MANAGER_PATH, PROPERTIES_INTERFACE, "Get", "ss", [MANAGER_INTERFACE, "Version"]
        )
        return str(unwrap(value))

    # org.quilt.Runtime.Container (path from create/run/get/list)

    async def start(self, path: str) -> None:
        await self._call(path, CONTAINER_INTERFACE, "Start")

    async def stop(self, path: str, timeout: int = 0) -> None:
        """`timeout` 0 means the container's own stop_timeout."""
        await self._call(path, CONTAINER_INTERFACE, "Stop", "u", [timeout])

    async def kill(self, path: str, signal: int) -> None:
        await self._call(path, CONTAINER_INTERFACE, "Kill", "i", [int(signal)])

    async def remove(self, path: str, force: bool = False) -> None:
        await self._call(path, CONTAINER_INTERFACE, "Remove", "b", [force])

    async def ping_agent(self) -> None:
        """A call to org.quilt.Runtime that asks nothing: the bus starts the agent for it if none runs, and it is
        answered once the agent owns its name (its recovery done)."""
        await self._call_message("/", "org.freedesktop.DBus.Peer", "Ping")

    async def hold_removal(self, path: str) -> None:
        """Keep the remove_on_exit container after its exit until we remove it or leave the bus."""
        await self._call(path, CONTAINER_INTERFACE, "HoldRemoval")

    async def restart(self, path: str, timeout: int | None = None) -> None:
        """Stop (timeout None: its own stop timeout; 0: SIGKILL at once) and start again; start one that does
        not run."""
        options = {} if timeout is None else {"timeout": self._variant("u", int(timeout))}
        await self._call(path, CONTAINER_INTERFACE, "Restart", "a{sv}", [options])

    async def pause(self, path: str) -> None:
        await self._call(path, CONTAINER_INTERFACE, "Pause")

    async def unpause(self, path: str) -> None:
        await self._call(path, CONTAINER_INTERFACE, "Unpause")

    async def rename(self, path: str, name: str) -> None:
        await self._call(path, CONTAINER_INTERFACE, "Rename", "s", [name])

    async def export_fd(self, path: str, archive: int) -> None:
        """Write the container's root filesystem as a tar stream to archive (a pipe or a file, we keep)."""
        await self._call_message(path, CONTAINER_INTERFACE, "Export", "h", [0], unix_fds=[archive])

    async def wait(self, path: str) -> int:
        (code,) = await self._call(path, CONTAINER_INTERFACE, "Wait")
        return int(code)

    async def wait_condition(self, path: str, conditions: Sequence[str]) -> tuple[str, int]:
        """(the condition met, the exit code or -1)."""
        met, code = await self._call(path, CONTAINER_INTERFACE, "WaitCondition", "as", [list(conditions)])
        return str(met), int(code)

    async def get_logs(self, path: str, options: Mapping[str, Any] | None = None) -> list[LogLine]:
        body = [self._wrap(options, LOG_OPTION_SIGNATURES)]
        (rows,) = await self._call(path, CONTAINER_INTERFACE, "GetLogs", "a{sv}", body)
        from quilt_agent.replies import LogLine

        return [LogLine(usec=u, stream=s, text=t) for u, s, t in rows]

    async def read_logs(self, path: str, options: Mapping[str, Any] | None = None) -> list[LogLine]:
        """GetLogs' lines; those of a log too large for one reply (TooLarge) streamed through FollowLogs with follow
        false instead (the same options, which both take)."""
        try:
            return await self.get_logs(path, options)
        except ClientError as e:
            from quilt_agent.bus.names import TOO_LARGE

            if e.name != TOO_LARGE:
                raise
        import json

        from quilt_agent.replies import LogLine

        fd = await self.follow_logs(path, {**(options or {}), "follow": False, "end_marker": True})
        lines: list[LogLine] = []
        with os.fdopen(fd, "rb") as pipe:  # the agent writes it from a thread of its own: read at once, here
            for raw in pipe:
                line = json.loads(raw) if raw.endswith(b"\n") else {}
                if line.get("end"):
                    return lines
                if "usec" in line:
                    lines.append(LogLine(usec=line["usec"], stream=line["stream"], text=line["text"]))
        # A stream cut before its end marker (the agent went away) is no whole log: never shown as one.
        raise ClientError("org.freedesktop.DBus.Error.Disconnected",
                          f"the log's stream ended after {len(lines)} lines, before its end: read it again")

    async def run_health_check(self, path: str) -> tuple[str, int, str]:
        """(status after it, the check's exit code, its output)."""
        status, code, text = await self._call(path, CONTAINER_INTERFACE, "RunHealthCheck")
        return str(status), int(code), str(text)

    async def health_log(self, path: str) -> tuple[str, int, list[tuple[int, int, int, str]]]:
        """(status, failing streak, [(start usec, end usec, exit code, output)])."""
        status, streak, checks = await self._call(path, CONTAINER_INTERFACE, "GetHealthLog")
        return str(status), int(streak), [(int(a), int(b), int(c), str(d)) for a, b, c, d in checks]

    async def get_environment(self, path: str) -> list[str]:
        (env,) = await self._call(path, CONTAINER_INTERFACE, "GetEnvironment")
        return list(env)

    async def _get_all(self, path: str, interface: str) -> dict[str, Any]:
        """Every property of one interface of an object, unwrapped from its Variant."""
        (values,) = await self._call(path, PROPERTIES_INTERFACE, "GetAll", "s", [interface])
        return {key: unwrap(value) for key, value in values.items()}

    async def properties(self, path: str) -> dict[str, Any]:
        return await self._get_all(path, CONTAINER_INTERFACE)

    async def get_property(self, path: str, name: str) -> Any:
        (value,) = await self._call(path, PROPERTIES_INTERFACE, "Get", "ss", [CONTAINER_INTERFACE, name])
        return unwrap(value)

    async def exec(self, path: str, command: Sequence[str], options: Mapping[str, Any] | None = None) -> ExecOutput:
        """Run a command in the container and collect its output (each stream cut at 1 MiB by the agent)."""
        body = [list(command), self._wrap(options, EXEC_OPTION_SIGNATURES)]
        code, out, err = await self._call(path, CONTAINER_INTERFACE, "Exec", "asa{sv}", body)
        from quilt_agent.replies import ExecOutput

        return ExecOutput(int(code), bytes(out), bytes(err))

    async def exec_with_fds(self, path: str, command: Sequence[str], options: Mapping[str, Any] | None,
                            stdin: int, stdout: int, stderr: int) -> int:
        """Run a command in the container on our own fds (copied into the call: still ours to close)."""
        body = [list(command), self._wrap(options, EXEC_OPTION_SIGNATURES), 0, 1, 2]
        reply = await self._call_message(path, CONTAINER_INTERFACE, "ExecWithFds", "asa{sv}hhh", body,
                                         unix_fds=[stdin, stdout, stderr])
        return int(reply.body[0])

    async def start_with_fds(self, path: str, tty: bool, stdin: int, stdout: int, stderr: int) -> None:
        """Start the container with our fds as its init's stdin, stdout and stderr (tty: stdin is a terminal)."""
        options = {"tty": self._variant("b", True)} if tty else {}
        await self._call_message(path, CONTAINER_INTERFACE, "StartWithFds", "a{sv}hhh", [options, 0, 1, 2],
                                 unix_fds=[stdin, stdout, stderr])

    async def follow_logs(self, path: str, options: Mapping[str, Any] | None = None) -> int:
        """A pipe (ours to close) receiving the container's log as JSON lines {"usec", "stream", "text"}, up to
        its end (the container's, or `until`)."""
        body = [self._wrap(options, FOLLOW_OPTION_SIGNATURES)]
        reply = await self._call_message(path, CONTAINER_INTERFACE, "FollowLogs", "a{sv}", body)
        fds = list(reply.unix_fds or [])
        index = reply.body[0]
        for i, fd in enumerate(fds):
            if i != index:
                os.close(fd)  # not ours to keep: only the one the body names is the pipe
        if not 0 <= index < len(fds):
            raise ClientError("org.freedesktop.DBus.Error.InconsistentMessage", "FollowLogs returned no pipe")
        return fds[index]

    async def get_stats(self, path: str) -> dict[str, int]:
        (stats,) = await self._call(path, CONTAINER_INTERFACE, "GetStats")
        return {key: int(unwrap(value)) for key, value in stats.items()}

    async def list_events(self, since: int = 0, until: int = 0) -> list[Event]:
        """Stored lifecycle events, oldest first; since/until in usec since the epoch (0: unbounded)."""
        options = {key: self._variant("t", value) for key, value in (("since", since), ("until", until)) if value}
        (rows,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "ListEvents", "a{sv}", [options])
        from quilt_agent.replies import Event

        return [Event(int(t), kind, cid, unwrap(details)) for t, kind, cid, details in rows]

    async def _signal_sender(self) -> str:
        """Whom the agent's signals come from: for root, the agent's broadcasts; for anyone else, the copies the
        agent sends it alone, about what it may see, once subscribed (Manager.Subscribe)."""
        if os.geteuid() == 0:
            return BUS_NAME
        (sender,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "Subscribe")
        return str(sender)

    # Networks: org.quilt.Runtime.Manager's network methods, org.quilt.Runtime.Network, Container.Ping

    async def create_network(self, name: str, options: Mapping[str, Any] | None = None) -> str:
        body = [name, self._wrap(options, NETWORK_OPTION_SIGNATURES)]
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "CreateNetwork", "sa{sv}", body)
        return str(path)

    async def list_networks(self) -> list[NetworkEntry]:
        (rows,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "ListNetworks")
        from quilt_agent.replies import NetworkEntry

        return [NetworkEntry(name=n, subnet=s, path=p) for n, s, p in rows]

    async def get_network(self, name_or_id: str) -> str:
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "GetNetwork", "s", [name_or_id])
        return str(path)

    async def remove_network(self, name: str, force: bool = False) -> None:
        await self._call(MANAGER_PATH, MANAGER_INTERFACE, "RemoveNetwork", "sb", [name, force])

    async def network_properties(self, path: str) -> dict[str, Any]:
        return await self._get_all(path, NETWORK_INTERFACE)

    async def ping(self, path: str, target: str, count: int = 3) -> tuple[int, float]:
        """ICMP echo from the container's network namespace: (replies received, average round trip in ms)."""
        received, average = await self._call(path, CONTAINER_INTERFACE, "Ping", "su", [target, int(count)])
        return int(received), float(average)


    async def copy_to(self, path: str, host_path: str, container_path: str) -> None:
        await self._call(path, CONTAINER_INTERFACE, "CopyTo", "ss", [host_path, container_path])

    async def copy_from(self, path: str, container_path: str, host_path: str) -> None:
        await self._call(path, CONTAINER_INTERFACE, "CopyFrom", "ss", [container_path, host_path])

    async def copy_to_fd(self, path: str, archive: int, container_path: str) -> None:
        """Unpack the tar stream read from archive (a pipe, or a file, we keep) at container_path."""
        await self._call_message(path, CONTAINER_INTERFACE, "CopyToWithFd", "hs", [0, container_path],
                                 unix_fds=[archive])

    async def copy_from_fd(self, path: str, container_path: str, archive: int) -> None:
        """Write container_path as a tar stream to archive (a pipe or a file, we keep)."""
        await self._call_message(path, CONTAINER_INTERFACE, "CopyFromWithFd", "sh", [container_path, 0],
                                 unix_fds=[archive])

    # Volumes: org.quilt.Runtime.Manager's volume methods, org.quilt.Runtime.Volume

    async def create_volume(self, name: str, options: Mapping[str, Any] | None = None) -> str:
        body = [name, self._wrap(options, {"labels": "a{ss}"})]
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "CreateVolume", "sa{sv}", body)
        return str(path)

    async def list_volumes(self) -> list[tuple[str, str, str]]:
        """(name, mountpoint, object path) of each volume."""
        (rows,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "ListVolumes")
        return [(str(n), str(m), str(p)) for n, m, p in rows]

    async def get_volume(self, name: str) -> str:
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "GetVolume", "s", [name])
        return str(path)

    async def remove_volume(self, name: str, force: bool = False) -> None:
        await self._call(MANAGER_PATH, MANAGER_INTERFACE, "RemoveVolume", "sb", [name, force])

    async def prune_volumes(self) -> int:
        (freed,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "PruneVolumes")
        return int(freed)

    async def volume_properties(self, path: str) -> dict[str, Any]:
        return await self._get_all(path, VOLUME_INTERFACE)

    # Images: org.quilt.Runtime.Manager's image methods, org.quilt.Runtime.Image

    async def import_image(self, source: str, name: str = "", options: Mapping[str, Any] | None = None) -> str:
        body = [source, name, self._wrap(options, IMPORT_OPTION_SIGNATURES)]
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "ImportImage", "ssa{sv}", body)
        return str(path)

    async def import_image_fd(self, archive: int, name: str = "", options: Mapping[str, Any] | None = None) -> str:
        """Import from a file or pipe we opened (and keep): the agent reads it, never a path of ours."""
        body = [0, name, self._wrap(options, IMPORT_OPTION_SIGNATURES)]
        reply = await self._call_message(MANAGER_PATH, MANAGER_INTERFACE, "ImportImageWithFd", "hsa{sv}", body,
                                         unix_fds=[archive])
        return str(reply.body[0])

    async def pull_image(self, reference: str, options: Mapping[str, Any] | None = None) -> str:
        body = [reference, self._wrap(options, PULL_OPTION_SIGNATURES)]
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "PullImage", "sa{sv}", body)
        return str(path)

    async def list_images(self) -> list[ImageEntry]:
        (rows,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "ListImages")
        from quilt_agent.replies import ImageEntry

        return [ImageEntry(id=i, name=n, size=int(s), path=p) for i, n, s, p in rows]

    async def get_image(self, name_or_id: str) -> str:
        (path,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "GetImage", "s", [name_or_id])
        return str(path)

    async def remove_image(self, name_or_id: str, force: bool = False) -> None:
        await self._call(MANAGER_PATH, MANAGER_INTERFACE, "RemoveImage", "sb", [name_or_id, force])

    async def tag_image(self, name_or_id: str, name: str) -> None:
        await self._call(MANAGER_PATH, MANAGER_INTERFACE, "TagImage", "ss", [name_or_id, name])

    async def prune_images(self) -> int:
        (freed,) = await self._call(MANAGER_PATH, MANAGER_INTERFACE, "PruneImages")
        return int(freed)

    async def image_properties(self, path: str) -> dict[str, Any]:
        return await self._get_all(path, IMAGE_INTERFACE)
