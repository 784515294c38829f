#!/usr/bin/env python3
"""Lifecycle latencies through the real bus, from a client already connected.

Run inside the test host (or on a systemd host with the agent installed):
    make bench        or        python3 tests/testhost.py run --loop-check 0 -- .venv/bin/python bench/lifecycle.py
Prints median and p95 of: RunContainer to exit of /bin/true and Exec of /bin/true (each with a user namespace
of its own and with --userns host), RunContainer to exit with --init (catatonit as PID 1), RunContainer to exit
with registration with systemd-machined turned off (the other rows register where machined is, as by default),
a property read, ListContainers with 100 containers present. A benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quilt_agent.client import Client  # noqa: E402
from quilt_agent.config import config_path  # noqa: E402
import hostcheck  # noqa: E402 - bench/, this script's own directory


def summary(label: str, samples: list[float], width: int = 44) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"{label:<{width}} median {statistics.median(ms):8.2f} ms   p95 {p95:8.2f} ms   (n={len(ms)})"


async def time_to_exit(client: Client, name: str, image: str, options: dict[str, Any]) -> float:
    """Seconds from RunContainer of /bin/true to Wait's answer; the container is removed after."""
    started = time.perf_counter()
    path = await client.run_container(name, image, ["/bin/true"], options)
    code = await client.wait(path)
    elapsed = time.perf_counter() - started
    assert code == 0, f"/bin/true exited {code}"
    await client.remove(path)
    return elapsed


async def run_to_exit(client: Client, image: str, runs: int, warmup: int,
                      options: dict[str, Any] | None = None) -> list[float]:
    samples = [await time_to_exit(client, f"bench-true-{i}", image, options or {}) for i in range(warmup + runs)]
    return samples[warmup:]


@asynccontextmanager
async def busybox_client() -> AsyncIterator[tuple[Client, str]]:
    """The agent started, a busybox image made (scripts/busybox-rootfs.sh), a client; the header line printed."""
    subprocess.run(["systemctl", "start", "quilt-agent"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        image = str(Path(tmp) / "busybox.tar")
        subprocess.run([str(Path(__file__).resolve().parents[1] / "scripts/busybox-rootfs.sh"), image], check=True)
        async with Client() as client:
            print(f"quilt {await client.version()}, {subprocess.getoutput('nproc')} cores, "
                  f"kernel {subprocess.getoutput('uname -r')}")
            yield client, image


async def exec_true(client: Client, path: str, runs: int, warmup: int) -> list[float]:
    """Exec of /bin/true in a running container, to its exit code: fork server, setns, scope, exec, wait."""
    samples = []
    for i in range(warmup + runs):
        started = time.perf_counter()
        result = await client.exec(path, ["/bin/true"])
        elapsed = time.perf_counter() - started
        assert result.exit_code == 0, f"/bin/true exited {result.exit_code}"
        if i >= warmup:
            samples.append(elapsed)
    return samples


async def property_read(client: Client, path: str, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await client.get_property(path, "State")
        samples.append(time.perf_counter() - started)
    return samples


async def listing(client: Client, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await client.list_containers()
        samples.append(time.perf_counter() - started)
    return samples


async def unregistered(image: str, runs: int) -> list[float]:
    """Run-to-exit with registration with systemd-machined turned off ([machines] register = false), the agent
    restarted for it and again after, the settings file as it was."""
    settings = config_path()
    before = settings.read_bytes() if settings.exists() else None
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text((before or b"").decode() + "\n[machines]\nregister = false\n")
    try:
        subprocess.run(["systemctl", "restart", "quilt-agent"], check=True)
        async with Client() as client:
            return await run_to_exit(client, image, runs, warmup=5)
    finally:
        if before is None:
            settings.unlink()
        else:
            settings.write_bytes(before)
        subprocess.run(["systemctl", "restart", "quilt-agent"], check=True)


async def main(runs: int) -> None:
    async with busybox_client() as (client, image):
        # With a user namespace of its own (the default) and with the host's ids, one after the other.
        for label, options in (("", {"userns": "auto"}), (", --userns host", {"userns": "host"})):
            print(summary(f"RunContainer -> exit, /bin/true{label}",
                          await run_to_exit(client, image, runs, warmup=5, options=options)))
            running = await client.run_container("bench-exec", image, ["/bin/sleep", "3600"], options)
            print(summary(f"Exec /bin/true in a running container{label}",
                          await exec_true(client, running, runs * 2, 10)))
            await client.remove(running, True)
        print(summary("RunContainer -> exit, /bin/true, --init",
                      await run_to_exit(client, image, runs, warmup=5, options={"init": True})))
        print(summary("RunContainer -> exit, /bin/true, not registered", await unregistered(image, runs)))
        one = await client.create_container("bench-props", image, ["/bin/true"], {})
        print(summary("property read (State of a container)", await property_read(client, one, runs * 5)))
        paths = [await client.create_container(f"bench-list-{i}", image, ["/bin/true"], {}) for i in range(99)]
        print(summary("ListContainers with 100 containers", await listing(client, runs * 5)))
        for path in [one, *paths]:
            await client.remove(path)


if __name__ == "__main__":
    hostcheck.refuse_debug_agent("bench/lifecycle.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    asyncio.run(main(parser.parse_args().runs))
