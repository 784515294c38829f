"""The host id ranges of containers' user namespaces: the pool, what the host owns, allocation and release."""
from __future__ import annotations

from pathlib import Path

import pytest

from quilt_agent.errors import InvalidArgument, ResourceExhausted
from quilt_agent.userns import RANGE_SIZE, IdRange, Pool, Ranges, host_owned, load_pool, parse_pool


def test_the_default_pool_is_systemds_container_range_in_slots_of_65536() -> None:
    pool = Pool()
    assert (pool.first, pool.last) == (524288, 1879048191)
    assert pool.slots == 28664 and pool.slot(0) == IdRange(524288) and pool.slot(1).first == 524288 + 65536
    assert IdRange(524288).id_map() == "0 524288 65536\n" and str(IdRange(524288)) == "0:524288:65536"


@pytest.mark.parametrize("text", ["", "524288", "a-b", "1000-2000000", "524288-524289", "524288-4294967295"])
def test_a_bad_pool_is_refused_by_name(text: str) -> None:
    with pytest.raises(InvalidArgument, match="pool of user namespace ids"):
        parse_pool(text)


def test_the_pool_comes_from_the_configuration_and_a_bad_one_is_ignored(tmp_path: Path) -> None:
    conf = tmp_path / "quilt.conf"
    assert load_pool(conf) == Pool()
    conf.write_text('[userns]\npool = "1000000-1131071"\n')
    assert load_pool(conf) == Pool(1000000, 1131071) and load_pool(conf).slots == 2
    conf.write_text('[userns]\npool = "10-20"\n')
    assert load_pool(conf) == Pool()


def test_what_host_users_groups_and_subordinate_ids_own_is_read(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\nbig:x:600000:600000::/:/bin/sh\n# note\n")
    (tmp_path / "group").write_text("root:x:0:\n")
    (tmp_path / "subuid").write_text("alice:700000:65536\nbroken line\n")
    files = tuple(tmp_path / n for n in ("passwd", "group", "subuid", "subgid"))  # no subgid: nothing
    assert host_owned(files) == [(0, 0), (600000, 600000), (0, 0), (700000, 765535)]


def test_ranges_are_never_shared_and_skip_what_the_host_owns() -> None:
    pool = Pool(524288, 524288 + 4 * RANGE_SIZE - 1)
    ranges = Ranges(pool, owned=[(524288 + RANGE_SIZE + 5, 524288 + RANGE_SIZE + 5)])  # in slot 1
    assert [ranges.take(c).first for c in ("a", "b", "c")] == [pool.slot(i).first for i in (0, 2, 3)]
    assert ranges.take("a") == pool.slot(0)  # asked again: the same
    with pytest.raises(ResourceExhausted, match=r"All 4 user namespace ranges.*widen \[userns\] pool"):
        ranges.take("d")
    ranges.release("b")
    assert ranges.take("d") == pool.slot(2) and ranges.of("b") is None and ranges.of("d") == pool.slot(2)


def test_a_released_range_is_reused_last() -> None:
    pool = Pool(524288, 524288 + 3 * RANGE_SIZE - 1)
    ranges = Ranges(pool, owned=[])
    first = ranges.take("a")
    ranges.release("a")
    assert ranges.take("b") != first  # the next slot, while one is free beyond it
    assert ranges.take("c") != first and ranges.take("d") == first


def test_ranges_kept_by_the_store_are_held_again() -> None:
    pool = Pool()
    ranges = Ranges(pool, owned=[])
    assert ranges.restore("a", pool.slot(7).first) == pool.slot(7)
    with pytest.raises(ValueError, match="both hold"):
        ranges.restore("b", pool.slot(7).first)
    with pytest.raises(ValueError, match="not the first id"):
        ranges.restore("b", pool.slot(7).first + 1)
    assert ranges.take("b") != pool.slot(7)


def test_fifty_ranges_are_disjoint() -> None:
    ranges = Ranges(Pool(), owned=[])
    taken = [ranges.take(f"c{n}") for n in range(50)]
    assert all(a.last < b.first or b.last < a.first for a in taken for b in taken if a != b)
