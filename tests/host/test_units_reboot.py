"""Container files across a reboot: two test hosts, one after the other, on the same /var/lib/quilt and /etc/quilt.

The first host (tests/testhost.py run --state DIR --etc-quilt DIR) imports an image by name and writes three
container files: one whose [Install] section wants it at boot, one without [Install], and one wanted by a target
this boot does not reach. After a daemon-reload it starts the first two by hand; then it ends, and its processes
die with it, as at a power cut. The second host boots on the same directories: its systemd runs the generator at
boot, which makes the services and the wants links again, and the boot starts what they ask for, and nothing
else. This module is also the scenario run inside each host (`python tests/host/test_units_reboot.py
first|second`): it asserts nothing there, it prints what it saw as one JSON object on stdout, and the test judges
it.
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
TARBALL = "/tmp/busybox.tar"  # the first host's own /tmp: gone at the reboot, as the image was imported
IMAGE = "quilt-test/units-reboot-busybox"
UNIT_DIR = Path("/etc/quilt/containers")
GENERATOR_DIR = Path("/run/systemd/generator")
# The test host boots quilt-testhost.target (tests/testhost.py's TARGET), not multi-user.target, whose wants it
# empties: a file wanting multi-user.target would never start there. The generator makes TARGET.wants links for
# whatever target a file names, so the file to be started at boot names the target this host boots, and "off"
# names multi-user.target, which this boot never reaches: wanted, linked, and still not started.
BOOT_TARGET = "quilt-testhost.target"
OTHER_TARGET = "multi-user.target"
# RunInit=true: as PID 1 of its namespace, sleep would ignore a stop's SIGTERM (tests/integration/test_units.py).
BODY = f"[Container]\nImage={IMAGE}\nRunInit=true\nExec=sleep 600\n"
FILES = {
    "boot": BODY + f"\n[Install]\nWantedBy={BOOT_TARGET}\n",
    "manual": BODY,
    "off": BODY + f"\n[Install]\nWantedBy={OTHER_TARGET}\n",
}
STARTED_BY_HAND = ("boot", "manual")
PROPERTIES = ("Id", "State", "Unit", "MainPID", "StartedAt", "ExitCode")
ACTIVE_TIMEOUT = 30.0


# --- inside the test hosts -----------------------------------------------------------------------


def run(*argv: str, timeout: float = 120) -> dict:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return {"argv": list(argv), "rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr}


def container(name: str) -> dict:
    """The container's properties, or its inspect's result when it fails (no such container)."""
    out = run("quiltctl", "inspect", name)
    if out["rc"] != 0:
        return {"inspect": out}
    props = json.loads(out["stdout"])[0]
    return {p: props.get(p) for p in PROPERTIES}


def service(name: str) -> dict:
    props = ("LoadState", "ActiveState", "SubState", "ControlGroup")
    out = run("systemctl", "show", f"{name}.service", *(f"--property={p}" for p in props))["stdout"]
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    seen["is_active"] = run("systemctl", "is-active", f"{name}.service")["stdout"].strip()
    return seen


def descendants(pid: int) -> list[int]:
    """pid and every process under it, as /proc's children lists give them."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return found


def processes(pid: int) -> list[dict]:
    """The container's processes (its main one and those under it): command line and cgroup paths."""
    seen = []
    for p in descendants(pid) if pid else []:
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            cgroups = [line.split(":", 2)[2] for line in Path(f"/proc/{p}/cgroup").read_text().splitlines()]
        except OSError:
            continue
        seen.append({"pid": p, "cmdline": cmdline, "cgroups": cgroups})
    return seen


def is_sleep(process: dict) -> bool:
    """The container's command, `sleep 600`, however the init named it (/usr/bin/sleep, sleep)."""
    words = process["cmdline"].split()
    return len(words) == 2 and os.path.basename(words[0]) == "sleep" and words[1] == "600"


def container_processes(pid: int) -> list[dict]:
    """processes(pid) once the command runs under the container's init, or as they are at the deadline: the
    service is active at READY=1, which may come before the init has started the command."""
    deadline = time.monotonic() + ACTIVE_TIMEOUT
    while True:
        seen = processes(pid)
        if not pid or any(is_sleep(p) for p in seen) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def wait_active(name: str) -> dict:
    """The service once it is active, or as it is at the deadline."""
    deadline = time.monotonic() + ACTIVE_TIMEOUT
    while True:
        seen = service(name)
        if seen["ActiveState"] == "active" or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


def links() -> dict:
    """The wants links the generator made, by target."""
    return {target: sorted(p.name for p in (GENERATOR_DIR / f"{target}.wants").glob("*.service"))
            for target in (BOOT_TARGET, OTHER_TARGET)}


def journal() -> list[str]:
    """The units' and the agent's lines of this boot, then the generator's (journalctl ANDs -t with -u)."""
    units = run("journalctl", "-b", "--no-pager", "-o", "short-monotonic",
                *(f"--unit={name}.service" for name in FILES), "--unit=quilt-agent")
    generator = run("journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-t", "quilt-generator")
    return (units["stdout"] + generator["stdout"]).splitlines()


def first_boot() -> dict:
    seen: dict = {"steps": [run(str(PROJECT / "scripts/busybox-rootfs.sh"), TARBALL),
                            run("quiltctl", "image", "import", "-q", TARBALL, IMAGE)]}
    UNIT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (UNIT_DIR / f"{name}.container").write_text(text)
    seen["steps"].append(run("systemctl", "daemon-reload"))
    seen["steps"].append(run("systemctl", "start", *(f"{name}.service" for name in STARTED_BY_HAND)))
    seen["services"] = {name: service(name) for name in FILES}
    seen["containers"] = {name: container(name) for name in FILES}
    seen["links"] = links()
    return seen


def second_boot() -> dict:
    seen: dict = {"boot": wait_active("boot")}
    seen["services"] = {name: service(name) for name in FILES}
    seen["containers"] = {name: container(name) for name in FILES}
    seen["processes"] = {name: container_processes(c.get("MainPID") or 0) for name, c in seen["containers"].items()}
    seen["links"] = links()
    seen["other_target"] = run("systemctl", "is-active", OTHER_TARGET)["stdout"].strip()
    seen["files"] = sorted(p.name for p in UNIT_DIR.iterdir())
    seen["journal"] = journal()
    return seen


# --- on the machine ------------------------------------------------------------------------------


def boot_and_run(name: str, state: Path, etc_quilt: Path, step: str) -> dict:
    result = subprocess.run(
        [PYTHON, str(TESTHOST), "run", "--name", name, "--state", str(state), "--etc-quilt", str(etc_quilt), "--",
         str(PROJECT / ".venv/bin/python"), str(Path(__file__).resolve()), step],
        cwd=PROJECT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(next((line for line in result.stderr.splitlines() if " booted in " in line), "(no boot line)"))
    return json.loads(result.stdout.splitlines()[-1])


def in_cgroup(process: dict, control_group: str) -> bool:
    """True if one of the process's cgroup paths is the service's cgroup or under it."""
    return any(path == control_group or path.startswith(control_group + "/") for path in process["cgroups"])


@pytest.mark.timeout(240)
def test_a_reboot_starts_the_container_units_wanted_by_the_booted_target_and_no_others(tmp_path: Path) -> None:
    state, etc_quilt = tmp_path / "var-lib-quilt", tmp_path / "etc-quilt"

    first = boot_and_run(f"first{os.getpid()}", state, etc_quilt, "first")

    for step in first["steps"]:
        assert step["rc"] == 0, step
    assert oct(etc_quilt.stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in (etc_quilt / "containers").iterdir()) == [f"{n}.container" for n in sorted(FILES)]
    assert first["links"] == {BOOT_TARGET: ["boot.service"], OTHER_TARGET: ["off.service"]}, first["links"]
    for name in STARTED_BY_HAND:
        assert first["services"][name]["is_active"] == "active", first["services"][name]
        c = first["containers"][name]
        assert (c["State"], c["Unit"]) == ("running", f"{name}.service"), c
    assert first["services"]["off"]["is_active"] == "inactive"
    assert "inspect" in first["containers"]["off"], first["containers"]["off"]  # never started: never made

    second = boot_and_run(f"second{os.getpid()}", state, etc_quilt, "second")

    log = "\n".join(second["journal"])
    assert second["files"] == [f"{n}.container" for n in sorted(FILES)]
    # The second boot's generator made the links again, from the files alone.
    assert second["links"] == {BOOT_TARGET: ["boot.service"], OTHER_TARGET: ["off.service"]}, second["links"]
    services, containers = second["services"], second["containers"]
    assert services["boot"]["is_active"] == "active", (services["boot"], log)
    boot = containers["boot"]
    assert (boot["State"], boot["Unit"]) == ("running", "boot.service"), (boot, log)
    # A process of the second host's: the unit made the container anew from its file at this boot.
    assert boot["Id"] != first["containers"]["boot"]["Id"], (boot, first)
    assert boot["MainPID"] and boot["MainPID"] != first["containers"]["boot"]["MainPID"], (boot, first)
    assert boot["StartedAt"] > first["containers"]["boot"]["StartedAt"], (boot, first)
    procs = second["processes"]["boot"]
    assert [p["pid"] for p in procs][:1] == [boot["MainPID"]] and any(is_sleep(p) for p in procs[1:]), procs
    control_group = services["boot"]["ControlGroup"]
    assert control_group.endswith("/boot.service"), services["boot"]
    assert all(in_cgroup(p, control_group) for p in procs), (control_group, procs)
    # Started by hand in the first host, with nothing asking for it at boot: it stays down.
    assert services["manual"]["is_active"] == "inactive", (services["manual"], log)
    manual = containers["manual"]
    assert manual["State"] != "running" and not manual["MainPID"], (manual, log)
    assert second["processes"]["manual"] == []
    # Wanted by a target this boot does not reach: linked, loaded, not started.
    assert second["other_target"] == "inactive"
    assert (services["off"]["LoadState"], services["off"]["is_active"]) == ("loaded", "inactive"), services["off"]
    assert "inspect" in containers["off"], containers["off"]


if __name__ == "__main__":
    steps = {"first": first_boot, "second": second_boot}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        sys.exit(f"usage: {sys.argv[0]} first|second (inside a test host; tests/host/test_units_reboot.py runs them)")
    print(json.dumps(steps[sys.argv[1]]()))
