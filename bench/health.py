#!/usr/bin/env python3
"""What health checks cost the agent: CPU time over a while with N running containers and no checks, then with
the same N each checked every second (`/bin/true`).

Run inside the test host:
    make bench-health        or        python3 tests/testhost.py run --loop-check 0 -- .venv/bin/python bench/health.py
Two figures per phase, in percent of one CPU: the agent's own process, and everything the agent pays for (its
process, the fork server, the exec helpers and the check commands, which the fork server reaps). A benchmark,
not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lifecycle import busybox_client  # noqa: E402
from quilt_agent.client import Client  # noqa: E402
import hostcheck  # noqa: E402 - bench/, this script's own directory

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, reaped: bool) -> float:
    """utime + stime of pid (and, reaped, of its children it has waited for)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if reaped else 0)
    return ticks / TICK


def agent_pids() -> tuple[int, list[int]]:
    main = int(subprocess.run(["systemctl", "show", "-P", "MainPID", "quilt-agent"], capture_output=True,
                              text=True, check=True).stdout)
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(main)], capture_output=True,
                                               text=True).stdout.split()]
    return main, children


async def measure(seconds: float) -> tuple[float, float]:
    """(agent process, agent and its helpers) CPU in percent of one CPU over `seconds`."""
    main, children = agent_pids()

    def sample() -> tuple[float, float]:
        own = cpu_seconds(main, reaped=False)
        return own, own + sum(cpu_seconds(pid, reaped=True) for pid in children)

    before, t0 = sample(), time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = sample(), time.monotonic() - t0
    return tuple(100 * (b - a) / elapsed for a, b in zip(before, after))  # type: ignore[return-value]


async def phase(client: Client, image: str, count: int, seconds: float, options: dict) -> tuple[float, float]:
    paths = [await client.run_container(f"bench-health-{i}", image, ["/bin/sleep", "3600"], options)
             for i in range(count)]
    await asyncio.sleep(2)  # past the starts
    try:
        return await measure(seconds)
    finally:
        for path in paths:
            await client.remove(path, True)


async def main(count: int, seconds: float, interval: float) -> None:
    async with busybox_client() as (client, image):
        plain = await phase(client, image, count, seconds, {})
        checked = await phase(client, image, count, seconds,
                              {"health_cmd": ["/bin/true"], "health_interval": interval})
        print(f"{count} running containers, {seconds:g} s each, CPU in percent of one core "
              "(agent process / with its fork server, exec helpers and checks):")
        print(f"  no health checks:                  {plain[0]:6.2f} % / {plain[1]:6.2f} %")
        print(f"  a check every {interval:g} s each:          {checked[0]:6.2f} % / {checked[1]:6.2f} %")
        print(f"  per check: {10 * (checked[1] - plain[1]) * interval / count:.2f} ms of CPU")


if __name__ == "__main__":
    hostcheck.refuse_debug_agent("bench/health.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(main(args.containers, args.seconds, args.interval))
