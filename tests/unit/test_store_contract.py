"""The store contract (tests/contract/store.py) against the SQLite store on a file and the in-memory store of
tests/fakes/store.py."""
from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from quilt_agent.store import Store
from tests.contract.store import StoreContract
from tests.fakes.store import MemoryStore


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        store = await Store.open(tmp_path / "state.db")
        yield store
        await store.close()


class TestMemoryStore(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        store = MemoryStore()
        yield store
        await store.close()
