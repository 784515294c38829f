"""The state store in memory: what quilt_agent/store.py keeps in SQLite, kept in dicts.

It refuses what the schema refuses, with the error SQLite gives (sqlite3.IntegrityError, the same message and
sqlite_errorname): a container, network or volume name taken, a network's subnet or bridge taken, an address or
published port taken, an address or port of an unknown container or network, a network deleted while an address
on it exists. Deleting a container takes its addresses and ports with it (ON DELETE CASCADE). Writes are queued
in order and land after the call returns, as the real store's do; a failed write's future raises, is logged, and
the writes behind it still land. A write of several rows stops at the first refused one and keeps those before
it (the real store writes without a transaction). What goes in and comes out is copied: no caller shares a
record with the store.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import sqlite3
from typing import Any, Awaitable, Callable, Iterable

from quilt_agent import store as store_module
from quilt_agent.store import StateStore
from quilt_agent.model import Container, ContainerSpec, now_usec
from quilt_agent.network.model import Attachment, Network, PortMapping
from quilt_agent.volume_options import Volume

log = logging.getLogger("quilt.store")  # the real store's: a failed write is logged where its are


def _refused(message: str, errorname: str) -> sqlite3.IntegrityError:
    err = sqlite3.IntegrityError(message)
    err.sqlite_errorname = errorname  # type: ignore[attr-defined]  # what the sqlite3 module sets on its own
    return err


def _taken(table: str, *columns: str) -> sqlite3.IntegrityError:
    return _refused(f"UNIQUE constraint failed: {', '.join(f'{table}.{c}' for c in columns)}",
                    "SQLITE_CONSTRAINT_PRIMARYKEY" if columns == ("id",) else "SQLITE_CONSTRAINT_UNIQUE")


def _foreign_key() -> sqlite3.IntegrityError:
    return _refused("FOREIGN KEY constraint failed", "SQLITE_CONSTRAINT_FOREIGNKEY")


def _log_failure(write: asyncio.Future[None]) -> None:
    if not write.cancelled() and write.exception():
        log.error("could not write to the store: %s", write.exception())


def _oldest_first(records: Iterable[Any]) -> list[Any]:
    # sorted() is stable: equal times keep the order they were inserted in.
    return [copy.deepcopy(r) for r in sorted(records, key=lambda r: r.created_at)]


class MemoryStore:
    """A StateStore whose tables are dicts."""

    def __init__(self) -> None:
        self.rows: dict[str, Container] = {}  # by id
        self.network_rows: dict[str, Network] = {}
        self.addresses: list[Attachment] = []
        self.published: list[tuple[str, PortMapping]] = []  # (container id, port)
        self.volume_rows: dict[str, Volume] = {}
        self.event_rows: list[tuple[int, str, str, dict[str, Any]]] = []
        self._last_write: asyncio.Future[None] | None = None

    # --- the ordered writes ----------------------------------------------------------------------

    def _queue(self, write: Callable[[], None]) -> asyncio.Future[None]:
        previous = self._last_write

        async def in_order() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            else:
                await asyncio.sleep(0)  # lands after the call returns, never within it
            write()

        future = self._last_write = asyncio.ensure_future(in_order())
        future.add_done_callback(_log_failure)
        return future

    async def flush(self) -> None:
        if self._last_write is not None:
            await asyncio.wait([self._last_write])

    async def close(self) -> None:
        await self.flush()

    # --- containers ------------------------------------------------------------------------------

    def insert_container(self, c: Container) -> asyncio.Future[None]:
        row = Container(id=c.id, spec=copy.deepcopy(c.spec), state=c.state, created_at=c.created_at,
                        owner_uid=c.owner_uid, id_first=c.id_first)

        def write() -> None:
            if row.id in self.rows:
                raise _taken("containers", "id")
            if any(other.name == row.name for other in self.rows.values()):
                raise _taken("containers", "name")
            self.rows[row.id] = row
        return self._queue(write)

    def update_status(self, c: Container) -> asyncio.Future[None]:
        def write() -> None:
            old = self.rows.get(c.id)
            if old is not None:
                self.rows[c.id] = c.with_(spec=old.spec, created_at=old.created_at)
        return self._queue(write)

    def rename_container(self, container_id: str, spec: ContainerSpec) -> asyncio.Future[None]:
        def write() -> None:
            if any(other.name == spec.name and other.id != container_id for other in self.rows.values()):
                raise _taken("containers", "name")
            old = self.rows.get(container_id)
            if old is not None:
                self.rows[container_id] = old.with_(spec=copy.deepcopy(spec))
        return self._queue(write)

    def delete_container(self, container_id: str) -> asyncio.Future[None]:
        def write() -> None:
            if self.rows.pop(container_id, None) is not None:
                self.addresses = [a for a in self.addresses if a.container_id != container_id]
                self.published = [p for p in self.published if p[0] != container_id]
        return self._queue(write)

    async def containers(self) -> list[Container]:
        return _oldest_first(self.rows.values())

    # --- events ----------------------------------------------------------------------------------

    def add_event(self, kind: str, container_id: str, details: dict[str, Any] | None = None,
                  time: int = 0) -> asyncio.Future[None]:
        event = (time or now_usec(), kind, container_id, copy.deepcopy(details or {}))

        def write() -> None:
            self.event_rows.append(event)
            del self.event_rows[:-store_module.MAX_EVENTS]  # read at each write, as the real store does
        return self._queue(write)

    async def events(self, since_usec: int = 0) -> list[tuple[int, str, str, dict[str, Any]]]:
        return [copy.deepcopy(e) for e in self.event_rows if e[0] >= since_usec]

    # --- networks, their addresses and published ports -------------------------------------------

    async def networks(self) -> list[Network]:
        return _oldest_first(self.network_rows.values())

    def insert_network(self, n: Network) -> asyncio.Future[None]:
        def write() -> None:
            if n.id in self.network_rows:
                raise _taken("networks", "id")
            for column in ("name", "subnet", "bridge"):
                if any(getattr(other, column) == getattr(n, column) for other in self.network_rows.values()):
                    raise _taken("networks", column)
            self.network_rows[n.id] = n
        return self._queue(write)

    def update_network(self, n: Network) -> asyncio.Future[None]:
        def write() -> None:
            old = self.network_rows.get(n.id)
            if old is None:
                return
            if any(other.subnet == n.subnet for other in self.network_rows.values() if other.id != n.id):
                raise _taken("networks", "subnet")
            self.network_rows[n.id] = old.with_(subnet=n.subnet, gateway=n.gateway)
        return self._queue(write)

    def delete_network(self, network_id: str) -> asyncio.Future[None]:
        def write() -> None:
            if any(a.network_id == network_id for a in self.addresses):
                raise _foreign_key()
            self.network_rows.pop(network_id, None)
        return self._queue(write)

    async def attachments(self) -> list[Attachment]:
        return sorted(self.addresses, key=lambda a: (a.container_id, a.position))

    async def ports(self) -> list[tuple[str, PortMapping]]:
        return list(self.published)

    def insert_attachments(self, container_id: str, attachments: Iterable[Attachment],
                           ports: Iterable[PortMapping]) -> asyncio.Future[None]:
        # As the real one: an address names its own container; the ports are the argument's.
        rows = list(attachments)
        published = [(container_id, p) for p in ports]

        def write() -> None:
            for a in rows:
                if any(o.network_id == a.network_id and o.container_id == a.container_id for o in self.addresses):
                    raise _taken("network_addresses", "network_id", "container_id")
                if any(o.network_id == a.network_id and o.address == a.address for o in self.addresses):
                    raise _taken("network_addresses", "network_id", "address")
                if a.network_id not in self.network_rows or a.container_id not in self.rows:
                    raise _foreign_key()
                self.addresses.append(a)
            for owner, p in published:
                if any((o.protocol, o.host_ip, o.host_port) == (p.protocol, p.host_ip, p.host_port)
                       for _, o in self.published):
                    raise _taken("published_ports", "protocol", "host_ip", "host_port")
                if owner not in self.rows:
                    raise _foreign_key()
                self.published.append((owner, p))
        return self._queue(write)

    # --- named volumes ---------------------------------------------------------------------------

    async def volumes(self) -> list[Volume]:
        return _oldest_first(self.volume_rows.values())

    def insert_volume(self, v: Volume) -> asyncio.Future[None]:
        row = copy.deepcopy(v)

        def write() -> None:
            if row.id in self.volume_rows:
                raise _taken("volumes", "id")
            if any(other.name == row.name for other in self.volume_rows.values()):
                raise _taken("volumes", "name")
            self.volume_rows[row.id] = row
        return self._queue(write)

    def delete_volume(self, volume_id: str) -> asyncio.Future[None]:
        def write() -> None:
            self.volume_rows.pop(volume_id, None)
        return self._queue(write)
