"""The SQL of networks, addresses and published ports (the tables are migration 2 of store.MIGRATIONS).

Every write goes through the manager's ordered write chain, like the containers' own rows.
"""
from __future__ import annotations

from typing import Iterable

import aiosqlite

from quilt_agent.network.model import Attachment, Network, PortMapping


class NetworkStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def networks(self) -> list[Network]:
        async with self._db.execute("SELECT * FROM networks ORDER BY created_at") as cur:
            return [Network(id=r["id"], name=r["name"], subnet=r["subnet"], gateway=r["gateway"], bridge=r["bridge"],
                            internal=bool(r["internal"]), dns=bool(r["dns"]), created_at=r["created_at"])
                    for r in await cur.fetchall()]

    async def insert_network(self, n: Network) -> None:
        await self._db.execute(
            "INSERT INTO networks (id, name, subnet, gateway, bridge, internal, dns, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (n.id, n.name, n.subnet, n.gateway, n.bridge, int(n.internal), int(n.dns), n.created_at))

    async def update_network(self, n: Network) -> None:
        await self._db.execute("UPDATE networks SET subnet = ?, gateway = ? WHERE id = ?", (n.subnet, n.gateway, n.id))

    async def delete_network(self, network_id: str) -> None:
        await self._db.execute("DELETE FROM networks WHERE id = ?", (network_id,))

    async def attachments(self) -> list[Attachment]:
        async with self._db.execute("SELECT * FROM network_addresses ORDER BY container_id, position") as cur:
            return [Attachment(container_id=r["container_id"], network_id=r["network_id"], address=r["address"],
                               position=r["position"]) for r in await cur.fetchall()]

    async def ports(self) -> list[tuple[str, PortMapping]]:
        async with self._db.execute("SELECT * FROM published_ports") as cur:
            return [(r["container_id"], PortMapping(protocol=r["protocol"], host_ip=r["host_ip"],
                                                    host_port=r["host_port"], container_port=r["container_port"]))
                    for r in await cur.fetchall()]

    async def insert_container(self, container_id: str, attachments: Iterable[Attachment],
                               ports: Iterable[PortMapping]) -> None:
        """A container's addresses and ports, after its row (they reference it)."""
        await self._db.executemany(
            "INSERT INTO network_addresses (network_id, address, container_id, position) VALUES (?, ?, ?, ?)",
            [(a.network_id, a.address, a.container_id, a.position) for a in attachments])
        await self._db.executemany(
            "INSERT INTO published_ports (protocol, host_ip, host_port, container_id, container_port) "
            "VALUES (?, ?, ?, ?, ?)",
            [(p.protocol, p.host_ip, p.host_port, container_id, p.container_port) for p in ports])
