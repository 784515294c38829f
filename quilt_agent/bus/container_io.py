"""The methods of org.quilt.Runtime.Container that move bytes or file descriptors: Exec, ExecWithFds,
StartWithFds, FollowLogs, and GetStats beside them. Mixed into ContainerInterface (bus/container.py).

File descriptors and dbus-fast: an fd that arrives in a call is ours to close once the call is done, whatever
its outcome (closing_fds); an fd we return is copied into the reply only when the reply is written, which
dbus-fast does after the method has returned, so our copy is closed once the bus has the reply (close_after_reply).
"""
import asyncio
import os
from typing import Any

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.service import dbus_method

from quilt_agent.bus.fds import closing_fds, received_fd as _fd
from quilt_agent.bus.guard import guarded
from quilt_agent.bus.polkit import EXEC, MANAGE, READ
from quilt_agent.errors import InvalidArgument
from quilt_agent.manager import Manager

ARG_NAMES: dict[str, tuple[str, ...]] = {"Exec": ("exit_code", "stdout", "stderr"), "ExecWithFds": ("exit_code",),
                                          "FollowLogs": ("fd",), "GetStats": ("stats",)}  # StartWithFds returns nothing
STAT_KEYS = ("memory_current", "memory_peak", "memory_max", "cpu_usec", "pids_current", "pids_max")


def _unwrap(options: dict[str, Variant]) -> dict[str, Any]:
    return {key: value.value for key, value in options.items()}


class ContainerIO:
    """Exec and friends; expects container_id, _manager, _bus (the bus the object is exported on) and authority
    from ContainerInterface."""

    container_id: str
    _manager: Manager
    _bus: MessageBus

    @dbus_method(name="Exec")
    @guarded(EXEC, "exec in")
    async def exec_(self, command: "as", options: "a{sv}") -> "iayay":
        result = await self._manager.exec(self.container_id, command, _unwrap(options))
        return [result.exit_code, result.stdout, result.stderr]

    @dbus_method(name="ExecWithFds")
    @closing_fds
    @guarded(EXEC, "exec in")
    async def exec_with_fds(self, command: "as", options: "a{sv}", stdin: "h", stdout: "h", stderr: "h") -> "i":
        stdio = (_fd(stdin, "stdin"), _fd(stdout, "stdout"), _fd(stderr, "stderr"))
        result = await self._manager.exec(self.container_id, command, _unwrap(options), stdio)
        return result.exit_code

    @dbus_method(name="StartWithFds")
    @closing_fds
    @guarded(MANAGE, "start")
    async def start_with_fds(self, options: "a{sv}", stdin: "h", stdout: "h", stderr: "h") -> None:
        for key, value in options.items():
            if key != "tty" or not isinstance(value.value, bool):
                raise InvalidArgument(f"Unknown start option '{key}' or not a boolean: the one option is tty (b)")
        stdio = (_fd(stdin, "stdin"), _fd(stdout, "stdout"), _fd(stderr, "stderr"))
        await self._manager.start(self.container_id, stdio, tty="tty" in options and options["tty"].value)

    @dbus_method(name="FollowLogs")
    @guarded(READ, "read the logs of")
    async def follow_logs(self, options: "a{sv}") -> "h":
        fd = self._manager.follow_logs(self.container_id, _unwrap(options))
        close_after_reply(self._bus, fd)
        return fd

    @dbus_method(name="GetStats")
    @guarded(READ, "read the stats of")
    async def get_stats(self) -> "a{sv}":
        stats = self._manager.stats(self.container_id)
        # A counter the kernel does not keep (memory.peak before Linux 5.19) is left out, never made up.
        return {key: Variant("t", getattr(stats, key)) for key in STAT_KEYS if key not in stats.missing}


def close_after_reply(bus: MessageBus, fd: int) -> None:
    """Close our copy of `fd`, returned by the running method of an object exported on `bus`, once the reply
    holds its own.

    dbus-fast queues the reply in a done-callback of the method's task, registered before the method ran: a
    callback we add now runs after it. There we queue a Ping to the bus; messages are written in order, so when
    the Ping's answer comes, the reply (and the fd in it) has been sent.
    """
    task = asyncio.current_task()

    async def close_when_sent() -> None:
        try:
            await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus.Peer", member="Ping"))
        except Exception:  # noqa: BLE001 - the bus is gone: nothing to wait for
            pass
        finally:
            os.close(fd)

    def schedule(_task: asyncio.Future[Any]) -> None:
        closer = asyncio.ensure_future(close_when_sent())
        _PENDING.add(closer)
        closer.add_done_callback(_PENDING.discard)

    if task is None:
        os.close(fd)
        return
    task.add_done_callback(schedule)


_PENDING: set[asyncio.Future[None]] = set()  # strong references until each close is done
