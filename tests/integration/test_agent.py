"""The agent as a systemd service on the real system bus."""
from __future__ import annotations

import subprocess

from quilt_agent import __version__


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def test_agent_answers_version_over_the_system_bus(agent: None) -> None:
    out = run("busctl", "get-property", "org.quilt.Runtime", "/org/quilt/Runtime", "org.quilt.Runtime.Manager",
              "Version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f's "{__version__}"'


def test_agent_is_started_by_dbus_activation(agent: None) -> None:
    run("systemctl", "stop", "quilt-agent")
    assert run("systemctl", "is-active", "quilt-agent").stdout.strip() == "inactive"
    out = run("gdbus", "call", "--system", "--dest", "org.quilt.Runtime", "--object-path", "/org/quilt/Runtime",
              "--method", "org.quilt.Runtime.Manager.ListContainers")
    assert out.returncode == 0, out.stderr
    assert run("systemctl", "is-active", "quilt-agent").stdout.strip() == "active"


def test_agent_notifies_readiness_and_logs_to_the_journal(agent: None) -> None:
    run("systemctl", "restart", "quilt-agent")
    show = run("systemctl", "show", "-P", "Type,ActiveState,SubState", "quilt-agent").stdout.split()
    assert show == ["notify", "active", "running"]
    journal = run("journalctl", "-u", "quilt-agent", "-o", "cat", "--no-pager", "SYSLOG_IDENTIFIER=quilt-agent")
    assert "ready on org.quilt.Runtime" in journal.stdout


def test_unit_files_pass_systemd_analyze_verify() -> None:
    out = run("systemd-analyze", "verify", "/usr/lib/systemd/system/quilt-agent.service",
              "/usr/lib/systemd/system/quilt.slice")
    assert out.returncode == 0, out.stderr
    assert "quilt" not in out.stderr, out.stderr


def test_bus_policy_lets_only_root_own_the_name() -> None:
    out = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "busctl", "call",
              "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "RequestName", "su",
              "org.quilt.Runtime", "4")
    assert out.returncode != 0
    assert "Access denied" in out.stderr
