#!/usr/bin/env python3
"""What quilt-generator costs a boot or a daemon-reload: its run time with 100 container files (80 .container,
10 .network, 10 .volume, a few keys each), against no file at all (Python's start and the generator's imports)
and against Python starting and doing nothing.

It only reads and writes files in the directory given, so it runs anywhere:
    .venv/bin/python bench/generator.py .scratch/bench-generator [--runs 15] [--files 100]
Each run is a fresh process, `quilt-generator NORMAL EARLY LATE` with QUILT_UNIT_DIRS, as systemd starts it; the
figure is the median of the runs (wall time). A benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONTAINER = """\
[Unit]
Description=Service {i}
After=net{net}.network

[Container]
Image=registry.example/app:{i}
ContainerName=app{i}
Exec=/usr/bin/app --port 80{i:02d} --name "app {i}"
Environment=MODE=production "GREETING=hello world" INDEX={i}
EnvironmentFile=-/etc/default/app{i}
PublishPort={port}:80
Network=net{net}.network
NetworkAlias=app{i}
Volume=data{net}.volume:/data:ro
Volume=/srv/app{i}:/srv
Memory=256M
CPUQuota=50%
PidsLimit=200
HealthCmd=wget -q -O- http://localhost/
HealthInterval=30s
Notify=healthy
Label=team=web tier=front
StopTimeout=20

[Service]
Restart=on-failure

[Install]
WantedBy=multi-user.target
"""
NETWORK = "[Network]\nSubnet=10.{n}.0.0/24\nInternal=no\n"
VOLUME = '[Volume]\nLabel=backup=daily "owner=team {n}"\n'


def write_files(directory: Path, count: int) -> None:
    networks = max(1, count // 10)
    volumes = networks
    for n in range(networks):
        (directory / f"net{n}.network").write_text(NETWORK.format(n=100 + n))
    for n in range(volumes):
        (directory / f"data{n}.volume").write_text(VOLUME.format(n=n))
    for i in range(count - networks - volumes):
        (directory / f"app{i}.container").write_text(CONTAINER.format(i=i, net=i % networks, port=10000 + i))


def generator_command() -> list[str]:
    script = Path(sys.executable).parent / "quilt-generator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "quilt_agent.generator"]


def timed(argv: list[str], env: dict[str, str], out: Path | None, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0 or done.stderr:
            sys.exit(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a directory of its own to write in (emptied first)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--files", type=int, default=100)
    args = parser.parse_args()
    base = args.directory.resolve()
    shutil.rmtree(base, ignore_errors=True)
    units, empty, out = base / "units", base / "empty", base / "out"
    for d in (units, empty, out):
        d.mkdir(parents=True)
    write_files(units, args.files)
    command = generator_command()
    argv = [*command, str(out), str(base / "early"), str(base / "late")]
    # Byte-compiled, as the package is at install (py3compile): the first run below writes what is missing.
    env = {k: v for k, v in os.environ.items() if k not in ("QUILT_UNIT_DIRS", "PYTHONDONTWRITEBYTECODE")}
    timed(argv, {**env, "QUILT_UNIT_DIRS": str(units)}, out, 1)

    python = timed([sys.executable, "-c", "pass"], env, None, args.runs)
    nothing = timed(argv, {**env, "QUILT_UNIT_DIRS": str(empty)}, out, args.runs)
    full = timed(argv, {**env, "QUILT_UNIT_DIRS": str(units)}, out, args.runs)
    made = sorted(p.name for p in out.iterdir())
    services = [m for m in made if m.endswith(".service")]
    assert len(services) == args.files, f"{len(services)} services for {args.files} files"

    result = {
        "files": args.files, "runs": args.runs, "command": " ".join(command),
        "python_pass_ms": round(statistics.median(python) * 1000, 1),
        "no_files_ms": round(statistics.median(nothing) * 1000, 1),
        "files_ms": round(statistics.median(full) * 1000, 1),
        "files_min_ms": round(min(full) * 1000, 1),
        "per_file_ms": round((statistics.median(full) - statistics.median(nothing)) * 1000 / args.files, 2),
    }
    print(f"quilt-generator, {args.files} files ({len(services)} services, "
          f"{sum(1 for _ in (out / 'multi-user.target.wants').iterdir())} wants links), median of {args.runs} runs:")
    print(f"  python -c pass         {result['python_pass_ms']:7.1f} ms")
    print(f"  no files               {result['no_files_ms']:7.1f} ms   (start and imports)")
    print(f"  {args.files} files              {result['files_ms']:7.1f} ms   (min {result['files_min_ms']} ms; "
          f"{result['per_file_ms']} ms a file)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
