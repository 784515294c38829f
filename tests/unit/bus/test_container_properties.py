"""The container object's properties, read as dbus-fast reads them: each getter is awaited in a task that keeps
the caller of the Get."""
from __future__ import annotations

import pytest
from dbus_fast import DBusError
from dbus_fast.service import ServiceInterface

from quilt_agent.bus import caller
from quilt_agent.bus.access import Target
from quilt_agent.bus.container import PROPERTIES, ContainerInterface
from quilt_agent.errors import NoSuchContainer
from quilt_agent.model import Container, ContainerSpec


class Removed:
    """A manager that no longer knows the container (removed in the same turn of the loop)."""

    def get(self, name_or_id: str) -> None:
        raise NoSuchContainer(name_or_id)


class Known:
    def get(self, name_or_id: str) -> Container:
        return Container(id=name_or_id, spec=ContainerSpec(name="web", image="tiny", image_id="0", command=("true",),
                                                           env=("TOKEN=s3cr3t",), labels={"k": "s3cr3t"}),
                         owner_uid=1000)


class Refusing:
    """An authority that lets the caller see nothing."""

    def __init__(self) -> None:
        self.asked: list[Target] = []

    async def may_read(self, target: Target) -> bool:
        self.asked.append(target)
        return False


async def test_a_property_of_a_container_removed_meanwhile_is_no_such_container() -> None:
    obj = ContainerInterface("ab" * 32, Removed(), None, None, None)  # type: ignore[arg-type]
    exported = {p.name: p for p in ServiceInterface._get_properties(obj)}
    assert set(exported) >= {p.name for p in PROPERTIES}
    for prop in PROPERTIES:
        with pytest.raises(DBusError) as err:
            await exported[prop.name].prop_getter(obj)
        assert err.value.type == "org.quilt.Runtime.Error.NoSuchContainer", prop.name
        assert "ab" * 32 in err.value.text


async def test_no_property_is_answered_to_a_caller_who_may_not_see_the_container() -> None:
    authority = Refusing()
    obj = ContainerInterface("cd" * 32, Known(), None, authority, None)  # type: ignore[arg-type]
    token = caller.CALLER.set(caller.Caller(":1.7", False))
    try:
        for prop in ServiceInterface._get_properties(obj):
            with pytest.raises(DBusError) as err:
                await prop.prop_getter(obj)
            assert err.value.type == "org.freedesktop.DBus.Error.AccessDenied", prop.name
            assert "container 'web'" in err.value.text and "s3cr3t" not in err.value.text
    finally:
        caller.CALLER.reset(token)
    assert {(t.kind, t.name, t.id, t.owner_uid) for t in authority.asked} == {("container", "web", "cd" * 32, 1000)}


async def test_the_agents_own_reads_for_a_signal_need_no_caller() -> None:
    obj = ContainerInterface("cd" * 32, Known(), None, Refusing(), None)  # type: ignore[arg-type]
    with caller.agent():
        name = next(p for p in ServiceInterface._get_properties(obj) if p.name == "Name")
        assert await name.prop_getter(obj) == "web"
