"""The scope contract (tests/contract/scopes.py) against the in-memory scopes of tests/fakes/scopes.py."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.contract.scopes import ScopesContract, ScopeView
from tests.fakes.scopes import FakeScopes


class FakeProbe:
    """Reads the fake's own records: its units are all it knows of processes."""

    def __init__(self, scopes: FakeScopes) -> None:
        self._scopes = scopes

    async def unit_of(self, pid: int) -> str | None:
        return self._scopes.unit_of(pid)

    async def scope(self, unit: str) -> ScopeView:
        record = self._scopes.units[unit]
        return ScopeView(record.description, record.limits)

    async def stop_as_host(self, unit: str) -> None:
        await self._scopes.stop_by_host(unit)

    async def run_service(self, unit: str) -> None:
        self._scopes.run_service(unit)

    async def loaded(self, unit: str) -> bool:
        return self._scopes.loaded(unit)


class TestFakeScopes(ScopesContract):
    @pytest.fixture
    def scopes(self) -> Iterator[FakeScopes]:
        scopes = FakeScopes()
        yield scopes
        scopes.close()

    @pytest.fixture
    def probe(self, scopes: FakeScopes) -> FakeProbe:
        return FakeProbe(scopes)
