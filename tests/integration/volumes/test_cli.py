"""quiltctl volume create|ls|inspect|rm|prune and run -v/--volume/--tmpfs/--read-only, as a script runs them."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from quilt_agent.client import Client
from tests.integration.volumes.conftest import VOLUMES

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"


def quiltctl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUILTCTL, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def ok(*args: str, cwd: Path | None = None) -> str:
    result = quiltctl(*args, cwd=cwd)
    assert result.returncode == 0, f"quiltctl {' '.join(args)} -> {result.returncode}: {result.stderr}"
    return result.stdout


async def test_volume_create_ls_inspect_rm_prune(vclient: Client, name: str, busybox_tar: Path) -> None:
    assert ok("volume", "create", "-l", "team=a", f"{name}-v").strip() == f"{name}-v"
    table = ok("volume", "ls").splitlines()
    assert table[0].split() == ["NAME", "MOUNTPOINT", "USED", "BY"]
    assert table[1].split() == [f"{name}-v", str(VOLUMES / f"{name}-v" / "_data")]
    (props,) = json.loads(ok("volume", "inspect", f"{name}-v"))
    assert props["Labels"] == {"team": "a"} and props["UsedBy"] == []
    again = quiltctl("volume", "create", f"{name}-v")
    assert again.returncode == 125 and "already in use by another volume" in again.stderr
    ok("create", "--name", name, "-v", f"{name}-v:/data", str(busybox_tar), "true")
    busy = quiltctl("volume", "rm", f"{name}-v")
    assert busy.returncode == 125 and "is used by container(s)" in busy.stderr and name in busy.stderr
    assert json.loads(ok("volume", "ls", "--json"))[0]["UsedBy"] == [name]
    ok("rm", name)
    assert ok("volume", "rm", f"{name}-v").strip() == f"{name}-v"
    gone = quiltctl("volume", "inspect", f"{name}-v")
    assert gone.returncode == 125 and f"No volume '{name}-v' known" in gone.stderr
    ok("volume", "create", f"{name}-p")
    assert ok("volume", "prune").endswith(" freed\n")  # the space freed, worded as by image prune
    assert ok("volume", "ls", "-q") == ""


async def test_run_with_volume_tmpfs_and_read_only_flags(vclient: Client, name: str, busybox_tar: Path,
                                                         tmp_path: Path) -> None:
    (tmp_path / "in").write_text("relative\n")
    out = ok("run", "--rm", "--read-only", "-v", "./:/host:ro", "--volume", f"{name}-d:/data",
             "--tmpfs", "/scratch:size=1m", str(busybox_tar), "--", "/bin/sh", "-c",
             "cat /host/in; echo x > /data/f && echo x > /scratch/f && echo written; "
             "touch /host/no 2>/dev/null || echo host-ro; touch /etc/no 2>/dev/null || echo root-ro", cwd=tmp_path)
    assert out.splitlines() == ["relative", "written", "host-ro", "root-ro"]
    assert (VOLUMES / f"{name}-d" / "_data" / "f").read_text() == "x\n"
    bad = quiltctl("run", "--rm", "-v", "/no/such/dir:/x", str(busybox_tar), "true")
    assert bad.returncode == 125 and "/no/such/dir" in bad.stderr and "does not exist" in bad.stderr
