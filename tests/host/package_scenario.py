#!/usr/bin/python3
"""The life of the Debian package on one machine, as an admin lives it; run inside a bare test host.

    /usr/bin/python3 tests/host/package_scenario.py FIRST.deb SECOND.deb

Installs FIRST with apt-get, runs a long container and one that exits 7, installs SECOND (a newer version whose
schema has one more migration) over it, removes it, installs FIRST again over the data SECOND migrated (its agent
must refuse the newer database), and purges the package. Asserts nothing: it prints, as one JSON object on stdout,
what it saw at each step, and tests/host/test_package.py judges it. Only the standard library and the installed
package's own commands are used: this is what a machine with nothing but the package has.
"""
from __future__ import annotations

import json
import os
import select
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
DATABASE = Path("/var/lib/quilt/quilt.db")
QUILTCTL = "/usr/bin/quiltctl"


def run(*argv: str, timeout: float = 120) -> dict:
    started = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return {"argv": list(argv), "rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr,
            "seconds": round(time.monotonic() - started, 2)}


def apt(*args: str) -> dict:
    return run("apt-get", "-y", "-q", "--no-install-recommends", "--allow-downgrades", *args, timeout=300)


def unit(name: str) -> dict:
    props = ("LoadState", "ActiveState", "SubState", "Result", "MainPID", "InvocationID", "ExecMainStatus",
             "ActiveEnterTimestampMonotonic")
    out = run("systemctl", "show", name, *(f"--property={p}" for p in props)).get("stdout", "")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def process(pid: int) -> dict | None:
    """A process's identity (its start time makes a reused pid another process)."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return {"pid": pid, "alive": True, "start": stat.rsplit(")", 1)[1].split()[19],
                "cmdline": Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()}
    except (OSError, IndexError):
        return {"pid": pid, "alive": False}


def schema_version() -> int | None:
    try:
        db = sqlite3.connect(f"file:{DATABASE}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return None


def inspect(*names: str) -> dict:
    out = run(QUILTCTL, "inspect", *names)
    if out["rc"] != 0:
        return {"error": out["stderr"].strip()}
    return {c["Name"]: {k: c.get(k) for k in ("Id", "State", "ExitCode", "MainPID", "Unit")}
            for c in json.loads(out["stdout"])}


def installed() -> dict:
    out = run("dpkg-query", "-W", "-f=${Version} ${db:Status-Abbrev}", "quilt-runtime")
    return {"version_status": out["stdout"].strip() if out["rc"] == 0 else None}


def snapshot() -> dict:
    """What runs: the agent, the slice, the containers' records and processes, the database's schema."""
    containers = inspect("long", "done")
    pid = (containers.get("long") or {}).get("MainPID") or 0
    return {
        "agent": unit("quilt-agent.service"),
        "slice": unit("quilt.slice"),
        "long_scope": unit("quilt-long.scope"),
        "containers": containers,
        "long_process": process(int(pid)),
        "schema": schema_version(),
        "agent_version": run(QUILTCTL, "version")["stdout"].strip(),
    }


def completion() -> dict:
    """The installed completion script, and what quiltctl answers it for `quiltctl ima<TAB>` (click's protocol)."""
    try:
        script = Path("/usr/share/bash-completion/completions/quiltctl").read_text()
    except OSError:
        script = ""
    env = {"PATH": os.environ["PATH"], "COMP_WORDS": "quiltctl ima", "COMP_CWORD": "1",
           "_QUILTCTL_COMPLETE": "bash_complete"}
    out = subprocess.run([QUILTCTL], env=env, capture_output=True, text=True, timeout=60)
    return {"registers": "complete -o nosort -F _quiltctl_completion quiltctl" in script,
            "calls": "_QUILTCTL_COMPLETE=bash_complete" in script, "answer": out.stdout.split()}


def journal_cursor() -> str:
    """Where the journal ends now, "" when it is empty. A cursor names one entry, where --since has whole seconds
    and would take in what came just before."""
    out = run("journalctl", "-n", "0", "--show-cursor", "--quiet", "--no-pager")
    for line in out["stdout"].splitlines():
        if line.startswith("-- cursor: "):
            return line.removeprefix("-- cursor: ")
    return ""


UNIT_FIELDS = ("_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT", "COREDUMP_UNIT")  # what `journalctl -u` matches


def journal(cursor: str, wanted: Callable[[str], bool], timeout: float = 30) -> list[str]:
    """The agent's journal lines after cursor, up to the first one wanted. journald stores a message when it gets
    to it, after the command that caused it may have returned: the journal is followed until that line comes or the
    deadline passes, and what came is returned either way for the test to judge (and show).

    The unit is picked here, not with -u: systemd 252's --after-cursor, given a match the cursor's entry does not
    meet, skips the first entry that meets it."""
    argv = ["journalctl", "-o", "json", "--no-pager", "--follow", "--no-tail"]
    if cursor:
        argv.append(f"--after-cursor={cursor}")
    follower = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert follower.stdout is not None
    lines: list[str] = []
    pending = b""
    deadline = time.monotonic() + timeout
    try:
        while not any(wanted(line) for line in lines):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([follower.stdout], [], [], left)[0]:
                break
            chunk = os.read(follower.stdout.fileno(), 65536)
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                entry = json.loads(raw)
                if "quilt-agent.service" not in (entry.get(field) for field in UNIT_FIELDS):
                    continue
                message = entry.get("MESSAGE")
                # journald's JSON gives a message that is not UTF-8 as its bytes.
                lines.append(bytes(message).decode(errors="replace") if isinstance(message, list) else str(message))
    finally:
        follower.kill()
        follower.wait()
    return lines


def main(first: str, second: str) -> dict:
    seen: dict = {}
    seen["install"] = apt("install", first)
    seen["after_install"] = {
        **installed(),
        "agent": unit("quilt-agent.service"),
        "restart_unit": {**unit("quilt-restart.service"),
                         "enabled": run("systemctl", "is-enabled", "quilt-restart.service").get("stdout", "").strip()},
        "files": {p: os.path.exists(p) for p in (
            "/usr/bin/quiltctl", "/usr/bin/quilt-agent", "/lib/systemd/system/quilt-agent.service",
            "/lib/systemd/system/quilt-restart.service",
            "/lib/systemd/system/quilt.slice", "/usr/share/dbus-1/system.d/org.quilt.Runtime.conf",
            "/usr/share/dbus-1/system-services/org.quilt.Runtime.service",
            "/usr/share/dbus-1/interfaces/org.quilt.Runtime.xml",
            "/usr/share/polkit-1/actions/org.quilt.runtime.policy", "/usr/share/man/man1/quiltctl.1.gz",
            "/usr/share/man/man8/quilt-agent.8.gz", "/usr/share/bash-completion/completions/quiltctl",
            "/usr/share/doc/quilt-runtime/README.md", "/lib/systemd/system-generators/quilt-generator",
            "/usr/share/man/man5/quilt.container.5.gz")},
        "completion": completion(),
    }
    if seen["install"]["rc"] != 0:
        return seen

    image = "/var/tmp/busybox.tar"
    seen["image"] = run(str(PROJECT / "scripts/busybox-rootfs.sh"), image)
    seen["run_long"] = run(QUILTCTL, "run", "-d", "--name", "long", image, "--", "sleep", "3600")
    seen["run_done"] = run(QUILTCTL, "run", "-d", "--name", "done", image, "--", "sh", "-c", "exit 7")
    seen["wait_done"] = run(QUILTCTL, "wait", "done")
    seen["before_upgrade"] = snapshot()
    long_pid = (seen["before_upgrade"]["long_process"] or {}).get("pid", 0)

    cursor = journal_cursor()
    seen["upgrade"] = apt("install", second)
    seen["after_upgrade"] = {**installed(), **snapshot(),
                             "journal": journal(cursor, lambda line: "from schema version" in line)}
    seen["ps_after_upgrade"] = run(QUILTCTL, "ps")

    seen["remove"] = apt("remove", "quilt-runtime")
    seen["after_remove"] = {
        **installed(), "agent": unit("quilt-agent.service"), "long_process": process(long_pid),
        "database_kept": DATABASE.exists(), "quiltctl_gone": not os.path.exists(QUILTCTL),
        "state_files": sorted(os.listdir("/var/lib/quilt")),
    }

    # The older package again, over the data the newer one migrated: its agent must refuse the database.
    cursor = journal_cursor()
    seen["downgrade"] = apt("install", first)
    # Started as an admin would (a bus call would wait out dbus's activation timeout for the failure).
    seen["start_after_downgrade"] = run("systemctl", "start", "quilt-agent")
    seen["after_downgrade"] = {**installed(), "agent": unit("quilt-agent.service"), "schema": schema_version(),
                               "long_process": process(long_pid),
                               "journal": journal(cursor, lambda line: "newer" in line and "quilt.db" in line)}

    seen["purge"] = apt("purge", "quilt-runtime")
    seen["after_purge"] = {
        **installed(), "slice": unit("quilt.slice"),
        "long_process": process(long_pid),
        "state_files": sorted(os.listdir("/var/lib/quilt")) if os.path.isdir("/var/lib/quilt") else None,
    }
    return seen


if __name__ == "__main__":
    json.dump(main(sys.argv[1], sys.argv[2]), sys.stdout)
