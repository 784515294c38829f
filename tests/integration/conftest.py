"""Integration tests run inside the test host (tests/testhost.py): real systemd, bus, journald, polkit."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import AsyncIterator

import pytest

from quilt_agent.client import Client
from tests.integration.cleanup import CONTAINER_GONE, Cleanup
from tests.integration.loopcheck import agent_journal, loop_check, pytest_configure  # noqa: F401 - the agent's loop

PROJECT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("QUILT_TESTHOST"):
        raise pytest.UsageError("integration tests run inside the test host: "
                                "python3 tests/testhost.py run -- .venv/bin/python -m pytest tests/integration")


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], check=check, capture_output=True, text=True)


@pytest.fixture(scope="session")
def agent() -> None:
    """quilt-agent started by systemd, as on a real machine."""
    systemctl("start", "quilt-agent")


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("images") / "busybox.tar"
    subprocess.run([str(PROJECT / "scripts/busybox-rootfs.sh"), str(out)], check=True)
    return out


@pytest.fixture
async def client(agent: None) -> AsyncIterator[Client]:
    async with Client() as c:
        yield c
        # Each test starts from no containers: remove what this one left, and fail it for what cannot be.
        cleanup = Cleanup("client")
        await cleanup.attempt("list containers", remove_containers(c, cleanup))
        await cleanup.attempt("list containers after their removal", _containers_left(c, cleanup))
        cleanup.report()


async def remove_containers(c: Client, cleanup: Cleanup) -> None:
    """Force-remove every container; what fails is recorded in cleanup."""
    for entry in await c.list_containers():
        await cleanup.attempt(f"remove container {entry.name}", c.remove(entry.path, force=True), CONTAINER_GONE)


async def _containers_left(c: Client, cleanup: Cleanup) -> None:
    cleanup.left("containers", [entry.name for entry in await c.list_containers()])


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A container name unique to the test."""
    return "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]


def journal_lines(unit: str) -> list[str]:
    out = subprocess.run(["journalctl", "-u", unit, "-o", "cat", "--no-pager", "_TRANSPORT=stdout"],
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()
