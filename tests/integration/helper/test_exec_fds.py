"""Exec as an attacker inside the container sees it: a root process of the container watches every process it can
see, tries pidfd_getfd on each of their fds and ptrace on each exec'd command before its exec, while the
agent execs into the container 50 times. Nothing of the host (cgroup.procs files, the agent's or the fork server's
sockets and pipes) may come out, and the command must be out of reach until it has exec'd; a child the watcher
starts itself, holding a known file, shows that the stealing works at all. Likewise a setup step gets nothing from
the container's init, which waits for it holding its pipes to the monitor."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Iterator

import pytest

from quilt_agent.client import Client
from quilt_agent.replies import ExecOutput
from tests import setupimage
from tests.integration.waiting import until

IMAGE = "quilt-tests/python:bookworm"
EXECS = 50
CONTROL_FILE = "/tmp/quilt-control-file"
# The exec helper's name (set_process_name), which the command's process keeps until its exec.
PRE_EXEC = "quilt-exec"

# Run by the container's python3 as its init (pid 1, root, the container's capabilities and seccomp filter).
WATCHER = r"""
import ctypes, errno, json, os, signal, sys

libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438  # the same number on every architecture
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, WALL = 17, 0x4206, 0x4207, 0x40000000
CONTROL_FILE, PRE_EXEC = sys.argv[1], sys.argv[2]
me = os.getpid()

open(CONTROL_FILE, "w").close()
ready_read, ready_write = os.pipe()
control = os.fork()
if control == 0:
    held = os.open(CONTROL_FILE, os.O_RDONLY)
    os.close(ready_read)
    os.write(ready_write, b"x")
    os.close(ready_write)
    while True:
        signal.pause()
os.close(ready_write)
os.read(ready_read, 1)
os.close(ready_read)


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def steal(pid, before, pre):
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        try:
            fds = [int(fd) for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            fds = list(range(64))  # not listable: try the low numbers blind
        for fd in fds:
            got = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
            if got < 0:
                if pre:
                    name = errno.errorcode.get(ctypes.get_errno(), "?")
                    refused[name] = refused.get(name, 0) + 1
                continue
            try:
                target = os.readlink(f"/proc/self/fd/{got}")
            finally:
                os.close(got)
            stolen.setdefault((pid, fd, target), (before, comm(pid)))
    finally:
        os.close(pidfd)


def attach(pid):
    # PTRACE_SEIZE: it does not stop the process, and leaves no signal behind when it is let go.
    ptrace["tried"] += 1
    if libc.ptrace(PTRACE_SEIZE, pid, None, None) != 0:
        ptrace["refused"] += 1
        return
    if (comm(pid) or "").startswith(PRE_EXEC):
        ptrace["attached"].add(pid)  # still before its exec: caught in time
    else:
        ptrace["late"] += 1  # it had exec'd meanwhile: fair game
    libc.ptrace(PTRACE_INTERRUPT, pid, None, None)
    while True:
        _, status = os.waitpid(pid, WALL)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            return
        if os.WIFSTOPPED(status):
            sig = os.WSTOPSIG(status)
            event = status >> 16
            libc.ptrace(PTRACE_DETACH, pid, None, ctypes.c_long(0 if event or sig == signal.SIGTRAP else sig))
            return


stolen = {}  # (pid, fd, target) -> the process's comm before and after the theft
refused = {}  # errno name -> count, for fds of commands caught before their exec
pre_exec_pids = set()
ptrace = {"tried": 0, "refused": 0, "attached": set(), "late": 0}
scans = 0
while not os.path.exists("/tmp/stop"):
    scans += 1
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        before = comm(pid)
        if before is None:
            continue
        pre = before.startswith(PRE_EXEC)
        steal(pid, before, pre)
        if pre:
            pre_exec_pids.add(pid)
            attach(pid)

report = {
    "scans": scans, "control": control, "pre_exec_pids": len(pre_exec_pids), "refused": refused,
    "ptrace": {**ptrace, "attached": sorted(ptrace["attached"])},
    "stolen": [{"pid": pid, "fd": fd, "target": target, "comm_before": b, "comm_after": a}
               for (pid, fd, target), (b, a) in stolen.items()],
}
with open("/tmp/report.json.tmp", "w") as f:
    json.dump(report, f)
os.rename("/tmp/report.json.tmp", "/tmp/report.json")
while True:
    signal.pause()
"""


def on_the_bus(method: str, *args: object) -> None:
    """A Client call from a thread of its own: a module's fixture has no event loop of pytest-asyncio's."""
    async def call() -> None:
        async with Client() as client:
            await getattr(client, method)(*args)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, call()).result()


@pytest.fixture(scope="module")
def python_image(agent: None) -> Iterator[str]:
    """The setup tests' Debian image (it has python3), imported once under a name of this module's."""
    tar = setupimage.path()
    if not tar.exists():
        pytest.fail(f"the Debian test image {tar} is missing: build it on the machine with "
                    f"`python3 tests/setupimage.py build`; `make test` does", pytrace=False)
    on_the_bus("import_image", str(tar), IMAGE)
    yield IMAGE
    on_the_bus("remove_image", IMAGE, True)


def unexpected(entry: dict, control: int) -> bool:
    """A theft that must not happen. Allowed: the control's fds (the watcher's own child), and what a command that
    has exec'd holds: its standard streams (its caller's, which it may use as it likes) and the container's files
    it opened itself (its libc). Anything taken from a command still before its exec is a leak, and so is any
    cgroup file, socket, or pipe but a standard stream."""
    if entry["pid"] == control:
        return False
    target = entry["target"]
    before_exec = (entry["comm_after"] or "").startswith(PRE_EXEC)  # still so after the theft: it was so during it
    return before_exec or "cgroup" in target or target.startswith("socket:") \
        or (target.startswith("pipe:") and entry["fd"] > 2)


async def until_ok(client: Client, path: str, command: list[str], what: str) -> bytes:
    """Run command until it succeeds (the watcher may have ended a try); its stdout."""
    tries: list[ExecOutput] = []

    async def succeeded() -> bool:
        tries.append(await asyncio.wait_for(client.exec(path, command), 30))
        return tries[-1].exit_code == 0

    await until(succeeded, lambda: f"{what}: {tries[-1]}", 60, interval=0.05)
    return tries[-1].stdout


async def test_a_root_process_in_the_container_gets_no_host_fd_and_no_ptrace_from_execs(
        client: Client, python_image: str, name: str) -> None:
    path = await client.run_container(name, python_image, ["python3", "-c", WATCHER, CONTROL_FILE, PRE_EXEC], {})
    await until_ok(client, path, ["test", "-e", CONTROL_FILE], "the watcher never started")
    # Now and then as another user: a change of uid must not make the command dumpable again.
    codes = [(await asyncio.wait_for(client.exec(path, ["true"], {"user": "65534"} if n % 5 == 4 else {}),
                                     30)).exit_code
             for n in range(EXECS)]
    await until_ok(client, path, ["touch", "/tmp/stop"], "the watcher could not be stopped")
    report = json.loads(await until_ok(client, path, ["cat", "/tmp/report.json"], "the watcher wrote no report"))
    stolen = report["stolen"]
    print(f"\nwatcher: {report['scans']} scans, {report['pre_exec_pids']} commands seen before their exec, "
          f"pidfd_getfd on them refused {report['refused']}, ptrace {report['ptrace']}, {len(stolen)} fds stolen")
    # The control: the watcher can steal from a process that lets it, so nothing below passes for want of trying.
    assert any(e["pid"] == report["control"] and e["target"] == CONTROL_FILE for e in stolen), stolen
    bad = [e for e in stolen if unexpected(e, report["control"])]
    assert not bad, f"the container got hold of these: {json.dumps(bad, indent=1)}"
    # It caught commands before their exec and could neither attach to them nor take their fds.
    assert report["pre_exec_pids"] > 0, report
    assert report["ptrace"]["attached"] == [] and report["ptrace"]["refused"] > 0, report["ptrace"]
    assert set(report["refused"]) <= {"EPERM", "ESRCH", "EBADF"}, report["refused"]
    assert codes == [0] * EXECS


# Run as a setup step (root, the container's capabilities and filter): everything it can take from the container's
# init, which waits for the step with its pipes to the monitor.
STEP_WATCHER = r"""
import ctypes, json, os, sys

libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD, PTRACE_SEIZE = 438, 0x4206
report = {"stolen": [], "refused": 0, "ptrace_refused": False, "comm": open("/proc/1/comm").read().strip()}
pidfd = os.pidfd_open(1)
for fd in range(64):
    got = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if got >= 0:
        report["stolen"].append([fd, os.readlink(f"/proc/self/fd/{got}")])
        os.close(got)
    elif ctypes.get_errno() == 1:
        report["refused"] += 1
# Attached, it would be let go when this process exits.
report["ptrace_refused"] = libc.ptrace(PTRACE_SEIZE, 1, None, None) != 0
json.dump(report, sys.stdout)
"""


async def test_a_setup_step_gets_nothing_from_the_containers_init(client: Client, python_image: str,
                                                                  name: str) -> None:
    step = 'sh: python3 -c "$STEP_WATCHER" > /tmp/partial.json && mv /tmp/partial.json /tmp/init-report.json'
    path = await client.run_container(name, python_image, ["sleep", "300"],
                                      {"setup": [step], "setup_cache": False, "env": [f"STEP_WATCHER={STEP_WATCHER}"]})
    report = json.loads(await until_ok(client, path, ["cat", "/tmp/init-report.json"], "the step wrote no report"))
    print(f"\nsetup step: {report['refused']} fds of the init refused, {report['stolen']} stolen")
    assert report["comm"].startswith("quilt-mon")  # the init before its exec, still named as its monitor
    assert report["stolen"] == [] and report["refused"] > 0 and report["ptrace_refused"]
