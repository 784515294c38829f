"""Restart policies across a reboot: two test hosts, one after the other, on the same /var/lib/quilt.

The first host (tests/testhost.py run --state DIR) runs a container of each policy and has a user stop two of
them; then it ends, and its processes die with it, as at a power cut. The second host boots on the same DIR:
its quilt-restart.service (enabled, as the package enables it) asks the agent to start what the boot brings
back. This module is also the scenario run inside each host (`python tests/host/test_reboot.py first|second`):
it asserts nothing there, it prints what it saw as one JSON object on stdout, and the test judges it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
TESTHOST = PROJECT / "tests/testhost.py"
PYTHON = "/usr/bin/python3"  # as the Makefile runs testhost.py: it needs no venv
IMAGE = "/tmp/busybox.tar"  # the first host's own /tmp: gone at the reboot, as the image was imported

# name: (--restart, stopped by a user in the first host)
CONTAINERS = {
    "always": ("always", False),
    "unless": ("unless-stopped", False),
    "unless-stopped-by-user": ("unless-stopped", True),
    "always-stopped": ("always", True),
    "on-failure": ("on-failure", False),
    "plain": (None, False),
}
BACK_AT_BOOT = ("always", "unless", "always-stopped")
PROPERTIES = ("Id", "State", "RestartPolicy", "StoppedByUser", "RestartCount", "Restarting", "MainPID", "StartedAt",
              "FinishedAt", "ExitCode", "FailureReason")
RESTART_UNIT = "quilt-restart.service"
UNIT_DONE_TIMEOUT = 30.0


# --- inside the test hosts -----------------------------------------------------------------------


def run(*argv: str, timeout: float = 120) -> dict:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return {"argv": list(argv), "rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr}


def containers() -> dict:
    """The properties of every container of CONTAINERS, by name; a failed inspect as its command's result."""
    out = run("quiltctl", "inspect", *CONTAINERS)
    if out["rc"] != 0:
        return {"inspect": out}
    return {props["Name"]: {p: props.get(p) for p in PROPERTIES} for props in json.loads(out["stdout"])}


def process(pid: int) -> dict | None:
    if not pid:
        return None
    try:
        return {"pid": pid, "cmdline": Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()}
    except OSError:
        return {"pid": pid, "gone": True}


def unit(name: str) -> dict:
    props = ("LoadState", "ActiveState", "Result", "ExecMainStatus", "ExecMainExitTimestampMonotonic")
    out = run("systemctl", "show", name, *(f"--property={p}" for p in props))["stdout"]
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def restart_unit_done() -> dict:
    """quilt-restart.service once its run of this boot has ended (its main process exited), or as it is at the
    deadline."""
    deadline = time.monotonic() + UNIT_DONE_TIMEOUT
    while True:
        seen = unit(RESTART_UNIT)
        ended = seen.get("ExecMainExitTimestampMonotonic", "0") not in ("", "0")
        if (ended and seen.get("ActiveState") in ("inactive", "failed")) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def journal() -> list[str]:
    return run("journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-u", "quilt-agent",
               "-u", RESTART_UNIT)["stdout"].splitlines()


def first_boot() -> dict:
    seen: dict = {"steps": [run(str(PROJECT / "scripts/busybox-rootfs.sh"), IMAGE)]}
    for name, (policy, _stopped) in CONTAINERS.items():
        restart = ["--restart", policy] if policy else []
        seen["steps"].append(run("quiltctl", "run", "-d", "--network", "none", "--name", name, *restart, IMAGE,
                                 "--", "sleep", "3600"))
    seen["running"] = containers()
    stopped = [name for name, (_policy, by_user) in CONTAINERS.items() if by_user]
    seen["steps"].append(run("quiltctl", "stop", "-t", "0", *stopped))
    seen["containers"] = containers()
    seen["restart_unit"] = unit(RESTART_UNIT)
    return seen


def second_boot() -> dict:
    seen: dict = {"restart_unit": restart_unit_done()}
    seen["enabled"] = run("systemctl", "is-enabled", RESTART_UNIT)["stdout"].strip()
    seen["containers"] = containers()
    seen["processes"] = {name: process(c.get("MainPID", 0)) for name, c in seen["containers"].items()
                         if isinstance(c, dict) and "MainPID" in c}
    seen["journal"] = journal()
    return seen


# --- on the machine ------------------------------------------------------------------------------


def boot_and_run(name: str, state: Path, step: str) -> dict:
    result = subprocess.run(
        [PYTHON, str(TESTHOST), "run", "--name", name, "--state", str(state), "--",
         str(PROJECT / ".venv/bin/python"), str(Path(__file__).resolve()), step],
        cwd=PROJECT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(next((line for line in result.stderr.splitlines() if " booted in " in line), "(no boot line)"))
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.timeout(240)
def test_a_reboot_starts_always_and_unless_stopped_containers_and_records_the_others_exits(tmp_path: Path) -> None:
    state = tmp_path / "var-lib-quilt"

    first = boot_and_run(f"first{os.getpid()}", state, "first")

    for step in first["steps"]:
        assert step["rc"] == 0, step
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    before = first["containers"]
    assert set(before) == set(CONTAINERS), before
    for name, (policy, by_user) in CONTAINERS.items():
        assert first["running"][name]["State"] == "running", first["running"][name]
        assert before[name]["RestartPolicy"] == (policy or "no")
        assert (before[name]["State"], before[name]["StoppedByUser"]) == (
            ("exited", True) if by_user else ("running", False)), before[name]

    second = boot_and_run(f"second{os.getpid()}", state, "second")

    log = "\n".join(second["journal"])
    unit_seen = second["restart_unit"]
    # A oneshot that never ran is inactive with Result=success too: its main process must have exited this boot.
    assert unit_seen["ExecMainExitTimestampMonotonic"] not in ("", "0"), (unit_seen, log)
    assert (unit_seen["ActiveState"], unit_seen["Result"], unit_seen["ExecMainStatus"]) == (
        "inactive", "success", "0"), (unit_seen, log)
    assert second["enabled"] == "enabled"
    after = second["containers"]
    assert set(after) == set(CONTAINERS), (after, log)
    for name in CONTAINERS:
        was, now = first["running"][name], after[name]
        assert now["Id"] == was["Id"], (name, now)
        assert now["Restarting"] is False, (name, now, log)
        if name in BACK_AT_BOOT:
            assert now["State"] == "running", (name, now, log)
            # A process of the second host's: a new start, not the first host's record.
            assert now["MainPID"] and now["MainPID"] != was["MainPID"], (name, now, was)
            assert now["StartedAt"] > was["StartedAt"], (name, now, was)
            assert second["processes"][name] == {"pid": now["MainPID"], "cmdline": "sleep 3600"}, (name, second)
        else:
            assert (now["State"], now["MainPID"]) == ("exited", 0), (name, now, log)
            assert now["FinishedAt"] > was["StartedAt"], (name, now, was)
    for name in ("unless-stopped-by-user",):
        # A user's stop is kept across the boot, with the exit it recorded.
        assert after[name]["StoppedByUser"] is True
        assert (after[name]["ExitCode"], after[name]["FinishedAt"]) == (
            before[name]["ExitCode"], before[name]["FinishedAt"]), (after[name], before[name])
    for name in ("on-failure", "plain"):
        # Their monitors died with the first host, leaving no exit status: the boot records it as unknown.
        assert after[name]["ExitCode"] == -1 and after[name]["FailureReason"], (name, after[name])
        assert after[name]["FinishedAt"] > before[name]["StartedAt"]
    assert "not started at boot" not in log, log


if __name__ == "__main__":
    steps = {"first": first_boot, "second": second_boot}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        sys.exit(f"usage: {sys.argv[0]} first|second (inside a test host; tests/host/test_reboot.py runs them)")
    print(json.dumps(steps[sys.argv[1]]()))
