"""The fork server contract (tests/contract/helper.py) against the fake fork server of tests/fakes/helper.py."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.contract.helper import HelperContract
from tests.fakes.helper import FakeForkServer


class TestFakeForkServer(HelperContract):
    @pytest.fixture
    def helper(self) -> Iterator[FakeForkServer]:
        server = FakeForkServer()
        yield server
        server.close()

    @pytest.fixture
    def lower(self) -> str:
        return "/nonexistent-image-layers"  # the fake runs the command on the host's own tree
