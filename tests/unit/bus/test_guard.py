"""The guard's decisions over a recording authority: what a Manager method's argument names is resolved before
the authority is asked, cascades ask for each container before anything, and lists keep what may be seen."""
from __future__ import annotations

from typing import Any

import pytest

from quilt_agent.bus import access, caller
from quilt_agent.bus.access import Target
from quilt_agent.bus.guard import BY_METHOD, GuardedInterface, cascade, guarded, removable_by_caller, visible
from quilt_agent.bus.polkit import MANAGE
from quilt_agent.errors import AccessDenied
from quilt_agent.model import Container, ContainerSpec


class Recording:
    """An authority that refuses what `refuse` names and records every question."""

    def __init__(self, refuse: set[str] = frozenset(), root: bool = False) -> None:
        self.refuse = refuse
        self.root = root
        self.asked: list[tuple[str, str, Target | None]] = []

    async def check(self, action: str, verb: str, target: Target | None = None) -> None:
        if not await self.allows(action, verb, target):
            raise AccessDenied(f"Not authorized to {verb} {target}")

    async def allows(self, action: str, verb: str, target: Target | None = None, interactive: bool = False) -> bool:
        self.asked.append((action, verb, target))
        return self.root or target is None or target.name not in self.refuse

    async def may_read(self, target: Target) -> bool:
        return await self.allows("read", "see", target)

    async def is_root(self) -> bool:
        return self.root

    async def credentials(self) -> Any:
        return type("Credentials", (), {"uid": 1000, "pid": 7})()


class Volumes(GuardedInterface):
    """A Manager-like interface whose volumes are known by id and by name."""

    def __init__(self, authority: Any) -> None:
        super().__init__("org.quilt.Test", authority)
        self.removed: list[str] = []

    def resolve(self, kind: str, text: str) -> Target:
        if text in ("data", "1234abcd" * 8, "1234abcd"):
            return Target("volume", "data", "1234abcd" * 8, 0)
        return access.absent(kind, text)

    @guarded(MANAGE, "remove", subject="volume")
    async def remove(self, name_or_id: str) -> None:
        self.removed.append(name_or_id)

    @guarded(BY_METHOD)
    async def create(self, name: str) -> None:
        self.removed.append(name)

    @guarded(MANAGE, "create", subject="volume")
    async def make(self, name: str) -> None:
        self.removed.append(name)


@pytest.fixture(autouse=True)
def a_caller() -> Any:
    token = caller.CALLER.set(caller.Caller(":1.9", False))
    yield
    caller.CALLER.reset(token)


@pytest.mark.parametrize("alias", ["data", "1234abcd" * 8, "1234abcd"])
async def test_a_method_is_authorized_on_the_object_its_argument_resolves_to(alias: str) -> None:
    authority = Recording(refuse={"data"})
    obj = Volumes(authority)
    with pytest.raises(Exception) as refused:
        await obj.remove(alias)
    assert "Not authorized to remove volume 'data'" in str(refused.value)
    assert obj.removed == []
    [(action, verb, target)] = authority.asked
    assert (action, verb, target.name, target.id) == (MANAGE, "remove", "data", "1234abcd" * 8)


async def test_a_name_that_finds_nothing_is_asked_about_as_it_was_sent() -> None:
    authority = Recording()
    obj = Volumes(authority)
    await obj.remove("other")
    [(_, _, target)] = authority.asked
    assert (target.name, target.exists) == ("other", False) and obj.removed == ["other"]


async def test_a_method_that_authorizes_itself_is_not_asked_about_by_the_guard() -> None:
    authority = Recording()
    await Volumes(authority).create("x")
    assert authority.asked == []


async def test_what_a_create_would_make_is_asked_about_as_the_callers() -> None:
    authority = Recording()
    await Volumes(authority).make("fresh")
    [(_, verb, target)] = authority.asked
    assert (verb, target.name, target.exists, target.owner_uid) == ("create", "fresh", False, 1000)
    assert target.details(1000)["caller_is_owner"] == "true"

def _container(name: str) -> Container:
    return Container(id=name * 8, spec=ContainerSpec(name=name, image="i", image_id="0", command=("true",)))


async def test_a_cascade_asks_for_every_container_and_one_refusal_refuses_it() -> None:
    authority = Recording(refuse={"b"})
    with pytest.raises(AccessDenied, match="container 'b'"):
        await cascade(authority, [_container("a"), _container("b"), _container("c")])
    assert [t.name for _, _, t in authority.asked] == ["a", "b"]
    assert await cascade(Recording(), [_container("a"), _container("c")]) == ["a" * 8, "c" * 8]


async def test_lists_and_prunes_keep_what_the_caller_may_see_or_remove() -> None:
    items = [_container(n) for n in "abc"]
    assert [c.name for c in await visible(Recording(refuse={"b"}), items, access.container)] == ["a", "c"]
    assert [c.name for c in await removable_by_caller(Recording(refuse={"a"}), items, access.container)] == ["b", "c"]
    root = Recording(refuse={"a", "b", "c"}, root=True)
    assert await visible(root, items, access.container) == items and root.asked == []
