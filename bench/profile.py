#!/usr/bin/env python3
"""Where Quilt's time goes: py-spy on the agent while a connected client runs /bin/true or execs it.

Run inside the test host (py-spy comes with `make bench`):
    python3 tests/testhost.py run --loop-check 0 -- .venv/bin/python bench/profile.py [--runs 200] [--workload exec]

Prints the client's view of each call (run: RunContainer, Wait until the exit is known, Remove; exec: Exec), the
agent's own phases of each start from the journal ("started container X ... in N ms (fork a, scope b, exec c)"),
and where the agent's threads are busy (py-spy samples: per thread, own time, Quilt's functions with callees).
Writes the collapsed stacks to bench/results/agent-profile.tmp (not kept in git; flamegraph.pl and speedscope
read them).
A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from quilt_agent.client import Client  # noqa: E402
import hostcheck  # noqa: E402 - bench/, this script's own directory

RATE = 500
PHASES = re.compile(r"started container (\S+), init pid \d+, in ([\d.]+) ms \(fork ([\d.]+), scope ([\d.]+), "
                    r"exec ([\d.]+)\)")


def med(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"median {statistics.median(values):6.2f} ms  p90 {p90:6.2f} ms"


async def import_image(tarball: str) -> str:
    """As bench/peers.py does: import once and name the image, or (no ImportImage yet) name the tarball."""
    async with Client() as client:
        try:
            await client.import_image(tarball, "quilt-bench-busybox")
            return "quilt-bench-busybox"
        except Exception:  # noqa: BLE001 - an older agent
            return tarball


async def loop(image: str, runs: int, prefix: str, options: dict) -> dict[str, list[float]]:
    times: dict[str, list[float]] = collections.defaultdict(list)
    async with Client() as client:
        for i in range(runs):
            t0 = time.perf_counter()
            path = await client.run_container(f"{prefix}-{i}", image, ["/bin/true"], options)
            t1 = time.perf_counter()
            await client.wait(path)
            t2 = time.perf_counter()
            await client.remove(path)
            t3 = time.perf_counter()
            times["RunContainer (create + start)"].append((t1 - t0) * 1e3)
            times["Wait (until the exit is known)"].append((t2 - t1) * 1e3)
            times["run to exit (the two above)"].append((t2 - t0) * 1e3)
            times["Remove (untimed in the bench)"].append((t3 - t2) * 1e3)
    return times


IDLE = ("EpollSelector.select", "_worker (concurrent/futures/thread.py:81)", "_connection_worker_thread")


async def exec_loop(image: str, runs: int, prefix: str, options: dict) -> dict[str, list[float]]:
    times: dict[str, list[float]] = collections.defaultdict(list)
    async with Client() as client:
        path = await client.run_container(f"{prefix}-exec", image, ["/bin/sleep", "3600"], options)
        for _ in range(runs):
            t0 = time.perf_counter()
            await client.exec(path, ["/bin/true"])
            times["Exec /bin/true"].append((time.perf_counter() - t0) * 1e3)
        await client.remove(path, True)
    return times


def functions(collapsed: Path, top: int, seconds: float, rate: int) -> str:
    """Busy samples per thread, then per function (own, and with callees: Quilt's own frames), from py-spy."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread", "process")):
            frames.pop(0)  # py-spy --threads: the thread's id; told apart below by what runs in it
        if frames and frames[-1].startswith(IDLE):
            continue  # a thread waiting for work, not working
        n = int(count)
        total += n
        main = any(f.startswith("main (quilt_agent/__main__.py") for f in frames)
        threads["main thread (the event loop)" if main else "worker threads (aiosqlite, to_thread)"] += n
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            if "quilt_agent/" in f:
                incl[f] += n
    out = [f"{total} busy samples at {rate} Hz over {seconds:.1f} s"]
    out += [f"  {100 * n / total:5.1f}%  {t}" for t, n in threads.most_common()]
    out.append("own time (busy samples):")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("Quilt's functions with their callees:")
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    hostcheck.refuse_debug_agent("bench/profile.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--workload", choices=("run", "exec"), default="run",
                        help="run: RunContainer + Wait of /bin/true; exec: Exec of /bin/true in a running container")
    parser.add_argument("--network", default="none",
                        help="the containers' networks option, as bench/peers.py sets it ('' for the default)")
    parser.add_argument("--out", type=Path, default=PROJECT / "bench/results/agent-profile.tmp")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(PROJECT / ".venv/bin/py-spy")
    subprocess.run(["systemctl", "start", "quilt-agent"], check=True)
    agent = int(subprocess.check_output(["systemctl", "show", "-P", "MainPID", "quilt-agent"], text=True))
    with tempfile.TemporaryDirectory() as tmp:
        image = str(Path(tmp) / "busybox.tar")
        subprocess.run([str(PROJECT / "scripts/busybox-rootfs.sh"), image], check=True)
        image = asyncio.run(import_image(image))
        options = {"networks": [args.network]} if args.network else {}
        work = exec_loop if args.workload == "exec" else loop
        asyncio.run(work(image, 10, "warm", options))  # fills caches
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        raw = Path(tmp) / "raw.txt"
        spy = subprocess.Popen([py_spy, "record", "--pid", str(agent), "--rate", str(RATE), "--format", "raw",
                                "--threads", "--output", str(raw), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # py-spy attaches
        started = time.monotonic()
        times = asyncio.run(work(image, args.runs, "prof", options))
        seconds = time.monotonic() - started
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
        journal = subprocess.run(["journalctl", "-u", "quilt-agent", "--since", since, "-o", "cat", "--no-pager"],
                                 capture_output=True, text=True).stdout
        phases: dict[str, list[float]] = collections.defaultdict(list)
        for m in PHASES.finditer(journal):
            if m.group(1).startswith("prof-"):
                for key, value in zip(("start (agent)", "fork", "scope", "exec"), m.groups()[1:]):
                    phases[key].append(float(value))
        print(f"{args.runs} {'execs' if args.workload == 'exec' else 'runs'} of /bin/true from a connected client; "
              f"quilt-agent pid {agent}")
        for key, values in times.items():
            print(f"  {key:<34} {med(values)}")
        if phases:
            print("agent's phases of a start (journal):")
        for key, values in phases.items():
            print(f"  {key:<34} {med(values)}")
        if raw.exists() and raw.stat().st_size:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(raw, args.out)
            print(functions(raw, args.top, seconds, RATE))
            print(f"collapsed stacks: {args.out}")
        else:
            print("py-spy wrote nothing (is it installed? make bench installs it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
