"""What the suite drives is what is installed: with the Debian package (make test), /usr/bin/quiltctl and the
agent the unit runs are the package's, never the checkout's venv; without it (make test-integration), the venv's."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_quiltctl_and_the_agent_are_the_installed_ones(agent: None) -> None:
    owner = run("dpkg-query", "-S", "/usr/bin/quiltctl")
    pid = run("systemctl", "show", "-P", "MainPID", "quilt-agent").stdout.strip()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if owner.returncode != 0:
        assert shutil.which("quiltctl") == str(PROJECT / ".venv/bin/quiltctl")
        assert Path("/usr/bin/quilt-agent").resolve() == (PROJECT / ".venv/bin/quilt-agent").resolve()
        return
    assert owner.stdout.startswith("quilt-runtime: "), owner.stdout
    assert shutil.which("quiltctl") == "/usr/bin/quiltctl"
    assert cmdline[:3] == [b"/usr/bin/python3", b"-I", b"/usr/bin/quilt-agent"], cmdline
    version = run("/usr/bin/quiltctl", "version")
    assert version.returncode == 0 and version.stdout.count(
        run("dpkg-query", "-W", "-f=${Version}", "quilt-runtime").stdout) == 2, version.stdout
