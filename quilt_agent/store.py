"""SQLite state: schema, migrations, one transaction per state change.

The database is the truth for what the user asked; systemd and /proc are the
truth for what runs (the manager reconciles the two at start).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite

from quilt_agent.model import Container, ContainerSpec, State, now_usec

# Each entry is one schema version; never edit an applied one, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER NOT NULL DEFAULT 0,
        finished_at INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER NOT NULL DEFAULT -1,
        exit_signal INTEGER NOT NULL DEFAULT 0,
        oom_killed INTEGER NOT NULL DEFAULT 0,
        failure_reason TEXT NOT NULL DEFAULT '',
        monitor_pid INTEGER NOT NULL DEFAULT 0,
        monitor_start INTEGER NOT NULL DEFAULT 0,
        main_pid INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        source TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        kind TEXT NOT NULL,
        container_id TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_time ON events(time);
    """,
    # 2: networks. Addresses and published ports go with their container's row (ON DELETE CASCADE);
    # a network cannot be deleted while an address on it exists. Containers made before networks existed had
    # only a loopback: they keep it (networks ["none"]).
    """
    CREATE TABLE networks (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        subnet TEXT NOT NULL UNIQUE,
        gateway TEXT NOT NULL,
        bridge TEXT NOT NULL UNIQUE,
        internal INTEGER NOT NULL DEFAULT 0,
        dns INTEGER NOT NULL DEFAULT 1,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE network_addresses (
        network_id TEXT NOT NULL REFERENCES networks(id),
        address TEXT NOT NULL,
        container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        PRIMARY KEY (network_id, address),
        UNIQUE (network_id, container_id)
    );
    CREATE TABLE published_ports (
        protocol TEXT NOT NULL,
        host_ip TEXT NOT NULL,
        host_port INTEGER NOT NULL,
        container_id TEXT NOT NULL REFERENCES containers(id) ON DELETE CASCADE,
        container_port INTEGER NOT NULL,
        PRIMARY KEY (protocol, host_ip, host_port)
    );
    UPDATE containers SET spec = json_set(spec, '$.networks', json('["none"]'))
        WHERE json_extract(spec, '$.networks') IS NULL;
    """,
    # 3: named volumes (quilt_agent/volumes.py). Which containers use one is read from their specs.
    """
    CREATE TABLE volumes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        mountpoint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 4: setup commands (quilt_agent/setup.py): the cached setup image a container's last start used
    # (its layers are below the container's own). The images table of version 1 was never used: images live in
    # the image store (images/store.py).
    """
    ALTER TABLE containers ADD COLUMN setup_image TEXT NOT NULL DEFAULT '';
    DROP TABLE images;
    """,
)

MAX_EVENTS = 10000
# The first 16 bytes of every SQLite 3 database file (its file format's magic string).
SQLITE_HEADER = b"SQLite format 3\x00"

log = logging.getLogger("quilt.store")

_STATUS_COLUMNS = ("state", "started_at", "finished_at", "exit_code", "exit_signal", "oom_killed",
                   "failure_reason", "monitor_pid", "monitor_start", "main_pid", "setup_image")


def _spec_to_json(spec: ContainerSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def _spec_from_json(text: str) -> ContainerSpec:
    data = json.loads(text)
    for key in ("command", "env", "namespaces", "networks", "aliases", "ports", "volumes", "tmpfs", "setup",
                "anonymous_volumes"):
        if key in data:
            data[key] = tuple(data[key])
    return ContainerSpec(**data)


def _row_to_container(row: aiosqlite.Row) -> Container:
    return Container(
        id=row["id"], spec=_spec_from_json(row["spec"]), state=State(row["state"]),
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        exit_code=row["exit_code"], exit_signal=row["exit_signal"], oom_killed=bool(row["oom_killed"]),
        failure_reason=row["failure_reason"], monitor_pid=row["monitor_pid"],
        monitor_start=row["monitor_start"], main_pid=row["main_pid"], setup_image=row["setup_image"],
    )


class StoreRefused(Exception):
    """The database cannot be used as it is. It is left exactly as found: the administrator decides (a damaged
    file may still hold what they need, and a newer schema belongs to a newer Quilt)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"refusing the state database {path}: {reason}; it is left as it is "
                         f"(move it away to start with no containers)")
        self.path = path
        self.reason = reason


def _check_header(path: Path) -> None:
    """SQLite would report a file that is not a database only at the first statement, as 'file is not a
    database': the header says it before anything is opened."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return  # a first start
    except OSError as e:
        raise StoreRefused(path, e.strerror or str(e)) from None
    if head and head != SQLITE_HEADER:
        raise StoreRefused(path, f"not an SQLite database (it begins with {head[:16]!r})")


class Store:
    """The one writer of the database."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open, check and migrate the database; StoreRefused, with the file untouched, when it is damaged, newer
        than this agent's schema, or a migration fails (that migration rolled back)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        _check_header(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreRefused(path, str(e)) from None
        try:
            db.row_factory = aiosqlite.Row
            store = cls(db)
            # Checked before anything is written: switching to WAL alone rewrites the header.
            await store._check(path)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await store._migrate(path)
        except BaseException as e:
            await db.close()
            if isinstance(e, sqlite3.Error):
                raise StoreRefused(path, str(e)) from None
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    @property
    def connection(self) -> aiosqlite.Connection:
        """For the network tables' SQL (network/state.py): the same connection, so still one writer."""
        return self._db

    async def _check(self, path: Path) -> None:
        # quick_check: every page and index structure without matching index entries to rows, which
        # integrity_check adds at many times the cost; a few ms for this database.
        async with self._db.execute("PRAGMA quick_check") as cur:
            problems = [row[0] for row in await cur.fetchall() if row[0] != "ok"]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StoreRefused(path, f"damaged: {problems[0]}{more}")
        current = await self._applied_version()
        if current > len(MIGRATIONS):
            raise StoreRefused(path, f"its schema version is {current}, newer than the {len(MIGRATIONS)} this "
                                     f"quilt-agent knows: it was written by a newer Quilt, which reads it")

    async def _applied_version(self) -> int:
        async with self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ) as cur:
            if await cur.fetchone() is None:
                return 0
        async with self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations") as cur:
            (current,) = await cur.fetchone()
        return int(current)

    async def _migrate(self, path: Path) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"
        )
        current = await self._applied_version()
        for version, script in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            try:
                await self._db.executescript(
                    f"BEGIN; {script}; INSERT INTO schema_migrations VALUES ({version}, {now_usec()}); COMMIT;"
                )
            except sqlite3.Error as e:
                try:
                    await self._db.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    pass  # the failing statement ended the transaction itself
                raise StoreRefused(path, f"its migration from schema version {version - 1} to {version} failed "
                                         f"and was rolled back: {e}") from None
        if 0 < current < len(MIGRATIONS):
            log.info("migrated the state database %s from schema version %d to %d", path, current, len(MIGRATIONS))

    async def schema_version(self) -> int:
        async with self._db.execute("SELECT MAX(version) FROM schema_migrations") as cur:
            (version,) = await cur.fetchone()
        return int(version)

    async def insert_container(self, c: Container) -> None:
        await self._db.execute(
            "INSERT INTO containers (id, name, spec, state, created_at) VALUES (?, ?, ?, ?, ?)",
            (c.id, c.name, _spec_to_json(c.spec), c.state.value, c.created_at),
        )

    async def update_status(self, c: Container) -> None:
        values: list[Any] = [getattr(c, col) if col != "state" else c.state.value for col in _STATUS_COLUMNS]
        values[_STATUS_COLUMNS.index("oom_killed")] = int(c.oom_killed)
        await self._db.execute(
            f"UPDATE containers SET {', '.join(f'{col} = ?' for col in _STATUS_COLUMNS)} WHERE id = ?",
            (*values, c.id),
        )

    async def delete_container(self, container_id: str) -> None:
        await self._db.execute("DELETE FROM containers WHERE id = ?", (container_id,))

    async def containers(self) -> list[Container]:
        async with self._db.execute("SELECT * FROM containers ORDER BY created_at") as cur:
            return [_row_to_container(row) for row in await cur.fetchall()]

    async def add_event(self, kind: str, container_id: str, details: dict[str, Any] | None = None,
                        time: int = 0) -> None:
        """time: when it happened (usec), as the Event signal says it; 0 = now."""
        await self._db.execute(
            "INSERT INTO events (time, kind, container_id, details) VALUES (?, ?, ?, ?)",
            (time or now_usec(), kind, container_id, json.dumps(details or {})),
        )
        # Bounded: the oldest go first.
        await self._db.execute(
            "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (MAX_EVENTS,)
        )

    async def events(self, since_usec: int = 0) -> list[tuple[int, str, str, dict[str, Any]]]:
        async with self._db.execute(
            "SELECT time, kind, container_id, details FROM events WHERE time >= ? ORDER BY id", (since_usec,)
        ) as cur:
            return [(r["time"], r["kind"], r["container_id"], json.loads(r["details"])) for r in await cur.fetchall()]
