"""ContainerTable's lookups (quilt_agent/containers.py): by id, name and id prefix, with its name index kept in
step with every change of the table."""
from __future__ import annotations

import dataclasses

import pytest

from quilt_agent.containers import ContainerTable
from quilt_agent.errors import NoSuchContainer
from quilt_agent.model import Container, ContainerSpec


def container(cid: str, name: str) -> Container:
    return Container(id=cid, spec=ContainerSpec(name=name, image="/x.tar", image_id="a" * 64, command=("true",)))


def renamed(c: Container, name: str) -> Container:
    return c.with_(spec=dataclasses.replace(c.spec, name=name))


def test_a_container_is_found_by_id_name_and_unambiguous_prefix() -> None:
    table = ContainerTable()
    web, db = container("abc111" + "0" * 58, "web"), container("abc222" + "0" * 58, "db")
    table[web.id], table[db.id] = web, db
    assert table.find(web.id) is web and table.find("db") is db and table.find("abc1") is web
    for missing in ("abc", "ab", "nosuch"):  # ambiguous, too short, unknown
        with pytest.raises(NoSuchContainer):
            table.find(missing)
    assert table.name_taken("web") and not table.name_taken("nosuch")


def test_a_rename_moves_the_name_and_a_removal_frees_it() -> None:
    table = ContainerTable()
    web = container("f" * 64, "web")
    table[web.id] = web
    table[web.id] = renamed(web, "shop")
    assert table.find("shop").id == web.id and not table.name_taken("web")
    with pytest.raises(NoSuchContainer):
        table.find("web")
    del table[web.id]
    assert not table.name_taken("shop")
    with pytest.raises(NoSuchContainer):
        table.find("shop")


def test_pop_and_clear_free_names_too() -> None:
    table = ContainerTable()
    a, b = container("1" * 64, "a"), container("2" * 64, "b")
    table[a.id], table[b.id] = a, b
    assert table.pop(a.id) is a and table.pop("nosuch", None) is None and not table.name_taken("a")
    table.clear()
    assert not table.name_taken("b") and not table


def test_a_name_held_by_a_create_is_taken() -> None:
    table = ContainerTable()
    table.hold("web", "a" * 64, ())
    assert table.name_taken("web")
    table.release("web")
    assert not table.name_taken("web")
