"""Address allocation: which address each container has on each network.

Runs in the event loop without awaiting between looking and taking, so concurrent creates never get the same
address; the store's PRIMARY KEY (network_id, address) is the backstop and the truth after a restart.
"""
from __future__ import annotations

import ipaddress

from quilt_agent.errors import AddressInUse, InvalidArgument
from quilt_agent.network.model import Network


class Allocator:
    def __init__(self) -> None:
        self._taken: dict[str, dict[int, str]] = {}  # network id -> address (as int) -> container id
        self._next: dict[str, int] = {}  # network id -> where the next search starts (round robin)

    def add_network(self, network: Network) -> None:
        self._taken.setdefault(network.id, {})

    def remove_network(self, network_id: str) -> None:
        self._taken.pop(network_id, None)
        self._next.pop(network_id, None)

    def take(self, network: Network, container_id: str, wanted: str = "") -> str:
        """Reserve `wanted` (checked) or the next free address for container_id; return it."""
        taken = self._taken.setdefault(network.id, {})
        net = network.network
        gateway = int(ipaddress.IPv4Address(network.gateway))
        first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
        if wanted:
            address = int(ipaddress.IPv4Address(wanted))
            if not first <= address <= last:
                raise InvalidArgument(f"Invalid ip '{wanted}': not a host address of network "
                                      f"'{network.name}' ({network.subnet})")
            if address == gateway:
                raise AddressInUse(f"Address {wanted} is the gateway of network '{network.name}'")
            if address in taken:
                raise AddressInUse(f"Address {wanted} on network '{network.name}' is taken by another container")
            taken[address] = container_id
            return wanted
        # Round robin from the last address given, as netavark does: a removed container's address is not
        # handed to the next container at once, so a peer's stale ARP or DNS cache does not reach the newcomer.
        size = last - first + 1
        start = self._next.get(network.id, first)
        for i in range(size):
            address = first + (start - first + i) % size
            if address != gateway and address not in taken:
                taken[address] = container_id
                self._next[network.id] = address + 1 if address < last else first
                return str(ipaddress.IPv4Address(address))
        raise AddressInUse(f"Network '{network.name}' ({network.subnet}) has no free address left")

    def restore(self, network_id: str, address: str, container_id: str) -> None:
        """Put back an allocation read from the store."""
        self._taken.setdefault(network_id, {})[int(ipaddress.IPv4Address(address))] = container_id

    def release(self, network_id: str, address: str) -> None:
        self._taken.get(network_id, {}).pop(int(ipaddress.IPv4Address(address)), None)

    def count(self, network_id: str) -> int:
        return len(self._taken.get(network_id, {}))
