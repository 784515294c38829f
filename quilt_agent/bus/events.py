"""The Manager's lifecycle events: the Event signal and ListEvents, the stored history. Mixed into
ManagerInterface (bus/manager.py), which the manager tells of each event through its Listener protocol.
"""
from __future__ import annotations

from typing import Any

from dbus_fast import Variant
from dbus_fast.service import dbus_method, dbus_signal

from quilt_agent.bus import access
from quilt_agent.bus.access import Target
from quilt_agent.bus.guard import PUBLIC, guarded, visible
from quilt_agent.bus.polkit import Authority
from quilt_agent.errors import InvalidArgument, NoSuchContainer
from quilt_agent.manager import Manager
from quilt_agent.model import Container

ARG_NAMES: dict[str, tuple[str, ...]] = {"Event": ("kind", "container_id", "details"), "ListEvents": ("events",)}
# The wire type of each detail the manager sends; any other is typed by its Python type.
DETAIL_SIGNATURES = {"name": "s", "time": "t", "exit_code": "i", "oom_killed": "b", "reason": "s"}
EVENT_OPTIONS = ("since", "until")


def details_to_variants(details: dict[str, Any]) -> dict[str, Variant]:
    out: dict[str, Variant] = {}
    for key, value in details.items():
        signature = DETAIL_SIGNATURES.get(key)
        if signature is None:
            signature = ("b" if isinstance(value, bool) else "x" if isinstance(value, int)
                         else "d" if isinstance(value, float) else "s")
            value = value if signature != "s" else str(value)
        out[key] = Variant(signature, value)
    return out


def _event_options(options: dict[str, Variant]) -> tuple[int, int]:
    for key, value in options.items():
        if key not in EVENT_OPTIONS:
            raise InvalidArgument(f"Unknown event option '{key}': known options are {', '.join(EVENT_OPTIONS)}")
        if not isinstance(value.value, int) or isinstance(value.value, bool) or value.value < 0:
            raise InvalidArgument(f"Event option '{key}' must be an unsigned integer (usec), not {value.value!r}")
    return (options["since"].value if "since" in options else 0, options["until"].value if "until" in options else 0)


class ManagerEvents:
    """Event and ListEvents; expects _manager and authority from ManagerInterface."""

    _manager: Manager
    authority: Authority

    def event(self, kind: str, container: Container, details: dict[str, Any]) -> None:
        """Listener: the manager's lifecycle edge, as a signal."""
        self.event_signal(kind, container.id, details_to_variants(details))

    @dbus_signal(name="Event")
    def event_signal(self, kind: str, container_id: str, details: dict[str, Variant]) -> "ssa{sv}":
        return [kind, container_id, details]

    @dbus_method(name="ListEvents")
    @guarded(PUBLIC)
    async def list_events(self, options: "a{sv}") -> "a(tssa{sv})":
        since, until = _event_options(options)
        events = await self._manager.events(since, until)
        # The events of the containers the caller may see; a removed container's, to those who may see any.
        return [[time, kind, container_id, details_to_variants({**details, "time": time})]
                for time, kind, container_id, details in await visible(self.authority, events, self._event_target)]

    def _event_target(self, event: tuple[int, str, str, dict[str, Any]]) -> Target:
        _time, _kind, container_id, details = event
        try:
            return access.container(self._manager.get(container_id))
        except NoSuchContainer:
            return access.absent("container", str(details.get("name", container_id)))
