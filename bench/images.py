"""Image import and pull throughput, through the bus, in the test host: `make bench-images`.

Builds an image of about 100 MB compressed from the machine's own files (busybox, /usr/lib/python3.11,
/usr/lib/gcc, /usr/share/locale: real binaries, scripts and message catalogues), as an OCI image of four layers
(umoci), its oci-archive (skopeo), one rootfs .tar.gz of the same tree, and a push of it into docker-registry on
loopback. For each it prints the first import's time and throughput in MB/s of compressed input, and the time of a
second import of the same bytes, which finds every layer in the store and unpacks nothing. The machine's own
`tar -xzf` of the rootfs tarball is printed as the floor to compare with.

Not a test: run it as `python3 tests/testhost.py run --loop-check 0 -- .venv/bin/python bench/images.py`.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quilt_agent.client import Client  # noqa: E402
from tests import imagetools  # noqa: E402
from tests.integration.images.conftest import start_registry, stop  # noqa: E402
import hostcheck  # noqa: E402 - bench/, this script's own directory

SOURCES = ("/usr/lib/python3.11", "/usr/lib/gcc", "/usr/share/locale")
MB = 1e6


def copy_into(source: str) -> imagetools.Step:
    def step(rootfs: Path) -> None:
        target = rootfs / source.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", source, str(target)], check=True)
    return step


def build(work: Path) -> dict[str, Path]:
    layout = imagetools.oci_layout(work / "layout", "v1", [imagetools.busybox, *map(copy_into, SOURCES)],
                                   ["--config.cmd=/bin/true"])
    imagetools.copy(f"oci:{layout}:v1", f"oci-archive:{work}/image-oci.tar")
    rootfs = work / "rootfs"
    imagetools.run("umoci", "unpack", "--image", f"{layout}:v1", str(work / "bundle"))
    shutil.move(str(work / "bundle/rootfs"), rootfs)
    subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-czf", str(work / "rootfs.tar.gz"), "."],
                   check=True)
    return {"oci-archive (4 layers)": work / "image-oci.tar", "rootfs .tar.gz (1 layer)": work / "rootfs.tar.gz",
            "layout": layout, "rootfs": rootfs}


def compressed_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


async def forget(client: Client) -> None:
    for entry in await client.list_images():
        await client.remove_image(entry.id, True)
    await client.prune_images()


async def measure(client: Client, name: str, size: int, call: Callable[[], Awaitable[object]],
                  runs: int) -> tuple[str, float, float, float]:
    """(name, first import's median seconds, its MB/s, second import's median seconds)."""
    firsts, seconds = [], []
    for _ in range(runs):
        await forget(client)
        started = time.perf_counter()
        await call()
        firsts.append(time.perf_counter() - started)
        started = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - started)
    first = statistics.median(firsts)
    return name, first, size / MB / first, statistics.median(seconds)


async def main(runs: int) -> None:
    subprocess.run(["systemctl", "start", "quilt-agent"], check=True)
    work = Path(tempfile.mkdtemp(prefix="quilt-bench-images-", dir="/tmp"))  # a tmpfs in the test host
    try:
        built = build(work)
        (work / "registry").mkdir()
        registry = start_registry(work / "registry")
        try:
            ref = registry.push(f"oci:{built['layout']}:v1", "bench/image:v1")
            blobs = imagetools.manifest_of(built["layout"], "v1")[1]["layers"]
            pulled_size = sum(layer["size"] for layer in blobs)
            rows = []
            async with Client() as client:
                for label in ("oci-archive (4 layers)", "rootfs .tar.gz (1 layer)"):
                    path = built[label]
                    rows.append(await measure(client, f"import {label}", compressed_size(path),
                                              lambda p=path: client.import_image(str(p)), runs))
                rows.append(await measure(client, "pull from docker-registry (4 layers)", pulled_size,
                                          lambda: client.pull_image(ref), runs))
                await forget(client)
        finally:
            stop(registry.process)
        floor = work / "floor"
        floor.mkdir()
        started = time.perf_counter()
        subprocess.run(["tar", "-C", str(floor), "-xzf", str(built["rootfs .tar.gz (1 layer)"])], check=True)
        tar_time = time.perf_counter() - started
        tar_size = compressed_size(built["rootfs .tar.gz (1 layer)"])
        unpacked = sum(p.stat().st_size for p in built["rootfs"].rglob("*") if p.is_file() and not p.is_symlink())
        print(f"image: {pulled_size / MB:.1f} MB compressed (gzip layers), {unpacked / MB:.1f} MB unpacked; "
              f"median of {runs} runs")
        print(f"{'':40} {'first':>9} {'MB/s':>8} {'second':>10}")
        for name, first, rate, second in rows:
            print(f"{name:40} {first:8.2f}s {rate:8.1f} {second * 1e3:8.1f}ms")
        print(f"{'tar -xzf of the rootfs tarball (floor)':40} {tar_time:8.2f}s {tar_size / MB / tar_time:8.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    hostcheck.refuse_debug_agent("bench/images.py")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args().runs))
