"""The fork server contract (tests/contract/helper.py) against the real Zygote: containers with their namespaces,
an overlay over a busybox tree, seccomp, and execs that enter them, in the test host (no scope: the processes stay
in the test's cgroup, which the contract does not look at).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from quilt_agent.helper import zygote
from quilt_agent.helper.zygote import Zygote
from tests.contract.helper import HelperContract
from tests.imagetools import busybox


@pytest.fixture(scope="session")
def fork_server() -> Iterator[Zygote]:
    """Forked once, from the test's main thread, as the agent forks it before its first thread."""
    server = zygote.start()
    yield server
    server.sock.close()  # its recv ends: it exits
    os.waitpid(server.pid, 0)


@pytest.fixture(scope="session")
def busybox_layer(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image's one layer, unpacked: busybox's tree (tmpfs in the test host, which overlayfs accepts)."""
    root = tmp_path_factory.mktemp("layers") / "busybox"
    busybox(root)
    return str(root)


class TestZygote(HelperContract):
    @pytest.fixture
    def helper(self, fork_server: Zygote) -> Zygote:
        # A handle per test on the one server: the handle's send lock belongs to the test's own event loop.
        return Zygote(fork_server.pid, fork_server.sock)

    @pytest.fixture
    def lower(self, busybox_layer: str) -> str:
        return busybox_layer
