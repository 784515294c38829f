"""The container object's properties, read as dbus-fast reads them."""
from __future__ import annotations

import pytest
from dbus_fast import DBusError
from dbus_fast.service import ServiceInterface

from quilt_agent.bus.container import PROPERTIES, ContainerInterface
from quilt_agent.errors import NoSuchContainer


class Removed:
    """A manager that no longer knows the container (removed in the same turn of the loop)."""

    def get(self, name_or_id: str) -> None:
        raise NoSuchContainer(name_or_id)


def test_a_property_of_a_container_removed_meanwhile_is_no_such_container() -> None:
    obj = ContainerInterface("ab" * 32, Removed(), None, None, None)  # type: ignore[arg-type]
    exported = {p.name: p for p in ServiceInterface._get_properties(obj)}
    assert set(exported) >= {p.name for p in PROPERTIES}
    for prop in PROPERTIES:
        with pytest.raises(DBusError) as err:
            exported[prop.name].prop_getter(obj)
        assert err.value.type == "org.quilt.Runtime.Error.NoSuchContainer", prop.name
        assert "ab" * 32 in err.value.text
