"""Host uid/gid ranges for containers' user namespaces: each container gets RANGE_SIZE host ids of its own, uid 0
inside being the range's first, as systemd-nspawn's --private-users=pick and Podman's --userns=auto do.

The pool is systemd's container range (524288-1879048191, users(7) of systemd: "container UID ranges") unless
the [userns] table of /etc/quilt/quilt.conf says otherwise:

    [userns]
    pool = "524288-1879048191"      # first-last host id; cut into slots of 65536 from its first id

A slot is never handed out while a host user or group owns an id in it (/etc/passwd, /etc/group) or while
/etc/subuid or /etc/subgid delegates part of it: those ids are someone's already. The allocation itself is
in memory (the agent's one event loop makes it atomic); the store keeps each container's range, and a range
comes back to the pool only once the container's files are gone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from quilt_agent.config import read_table
from quilt_agent.errors import InvalidArgument, ResourceExhausted

log = logging.getLogger("quilt.userns")

RANGE_SIZE = 65536
POOL_FIRST, POOL_LAST = 524288, 1879048191
HOST_FILES = (Path("/etc/passwd"), Path("/etc/group"), Path("/etc/subuid"), Path("/etc/subgid"))


@dataclass(frozen=True)
class IdRange:
    """A container's ids: inside, 0 to size-1; on the host, first to first+size-1 (uids and gids alike)."""

    first: int
    size: int = RANGE_SIZE

    @property
    def last(self) -> int:
        return self.first + self.size - 1

    def id_map(self) -> str:
        """The line for /proc/PID/uid_map and gid_map."""
        return f"0 {self.first} {self.size}\n"

    def __str__(self) -> str:
        return f"0:{self.first}:{self.size}"


@dataclass(frozen=True)
class Pool:
    first: int = POOL_FIRST
    last: int = POOL_LAST

    @property
    def slots(self) -> int:
        return (self.last - self.first + 1) // RANGE_SIZE

    def slot(self, index: int) -> IdRange:
        return IdRange(self.first + index * RANGE_SIZE)


def parse_pool(text: str) -> Pool:
    """"FIRST-LAST": at least one slot, above the ids of the host's own users (below 65536)."""
    first_text, sep, last_text = text.partition("-")
    try:
        first, last = int(first_text), int(last_text)
    except ValueError:
        raise InvalidArgument(f"The pool of user namespace ids '{text}' is not FIRST-LAST (e.g. "
                              f"{POOL_FIRST}-{POOL_LAST})") from None
    if not sep or first < RANGE_SIZE or last > 0xFFFFFFFE or last - first + 1 < RANGE_SIZE:
        raise InvalidArgument(f"The pool of user namespace ids '{text}' must hold at least {RANGE_SIZE} ids, "
                              f"from {RANGE_SIZE} up to 4294967294")
    return Pool(first, last)


def load_pool(path: Path) -> Pool:
    """The [userns] pool of the agent's configuration file; the default when it has none. A bad value is
    logged and the default used, as for the other tables: a typo never keeps the agent from starting."""
    data = read_table(path, "userns")
    if "pool" not in data:
        return Pool()
    try:
        return parse_pool(str(data["pool"]))
    except InvalidArgument as e:
        log.error("ignoring the [userns] pool of %s: %s", path, e)
        return Pool()


def host_owned(files: tuple[Path, ...] = HOST_FILES) -> list[tuple[int, int]]:
    """The host ids (first, last) that users, groups and subordinate id delegations own: passwd and group
    lines name one id each (NAME:x:ID:...), subuid and subgid lines a range (NAME:FIRST:COUNT)."""
    owned: list[tuple[int, int]] = []
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            continue
        subordinate = path.name in ("subuid", "subgid")
        for line in lines:
            fields = line.split(":")
            try:
                if subordinate and len(fields) == 3 and int(fields[2]) > 0:
                    owned.append((int(fields[1]), int(fields[1]) + int(fields[2]) - 1))
                elif not subordinate and len(fields) >= 3:
                    owned.append((int(fields[2]), int(fields[2])))
            except ValueError:
                continue  # a comment or a malformed line owns nothing
    return owned


class Ranges:
    """Which container holds which slot of the pool."""

    def __init__(self, pool: Pool, owned: list[tuple[int, int]]) -> None:
        self.pool = pool
        self._owned = owned
        self._holders: dict[int, str] = {}  # slot index -> container id
        self._slots: dict[str, int] = {}  # container id -> slot index
        self._next = 0  # where the search for a free slot starts: ranges are reused last

    def _slot_of(self, first: int) -> int:
        index, rest = divmod(first - self.pool.first, RANGE_SIZE)
        if rest or not 0 <= index < self.pool.slots:
            raise ValueError(f"{first} is not the first id of a slot of the pool")
        return index

    def _free(self, index: int) -> bool:
        r = self.pool.slot(index)
        return index not in self._holders and not any(a <= r.last and r.first <= b for a, b in self._owned)

    def restore(self, container_id: str, first: int) -> IdRange:
        """A range the store kept for a container (at the agent's start): held again, as it was."""
        index = self._slot_of(first)
        holder = self._holders.get(index)
        if holder is not None and holder != container_id:
            raise ValueError(f"containers {holder} and {container_id} both hold the ids {self.pool.slot(index)}")
        self._holders[index] = container_id
        self._slots[container_id] = index
        return self.pool.slot(index)

    def take(self, container_id: str) -> IdRange:
        """A free slot for the container, searching from after the last one handed out."""
        if container_id in self._slots:
            return self.pool.slot(self._slots[container_id])
        slots = self.pool.slots
        for step in range(slots):
            index = (self._next + step) % slots
            if self._free(index):
                self._holders[index] = container_id
                self._slots[container_id] = index
                self._next = (index + 1) % slots
                return self.pool.slot(index)
        raise ResourceExhausted(
            f"All {slots} user namespace ranges of {RANGE_SIZE} ids in the pool {self.pool.first}-{self.pool.last} "
            f"are taken ({len(self._holders)} by containers, the rest owned by host users or /etc/subuid): remove "
            "containers, or widen [userns] pool in /etc/quilt/quilt.conf")

    def release(self, container_id: str) -> None:
        """The container's files are gone: its ids may serve another."""
        index = self._slots.pop(container_id, None)
        if index is not None:
            del self._holders[index]

    def of(self, container_id: str) -> IdRange | None:
        index = self._slots.get(container_id)
        return None if index is None else self.pool.slot(index)
