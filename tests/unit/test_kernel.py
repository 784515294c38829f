"""The network kernel contract (tests/contract/kernel.py) against the in-memory kernel of tests/fakes/kernel.py."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.contract.kernel import KernelContract, LinkView, Where
from tests.fakes.kernel import FakeKernel, FakeNamespace


class FakeProbe:
    """Reads the fake's own records."""

    def __init__(self, kernel: FakeKernel) -> None:
        self._kernel = kernel

    def _space(self, where: Where) -> FakeNamespace:
        if where is None:
            return self._kernel.host
        if isinstance(where, int):
            return self._kernel.held[where]
        return self._kernel.pinned[where]

    async def links(self, where: Where) -> dict[str, LinkView]:
        return {name: LinkView(up=link.up, master=link.master, alias=link.alias, mac=link.mac,
                               addresses=frozenset(f"{a}/{p}" for a, p in link.addresses))
                for name, link in self._space(where).links.items()}

    async def default_gateway(self, where: Where) -> str | None:
        return self._space(where).default_gateway


class TestFakeKernel(KernelContract):
    @pytest.fixture
    def kernel(self) -> Iterator[FakeKernel]:
        kernel = FakeKernel()
        yield kernel
        kernel.close()

    @pytest.fixture
    def probe(self, kernel: FakeKernel) -> FakeProbe:
        return FakeProbe(kernel)
