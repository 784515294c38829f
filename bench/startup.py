"""quiltctl's start-up per command: its wall time up to its first bus call, beside a bare interpreter's.

Each command runs as the package runs it (/usr/bin/python3 -IS, byte-compiled modules) against a bus address where
nobody listens, so it stops at its first call: what is measured is everything quiltctl does before it sends a
message. The modules each command may not import are tests/unit/cli/test_startup_imports.py's; this says what the
rest costs. Usage: python3 bench/startup.py [--runs N]
"""
from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from tests.unit.cli.test_startup_imports import CASES  # noqa: E402 - the same commands as the import test

PYTHON = "/usr/bin/python3"


def site_packages() -> str:
    """The venv's libraries (click), after the checkout, as the package's wrapper puts its private directory."""
    out = subprocess.run([str(PROJECT / ".venv/bin/python"), "-c", "import click, os; "
                          "print(os.path.dirname(os.path.dirname(click.__file__)))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def one(args: list[str], directory: str, libs: str) -> float:
    """The wall seconds of one run."""
    code = (f"import sys; sys.path[:0] = [{str(PROJECT)!r}]; sys.path.append({libs!r}); "
            f"sys.argv = ['quiltctl', *{args!r}]; "
            "from quilt_agent.cli.quick import main; main()")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={directory}/none"}
    started = time.perf_counter()
    subprocess.run([PYTHON, "-IS", "-c", code], capture_output=True, env=env, cwd=directory, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    compileall.compile_dir(str(PROJECT / "quilt_agent"), quiet=1)
    libs = site_packages()
    with tempfile.TemporaryDirectory() as directory:
        started = []
        for _ in range(args.runs):
            t = time.perf_counter()
            subprocess.run([PYTHON, "-IS", "-c", "pass"], check=True)
            started.append(time.perf_counter() - t)
        bare = statistics.median(started)
        print(f"{'command':28s} {'median':>9s}")
        print(f"{'(python3 -IS -c pass)':28s} {bare * 1000:6.1f} ms")
        for name, (command, _) in CASES.items():
            walls = [one(command, directory, libs) for _ in range(args.runs)]
            print(f"{'quiltctl ' + name:28s} {statistics.median(walls) * 1000:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
