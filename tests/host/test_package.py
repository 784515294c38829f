"""The Debian package over its life on a machine: install, containers, an upgrade while they run, removal, an older
version over newer data, purge. One bare test host (nothing of Quilt installed at boot) lives through all of it
(tests/host/package_scenario.py, inside); the tests here judge what it saw.

The newer package is the one `make deb` builds, repacked with dpkg-deb under a higher version whose store.py has
one more (harmless) migration: the same files, maintainer scripts and dpkg transitions a real upgrade goes through.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
NEWER = f"{VERSION}+test1"
ARCH = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
PRIVATE = Path("usr/share/quilt-runtime")


@pytest.fixture(scope="module")
def deb() -> Path:
    """The package of this tree: `make deb` rebuilds it when a file it is made of changed."""
    subprocess.run(["make", "-s", "-C", str(PROJECT), "deb"], check=True)
    path = PROJECT / f"build/quilt-runtime_{VERSION}_{ARCH}.deb"
    assert path.is_file(), f"make deb did not make {path}"
    return path


def repack_newer(deb: Path, work: Path) -> Path:
    """deb with version NEWER and one more schema migration, as the next release would carry."""
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {NEWER}", control.read_text(), flags=re.M))
    changed = {
        PRIVATE / "quilt_agent/store.py": lambda text: text + (
            "\n# The upgrade test's newer package: one more schema version.\n"
            "MIGRATIONS = (*MIGRATIONS, \"CREATE TABLE upgrade_test (id INTEGER PRIMARY KEY)\")\n"),
        PRIVATE / "quilt_agent/__init__.py": lambda text: re.sub(
            r'^__version__ = ".*"$', f'__version__ = "{NEWER}"', text, flags=re.M),
    }
    sums = (tree / "DEBIAN/md5sums").read_text()
    for path, change in changed.items():
        before = (tree / path).read_text()
        after = change(before)
        assert after != before, f"repacking changed nothing in {path}"
        (tree / path).write_text(after)
        sums = sums.replace(f"{hashlib.md5(before.encode()).hexdigest()}  {path}",
                            f"{hashlib.md5(after.encode()).hexdigest()}  {path}")
    (tree / "DEBIAN/md5sums").write_text(sums)
    out = work / f"quilt-runtime_{NEWER}_{ARCH}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def seen(deb: Path) -> dict:
    # In the checkout, which the test host shares: it has a /tmp of its own.
    work = PROJECT / f"build/package-test-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        newer = repack_newer(deb, work)
        out = subprocess.run(
            ["/usr/bin/python3", str(PROJECT / "tests/testhost.py"), "run", "--bare", "--name", f"pkg{os.getpid()}",
             "--", "/usr/bin/python3", str(PROJECT / "tests/host/package_scenario.py"), str(deb), str(newer)],
            capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.stderr.write(out.stderr)
    assert out.returncode == 0, f"the scenario failed ({out.returncode}):\n{out.stderr}"
    return json.loads(out.stdout)


def ok(step: dict) -> dict:
    assert step["rc"] == 0, f"{' '.join(step['argv'])} -> {step['rc']}:\n{step['stdout']}\n{step['stderr']}"
    return step


def test_install_puts_every_file_in_place_and_starts_nothing(seen: dict) -> None:
    ok(seen["install"])
    after = seen["after_install"]
    assert after["version_status"] == f"{VERSION} ii"
    assert [p for p, there in after["files"].items() if not there] == []
    # The first call on the bus starts the agent; installing does not.
    assert after["agent"]["ActiveState"] == "inactive"
    # The boot's unit is enabled (it starts the containers whose policy says so at boot), not run by the install.
    assert after["restart_unit"]["enabled"] == "enabled" and after["restart_unit"]["ActiveState"] == "inactive"
    completion = after["completion"]
    assert completion["registers"] and completion["calls"] and "plain,image" in completion["answer"], completion


def test_containers_run_from_the_installed_package(seen: dict) -> None:
    for step in ("image", "run_long", "run_done", "wait_done"):
        ok(seen[step])
    assert seen["wait_done"]["stdout"].strip() == "7"
    before = seen["before_upgrade"]
    assert before["containers"]["long"]["State"] == "running"
    assert before["containers"]["done"]["ExitCode"] == 7
    assert before["long_process"]["alive"] and "sleep" in before["long_process"]["cmdline"]
    assert before["agent"]["ActiveState"] == "active"
    assert before["agent_version"].splitlines()[-1].endswith(VERSION), before["agent_version"]


def test_upgrade_restarts_the_agent_and_no_container(seen: dict) -> None:
    ok(seen["upgrade"])
    before, after = seen["before_upgrade"], seen["after_upgrade"]
    assert after["version_status"] == f"{NEWER} ii"
    # A new agent, running the new code...
    assert after["agent"]["ActiveState"] == "active"
    assert after["agent"]["MainPID"] != before["agent"]["MainPID"]
    assert after["agent"]["InvocationID"] != before["agent"]["InvocationID"]
    assert after["agent_version"].splitlines()[-1].endswith(NEWER), after["agent_version"]
    # ...and the same container: the same process, scope and slice, never stopped.
    assert after["long_process"] == before["long_process"]
    assert after["containers"]["long"] == before["containers"]["long"]
    assert after["long_scope"]["InvocationID"] == before["long_scope"]["InvocationID"]
    assert after["slice"]["InvocationID"] == before["slice"]["InvocationID"]
    assert after["slice"]["ActiveEnterTimestampMonotonic"] == before["slice"]["ActiveEnterTimestampMonotonic"]
    # The exited one keeps its exit code.
    assert after["containers"]["done"] == before["containers"]["done"]
    assert "long" in seen["ps_after_upgrade"]["stdout"]


def test_upgrade_migrates_the_schema(seen: dict) -> None:
    before, after = seen["before_upgrade"], seen["after_upgrade"]
    assert isinstance(before["schema"], int) and after["schema"] == before["schema"] + 1
    assert any(f"from schema version {before['schema']} to {after['schema']}" in line for line in after["journal"]), \
        after["journal"]


def test_remove_stops_the_agent_cleanly_and_keeps_containers_and_data(seen: dict) -> None:
    ok(seen["remove"])
    after = seen["after_remove"]
    assert after["version_status"] == f"{NEWER} rc"  # removed, its configuration (none) and data left
    assert after["agent"]["ActiveState"] == "inactive" and after["agent"]["Result"] == "success", after["agent"]
    assert after["quiltctl_gone"]
    assert after["long_process"] == seen["before_upgrade"]["long_process"]
    assert after["database_kept"] and "containers" in after["state_files"]


def test_an_older_package_refuses_the_newer_database_and_leaves_containers_alone(seen: dict) -> None:
    ok(seen["downgrade"])
    after = seen["after_downgrade"]
    assert after["version_status"] == f"{VERSION} ii"
    assert seen["start_after_downgrade"]["rc"] != 0
    assert after["agent"]["ActiveState"] == "failed" and after["agent"]["ExecMainStatus"] == "6", after["agent"]
    assert any("newer" in line and "quilt.db" in line for line in after["journal"]), after["journal"]
    assert after["schema"] == seen["after_upgrade"]["schema"]  # refused, never replaced
    assert after["long_process"] == seen["before_upgrade"]["long_process"]


def test_purge_removes_the_containers_and_the_state(seen: dict) -> None:
    ok(seen["purge"])
    after = seen["after_purge"]
    assert after["version_status"] is None or after["version_status"].endswith(" un"), after
    assert not after["long_process"]["alive"]
    assert after["slice"]["ActiveState"] == "inactive"
    # The test host's /var/lib/quilt is a tmpfs mount point: purge empties it and leaves the mount.
    assert after["state_files"] in (None, [])


def test_maintainer_scripts_never_touch_quilt_slice(deb: Path, tmp_path: Path) -> None:
    """Stopping or restarting quilt.slice would take every container down with it; purge alone stops it."""
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path)], check=True)
    for script in ("preinst", "postinst", "prerm", "postrm"):
        path = tmp_path / script
        if not path.exists():
            continue
        text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        if script == "postrm":
            purge = text.split('if [ "$1" = purge ]', 1)[1].split("\nfi\n", 1)[0]
            assert "quilt.slice" in purge
            text = text.replace(purge, "")
        assert "quilt.slice" not in text and "quilt-*.scope" not in text, f"{script} touches the containers"
    postinst = (tmp_path / "postinst").read_text()
    assert "try-restart 'quilt-agent.service'" in postinst
    assert "deb-systemd-invoke start" not in postinst and "deb-systemd-invoke restart" not in postinst
