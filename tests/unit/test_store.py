"""The SQLite store on a real database file: migrations, round trips, bounded events, refused databases."""
import json
import sqlite3
import time
from pathlib import Path

import aiosqlite
import pytest

from quilt_agent import store as store_module
from quilt_agent.model import Container, ContainerSpec, State
from quilt_agent.store import MIGRATIONS, Store, StoreRefused


def container(name: str = "web") -> Container:
    spec = ContainerSpec(name=name, image="/x.tar", image_id="a" * 64, command=("/bin/sh", "-c", "echo 'hi'"),
                         env=("A=1",), labels={"k": "v"}, memory_max=64 << 20, cpu_quota=12.5)
    return Container(id="b" * 64, spec=spec, created_at=1)


async def test_new_database_is_migrated_to_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "q.db")
    assert await s.schema_version() == len(store_module.MIGRATIONS)
    await s.close()
    async with aiosqlite.connect(tmp_path / "q.db") as db:
        async with db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone())[0] == "wal"


async def test_reopening_does_not_migrate_again(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "q.db")
    await s.insert_container(container())
    await s.close()
    s = await Store.open(tmp_path / "q.db")
    assert [c.name for c in await s.containers()] == ["web"]
    await s.close()


async def test_container_round_trips_with_spec_and_status(tmp_path: Path) -> None:
    s = await Store.open(tmp_path / "q.db")
    c = container()
    await s.insert_container(c)
    done = c.with_(state=State.EXITED, exit_code=3, exit_signal=0, oom_killed=True, started_at=2, finished_at=3,
                   failure_reason="why")
    await s.update_status(done)
    (back,) = await s.containers()
    assert back == done
    await s.delete_container(c.id)
    assert await s.containers() == []
    await s.close()


async def test_events_are_bounded_oldest_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store_module, "MAX_EVENTS", 5)
    s = await Store.open(tmp_path / "q.db")
    for i in range(8):
        await s.add_event("created", str(i))
    assert [e[2] for e in await s.events()] == ["3", "4", "5", "6", "7"]
    await s.close()


# --- older, newer and damaged databases -------------------------------------------------------------


def database_at_version_1(path: Path) -> None:
    """What the first Quilt wrote: only the first migration, and a container of that time (no networks key)."""
    spec = {"name": "old", "image": "/x.tar", "image_id": "a" * 64, "command": ["/bin/true"]}
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_migrations VALUES (1, 1)")
        db.execute("INSERT INTO containers (id, name, spec, state, created_at, exit_code) VALUES (?, ?, ?, ?, ?, ?)",
                   ("c" * 64, "old", json.dumps(spec), "exited", 5, 3))
    db.close()


async def test_an_older_database_is_migrated_and_keeps_its_containers(tmp_path: Path) -> None:
    database_at_version_1(tmp_path / "q.db")
    s = await Store.open(tmp_path / "q.db")
    assert await s.schema_version() == len(MIGRATIONS)
    (c,) = await s.containers()
    assert (c.name, c.state, c.exit_code, c.spec.networks, c.setup_image) == ("old", State.EXITED, 3, ("none",), "")
    # It ran with the host's ids, as every container did then: not a user namespace it never had.
    assert (c.spec.userns, c.id_first, c.owner_uid) == ("host", -1, 0)
    await s.close()
    with sqlite3.connect(tmp_path / "q.db") as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
        tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert {"networks", "volumes"} <= tables and "images" not in tables


async def test_a_failed_migration_is_rolled_back_and_refused(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "q.db"
    s = await Store.open(path)
    await s.insert_container(container())
    await s.close()
    broken = "CREATE TABLE half_done (x INTEGER); INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StoreRefused) as refused:
        await Store.open(path)
    assert str(path) in str(refused.value)
    assert f"migration from schema version {len(MIGRATIONS)} to {len(MIGRATIONS) + 1} failed" in str(refused.value)
    assert "no such table: no_such_table" in str(refused.value)
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    s = await Store.open(path)  # as it was before: the half migration left nothing
    assert await s.schema_version() == len(MIGRATIONS)
    assert [c.name for c in await s.containers()] == ["web"]
    await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None


async def test_a_newer_database_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    s = await Store.open(path)
    await s.insert_container(container())
    await s.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (?, 1)", (len(MIGRATIONS) + 1,))
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreRefused) as refused:
        await Store.open(path)
    message = str(refused.value)
    assert message.startswith(f"refusing the state database {path}: its schema version is {len(MIGRATIONS) + 1}, "
                              f"newer than the {len(MIGRATIONS)} this quilt-agent knows")
    assert "\n" not in message
    assert path.read_bytes() == before


async def test_a_file_that_is_not_sqlite_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.write_bytes(b"containers: web, db\n" * 100)
    with pytest.raises(StoreRefused) as refused:
        await Store.open(path)
    assert str(refused.value).startswith(f"refusing the state database {path}: not an SQLite database "
                                         f"(it begins with b'containers: web,')")
    assert path.read_bytes() == b"containers: web, db\n" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.db"]


async def test_a_damaged_database_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    s = await Store.open(path)
    for i in range(300):
        await s.add_event("created", f"{i:064x}", {"name": f"c{i}", "padding": "x" * 200})
    await s.close()
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    assert pages > 8
    damaged = bytearray(path.read_bytes())
    damaged[5 * page_size:7 * page_size] = b"\xff" * (2 * page_size)  # two pages of the events' b-tree
    path.write_bytes(bytes(damaged))
    with pytest.raises(StoreRefused) as refused:
        await Store.open(path)
    message = str(refused.value)
    assert message.startswith(f"refusing the state database {path}: ")
    assert "damaged" in message or "malformed" in message, message
    assert path.read_bytes() == bytes(damaged)


async def test_an_unreadable_path_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.mkdir()
    with pytest.raises(StoreRefused) as refused:
        await Store.open(path)
    assert str(refused.value).startswith(f"refusing the state database {path}: Is a directory")


async def test_the_check_on_open_is_quick_on_a_full_database(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    s = await Store.open(path)
    for i in range(50):
        await s.insert_container(container(f"c{i}").with_(id=f"{i:064x}"))
    for i in range(store_module.MAX_EVENTS):
        await s.add_event("exited", f"{i % 50:064x}", {"name": f"c{i % 50}", "exit_code": 0})
    await s.close()
    started = time.perf_counter()
    s = await Store.open(path)
    seconds = time.perf_counter() - started
    await s.close()
    print(f"\nopen with quick_check of {path.stat().st_size >> 10} KiB: {seconds * 1000:.1f} ms")
    assert seconds < 1.0
