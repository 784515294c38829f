#!/usr/bin/env python3
"""What networking costs: run-to-exit with and without a network, and container-to-container throughput.

Run inside the test host:
    make bench-network        or        python3 tests/testhost.py run --loop-check 0 -- .venv/bin/python bench/network.py
Prints median and p95 of RunContainer -> exit of /bin/true with networks ["none"] (loopback only, the
namespace made by the container's init) and with the default network (namespace, veth, address, route and
names made by the agent's network worker while the container starts), interleaved so both see the same
machine; then iperf3 TCP throughput between two containers on the same bridge and over the host's loopback,
with iperf3 run in the containers' network namespaces (nsenter), so the image needs no iperf3.
A benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lifecycle import busybox_client, time_to_exit  # noqa: E402
from bench.lifecycle import summary as lifecycle_summary  # noqa: E402
from quilt_agent.client import Client  # noqa: E402
import hostcheck  # noqa: E402 - bench/, this script's own directory

SLEEPER = ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]


def summary(label: str, samples: list[float]) -> str:
    return lifecycle_summary(label, samples, width=52)


async def run_to_exit(client: Client, image: str, runs: int, warmup: int) -> dict[str, list[float]]:
    """Interleaved: each round runs one container without a network and one on the default network."""
    samples: dict[str, list[float]] = {"none": [], "quilt": []}
    for i in range(warmup + runs):
        for mode in ("none", "quilt"):
            elapsed = await time_to_exit(client, f"bench-{mode}-{i}", image, {"networks": [mode]})
            if i >= warmup:
                samples[mode].append(elapsed)
    return samples


def iperf(server_ns: list[str], client_ns: list[str], address: str, seconds: int) -> float:
    """Gbit/s of one TCP stream from client to server."""
    server = subprocess.Popen([*server_ns, "iperf3", "-s", "-1", "-B", address], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not subprocess.run([*server_ns, "ss", "-Htln", "sport = :5201"], capture_output=True,
                                 text=True).stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError("the iperf3 server did not start")
            time.sleep(0.02)
        out = subprocess.run([*client_ns, "iperf3", "-J", "-c", address, "-t", str(seconds)], capture_output=True,
                             text=True)
        result = json.loads(out.stdout)
        if "error" in result:
            raise RuntimeError(f"iperf3: {result['error']}")
        return result["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


async def throughput(client: Client, image: str, seconds: int) -> None:
    if shutil.which("iperf3") is None:
        print("iperf3 is not installed: no throughput (make bench-network installs it)")
        return
    a = await client.run_container("bench-iperf-a", image, SLEEPER, {})
    b = await client.run_container("bench-iperf-b", image, SLEEPER, {})
    try:
        a_ns = ["nsenter", f"--net=/run/netns/quilt-{a.rsplit('/', 1)[1]}"]
        b_ns = ["nsenter", f"--net=/run/netns/quilt-{b.rsplit('/', 1)[1]}"]
        a_ip = (await client.properties(a))["Addresses"][0][1]
        c2c = iperf(a_ns, b_ns, a_ip, seconds)
        loopback = iperf([], [], "127.0.0.1", seconds)
        print(f"{'TCP throughput, container to container (bridge)':<52} {c2c:8.2f} Gbit/s   ({seconds} s, 1 stream)")
        print(f"{'TCP throughput, host loopback':<52} {loopback:8.2f} Gbit/s   ({seconds} s, 1 stream)")
    finally:
        for path in (a, b):
            await client.remove(path, True)


async def main(runs: int, seconds: int) -> None:
    async with busybox_client() as (client, image):
        samples = await run_to_exit(client, image, runs, warmup=5)
        print(summary("RunContainer -> exit, /bin/true, networks none", samples["none"]))
        print(summary("RunContainer -> exit, /bin/true, network quilt", samples["quilt"]))
        added = statistics.median(samples["quilt"]) - statistics.median(samples["none"])
        print(f"{'networking adds (difference of the medians)':<52} {added * 1000:8.2f} ms")
        await throughput(client, image, seconds)


if __name__ == "__main__":
    hostcheck.refuse_debug_agent("bench/network.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=5, help="iperf3 duration")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.seconds))
