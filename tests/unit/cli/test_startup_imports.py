"""What each common quiltctl command imports before its first bus message: nothing it does not need.

Each command is run as a user runs it (a fresh interpreter, `python -X importtime`) against a bus address where
nobody listens, so it imports everything up to its first call and then fails; the modules it imported are read
from sys.modules at its exit (-X importtime's report, which bench/startup.py sums, leaves out a module imported
through importlib.import_module, as main.py imports each command's). A command that imports asyncio, dbus-fast or rich pays tens of milliseconds before
it sends anything; the lists below say what each may not import, and why.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[3]

# Never for a one-shot command: the event loop and the async bus library (~70 ms together), rich (~25 ms), the
# async client, and anything of the agent's own.
ONE_SHOT = {"asyncio", "dbus_fast", "rich", "quilt_agent.client", "concurrent.futures", "pyroute2", "aiosqlite",
            "systemd", "quilt_agent.manager", "quilt_agent.store"}
# What only creating a container needs: its flags' parsers, host files (a tar of an image file), the Go templates.
CREATE_ONLY = {"tarfile", "quilt_agent.filetree", "quilt_agent.health", "quilt_agent.cli.containers",
               "quilt_agent.cli.runflags"}
TEMPLATES = {"quilt_agent.cli.template", "quilt_agent.cli.items"}
# The commands cli/quick.py runs without click: not click either, nor the standard library's heavier modules (each
# of which costs milliseconds here: typing, dataclasses, socket, threading, re, enum, json where no JSON is
# written), nor the reply records (dataclasses), nor the agent's error classes (the names quiltctl reacts to are
# spelled in bus/names.py; the table of them all is imported to print an error reply, not before).
QUICK = ONE_SHOT | CREATE_ONLY | TEMPLATES | {"click", "typing", "dataclasses", "socket", "threading", "re", "enum",
                                             "datetime", "shlex", "signal", "quilt_agent.replies",
                                             "quilt_agent.cli.main", "quilt_agent.cli.parsing", "quilt_agent.errors",
                                             "quilt_agent.bus.error_names"}

# run on that path: its flags' own modules (click-free) and the log lines it prints, not an image file's tar nor
# the listings' formatting.
QUICK_RUN = (QUICK - {"quilt_agent.cli.runflags", "quilt_agent.cli.parsing", "quilt_agent.replies"}) | {
    "json", "tarfile", "quilt_agent.filetree", "quilt_agent.cli.listing"}

CASES: dict[str, tuple[list[str], set[str]]] = {
    "--version": (["--version"], QUICK | {"json", "quilt_agent.wire", "quilt_agent.api"}),
    "ps": (["ps", "-a"], QUICK | {"json"}),
    "ps -q": (["ps", "-q"], QUICK | {"json"}),
    "ps --filter status": (["ps", "--filter", "status=exited"], QUICK | {"json"}),
    "inspect": (["inspect", "web"], QUICK),
    "status": (["status", "web"], QUICK | {"json"}),
    "stop": (["stop", "web"], QUICK | {"json"}),
    "stop -t 0": (["stop", "-t", "0", "web"], QUICK | {"json"}),
    "start": (["start", "web"], QUICK | {"json"}),
    "rm -f": (["rm", "-f", "web"], QUICK | {"json"}),
    "kill": (["kill", "web"], ONE_SHOT | CREATE_ONLY | TEMPLATES),
    "wait": (["wait", "web"], QUICK | {"json"}),
    "logs": (["logs", "web"], QUICK - {"quilt_agent.replies"} | {"json"}),
    "exec": (["exec", "web", "true"], QUICK | {"json"}),
    "exec -i": (["exec", "-i", "-w", "/srv", "web", "--", "sh", "-c", "true"], QUICK | {"json"}),
    "run -d": (["run", "-d", "busybox", "true"], QUICK_RUN),
    "run --rm": (["run", "--rm", "--network", "none", "busybox", "true"], QUICK_RUN),
    "run -e": (["run", "-e", "A=1", "busybox", "true"], ONE_SHOT | TEMPLATES | {"tarfile", "quilt_agent.filetree"}),
    "images": (["images"], ONE_SHOT | CREATE_ONLY | TEMPLATES),
    "network ls": (["network", "ls"], ONE_SHOT | CREATE_ONLY | TEMPLATES),
    "volume ls": (["volume", "ls"], ONE_SHOT | CREATE_ONLY | TEMPLATES),
}


def imported_by(args: list[str], tmp_path: Path) -> set[str]:
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus", "PYTHONPATH": str(PROJECT)}
    listing = tmp_path / "modules"
    # As the package's wrapper runs it (debian/bin/quiltctl): without the site module, the libraries' directory
    # put on the path by hand; so what site itself imports (a .pth file's imports) is not taken for quiltctl's.
    libraries = sysconfig.get_paths()["purelib"]
    # The listing is written at the exit: by atexit after click, and before the quick path's os._exit, which
    # skips atexit.
    code = (f"import atexit, sys\n"
            f"def listing(): open({str(listing)!r}, 'w').write(' '.join(sys.modules))\n"
            f"atexit.register(listing)\n"
            f"sys.path.append({libraries!r})\n"
            f"sys.argv = ['quiltctl', *{args!r}]\n"
            f"from quilt_agent.cli import quick\n"
            f"exit_now = quick._exit_now\n"
            f"quick._exit_now = lambda code: (listing(), exit_now(code))\n"
            f"quick.main()\n")
    result = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", code], capture_output=True, text=True,
                            env=env, stdin=subprocess.DEVNULL, cwd=tmp_path, timeout=60)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    # It ran to its first call and failed there, with the one-line message: not earlier, on a usage error.
    assert result.returncode in (0, 125), (result.returncode, errors)
    return set(listing.read_text().split())


@pytest.mark.parametrize("name", CASES)
def test_a_common_command_imports_only_what_it_needs(name: str, tmp_path: Path) -> None:
    args, forbidden = CASES[name]
    modules = imported_by(args, tmp_path)
    found = {m for m in modules if m in forbidden or m.split(".")[0] in forbidden}
    assert not found, f"quiltctl {' '.join(args)} imports {sorted(found)}"


def test_a_command_line_the_quick_path_leaves_to_click_imports_click(tmp_path: Path) -> None:
    """The check can fail: `ps -aq` (combined short flags) goes through click."""
    assert "click" in imported_by(["ps", "-aq"], tmp_path)


def test_the_check_sees_what_a_streaming_command_imports(tmp_path: Path) -> None:
    """The same report for `events`, which needs the loop: the check can fail."""
    assert {"asyncio", "dbus_fast"} <= imported_by(["events"], tmp_path)
