"""First and cached start of a container with setup steps, beside a plain run of the same image: `make bench-setup`.

The image is the setup-commands test image (tests/setupimage.py: Debian bookworm minbase with pip, npm and ruby,
built outside the test host, which has no network), imported once. The package index is tests/packageindex.py's,
served by `python3 -m http.server` on the test host's side of the Quilt network, so pip installs from it over the
container network exactly as from a mirror. Each sample is RunContainer to the main command's exit (Wait), through
the bus from a client already connected, and the rows are interleaved in every round:

    plain            the image, no setup, starting the same interpreters as the command below
    first start      with a setup list and no cached result yet (the managers run, then the result is kept), and
                     a command that uses what they installed
    cached start     the same image and setup list again: starts from the cached result, runs no step
    no cache         the same with setup_cache false: the managers run at each start, nothing is kept

for two setup lists: `pip: quilt-hello` (then `python3 -c 'import quilt_hello'`), and pip, npm and gem installs of
the index's packages (then their three commands).

Before each round the cached result is removed (RemoveImage), so every first start is one. Each cached start is
checked to have started from the cached result (SetupImage), and the index's requests are counted per start. Raw
samples go to bench/results/setup.json; `--report FILE` prints the table again. A benchmark, not a test: run it as
`python3 tests/testhost.py run --loop-check 0 -- .venv/bin/python bench/setup.py` after `python3 tests/setupimage.py build`.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from bench.peers import machine  # noqa: E402
from quilt_agent.client import Client  # noqa: E402
from tests import packageindex, setupimage  # noqa: E402
import hostcheck  # noqa: E402 - bench/, this script's own directory

DEFAULT_NETWORK = "quilt"


def setups(server: packageindex.PackageServer) -> dict[str, tuple[list[str], list[str], list[str]]]:
    """Each measured setup list, the main command that uses what it installed, and the plain run's command: the
    same interpreters started, without the packages."""
    return {
        "pip": ([f"pip: {packageindex.PIP_NAME}"], ["python3", "-c", f"import {packageindex.PIP_MODULE}"],
                ["python3", "-c", "import sys"]),
        "pip+npm+gem": ([f"pip: {packageindex.PIP_NAME}", f"npm: {packageindex.NPM_NAME}",
                         f"gem: {server.gem_source()} {packageindex.GEM_NAME}"],
                        ["/bin/sh", "-c", f"{packageindex.PIP_SCRIPT} && {packageindex.NPM_BIN} && "
                                          f"{packageindex.GEM_BIN}"],
                        ["/bin/sh", "-c", "python3 -c 'import sys' && node -e 0 && ruby -e 0"]),
    }


def rows_of(kind: str) -> tuple[str, str, str, str]:
    return f"{kind}: plain", f"{kind}: first start", f"{kind}: cached start", f"{kind}: no cache"


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def gateway(client: Client) -> str:
    """The host's address on the default network, which containers reach the index at."""
    for entry in await client.list_networks():
        if entry.name == DEFAULT_NETWORK:
            return str((await client.network_properties(entry.path))["Gateway"])
    return "10.89.0.1"


async def cache_images(client: Client) -> list[str]:
    """Ids of the cached setup results (images with SetupBase)."""
    found = []
    for entry in await client.list_images():
        props = await client.image_properties(entry.path)
        if props.get("SetupBase") and props["Id"] not in found:
            found.append(props["Id"])
    return found


async def one(client: Client, name: str, image: str, command: list[str], options: dict[str, Any]
              ) -> tuple[float, str, list[str]]:
    """Run to exit: (seconds, the SetupImage property, the setup stream's lines). The container is removed."""
    started = time.perf_counter()
    path = await client.run_container(name, image, command, options)
    code = await client.wait(path)
    elapsed = time.perf_counter() - started
    props = await client.properties(path)
    if code != 0:
        logs = await client.get_logs(path, {})
        raise RuntimeError(f"{name} exited {code} ({props.get('FailureReason', '')}): "
                           + " | ".join(line.text for line in logs[-10:]))
    setup_lines = [line.text for line in await client.get_logs(path, {"setup": True})] if options.get("setup") else []
    await client.remove(path)
    return elapsed, str(props.get("SetupImage", "")), setup_lines


async def measure(runs: int, warmup: int, image_tar: Path, work: Path) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}
    checks: dict[str, Any] = {}
    async with Client() as client:
        started = time.perf_counter()
        image = str(await client.import_image(str(image_tar), "quilt-bench/setup:latest"))
        image = str((await client.image_properties(image))["Id"])
        import_seconds = time.perf_counter() - started
        server = packageindex.serve(work / "index", await gateway(client))
        try:
            env = server.env()
            lists = setups(server)
            for kind in lists:
                samples.update({row: [] for row in rows_of(kind)})
                checks[kind] = {"first_start_index_requests": [], "cached_start_index_requests": [],
                                "cached_start_setup_lines": []}
            for i in range(warmup + runs):
                for cached in await cache_images(client):
                    await client.remove_image(cached, True)
                row: dict[str, float] = {}
                for kind, (steps, command, plain_command) in lists.items():
                    plain, first, cached_row, no_cache = rows_of(kind)
                    row[plain], _, _ = await one(client, f"setup-plain-{i}", image, plain_command, {"env": env})
                    with_setup = {"env": env, "setup": steps}
                    before = len(server.requests())
                    row[first], first_image, _ = await one(client, f"setup-first-{i}", image, command, with_setup)
                    first_requests = len(server.requests()) - before
                    before = len(server.requests())
                    row[cached_row], cached_image, lines = await one(client, f"setup-cached-{i}", image, command,
                                                                     with_setup)
                    cached_requests = len(server.requests()) - before
                    row[no_cache], _, _ = await one(client, f"setup-nocache-{i}", image, command,
                                                    {**with_setup, "setup_cache": False})
                    if not cached_image or first_image:
                        raise RuntimeError(f"round {i}, {kind}: the first start used {first_image or 'no'} cached "
                                           f"result, the second {cached_image or 'none'}: not what is measured")
                    if i >= warmup:
                        checks[kind]["first_start_index_requests"].append(first_requests)
                        checks[kind]["cached_start_index_requests"].append(cached_requests)
                        checks[kind]["cached_start_setup_lines"].append(lines)
                if i >= warmup:
                    for key, value in row.items():
                        samples[key].append(value)
            for cached in await cache_images(client):
                await client.remove_image(cached, True)
            await client.remove_image(image, True)
            await client.prune_images()
        finally:
            server.stop()
    setup_lists = {kind: steps for kind, (steps, _, _) in lists.items()}
    commands = {kind: {"with setup": command, "plain": plain} for kind, (_, command, plain) in lists.items()}
    return {"samples": samples, "checks": checks, "import_seconds": import_seconds, "setups": setup_lists,
            "commands": commands}


def report(result: dict[str, Any]) -> str:
    info = result["machine"]
    rows = result["rows"]
    lines = [
        f"{result['date']}: {info['cores']} cores ({info['cpu']}), Linux {info['kernel']}, {info['cgroups']}, "
        f"{info['systemd']}; load average {result['load_before'][0]:.1f} at the start, "
        f"{result['load_after'][0]:.1f} at the end",
        f"image: {result['image']} ({result['image_mb']:.0f} MB tar, imported in {result['import_seconds']:.1f} s); "
        f"n={next(iter(rows.values()))['n']} per row, interleaved",
        *(f"{kind}: {' | '.join(steps)}" for kind, steps in result["setups"].items()),
        "",
        f"{'RunContainer to the main command exit':40} {'median':>10} {'p95':>10} {'vs plain':>9}",
    ]
    for kind in result["setups"]:
        plain = rows[rows_of(kind)[0]]["median"]
        for row in rows_of(kind):
            r = rows[row]
            lines.append(f"{row:40} {r['median'] * 1e3:8.0f} ms {r['p95'] * 1e3:7.0f} ms "
                         f"{r['median'] / plain:8.2f}x")
    for kind in result["setups"]:
        plain, first, cached, _ = (rows[r]["median"] for r in rows_of(kind))
        checks = result["checks"][kind]
        lines.append(f"{kind}: cached / first start {cached / first:.2f} (saves {(first - cached) * 1e3:.0f} ms), "
                     f"cached - plain {(cached - plain) * 1e3:+.0f} ms; index requests per first start "
                     f"{sorted(set(checks['first_start_index_requests']))}, per cached start "
                     f"{sorted(set(checks['cached_start_index_requests']))}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, default=PROJECT / "bench/results/setup.json")
    parser.add_argument("--report", type=Path, default=None, help="Print the table of a saved result and exit.")
    args = parser.parse_args()
    if args.report is not None:
        print(report(json.loads(args.report.read_text())))
        return
    image_tar = setupimage.path()
    if not image_tar.exists():
        sys.exit(f"bench/setup.py: no {image_tar}: build it first, outside the test host (it needs the network): "
                 f"python3 tests/setupimage.py build")
    subprocess.run(["systemctl", "start", "quilt-agent"], check=True)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="quilt-bench-setup-", dir="/tmp"))  # a tmpfs in the test host
    try:
        measured = asyncio.run(measure(args.runs, args.warmup, image_tar, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = {row: {"n": len(s), "median": statistics.median(s), "p95": p95(s), "samples": [round(x, 6) for x in s]}
            for row, s in measured["samples"].items()}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "load_before": load_before, "load_after": os.getloadavg(),
              "image": image_tar.name, "image_mb": image_tar.stat().st_size / 1e6,
              "import_seconds": measured["import_seconds"], "setups": measured["setups"],
              "commands": measured["commands"], "rows": rows, "checks": measured["checks"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"raw numbers: {args.out.relative_to(PROJECT) if args.out.is_relative_to(PROJECT) else args.out}")


if __name__ == "__main__":
    hostcheck.refuse_debug_agent("bench/setup.py")
    main()
