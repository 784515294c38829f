"""tests/testhost.py, checked from the bare machine by really running it.

These tests run on the machine itself, never inside a test host. Each one takes a
snapshot of what a test host could leak onto the machine (processes, mounts,
cgroups, files in /tmp, /run, /dev, /etc and /var/lib/quilt, kernel settings), runs
`tests/testhost.py` as a subprocess, and compares.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quilt_agent import __version__

PROJECT = Path(__file__).resolve().parents[2]
TESTHOST = PROJECT / "tests/testhost.py"
PYTHON = "/usr/bin/python3"  # as the Makefile runs it: testhost.py needs no venv
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "quilt-testhost"
BOOTED = re.compile(r"testhost: (\S+) booted in ([0-9.]+) s \((\w+)\), PID 1 is (\d+)")

# Words in the command line of a process that a test host starts (or that starts one).
HOST_PROCESS_WORDS = ("systemd", "dbus-daemon", "polkitd", "unshare", "nsenter", "testhost")

# /proc/sys files that change on their own, whatever runs.
VOLATILE_SYSCTLS = (
    "fs/dentry-state", "fs/inode-nr", "fs/inode-state", "fs/file-nr", "fs/aio-nr",
    "kernel/random/", "kernel/ns_last_pid", "kernel/pty/nr", "fs/quota/",
    "net/netfilter/nf_conntrack_count",
)
# The settings a test host would most likely change if it escaped: they must be compared.
KEY_SYSCTLS = (
    "kernel/hostname", "kernel/domainname", "net/ipv4/ip_forward", "kernel/core_pattern",
    "vm/overcommit_memory", "kernel/printk",
)
# Trees whose set of paths is compared; in the STRICT ones, also each entry's type, mode, size and
# mtime (nothing else on the machine writes there while the tests run).
WALKED = ("/tmp", "/run", "/dev")
WALKED_STRICT = ("/etc", "/var/lib/quilt")
# pytest's own tmp_path dirs; the job dirs of the shell harness that drives the dev machines, which
# change with whatever else runs there.
IGNORED_IN_TMP = ("pytest-of-", "bash_jobs.", "bash_tool_")


# --- a snapshot of the machine -------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    start: str
    cmdline: str
    cgroup: str


def read_proc(pid: int) -> Proc | None:
    base = Path(f"/proc/{pid}")
    try:
        stat = (base / "stat").read_text()
        comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
        fields = rest.split()
        if fields[1] == "2" or pid == 2:  # a kernel thread: they come and go
            return None
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return Proc(pid, fields[19], cmdline or f"[{comm}]", (base / "cgroup").read_text())
    except (OSError, IndexError, ValueError):
        return None  # gone meanwhile


def still_there(p: Proc) -> bool:
    """True while the process runs or is an unreaped zombie."""
    now = read_proc(p.pid)
    return now is not None and now.start == p.start


def processes() -> dict[tuple[int, str], Proc]:
    procs = (read_proc(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit())
    return {(p.pid, p.start): p for p in procs if p}


def mounts() -> frozenset[tuple[str, ...]]:
    """Mount id, mount point, fs type and source of every mount the machine's mount namespace has."""
    found = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        found.add((fields[0], fields[4], fields[sep + 1], fields[sep + 2]))
    return frozenset(found)


def find_testhost_cgroups() -> frozenset[str]:
    found = set()
    for top, dirs, _files in os.walk(CGROUP_ROOT):
        for d in dirs:
            if d.startswith(CGROUP_PREFIX):
                found.add(os.path.join(top, d))
    return frozenset(found)


def _walk(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk's top-down walk without its recursion: a tree a thousand levels deep (a test's, or anyone's, in
    /tmp) would be a RecursionError. The caller may prune dirs, as with os.walk."""
    stack = [root]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                entries = list(it)
        except OSError:
            continue
        dirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        files = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
        yield top, dirs, files
        stack.extend(os.path.join(top, d) for d in reversed(dirs))


def walk(root: str, strict: bool) -> frozenset:
    found = set()
    if not os.path.lexists(root):
        return frozenset()
    for top, dirs, files in _walk(root):
        # The checkout is bound into the host read-write on purpose (a clone may live in /tmp).
        dirs[:] = [d for d in dirs if os.path.join(top, d) != str(PROJECT)]
        if top == "/tmp":
            dirs[:] = [d for d in dirs if not d.startswith(IGNORED_IN_TMP)]
            files = [f for f in files if not f.startswith(IGNORED_IN_TMP)]
        for name in (top, *(os.path.join(top, f) for f in files), *(os.path.join(top, d) for d in dirs)):
            if not strict:
                found.add(name)
                continue
            try:
                st = os.lstat(name)
                link = os.readlink(name) if os.path.islink(name) else ""
            except OSError:
                continue
            found.add((name, st.st_mode, st.st_size, st.st_mtime_ns, link))
    return frozenset(found)


def read_sysctls() -> dict[str, str]:
    values = {}
    for top, _dirs, files in os.walk("/proc/sys"):
        for f in files:
            path = os.path.join(top, f)
            try:
                with open(path, "rb") as fh:
                    values[path] = fh.read(65536).decode(errors="replace")
            except OSError as err:
                values[path] = f"(unreadable: {err.errno})"
    return values


def is_volatile(path: str) -> bool:
    rel = path.removeprefix("/proc/sys/")
    return any(rel == v or (v.endswith("/") and rel.startswith(v)) for v in VOLATILE_SYSCTLS)


def _changing_sysctls() -> frozenset[str]:
    """The /proc/sys files that change between two reads with nothing running."""
    first = read_sysctls()
    # Not a wait for anything: the two reads are 0.2 s apart on purpose, so that values that move on their own
    # (counters, entropy, timestamps) get the time to move and are left out of the comparison.
    time.sleep(0.2)
    second = read_sysctls()
    return frozenset(p for p in first.keys() | second.keys() if first.get(p) != second.get(p))


CHANGING_SYSCTLS = _changing_sysctls()


def kernel_settings() -> dict[str, str]:
    settings = {p: v for p, v in read_sysctls().items() if not is_volatile(p) and p not in CHANGING_SYSCTLS}
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    settings["binfmt_misc present"] = str(binfmt.is_dir())
    settings["binfmt_misc entries"] = " ".join(sorted(os.listdir(binfmt))) if binfmt.is_dir() else ""
    return settings


@dataclass
class Snapshot:
    processes: dict[tuple[int, str], Proc]
    mounts: frozenset
    cgroups: frozenset[str]
    files: dict[str, frozenset]
    kernel: dict[str, str]


def snapshot() -> Snapshot:
    return Snapshot(
        processes=processes(),
        mounts=mounts(),
        cgroups=find_testhost_cgroups(),
        files={root: walk(root, root in WALKED_STRICT) for root in (*WALKED, *WALKED_STRICT)},
        kernel=kernel_settings(),
    )


def others_runs(cgroups: frozenset[str]) -> dict[str, int]:
    """Test hosts whose runner still runs, by cgroup name, with the runner's pid.

    When a test compares, every runner it started has exited: these are other sessions' runs on the
    same machine, which are no leak of ours.
    """
    runs = {}
    for name in {os.path.basename(d) for d in cgroups}:
        parts = name[len(CGROUP_PREFIX) + 1:].split("-")
        if len(parts) == 3 and parts[0].isdigit() and (p := read_proc(int(parts[0]))) and p.start == parts[1]:
            runs[name] = int(parts[0])
    return runs


def leaked_processes(before: Snapshot, after: Snapshot) -> list[Proc]:
    """New processes in a test host's cgroup, or that look like a test host's, but others' live runs."""
    others = others_runs(after.cgroups)
    found = []
    for key, p in after.processes.items():
        if key in before.processes or p.pid == os.getpid() or p.pid in others.values():
            continue
        if any(f"/{name}" in p.cgroup for name in others):
            continue
        if CGROUP_PREFIX in p.cgroup or any(w in p.cmdline for w in HOST_PROCESS_WORDS):
            found.append(p)
    return found


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    problems = []
    leaked = leaked_processes(before, after)
    if leaked:
        problems.append("processes left: " + "; ".join(f"{p.pid} {p.cmdline[:100]}" for p in leaked))
    if before.mounts != after.mounts:
        problems.append(f"mounts added: {sorted(after.mounts - before.mounts)}, "
                        f"removed: {sorted(before.mounts - after.mounts)}")
    others = others_runs(after.cgroups)
    if left := sorted(d for d in after.cgroups if os.path.basename(d) not in others):
        problems.append(f"quilt-testhost cgroups left: {left}")
    for root, paths in before.files.items():
        if paths != after.files[root]:
            problems.append(f"{root} changed: added {sorted(after.files[root] - paths)[:20]}, "
                            f"removed {sorted(paths - after.files[root])[:20]}")
    changed = sorted(k for k in before.kernel.keys() | after.kernel.keys()
                     if before.kernel.get(k) != after.kernel.get(k))
    if changed:
        problems.append("kernel settings changed: " + "; ".join(
            f"{k}: {before.kernel.get(k)!r} -> {after.kernel.get(k)!r}" for k in changed[:20]))
    return problems


def assert_machine_unchanged(before: Snapshot, wait: float = 5.0) -> None:
    """The machine is as `before`; processes may take a moment to be reaped, so retry briefly."""
    deadline = time.monotonic() + wait
    while True:
        problems = differences(before, snapshot())
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not problems, "the test host left something behind:\n" + "\n".join(problems)


# --- running tests/testhost.py -------------------------------------------------------------------


def argv_of(*args: str) -> list[str]:
    return [PYTHON, str(TESTHOST), *args]


def run_testhost(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv_of(*args), cwd=PROJECT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def boot_time(stderr: str, name: str) -> float:
    """The boot time testhost reports; printed (visible with -s), never asserted on."""
    match = BOOTED.search(stderr)
    assert match, f"no 'booted in X s' line on stderr:\n{stderr}"
    assert match.group(1) == name
    seconds = float(match.group(2))
    print(f"test host {name} booted in {seconds:.2f} s ({match.group(3)})")
    return seconds


def start_testhost(*args: str, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(argv_of(*args), cwd=PROJECT, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_booted(proc: subprocess.Popen) -> re.Match:
    """Read the runner's stderr until it says the host booted."""
    seen = []
    while line := proc.stderr.readline():
        seen.append(line)
        if match := BOOTED.search(line):
            return match
    pytest.fail(f"the test host exited (status {proc.wait()}) before booting:\n{''.join(seen)}")


def in_cgroups_of(runner_pid: int) -> dict[tuple[int, str], Proc]:
    """The processes in the test host of the runner `runner_pid`."""
    return {k: p for k, p in processes().items() if f"{CGROUP_PREFIX}-{runner_pid}-" in p.cgroup}


def runner_cgroups(runner_pid: int) -> set[str]:
    return {d for d in find_testhost_cgroups() if os.path.basename(d).startswith(f"{CGROUP_PREFIX}-{runner_pid}-")}


@pytest.fixture(autouse=True)
def no_leftovers_from_earlier_crashes():
    """Hosts of runs that crashed earlier (or of a failed test) would read as leaks of the next test."""
    result = run_testhost("cleanup")
    assert result.returncode == 0, result.stderr


# --- the tests -----------------------------------------------------------------------------------

WORK_INSIDE = r"""
set -e
systemd-run --quiet --unit=quilt-leakcheck sleep 300        # a transient service, still running at the end
systemctl is-active --quiet quilt-leakcheck && echo transient-unit-active
systemd-run --quiet --scope --unit=quilt-leakcheck-scope true && echo transient-scope-ran
setsid sleep 300 </dev/null >/dev/null 2>&1 &               # a stray process outside any unit
mkdir -p /tmp/quilt-leakcheck /run/quilt-leakcheck
echo x > /tmp/quilt-leakcheck/file
echo x > /run/quilt-leakcheck/file
echo x > /var/lib/quilt/leakcheck
echo x > /etc/quilt-leakcheck.conf
echo x > /dev/shm/quilt-leakcheck
rm /etc/os-release                                          # on the machine this must stay
mount -t tmpfs quilt-leakcheck /mnt && echo x > /mnt/file && echo tmpfs-mounted
mount -t tmpfs quilt-leakcheck /tmp/quilt-leakcheck
hostname quilt-leakcheck-renamed
sysctl -qw net.ipv4.ip_forward=1 && echo own-net-sysctl-written
pattern=$(cat /proc/sys/kernel/core_pattern)
if printf '%s\n' "$pattern" 2>/dev/null > /proc/sys/kernel/core_pattern; then
    echo kernel-sysctl-writable
else
    echo kernel-sysctl-read-only
fi
echo work-done
"""


def test_run_leaves_no_process_mount_cgroup_file_or_kernel_setting_behind():
    before = snapshot()
    assert len(before.kernel) >= 200, "too few kernel settings sampled"
    missing = [k for k in KEY_SYSCTLS if f"/proc/sys/{k}" not in before.kernel]
    assert not missing, f"key kernel settings not compared (unstable?): {missing}"

    result = run_testhost("run", "--name", "leakcheck", "--", "sh", "-c", WORK_INSIDE)

    assert result.returncode == 0, result.stdout + result.stderr
    boot_time(result.stderr, "leakcheck")
    for done in ("transient-unit-active", "transient-scope-ran", "tmpfs-mounted", "own-net-sysctl-written",
                 "kernel-sysctl-read-only", "work-done"):
        assert done in result.stdout.split(), f"{done!r} missing: the work inside did not happen\n{result}"
    assert_machine_unchanged(before)
    assert Path("/etc/os-release").exists()


def test_run_exits_with_the_commands_status_and_passes_its_output_through():
    before = snapshot()

    result = run_testhost("run", "--name", "status", "--", "sh", "-c", "echo out-marker; echo err-marker >&2; exit 7")

    assert result.returncode == 7, result.stderr
    assert result.stdout == "out-marker\n"
    assert "err-marker" in result.stderr
    boot_time(result.stderr, "status")
    assert_machine_unchanged(before)


CHECK_INSIDE = r"""
echo "state=$(systemctl is-system-running)"
echo "quilt_fstype=$(findmnt -no FSTYPE /var/lib/quilt)"
echo "cwd=$(pwd)"
echo "checkout=$(test -f tests/testhost.py && echo yes)"
echo "hostname=$(hostname)"
echo "env=$QUILT_TESTHOST"
echo "unit=$(test -f /usr/lib/systemd/system/quilt-agent.service && echo installed)"
echo "bus_policy=$(test -f /usr/share/dbus-1/system.d/org.quilt.Runtime.conf && echo installed)"
echo "start=$(systemctl start quilt-agent && echo ok)"
echo "agent=$(systemctl is-active quilt-agent)"
echo "version=$(busctl get-property org.quilt.Runtime /org/quilt/Runtime org.quilt.Runtime.Manager Version)"
"""


def test_inside_systemd_runs_the_project_is_installed_and_the_agent_answers_on_the_bus():
    before = snapshot()

    result = run_testhost("run", "--name", "inside", "--", "sh", "-c", CHECK_INSIDE)

    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert seen == {
        "state": "running",
        "quilt_fstype": "tmpfs",
        "cwd": str(PROJECT),
        "checkout": "yes",
        "hostname": "inside",
        "env": "inside",
        "unit": "installed",
        "bus_policy": "installed",
        "start": "ok",
        "agent": "active",
        "version": f's "{__version__}"',
    }, result.stdout + result.stderr
    boot_time(result.stderr, "inside")
    assert_machine_unchanged(before)


def test_with_only_cgroup2_systemd_runs_unified_and_the_agent_runs_a_container():
    """--cgroup unified: the layout of a pure v2 host (the machine's v1 controllers are absent there)."""
    before = snapshot()
    script = CHECK_INSIDE + r"""
echo "cgroupfs=$(stat -fc %T /sys/fs/cgroup)"
scripts/busybox-rootfs.sh /tmp/bb.tar
quiltctl run --rm /tmp/bb.tar -- /bin/sh -c 'echo "ran=$(grep ^0:: /proc/self/cgroup)"'
# The scope's device rule, a BPF program on v2: a block device node in a tmpfs that allows devices, mounted into
# the container by root on the host, opens for that root but not in the container; ptmx and null still open.
quiltctl run -d --name dev /tmp/bb.tar -- sleep 600 >/dev/null
echo "policy=$(systemctl show -P DevicePolicy quilt-dev.scope)"
pid=$(quiltctl inspect dev | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["MainPID"])')
nsenter -t "$pid" -m -r -w -- /bin/sh -c \
    'mkdir /hole && mount -t tmpfs hole /hole && mknod /hole/blk b 7 0 && : < /hole/blk && echo "made=ok"'
echo "blk=$(quiltctl exec dev -- sh -c ': < /hole/blk' 2>&1 | sed 's/.*: //')"
echo "allowed=$(quiltctl exec dev -- sh -c 'exec 3<>/dev/ptmx && echo x > /dev/null && echo ok')"
"""

    result = run_testhost("run", "--name", "unified", "--cgroup", "unified", "--", "sh", "-c", script)

    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert (seen["state"], seen["agent"], seen["cgroupfs"]) == ("running", "active", "cgroup2fs"), result.stdout
    assert seen["ran"] == "0::/", result.stdout  # the container sees its scope as the root (cgroup namespace)
    assert (seen["policy"], seen["made"], seen["blk"], seen["allowed"]) == (
        "closed", "ok", "Operation not permitted", "ok"), result.stdout
    assert_machine_unchanged(before)


@pytest.mark.timeout(60)
def test_two_hosts_with_distinct_names_run_at_once_each_with_its_own_hostname():
    before = snapshot()
    names = ("hosta", "hostb")
    script = "hostname; read go; systemctl is-system-running"  # waits for the test's go on stdin
    runs = {n: start_testhost("run", "--name", n, "--", "sh", "-c", script, stdin=subprocess.PIPE) for n in names}
    try:
        booted = {n: wait_booted(p) for n, p in runs.items()}
        # Both are up at the same moment: both booted, and each still waits for its go.
        assert all(p.poll() is None for p in runs.values())
        assert booted["hosta"].group(4) != booted["hostb"].group(4)
        assert runner_cgroups(runs["hosta"].pid) and runner_cgroups(runs["hostb"].pid)
        for p in runs.values():
            p.stdin.write("go\n")
            p.stdin.close()
        for n, p in runs.items():
            out, err = p.stdout.read(), p.stderr.read()
            assert p.wait(timeout=30) == 0, err
            assert out.split() == [n, "running"], out + err
            print(f"test host {n} booted in {float(booted[n].group(2)):.2f} s")
    finally:
        for p in runs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    assert_machine_unchanged(before)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cleaned_by", ["cleanup", "next run"])
def test_a_killed_runners_host_dies_and_its_cgroups_are_cleaned_up(cleaned_by):
    before = snapshot()
    runner = start_testhost("run", "--name", "crash", "--", "sleep", "300")
    try:
        print(f"test host crash booted in {float(wait_booted(runner).group(2)):.2f} s")
        deadline = time.monotonic() + 10  # "booted" comes just before the command starts
        while True:
            in_host = list(in_cgroups_of(runner.pid).values())
            if any(p.cmdline == "sleep 300" for p in in_host) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert any(p.cmdline.startswith("/lib/systemd/systemd ") for p in in_host), in_host
        assert any(p.cmdline == "sleep 300" for p in in_host), in_host
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        runner.stderr.close()
        runner.stdout.close()

    # The kernel kills the host's PID 1 (unshare's parent-death signal), and its namespace with it.
    deadline = time.monotonic() + 10
    while (alive := [p for p in in_host if still_there(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive, f"the host outlived its runner: {alive}"

    left = runner_cgroups(runner.pid)  # nobody was there to remove them
    print(f"cgroups left by the killed runner: {len(left)}")
    if cleaned_by == "cleanup":
        result = run_testhost("cleanup")
        assert result.returncode == 0, result.stderr
    else:
        result = run_testhost("run", "--name", "after", "--", "true")
        assert result.returncode == 0, result.stderr
        boot_time(result.stderr, "after")
    if left:
        assert f"removing {len(left)} cgroups left by crashed runs" in result.stderr
    assert_machine_unchanged(before)


@pytest.mark.parametrize("args", [
    ["run"],
    ["run", "--"],
    ["run", "--name", "bad-name", "--", "true"],
], ids=["no command", "empty command", "name with a dash"])
def test_a_bad_invocation_fails_with_usage_and_leaves_nothing(args):
    before = snapshot()

    result = run_testhost(*args)

    assert result.returncode != 0
    assert "usage: testhost.py" in result.stderr
    assert "booted" not in result.stderr
    assert_machine_unchanged(before)
