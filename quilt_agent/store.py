"""SQLite state: schema, migrations, and every statement the agent runs; the one module that speaks SQL.

The database is the truth for what the user asked; systemd and /proc are the
truth for what runs (the manager reconciles the two at start).

Writes are queued in the order they are asked for and run one after another (`_queue`): a write method returns
at once with a future, which a caller awaits only where the row must be on disk before it goes on (a container's
row before its bus object exists, the monitor's pid before the container's command runs); the others land in
order behind it. Reads run after nothing: a caller that needs its own writes first awaits `flush()`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Protocol

import aiosqlite

from quilt_agent.model import Container, ContainerSpec, State, now_usec
from quilt_agent.network.model import Attachment, Network, PortMapping
from quilt_agent.volume_options import Volume

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
    # 5: the uid that created each container, network and volume (polkit's owner_uid detail). What existed
    # before was made by root: only root could create.
    """
    ALTER TABLE containers ADD COLUMN owner_uid INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE networks ADD COLUMN owner_uid INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE volumes ADD COLUMN owner_uid INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: the first host id of the range of a container in its own user namespace (quilt_agent/userns.py); -1
    # for one with the host's ids, as every container before was: their specs say so, now that a spec without
    # the key means a namespace of its own.
    """
    ALTER TABLE containers ADD COLUMN id_first INTEGER NOT NULL DEFAULT -1;
    UPDATE containers SET spec = json_set(spec, '$.userns', 'host');
    """,
    # 7: restarts by a container's policy (quilt_agent/restart.py).
    """
    ALTER TABLE containers ADD COLUMN restart_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN restart_streak INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN restart_at INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN user_stopped INTEGER NOT NULL DEFAULT 0;
    """,
    # 8: the verdict of a container's health check (quilt_agent/health.py), whether it is ready and what it last
    # said with STATUS= (quilt_agent/notify.py).
    """
    ALTER TABLE containers ADD COLUMN health TEXT NOT NULL DEFAULT '';
    ALTER TABLE containers ADD COLUMN ready INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN notify_status TEXT NOT NULL DEFAULT '';
    ALTER TABLE containers ADD COLUMN machine TEXT NOT NULL DEFAULT '';
    ALTER TABLE containers ADD COLUMN machine_name TEXT NOT NULL DEFAULT '';
    """,
)

MAX_EVENTS = 10000
# The first 16 bytes of every SQLite 3 database file (its file format's magic string).
SQLITE_HEADER = b"SQLite format 3\x00"

log = logging.getLogger("quilt.store")

_STATUS_COLUMNS = ("state", "started_at", "finished_at", "exit_code", "exit_signal", "oom_killed",
                   "failure_reason", "monitor_pid", "monitor_start", "main_pid", "setup_image", "restart_count",
                   "restart_streak", "restart_at", "user_stopped", "health", "ready",
                   "notify_status", "machine", "machine_name")


def _spec_to_json(spec: ContainerSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def _spec_from_json(text: str) -> ContainerSpec:
    data = json.loads(text)
    for key in ("command", "env", "namespaces", "networks", "aliases", "ports", "volumes", "tmpfs", "setup",
                "anonymous_volumes", "health_cmd", "cap_add", "cap_drop", "add_hosts", "dns_servers", "dns_search",
                "dns_options"):
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
        owner_uid=row["owner_uid"], id_first=row["id_first"], restart_count=row["restart_count"],
        restart_streak=row["restart_streak"], restart_at=row["restart_at"], user_stopped=bool(row["user_stopped"]),
        health=row["health"], ready=bool(row["ready"]), notify_status=row["notify_status"], machine=row["machine"],
        machine_name=row["machine_name"],
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


class StateStore(Protocol):
    """What the agent needs of its state: containers, events, networks with their addresses and published
    ports, and named volumes. Writes return at once with a future, and land in the order they were asked for;
    a caller awaits the future only where the row must be stored before it goes on, and a failed write raises
    there without stopping the writes behind it. Reads wait for nothing: a caller that needs its own writes
    first awaits flush()."""

    def insert_container(self, c: Container) -> asyncio.Future[None]:
        """Its id, spec, state and creation time; the status starts at the defaults. IntegrityError when the
        id or name is taken."""
        ...

    def update_status(self, c: Container) -> asyncio.Future[None]:
        """Every status field of c (state to machine_name) onto the container of c.id; the spec stays."""
        ...

    def rename_container(self, container_id: str, spec: ContainerSpec) -> asyncio.Future[None]:
        """Its name and spec (a rename: the spec's name is the new one); IntegrityError when the name is taken."""
        ...

    def delete_container(self, container_id: str) -> asyncio.Future[None]:
        """The container, and with it its addresses and published ports; an unknown id is no error."""
        ...

    async def containers(self) -> list[Container]:
        """Every container, oldest first (by created_at)."""
        ...

    def add_event(self, kind: str, container_id: str, details: dict[str, Any] | None = None,
                  time: int = 0) -> asyncio.Future[None]:
        """time: when it happened (usec), 0 = now. Only the newest store.MAX_EVENTS are kept."""
        ...

    async def events(self, since_usec: int = 0) -> list[tuple[int, str, str, dict[str, Any]]]:
        """(time, kind, container id, details) of the events at or after since_usec, in the order added."""
        ...

    async def networks(self) -> list[Network]:
        """Every network, oldest first."""
        ...

    def insert_network(self, n: Network) -> asyncio.Future[None]:
        """IntegrityError when its id, name, subnet or bridge is taken."""
        ...

    def update_network(self, n: Network) -> asyncio.Future[None]:
        """The subnet and gateway of n onto the network of n.id."""
        ...

    def delete_network(self, network_id: str) -> asyncio.Future[None]:
        """IntegrityError while an address on it exists."""
        ...

    async def attachments(self) -> list[Attachment]:
        """Every container's addresses, by container id then position."""
        ...

    async def ports(self) -> list[tuple[str, PortMapping]]:
        """Every published port with its container's id, in no promised order."""
        ...

    def insert_attachments(self, container_id: str, attachments: Iterable[Attachment],
                           ports: Iterable[PortMapping]) -> asyncio.Future[None]:
        """A container's addresses and published ports. IntegrityError when an address or port is taken or its
        container or network is unknown; those before the refused one stay."""
        ...

    async def volumes(self) -> list[Volume]:
        """Every named volume, oldest first."""
        ...

    def insert_volume(self, v: Volume) -> asyncio.Future[None]:
        """IntegrityError when its id or name is taken."""
        ...

    def delete_volume(self, volume_id: str) -> asyncio.Future[None]:
        ...

    async def flush(self) -> None:
        """Wait for every write queued so far."""
        ...

    async def close(self) -> None:
        """Flush, then let go of the store."""
        ...


class Store:
    """The one writer of the database: the StateStore in SQLite (tests/fakes/store.py keeps one in memory, and
    tests/contract/store.py holds both to the same behaviour)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._last_write: asyncio.Future[None] | None = None  # the tail of the queued writes

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
        await self.flush()
        await self._db.close()

    # --- the ordered writes ----------------------------------------------------------------------

    def _queue(self, write: Callable[[], Awaitable[Any]]) -> asyncio.Future[None]:
        """Run write after every write queued before it. A failure is the write's own: logged here, raised to
        whoever awaits it, and it does not stop the writes behind it."""
        previous = self._last_write

        async def in_order() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await write()

        future = self._last_write = asyncio.ensure_future(in_order())
        future.add_done_callback(_log_failure)
        return future

    async def flush(self) -> None:
        """Wait for every write queued so far."""
        if self._last_write is not None:
            await asyncio.wait([self._last_write])

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> asyncio.Future[None]:
        return self._queue(lambda: self._db.execute(sql, tuple(params)))

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

    # --- containers ------------------------------------------------------------------------------

    def insert_container(self, c: Container) -> asyncio.Future[None]:
        return self._execute("INSERT INTO containers (id, name, spec, state, created_at, owner_uid, id_first) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (c.id, c.name, _spec_to_json(c.spec), c.state.value, c.created_at, c.owner_uid,
                              c.id_first))

    def update_status(self, c: Container) -> asyncio.Future[None]:
        values: list[Any] = [getattr(c, col) if col != "state" else c.state.value for col in _STATUS_COLUMNS]
        values[_STATUS_COLUMNS.index("oom_killed")] = int(c.oom_killed)
        values[_STATUS_COLUMNS.index("user_stopped")] = int(c.user_stopped)
        values[_STATUS_COLUMNS.index("ready")] = int(c.ready)
        return self._execute(
            f"UPDATE containers SET {', '.join(f'{col} = ?' for col in _STATUS_COLUMNS)} WHERE id = ?",
            (*values, c.id))

    def rename_container(self, container_id: str, spec: ContainerSpec) -> asyncio.Future[None]:
        return self._execute("UPDATE containers SET name = ?, spec = ? WHERE id = ?",
                             (spec.name, _spec_to_json(spec), container_id))

    def delete_container(self, container_id: str) -> asyncio.Future[None]:
        """The row, and with it (ON DELETE CASCADE) its addresses and published ports."""
        return self._execute("DELETE FROM containers WHERE id = ?", (container_id,))

    async def containers(self) -> list[Container]:
        async with self._db.execute("SELECT * FROM containers ORDER BY created_at") as cur:
            return [_row_to_container(row) for row in await cur.fetchall()]

    # --- events --------------------------------------------------------------------------------

    def add_event(self, kind: str, container_id: str, details: dict[str, Any] | None = None,
                  time: int = 0) -> asyncio.Future[None]:
        """time: when it happened (usec), as the Event signal says it; 0 = now."""
        async def write() -> None:
            await self._db.execute("INSERT INTO events (time, kind, container_id, details) VALUES (?, ?, ?, ?)",
                                   (time or now_usec(), kind, container_id, json.dumps(details or {})))
            # Bounded: the oldest go first.
            await self._db.execute("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?", (MAX_EVENTS,))
        return self._queue(write)

    async def events(self, since_usec: int = 0) -> list[tuple[int, str, str, dict[str, Any]]]:
        async with self._db.execute(
            "SELECT time, kind, container_id, details FROM events WHERE time >= ? ORDER BY id", (since_usec,)
        ) as cur:
            return [(r["time"], r["kind"], r["container_id"], json.loads(r["details"])) for r in await cur.fetchall()]

    # --- networks, their addresses and published ports (migration 2) ----------------------------

    async def networks(self) -> list[Network]:
        async with self._db.execute("SELECT * FROM networks ORDER BY created_at") as cur:
            return [Network(id=r["id"], name=r["name"], subnet=r["subnet"], gateway=r["gateway"], bridge=r["bridge"],
                            internal=bool(r["internal"]), dns=bool(r["dns"]), created_at=r["created_at"],
                            owner_uid=r["owner_uid"])
                    for r in await cur.fetchall()]

    def insert_network(self, n: Network) -> asyncio.Future[None]:
        return self._execute("INSERT INTO networks (id, name, subnet, gateway, bridge, internal, dns, created_at, "
                             "owner_uid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (n.id, n.name, n.subnet, n.gateway, n.bridge, int(n.internal), int(n.dns), n.created_at,
                              n.owner_uid))

    def update_network(self, n: Network) -> asyncio.Future[None]:
        return self._execute("UPDATE networks SET subnet = ?, gateway = ? WHERE id = ?", (n.subnet, n.gateway, n.id))

    def delete_network(self, network_id: str) -> asyncio.Future[None]:
        return self._execute("DELETE FROM networks WHERE id = ?", (network_id,))

    async def attachments(self) -> list[Attachment]:
        async with self._db.execute("SELECT * FROM network_addresses ORDER BY container_id, position") as cur:
            return [Attachment(container_id=r["container_id"], network_id=r["network_id"], address=r["address"],
                               position=r["position"]) for r in await cur.fetchall()]

    async def ports(self) -> list[tuple[str, PortMapping]]:
        async with self._db.execute("SELECT * FROM published_ports") as cur:
            return [(r["container_id"], PortMapping(protocol=r["protocol"], host_ip=r["host_ip"],
                                                    host_port=r["host_port"], container_port=r["container_port"]))
                    for r in await cur.fetchall()]

    def insert_attachments(self, container_id: str, attachments: Iterable[Attachment],
                           ports: Iterable[PortMapping]) -> asyncio.Future[None]:
        """A container's addresses and ports, queued after its row (they reference it)."""
        rows = [(a.network_id, a.address, a.container_id, a.position) for a in attachments]
        published = [(p.protocol, p.host_ip, p.host_port, container_id, p.container_port) for p in ports]

        async def write() -> None:
            await self._db.executemany(
                "INSERT INTO network_addresses (network_id, address, container_id, position) VALUES (?, ?, ?, ?)",
                rows)
            await self._db.executemany(
                "INSERT INTO published_ports (protocol, host_ip, host_port, container_id, container_port) "
                "VALUES (?, ?, ?, ?, ?)", published)
        return self._queue(write)

    # --- named volumes (migration 3) --------------------------------------------------------------

    async def volumes(self) -> list[Volume]:
        async with self._db.execute("SELECT * FROM volumes ORDER BY created_at") as cur:
            return [Volume(id=r["id"], name=r["name"], mountpoint=r["mountpoint"], created_at=r["created_at"],
                           labels=json.loads(r["labels"]), owner_uid=r["owner_uid"]) for r in await cur.fetchall()]

    def insert_volume(self, v: Volume) -> asyncio.Future[None]:
        return self._execute("INSERT INTO volumes (id, name, mountpoint, created_at, labels, owner_uid) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (v.id, v.name, v.mountpoint, v.created_at, json.dumps(v.labels, sort_keys=True),
                              v.owner_uid))

    def delete_volume(self, volume_id: str) -> asyncio.Future[None]:
        return self._execute("DELETE FROM volumes WHERE id = ?", (volume_id,))


def _log_failure(write: asyncio.Future[None]) -> None:
    if not write.cancelled() and write.exception():
        log.error("could not write to the store: %s", write.exception())
