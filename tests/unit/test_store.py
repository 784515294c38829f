"""The SQLite store on a real database file: migrations, round trips, bounded events."""
from pathlib import Path

import aiosqlite

from quilt_agent import store as store_module
from quilt_agent.model import Container, ContainerSpec, State
from quilt_agent.store import Store


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
