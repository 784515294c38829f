#!/usr/bin/env python3
"""Quilt beside crun, runc, Podman and bubblewrap: one rootfs, one machine, one run.

Run inside the test host (it mounts a tmpfs for Podman's storage and starts quilt-agent):
    make bench        or        python3 tests/testhost.py run --loop-check 0 -- .venv/bin/python bench/peers.py

One busybox rootfs (scripts/busybox-rootfs.sh) is given to every runtime: Quilt imports the tarball, crun and
runc get an OCI bundle whose root is the unpacked tarball (`crun spec`, then config.json edited), Podman gets
`podman import` of the same tarball. Each runtime uses its systemd cgroup manager where it has one, so every
container gets a transient scope as Quilt's do. Workloads: run-to-exit, start, exec, status, listing, 50 at
once, memory with 10, 50 and 200 running, 200,000 log lines, and Quilt alone up to 2,000 running (scale).
Latency samples of different runtimes are interleaved
round by round after a warm-up, so drift in the machine hits every runtime alike.

Prints a table (median, p95, ratio of each runtime's median to Quilt's through the bus), writes the raw
numbers to bench/results/latest.json and a chart of the latency distributions and the memory per container to
bench/results/latest.png.
A benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import random
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from quilt_agent.bus.names import CONTAINER_INTERFACE  # noqa: E402
from quilt_agent.client import Client, ClientError  # noqa: E402
from quilt_agent.cli.listing import TABLE_PROPERTIES  # noqa: E402
import hostcheck  # noqa: E402 - bench/, this script's own directory

T = TypeVar("T")
QUILT = "quilt (bus)"  # the reference every ratio is taken against
LOG_LINES = 200_000
CMD_TIMEOUT = 120.0


# --- results ------------------------------------------------------------------------------------------------


@dataclass
class Series:
    """One runtime's samples for one workload (seconds for latencies; other units say so)."""

    samples: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    note: str = ""
    unit: str = "s"
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, message: str) -> None:  # the tail: a tool's last words say what went wrong
        self.errors += 1
        self.first_error = self.first_error or message[-400:]

    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def p95(self) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def as_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "n": len(self.samples), "median": self.median(), "p95": self.p95(),
                "errors": self.errors, "first_error": self.first_error, "note": self.note,
                "samples": [round(x, 7) for x in self.samples], **self.extra}


@dataclass
class Workload:
    key: str
    title: str
    series: dict[str, Series] = field(default_factory=dict)
    note: str = ""

    def get(self, runtime: str, **kw: Any) -> Series:
        return self.series.setdefault(runtime, Series(**kw))


class CommandFailed(Exception):
    pass


Contenders = dict[str, tuple[int, Callable[[], float]]]


@dataclass
class Fleet:
    """How one runtime starts, probes, counts and removes a fleet of running containers."""

    name: str
    start: Callable[[], Any]  # starts one `sleep 3600` container, returns its handle
    execs: Callable[[Any], Contenders]
    status: Callable[[Any], Contenders]
    listing: Callable[[float], Contenders]  # the argument scales the repetition counts
    init_pids: Callable[[list[Any]], list[int]]
    teardown: Callable[[list[Any]], None]
    daemon_pids: Callable[[], list[int]] = list  # the daemon and its helpers (Quilt: agent + fork server)


# --- small helpers ------------------------------------------------------------------------------------------


# Output goes to files, never pipes: a detached container (crun run -d) inherits the runtime's stdio, and a
# pipe would then stay open until the container ends.


def _failed(argv: list[str], code: int, err: Any) -> CommandFailed:
    err.seek(0)
    text = err.read().decode(errors="replace").strip()
    return CommandFailed(f"{' '.join(argv[:6])}: exit {code}: {text[-300:]}")


def wait_exact(p: subprocess.Popen[bytes], timeout: float) -> int:
    """p's exit status, waited for on a pidfd, which wakes us as it ends. Not Popen.wait(timeout): that polls
    with sleeps that double up to 50 ms, and so rounds every time measured around it up to its next step (a
    python3 -c pass of 8 ms measured 15.8 ms, 31 ms measured 63.5, 100 ms 113.5)."""
    fd = os.pidfd_open(p.pid)  # also for a process that has ended already: it is ours to reap
    try:
        if not select.select([fd], [], [], timeout)[0]:
            p.kill()
            p.wait()
            raise subprocess.TimeoutExpired(p.args, timeout)
    finally:
        os.close(fd)
    return p.wait()


def run(argv: list[str], stdout: Any, stderr: Any, env: dict[str, str] | None = None,
        timeout: float = CMD_TIMEOUT) -> int:
    """subprocess.run's returncode, with stdin from /dev/null, waited for exactly (wait_exact)."""
    return wait_exact(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env),
                      timeout)


def sh(argv: list[str], timeout: float = CMD_TIMEOUT, env: dict[str, str] | None = None) -> str:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        code = run(argv, out, err, env, timeout)
        if code != 0:
            raise _failed(argv, code, err)
        out.seek(0)
        return out.read().decode(errors="replace")


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one command, output thrown away; CommandFailed if it exits non-zero."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        code = run(argv, subprocess.DEVNULL, err, env)
        elapsed = time.perf_counter() - started
        if code != 0:
            raise _failed(argv, code, err)
    return elapsed


def quiet(argv: list[str], env: dict[str, str] | None = None) -> None:
    run(argv, subprocess.DEVNULL, subprocess.DEVNULL, env)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _memory_used_mib() -> int:
    info = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return (info["MemTotal"] - info["MemAvailable"]) // 1024


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (kB as the kernel counts them), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def version_line(argv: list[str]) -> str:
    try:
        return sh(argv).strip().splitlines()[0]
    except (CommandFailed, OSError, IndexError) as err:
        return f"unavailable ({err})"


def cgroup_mode() -> str:
    mounts = {line.split()[1]: line.split()[2] for line in Path("/proc/self/mounts").read_text().splitlines()}
    if mounts.get("/sys/fs/cgroup") == "cgroup2":
        return "cgroup v2 (unified)"
    if mounts.get("/sys/fs/cgroup/unified") == "cgroup2":
        return "cgroup v1 hybrid (v1 controllers + cgroup2 at /sys/fs/cgroup/unified)"
    return "cgroup v1 (legacy)"


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {"cores": os.cpu_count(), "cpu": model, "memory_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release(), "cgroups": cgroup_mode(),
            "systemd": version_line(["systemctl", "--version"]),
            "test_host": os.environ.get("QUILT_TESTHOST", "")}


def _range(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low} in each run" if low == high else f"{low}-{high}"


def _last_words(error: str, width: int = 70) -> str:
    """The last line of a peer's error (its stderr's end), cut from the left to fit the table."""
    lines = error.strip().splitlines()
    line = lines[-1] if lines else ""
    return line if len(line) <= width else "…" + line[-(width - 1):]


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.0f} ms" if ms >= 1000 else f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


# --- the runtimes' setup ------------------------------------------------------------------------------------


class Setup:
    """The one rootfs in its three forms, and everything the peers need, under a temporary directory."""

    def __init__(self, work: Path, in_testhost: bool) -> None:
        self.work = work
        self.tarball = work / "busybox.tar"
        self.rootfs = work / "rootfs"
        self.podman_image = "localhost/quilt-bench-busybox"
        self.quilt_image = str(self.tarball)  # replaced by the imported image's name where Quilt has ImportImage
        self.podman_env = dict(os.environ)
        # Networking as crun's and runc's bundles have it: a network namespace with only loopback. Podman and
        # Quilt default to a bridge; the run workload measures those defaults too.
        self.quilt_opts: dict[str, Any] = {"networks": ["none"]}
        self.quiltctl_net = ["--network", "none"]
        self.podman_net = ["--network", "none"]
        self.in_testhost = in_testhost

    def build(self) -> None:
        subprocess.run([str(PROJECT / "scripts/busybox-rootfs.sh"), str(self.tarball)], check=True)
        self.rootfs.mkdir()
        subprocess.run(["tar", "--numeric-owner", "-C", str(self.rootfs), "-xf", str(self.tarball)], check=True)
        # The machine's hard limit on open files is 20000: a containers.conf that asks for more makes every
        # podman run fail. Ask for none; CONTAINERS_CONF keeps this out of /etc.
        conf = self.work / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        self.podman_env["CONTAINERS_CONF"] = str(conf)
        if self.in_testhost and not os.path.ismount("/var/lib/containers"):
            # The test host's root is an overlay: Podman's overlay storage cannot live on it.
            Path("/var/lib/containers").mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", "/var/lib/containers"], check=True)
        sh(["podman", "import", "-q", str(self.tarball), self.podman_image], env=self.podman_env)

    def bundle(self, name: str, args: list[str]) -> str:
        """An OCI bundle (shared by crun and runc) running args on the shared rootfs."""
        directory = self.work / f"bundle-{name}"
        directory.mkdir()
        subprocess.run(["crun", "spec"], cwd=directory, check=True)
        path = directory / "config.json"
        config = json.loads(path.read_text())
        config["process"]["terminal"] = False
        config["process"]["args"] = args
        config["root"] = {"path": str(self.rootfs), "readonly": True}
        # Quilt unshares the cgroup namespace too; `crun spec` leaves it out.
        namespaces = config["linux"]["namespaces"]
        if not any(n["type"] == "cgroup" for n in namespaces):
            namespaces.append({"type": "cgroup"})
        path.write_text(json.dumps(config, indent=1))
        return str(directory)

    def podman(self, *args: str) -> list[str]:
        return ["podman", "--cgroup-manager=systemd", *args]


# --- the benchmark ------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, setup: Setup) -> None:
        self.args = args
        self.s = setup
        self.loop = asyncio.new_event_loop()
        self.client = Client()
        self.workloads: dict[str, Workload] = {}
        self.serial = 0
        self.quilt_exec: Callable[[str], Awaitable[Any]] | None = None
        self.quiltctl_exec = False
        self.bundles: dict[str, str] = {}

    # plumbing

    def q(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    def uid(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{os.getpid()}-{self.serial}"

    def n(self, count: float) -> int:
        return max(3, round(count * self.args.scale))

    def workload(self, key: str, title: str) -> Workload:
        return self.workloads.setdefault(key, Workload(key, title))

    def log(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    def interleave(self, wl: Workload, contenders: Contenders, warmup: int = 5) -> None:
        """Run each contender's sample function round by round, after a warm-up; a contender with fewer samples
        than rounds takes its turns spread evenly over them, so every runtime sees the same stretch of time.

        A function returns the seconds to record (it does its own untimed set-up and clean-up). A contender
        whose warm-up fails is dropped with its error; a failed sample counts as an error.
        """
        alive = dict(contenders)
        for name, (_, fn) in contenders.items():
            series = wl.get(name)
            for _ in range(warmup):
                try:
                    fn()
                except Exception as err:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
                    series.fail(f"warm-up: {err}")
                    series.note = series.note or f"failed: {str(err)[:120]}"
                    alive.pop(name, None)
                    break
        started = time.monotonic()
        rounds = max((count for count, _ in alive.values()), default=0)
        for i in range(rounds):
            # A new order each round (the same for every run of the bench): what ran just before pays for what it
            # left behind (podman's teardown under way took Quilt's next run to exit from 20 to 28 ms), so no
            # contender may always follow the same one.
            order = list(alive.items())
            random.Random(i).shuffle(order)
            for name, (count, fn) in order:
                if (i + 1) * count // rounds == i * count // rounds:
                    continue
                try:
                    wl.get(name).samples.append(fn())
                except Exception as err:  # noqa: BLE001
                    wl.get(name).fail(str(err))
        self.log(f"{wl.title}: {time.monotonic() - started:.1f} s")

    # Quilt

    async def quilt_run_to_exit(self, options: dict[str, Any] | None = None) -> float:
        started = time.perf_counter()
        path = await self.client.run_container(self.uid("bt"), self.s.quilt_image, ["/bin/true"],
                                               self.s.quilt_opts if options is None else options)
        code = await self.client.wait(path)
        elapsed = time.perf_counter() - started
        await self.client.remove(path)
        if code != 0:
            raise CommandFailed(f"/bin/true exited {code}")
        return elapsed

    async def quilt_start(self) -> float:
        started = time.perf_counter()
        path = await self.client.run_container(self.uid("bs"), self.s.quilt_image, ["/bin/sleep", "3600"],
                                               self.s.quilt_opts)
        elapsed = time.perf_counter() - started
        state = await self.client.get_property(path, "State")
        await self.client.remove(path, True)
        if state != "running":
            raise CommandFailed(f"state {state} after RunContainer")
        return elapsed

    def quiltctl_start(self) -> float:
        name = self.uid("bc")
        try:
            return timed(["quiltctl", "run", *self.s.quiltctl_net, "-d", "--name", name, self.s.quilt_image, "--",
                          "/bin/sleep", "3600"])
        finally:
            with contextlib.suppress(ClientError):
                self.q(self.client.remove(self.q(self.client.get_container(name)), True))

    async def detect_exec(self, path: str) -> None:
        """Whether the agent's containers have Exec; quilt_exec stays None if not."""
        (xml,) = await self.client._call(path, "org.freedesktop.DBus.Introspectable", "Introspect")
        if 'name="Exec"' in xml:
            method = getattr(self.client, "exec", None)
            self.quilt_exec = (lambda p: method(p, ["/bin/true"])) if method else (
                lambda p: self.client._call(p, CONTAINER_INTERFACE, "Exec", "asa{sv}", [["/bin/true"], {}]))
        p = subprocess.run(["quiltctl", "exec", "--help"], capture_output=True)
        self.quiltctl_exec = p.returncode == 0

    async def quilt_exec_once(self, path: str) -> float:
        assert self.quilt_exec is not None
        started = time.perf_counter()
        result = await self.quilt_exec(path)
        elapsed = time.perf_counter() - started
        code = getattr(result, "exit_code", result[0] if isinstance(result, (list, tuple)) else result)
        if isinstance(code, int) and code != 0:
            raise CommandFailed(f"Exec /bin/true returned {code}")
        return elapsed

    async def quilt_timed(self, coro_fn: Callable[[], Awaitable[Any]]) -> float:
        started = time.perf_counter()
        await coro_fn()
        return time.perf_counter() - started

    def agent_pids(self) -> list[int]:
        """quilt-agent and the processes of its own cgroup (the fork server): never a container's."""
        agent = int(sh(["systemctl", "show", "-P", "MainPID", "quilt-agent"]).strip())
        cgroup = sh(["systemctl", "show", "-P", "ControlGroup", "quilt-agent"]).strip()
        pids = {agent}
        for root in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
            procs = Path(root + cgroup) / "cgroup.procs"
            if procs.exists():
                pids.update(int(p) for p in procs.read_text().split())
                break
        return sorted(pids)

    # peers

    def crun(self, *args: str) -> list[str]:
        return ["crun", "--systemd-cgroup", *args]

    def runc(self, *args: str) -> list[str]:
        return ["runc", "--systemd-cgroup", *args]

    def oci_run(self, tool: str, bundle: str) -> float:
        base = self.crun if tool == "crun" else self.runc
        return timed(base("run", "-b", bundle, self.uid(tool[0] + "t")))

    def oci_start(self, tool: str, bundle: str) -> float:
        base = self.crun if tool == "crun" else self.runc
        cid = self.uid(tool[0] + "s")
        try:
            return timed(base("run", "-d", "-b", bundle, cid))
        finally:
            quiet([tool, "delete", "-f", cid])

    def podman_start(self) -> float:
        name = self.uid("ps")
        try:
            return timed(self.s.podman("run", *self.s.podman_net, "-d", "--name", name, self.s.podman_image,
                                       "/bin/sleep", "3600"), env=self.s.podman_env)
        finally:
            quiet(["podman", "rm", "-f", "-t", "0", name], env=self.s.podman_env)

    # workloads

    def w_run(self) -> None:
        wl = self.workload("run", "run /bin/true to exit")
        bundle = self.bundles["true"]
        bwrap = ["bwrap", "--ro-bind", str(self.s.rootfs), "/", "--proc", "/proc", "--dev", "/dev",
                 "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup", "/bin/true"]
        self.interleave(wl, {
            QUILT: (self.n(150), lambda: self.q(self.quilt_run_to_exit())),
            # The default is a user namespace of the container's own; the host's ids beside it, interleaved.
            QUILT + ", --userns host": (self.n(150), lambda: self.q(self.quilt_run_to_exit(
                {**self.s.quilt_opts, "userns": "host"}))),
            "quiltctl run --rm": (self.n(40), lambda: timed(["quiltctl", "run", *self.s.quiltctl_net, "--rm",
                                                              self.s.quilt_image, "--", "/bin/true"])),
            "crun": (self.n(150), lambda: self.oci_run("crun", bundle)),
            "runc": (self.n(80), lambda: self.oci_run("runc", bundle)),
            "podman run --rm": (self.n(40), lambda: timed(self.s.podman("run", *self.s.podman_net, "--rm",
                                                                        self.s.podman_image, "/bin/true"),
                                                          env=self.s.podman_env)),
            "systemd-run --scope": (self.n(150), lambda: timed(["systemd-run", "--scope", "-q", "/bin/true"])),
            "bwrap": (self.n(150), lambda: timed(bwrap)),
            **({QUILT + ", default network": (self.n(60), lambda: self.q(self.quilt_run_to_exit({})))}
               if self.s.quilt_opts else {}),
            "podman run --rm, default network": (self.n(30), lambda: timed(
                self.s.podman("run", "--rm", self.s.podman_image, "/bin/true"), env=self.s.podman_env)),
            "fork+exec /bin/true": (self.n(150), lambda: timed(["/bin/true"])),
        })
        wl.note = ("crun/runc: `run` with --systemd-cgroup, read-only bundle rootfs (no overlay); podman: overlay "
                   "storage on tmpfs; every container has a network namespace with loopback only (Quilt "
                   "networks=none, podman --network none) but the two 'default network' rows (a bridge and a veth); "
                   "systemd-run, bwrap and a bare fork+exec are reference points, no container")

    def w_start(self) -> None:
        wl = self.workload("start", "start a sleep container until running")
        bundle = self.bundles["sleep"]
        self.interleave(wl, {
            QUILT: (self.n(60), lambda: self.q(self.quilt_start())),
            "quiltctl run -d": (self.n(30), self.quiltctl_start),
            "crun run -d": (self.n(60), lambda: self.oci_start("crun", bundle)),
            "runc run -d": (self.n(40), lambda: self.oci_start("runc", bundle)),
            "podman run -d": (self.n(30), self.podman_start),
        })

    def w_cli(self) -> None:
        """The command lines' own costs: start-up alone, and a stop of a container that has exited (an answer
        with no work behind it: all that is measured is the command line's and the call's overhead)."""
        startup = self.workload("cli-startup", "a command line's start-up (--version)")
        self.interleave(startup, {
            "quiltctl --version": (self.n(40), lambda: timed(["quiltctl", "--version"])),
            "podman --version": (self.n(40), lambda: timed(["podman", "--version"], env=self.s.podman_env)),
            "python3 -I -c pass": (self.n(40), lambda: timed(["python3", "-I", "-c", "pass"])),
            # how the package's wrapper starts quiltctl (debian/bin/quiltctl)
            "python3 -IS -c pass": (self.n(40), lambda: timed(["python3", "-IS", "-c", "pass"])),
        })
        quilt_path = self.q(self.client.run_container(self.uid("bx"), self.s.quilt_image, ["/bin/true"],
                                                      self.s.quilt_opts))
        self.q(self.client.wait(quilt_path))
        quilt_name = self.q(self.client.get_property(quilt_path, "Name"))
        podman_name = self.uid("px")
        sh(self.s.podman("run", *self.s.podman_net, "--name", podman_name, self.s.podman_image, "/bin/true"),
           env=self.s.podman_env)
        try:
            wl = self.workload("stop-exited", "stop a container that has exited")
            self.interleave(wl, {
                QUILT: (self.n(200), lambda: self.q(self.quilt_timed(lambda: self.client.stop(quilt_path)))),
                "quiltctl stop": (self.n(40), lambda: timed(["quiltctl", "stop", quilt_name])),
                "podman stop": (self.n(40), lambda: timed(self.s.podman("stop", podman_name),
                                                          env=self.s.podman_env)),
            })
        finally:
            self.q(self.client.remove(quilt_path, True))
            quiet(["podman", "rm", "-f", podman_name], env=self.s.podman_env)

    def fleet(self) -> None:
        """Every runtime's fleet at once: half of it running (exec, status, listing), then all (memory, listing).

        Every container is a `sleep 3600` started one by one, the runtimes taking turns; each start is timed
        (the fleet_start workload: starts with 0 to count-1 of the runtime's containers already running). The
        fleets run side by side so that the probes of different runtimes can be interleaved like the rest.
        """
        count = max(10, round(200 * min(1.0, self.args.scale * 2)))
        half = count // 2
        # Memory is measured on the way up too: what each container costs should not depend on how many run.
        memory_at = [n for n in (10, 50) if n < half]
        w = self.workloads
        for n in memory_at:
            self.workload(f"memory_{n}", f"memory per running container ({n})")
        for key, title in (("exec", "exec /bin/true in a running container"), ("status", "status of one container"),
                           ("list_half", f"list with {half} running containers"),
                           ("list_all", f"list with {count} running containers"),
                           ("memory", f"memory per running container ({count})"),
                           ("fleet_start", f"start one more, with 0-{count - 1} running"),
                           ("teardown", f"remove {count} running containers (total)")):
            self.workload(key, title)
        for key in ("memory", *(f"memory_{n}" for n in memory_at)):
            w[key].note = ("PSS of each container's runtime process (the parent of its init unless that is PID 1: "
                           "Quilt's monitor, Podman's conmon), plus the daemon's growth, over the running "
                           "`sleep 3600` containers")
        fleets = [getattr(self, f"fleet_{r}")() for r in ("quilt", "crun", "runc", "podman")
                  if not self.args.only or r in self.args.only]
        handles: dict[str, list[Any]] = {f.name: [] for f in fleets}
        daemon_before = {f.name: sum(pss_kib(p) for p in f.daemon_pids()) for f in fleets}
        systemd_before = pss_kib(1)
        alive = list(fleets)

        def grow(to: int) -> None:
            started_all = time.monotonic()
            for _ in range(to - min((len(handles[f.name]) for f in alive), default=to)):
                for f in list(alive):
                    if len(handles[f.name]) >= to:
                        continue
                    started = time.perf_counter()
                    try:
                        handles[f.name].append(f.start())
                    except Exception as err:  # noqa: BLE001 - that runtime's fleet stops here
                        self.log(f"fleet of {f.name} failed: {err}")
                        w["memory"].get(f.name).fail(str(err))
                        alive.remove(f)
                        continue
                    w["fleet_start"].get(f.name).samples.append(time.perf_counter() - started)
            self.log(f"{to} running containers of each runtime: {time.monotonic() - started_all:.1f} s")

        def merged(probe: Callable[[Fleet], Contenders]) -> Contenders:
            return {name: c for f in alive for name, c in probe(f).items()}

        def measure(key: str) -> None:
            time.sleep(1)  # let the runtimes' processes settle (lazy imports, first page faults)
            systemd_after = pss_kib(1)
            for f in alive:
                daemon_after = sum(pss_kib(p) for p in f.daemon_pids())
                self._memory(w[key], f.name, f.init_pids(handles[f.name]), daemon_after - daemon_before[f.name],
                             (systemd_after - systemd_before) / len(alive))

        try:
            for n in memory_at:
                grow(n)
                measure(f"memory_{n}")
            grow(half)
            self.interleave(w["exec"], merged(lambda f: f.execs(handles[f.name][0])))
            self.interleave(w["status"], merged(lambda f: f.status(handles[f.name][0])))
            self.interleave(w["list_half"], merged(lambda f: f.listing(1.0)))
            grow(count)
            measure("memory")
            self.interleave(w["list_all"], merged(lambda f: f.listing(0.7)))
        finally:
            for f in fleets:
                started = time.perf_counter()
                try:
                    f.teardown(handles[f.name])
                except Exception as err:  # noqa: BLE001
                    self.log(f"removing the fleet of {f.name} failed: {err}")
                w["teardown"].get(f.name).samples.append(time.perf_counter() - started)

    def _memory(self, memory: Workload, runtime: str, init_pids: list[int], daemon_growth_kib: float,
                systemd_growth_kib: float) -> None:
        """PSS splits a shared page between its users: the monitors Quilt forks from its fork server share pages
        with it and with the agent, whose own PSS falls as they come. So the figure is the growth of the sum
        (daemon processes + per-container processes) per container."""
        per: list[float] = []
        kinds: set[str] = set()
        for pid in init_pids:
            parent = parent_of(pid)
            if parent in (0, 1, os.getpid()):
                per.append(0.0)
                continue
            kinds.add(Path(f"/proc/{parent}/comm").read_text().split()[0])  # Quilt's monitor: "quilt-mon NAME"
            per.append(pss_kib(parent) / 1024)
        series = memory.get(runtime, unit="MiB")
        series.samples = per
        n = max(1, len(init_pids))
        series.extra = {"daemon_growth_mib_per_container": daemon_growth_kib / 1024 / n,
                        "systemd_growth_mib_per_container": systemd_growth_kib / 1024 / n,
                        "per_container_process": ", ".join(sorted(kinds)) or "none",
                        "total_mib_per_container": (sum(per) + daemon_growth_kib / 1024) / n,
                        "containers": len(init_pids)}

    def fleet_quilt(self) -> Fleet:
        names: dict[str, str] = {}
        hosts: list[str] = []  # the exec workload's container with the host's ids

        def start() -> str:
            name = self.uid("bf")
            path = self.q(self.client.run_container(name, self.s.quilt_image, ["/bin/sleep", "3600"],
                                                    self.s.quilt_opts))
            names[path] = name
            return path

        def execs(one: str) -> dict[str, tuple[int, Callable[[], float]]]:
            self.q(self.detect_exec(one))
            contenders: dict[str, tuple[int, Callable[[], float]]] = {}
            if self.quilt_exec is not None:
                contenders[QUILT] = (self.n(200), lambda: self.q(self.quilt_exec_once(one)))
                host = self.q(self.client.run_container(self.uid("bh"), self.s.quilt_image, ["/bin/sleep", "3600"],
                                                        {**self.s.quilt_opts, "userns": "host"}))
                hosts.append(host)
                contenders[QUILT + ", --userns host"] = (self.n(200), lambda: self.q(self.quilt_exec_once(host)))
            else:
                self.workloads["exec"].get(QUILT).note = "not yet: no Exec method on the container"
            if self.quiltctl_exec:
                contenders["quiltctl exec"] = (self.n(40), lambda: timed(["quiltctl", "exec", names[one], "--",
                                                                           "/bin/true"]))
            return contenders

        def status(one: str) -> dict[str, tuple[int, Callable[[], float]]]:
            return {QUILT: (self.n(500), lambda: self.q(self.quilt_timed(lambda: self.client.get_property(one,
                                                                                                        "State")))),
                    "quiltctl inspect": (self.n(40), lambda: timed(["quiltctl", "inspect", names[one]]))}

        def listing(share: float) -> dict[str, tuple[int, Callable[[], float]]]:
            return {QUILT: (self.n(300 * share), lambda: self.q(self.quilt_timed(self.client.list_containers))),
                    QUILT + ", with properties": (self.n(100 * share), lambda: self.q(self.quilt_timed(
                        self.client.list_container_properties))),
                    QUILT + ", with ps's properties": (self.n(100 * share), lambda: self.q(self.quilt_timed(
                        lambda: self.client.list_container_properties(TABLE_PROPERTIES)))),
                    "quiltctl ps -a": (self.n(30 * share), lambda: timed(["quiltctl", "ps", "-a"]))}

        def teardown(paths: list[str]) -> None:
            for p in [*paths, *hosts]:
                self.q(self.client.remove(p, True))
            hosts.clear()

        return Fleet(QUILT, start, execs, status, listing,
                     lambda paths: [self.q(self.client.get_property(p, "MainPID")) for p in paths], teardown,
                     self.agent_pids)

    def _fleet_oci(self, tool: str) -> Fleet:
        base = self.crun if tool == "crun" else self.runc
        bundle = self.bundles["sleep"]

        def start() -> str:
            cid = self.uid(tool[0] + "f")
            sh(base("run", "-d", "-b", bundle, cid))
            return cid

        def teardown(ids: list[str]) -> None:
            for i in ids:
                quiet([tool, "delete", "-f", i])

        return Fleet(
            tool, start,
            lambda one: {f"{tool} exec": (self.n(150), lambda: timed([tool, "exec", one, "/bin/true"]))},
            lambda one: {f"{tool} state": (self.n(150), lambda: timed([tool, "state", one]))},
            lambda share: {f"{tool} list": (self.n(100 * share), lambda: timed([tool, "list"]))},
            lambda ids: [json.loads(sh([tool, "state", i]))["pid"] for i in ids], teardown)

    def fleet_crun(self) -> Fleet:
        return self._fleet_oci("crun")

    def fleet_runc(self) -> Fleet:
        return self._fleet_oci("runc")

    def fleet_podman(self) -> Fleet:
        env = self.s.podman_env

        def start() -> str:
            name = self.uid("pf")
            sh(self.s.podman("run", *self.s.podman_net, "-d", "--name", name, self.s.podman_image, "/bin/sleep",
                             "3600"), env=env)
            return name

        return Fleet(
            "podman", start,
            lambda one: {"podman exec": (self.n(40), lambda: timed(["podman", "exec", one, "/bin/true"], env=env))},
            lambda one: {"podman inspect": (self.n(40), lambda: timed(
                ["podman", "inspect", "--format", "{{.State.Status}}", one], env=env))},
            lambda share: {"podman ps -a": (self.n(30 * share), lambda: timed(["podman", "ps", "-a"], env=env))},
            lambda names: [int(x) for x in sh(["podman", "inspect", "--format", "{{.State.Pid}}", *names],
                                              env=env).split()],
            lambda names: quiet(["podman", "rm", "-f", "-t", "0", "--all"], env=env))

    def w_scale(self) -> None:
        """Quilt alone, up to 2,000 running `sleep 3600` containers started one after another: at 0, 500, 1,000
        and 2,000 running, the start of the next ones (a window of starts), the list call, the agent's memory and
        fds, and the host's memory in use. Podman's fleet stops at the fleet step's 200: up to 2,000 it would
        take most of an hour."""
        top = max(20, round(2000 * self.args.scale))
        marks = sorted({0, top // 4, top // 2, top})
        window = max(5, round(20 * min(1.0, self.args.scale * 2)))
        starts = self.workload("scale_start", f"start one more, Quilt alone, with 0-{top} running")
        lists = self.workload("scale_list", f"list, Quilt alone, with 0-{top} running")
        starts.note = lists.note = ("each row: at that many running, the next starts (a window) or list calls; the "
                                    "agent's RSS and fds and the host's memory in use (MemTotal - MemAvailable, "
                                    "growth since 0) beside it")
        agent = self.agent_pids()[0]
        base_used = _memory_used_mib()
        paths: list[str] = []
        started_all = time.monotonic()

        def start() -> float:
            t = time.perf_counter()
            paths.append(self.q(self.client.run_container(self.uid("sc"), self.s.quilt_image, ["/bin/sleep", "3600"],
                                                          self.s.quilt_opts)))
            return time.perf_counter() - t

        try:
            for mark in marks:
                while len(paths) < mark:
                    start()
                label = f"{QUILT}, {mark} running"
                series = starts.get(label)
                for _ in range(window):
                    series.samples.append(start())
                listed = lists.get(label)
                for _ in range(window):
                    listed.samples.append(self.q(self.quilt_timed(self.client.list_containers)))
                summary = {"running": len(paths), "agent_rss_mib": round(_rss_kib(agent) / 1024, 1),
                           "agent_fds": len(os.listdir(f"/proc/{agent}/fd")),
                           "memory_used_mib": _memory_used_mib() - base_used}
                series.extra = listed.extra = summary
                self.log(f"scale: {len(paths)} running after {time.monotonic() - started_all:.0f} s: {summary}")
        except Exception as err:  # noqa: BLE001 - where it broke is the finding
            starts.get(f"{QUILT}, {len(paths)} running").fail(str(err))
            self.log(f"scale: a start failed with {len(paths)} running: {err}")
        finally:
            removed = time.monotonic()
            for path in paths:
                try:
                    self.q(self.client.remove(path, True))
                except ClientError as err:
                    self.log(f"scale: removing {path}: {err}")
            self.log(f"scale: removed {len(paths)} in {time.monotonic() - removed:.0f} s")

    def w_burst(self) -> None:
        wl = self.workload("burst50", "50 started at once, until all exited (wall)")
        size = 50
        rounds = max(1, min(3, round(3 * self.args.scale)))
        bundle = self.bundles["true"]

        async def quilt_burst() -> tuple[float, list[str]]:
            async def one(i: int) -> str:
                path = await self.client.run_container(self.uid("bb"), self.s.quilt_image, ["/bin/true"],
                                                       self.s.quilt_opts)
                code = await self.client.wait(path)
                return path if code == 0 else f"!exit {code}"

            started = time.perf_counter()
            got = await asyncio.gather(*(one(i) for i in range(size)), return_exceptions=True)
            elapsed = time.perf_counter() - started
            errors = [str(g) for g in got if not isinstance(g, str) or g.startswith("!")]
            await asyncio.gather(*(self.client.remove(g, True) for g in got if isinstance(g, str) and
                                   not g.startswith("!")), return_exceptions=True)
            return elapsed, errors

        def procs(make: Callable[[int], list[str]], env: dict[str, str] | None = None) -> tuple[float, list[str]]:
            files = [tempfile.TemporaryFile() for _ in range(size)]
            try:
                started = time.perf_counter()
                running = [subprocess.Popen(make(i), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=files[i], env=env) for i in range(size)]
                codes = [wait_exact(p, 300) for p in running]
                elapsed = time.perf_counter() - started
                return elapsed, [str(_failed(p.args, rc, f)) for p, rc, f in zip(running, codes, files) if rc != 0]
            finally:
                for f in files:
                    f.close()

        contenders: dict[str, Callable[[], tuple[float, list[str]]]] = {
            QUILT: lambda: self.q(quilt_burst()),
            "quiltctl run --rm": lambda: procs(lambda i: ["quiltctl", "run", *self.s.quiltctl_net, "--rm",
                                                          self.s.quilt_image, "--", "/bin/true"]),
            "crun": lambda: procs(lambda i: self.crun("run", "-b", bundle, self.uid("cb"))),
            "runc": lambda: procs(lambda i: self.runc("run", "-b", bundle, self.uid("rb"))),
            "podman run --rm": lambda: procs(lambda i: self.s.podman("run", *self.s.podman_net, "--rm",
                                                                     self.s.podman_image, "/bin/true"),
                                             env=self.s.podman_env),
            "systemd-run --scope": lambda: procs(lambda i: ["systemd-run", "--scope", "-q", "/bin/true"]),
        }
        started = time.monotonic()
        for _ in range(rounds):
            for name, fn in contenders.items():
                series = wl.get(name)
                try:
                    elapsed, errors = fn()
                except Exception as err:  # noqa: BLE001
                    series.fail(str(err))
                    continue
                series.samples.append(elapsed)
                for e in errors:
                    series.fail(e)
        for series in wl.series.values():
            series.note = f"{size} containers per round, {rounds} rounds; errors are containers that failed"
        self.log(f"{wl.title}: {time.monotonic() - started:.1f} s")

    def w_logs(self) -> None:
        wl = self.workload("logs", f"{LOG_LINES:,} log lines until all readable")
        wl.note = (f"from the start of a `seq 1 {LOG_LINES}` container until its logs command returns every line "
                   "(polled after the exit until complete, or until no new line came for 3 s); lines lost = never "
                   "returned. journald's default rate limit (RateLimitBurst=10000 per 30 s, scaled up with free "
                   "space) applies per unit; the second set ran with RateLimitIntervalSec=0")
        rounds = max(1, min(2, round(2 * self.args.scale)))
        for _ in range(rounds):
            self._logs_quilt(wl, "journald", "")
            self._logs_quilt(wl, "k8s-file", "")
            self._logs_quilt(wl, "journald+file", "")
            self._logs_podman(wl, "journald", "")
            self._logs_podman(wl, "k8s-file", "")
        if not self.s.in_testhost:
            return
        conf = Path("/etc/systemd/journald.conf.d/90-quilt-bench.conf")
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("[Journal]\nRateLimitIntervalSec=0\n")
        try:
            sh(["systemctl", "restart", "systemd-journald"])
            for _ in range(rounds):
                self._logs_quilt(wl, "journald", ", no rate limit")
                self._logs_podman(wl, "journald", ", no rate limit")
        finally:
            conf.unlink()
            quiet(["systemctl", "restart", "systemd-journald"])

    def _count_lines(self, lines: list[str]) -> int:
        seen = set()
        for text in lines:
            text = text.strip()
            if text.isdigit():
                seen.add(int(text))
        return sum(1 for i in seen if 1 <= i <= LOG_LINES)

    def _poll_logs(self, wl: Workload, runtime: str, started: float, exited: float,
                   read: Callable[[], list[str]]) -> None:
        series = wl.get(runtime)
        got, reads, last_growth = -1, [], time.perf_counter()
        while True:
            t = time.perf_counter()
            now = self._count_lines(read())
            reads.append(time.perf_counter() - t)
            if now > got:
                got, last_growth = now, time.perf_counter()
            if got >= LOG_LINES or time.perf_counter() - last_growth > 3.0 or time.perf_counter() - exited > 60:
                break
            time.sleep(0.1)
        if got >= LOG_LINES:
            series.samples.append(time.perf_counter() - started)
        else:
            series.fail(f"{LOG_LINES - got} lines never readable")
        series.extra.setdefault("lost", []).append(LOG_LINES - got)
        series.extra.setdefault("exit_after_s", []).append(exited - started)
        series.extra.setdefault("one_read_s", []).append(reads[-1])

    def _logs_quilt(self, wl: Workload, driver: str, variant: str) -> None:
        name = self.uid("bl")
        started = time.perf_counter()
        path = self.q(self.client.run_container(name, self.s.quilt_image, ["/bin/seq", "1", str(LOG_LINES)],
                                                {**self.s.quilt_opts, "log_driver": driver}))
        self.q(self.client.wait(path))
        exited = time.perf_counter()
        # The journald rows keep their names of earlier runs, for comparison.
        variant = variant if driver == "journald" else f" ({driver}){variant}"
        self._poll_logs(wl, f"{QUILT} GetLogs{variant}", started, exited,
                        lambda: [line.text for line in self.q(self.client.read_logs(path, {}))])
        # The CLI reads the same journal; it starts now that every line Quilt will ever have is there.
        with tempfile.TemporaryFile() as out:
            started_cli = time.perf_counter()
            code = run(["quiltctl", "logs", name], out, subprocess.DEVNULL)
            elapsed = time.perf_counter() - started_cli
            out.seek(0)
            lines = out.read().decode(errors="replace").splitlines()
        series = wl.get(f"quiltctl logs{variant} (1 read)")
        if code == 0:
            series.samples.append(elapsed)
        else:
            series.fail(f"quiltctl logs: exit {code}")
        series.extra.setdefault("lost", []).append(LOG_LINES - self._count_lines(lines))
        self.q(self.client.remove(path, True))

    def _logs_podman(self, wl: Workload, driver: str, variant: str) -> None:
        env = self.s.podman_env
        name = self.uid("pl")
        started = time.perf_counter()
        sh(self.s.podman("run", *self.s.podman_net, "-d", "--log-driver", driver, "--name", name,
                         self.s.podman_image, "/bin/seq", "1", str(LOG_LINES)), env=env)
        sh(["podman", "wait", name], env=env)
        exited = time.perf_counter()

        def read() -> list[str]:
            with tempfile.TemporaryFile() as out:
                run(["podman", "logs", name], out, subprocess.DEVNULL, env)
                out.seek(0)
                return out.read().decode(errors="replace").splitlines()

        self._poll_logs(wl, f"podman logs ({driver}{variant})", started, exited, read)
        quiet(["podman", "rm", "-f", name], env=env)

    # the whole run

    def versions(self) -> dict[str, str]:
        return {
            "quilt": self.q(self.client.version()),
            "crun": version_line(["crun", "--version"]),
            "runc": version_line(["runc", "--version"]),
            "podman": version_line(["podman", "--version"]),
            "bubblewrap": version_line(["bwrap", "--version"]),
            "systemd": version_line(["systemctl", "--version"]),
            "python": platform.python_version(),
        }

    def run(self) -> dict[str, Any]:
        subprocess.run(["systemctl", "start", "quilt-agent"], check=True)
        self.q(self.client.connect())
        info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": machine()}
        self.log("building the rootfs, the bundles and the Podman image")
        self.s.build()
        self.bundles = {"true": self.s.bundle("true", ["/bin/true"]),
                        "sleep": self.s.bundle("sleep", ["/bin/sleep", "3600"])}
        # Import once and name the image, as `podman import` does; an agent without ImportImage imports the
        # tarball on its first use and finds it by the file's identity afterwards.
        try:
            self.q(self.client.import_image(str(self.s.tarball), "quilt-bench-busybox"))
            self.s.quilt_image = "quilt-bench-busybox"
        except (AttributeError, ClientError) as err:
            self.log(f"Quilt has no ImportImage ({err}): containers name the tarball")
        try:
            path = self.q(self.client.run_container(self.uid("import"), self.s.quilt_image, ["/bin/true"],
                                                    self.s.quilt_opts))
        except ClientError as err:  # an agent from before networks: loopback only is all it does
            self.log(f"Quilt refused {self.s.quilt_opts} ({err}): no network option")
            self.s.quilt_opts, self.s.quiltctl_net = {}, []
            path = self.q(self.client.run_container(self.uid("import"), self.s.quilt_image, ["/bin/true"], {}))
        self.q(self.client.wait(path))
        self.q(self.client.remove(path))
        info["quilt_image"] = self.s.quilt_image
        info["quilt_options"] = self.s.quilt_opts
        info["podman_network"] = " ".join(self.s.podman_net)
        info["tree"] = subprocess.run(["git", "-C", str(PROJECT), "describe", "--always", "--dirty"],
                                      capture_output=True, text=True).stdout.strip()
        info["load_before"] = os.getloadavg()
        info["versions"] = self.versions()
        steps = {"run": self.w_run, "start": self.w_start, "cli": self.w_cli, "fleet": self.fleet,
                 "burst": self.w_burst, "logs": self.w_logs, "scale": self.w_scale}
        total = time.monotonic()
        for key, step in steps.items():
            if self.args.workloads and key not in self.args.workloads:
                continue
            step()
        info["seconds"] = round(time.monotonic() - total, 1)
        info["load_after"] = os.getloadavg()
        info["workloads"] = {k: {"title": w.title, "note": w.note,
                                 "series": {r: s.as_json() for r, s in w.series.items()}}
                             for k, w in self.workloads.items()}
        self.client.close()
        return info


# --- reporting ----------------------------------------------------------------------------------------------


def is_quilt(name: str) -> bool:
    return name == QUILT or name.startswith(QUILT + " ")


def quilt_value(series: dict[str, Any], key: str) -> float | None:
    for name, s in series.items():
        if is_quilt(name) and s.get(key):
            return s[key]
    return None


def short_version(name: str, line: str) -> str:
    if line.startswith("unavailable"):
        return line
    words = line.replace("(", " ").split()
    if name == "systemd":
        return words[1] if len(words) > 1 else line
    return words[-1] if name != "runc" else words[2] if len(words) > 2 else line


def table(info: dict[str, Any]) -> str:
    m = info["machine"]
    out = [
        f"Quilt and its peers, {info['date'][:10]}: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, {m['cgroups']}" + (", in the test host" if m["test_host"] else ""),
        "versions: " + ", ".join(f"{k} {short_version(k, val)}" for k, val in info["versions"].items()),
        f"tree {info.get('tree', '?')}; load average (1 min) {info.get('load_before', [0])[0]:.1f} at the start, "
        f"{info.get('load_after', [0])[0]:.1f} at the end; Quilt's containers: image {info.get('quilt_image', '?')}, "
        f"options {info.get('quilt_options', {})}; podman {info.get('podman_network', '')}",
        "ratio: the runtime's median / Quilt's median through the bus (above 1 = slower than Quilt)",
        "",
        f"{'workload':<40} {'runtime':<38} {'median':>10} {'p95':>10} {'ratio':>6} {'n':>4} {'err':>4}",
    ]
    for key, w in info["workloads"].items():
        series = w["series"]
        memory = key == "memory" or key.startswith("memory_")
        base = quilt_value(series, "total_mib_per_container" if memory else "median")
        for i, (name, s) in enumerate(series.items()):
            label = w["title"] if i == 0 else ""
            head = f"{label:<40} {name:<38}"
            if memory:
                total = s.get("total_mib_per_container")
                if total is None:
                    out.append(f"{head} failed: {s['first_error'][:60]}")
                    continue
                ratio = f"{total / base:.2f}" if base else "-"
                own = statistics.mean(s["samples"]) if s["samples"] else 0.0
                out.append(f"{head} {total:>6.2f} MiB {'':>10} {ratio:>6} {s['containers']:>4} {s['errors']:>4}"
                           f"  {s['per_container_process']} {own:.2f} MiB each, daemon "
                           f"{s['daemon_growth_mib_per_container']:+.3f}")
                continue
            med, p95 = s["median"], s["p95"]
            if med is None and key == "logs" and s.get("lost"):
                out.append(f"{head} {'-':>10} {'-':>10} {'-':>6} {0:>4} {s['errors']:>4}  lines lost: "
                           f"{_range(s['lost'])} (journald rate limit)")
                continue
            if med is None:
                out.append(f"{head} {(s['note'] or s['first_error'] or 'no samples')[:80]}")
                continue
            ratio = f"{med / base:.2f}" if base else "-"
            extra = ""
            if key == "logs":
                extra = f"  lines lost: {max(s.get('lost', [0]))}"
                if s.get("exit_after_s"):
                    extra += f", container exited after {fmt_ms(statistics.median(s['exit_after_s']))}"
            elif s["errors"]:
                extra = f"  {_last_words(s['first_error'])!r}"
            if key.startswith("scale_") and "agent_fds" in s:
                extra += (f"  agent {s['agent_rss_mib']} MiB RSS, {s['agent_fds']} fds; host memory "
                          f"+{s['memory_used_mib']} MiB")
            out.append(f"{head} {fmt_ms(med):>10} {fmt_ms(p95):>10} {ratio:>6} {s['n']:>4} {s['errors']:>4}{extra}")
    out.append(f"(the whole run took {info['seconds']:.0f} s)")
    return "\n".join(out)


def _memory_panel(ax: Any, workloads: list[dict[str, Any]]) -> None:
    """Memory per running container (runtime processes + the daemon's growth), a group of bars per fleet size."""
    names = sorted({n for w in workloads for n, s in w["series"].items()
                    if s.get("total_mib_per_container") is not None},
                   key=lambda n: (not is_quilt(n), n))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [w["series"].get(name, {}).get("total_mib_per_container") or 0.0 for w in workloads]
        bars = ax.bar([x + i * width for x in range(len(workloads))], values, width, label=name,
                      color="#d9534f" if is_quilt(name) else None)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    sizes = [max(s.get("containers", 0) for s in w["series"].values()) for w in workloads]
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(workloads))], [f"{n} running" for n in sizes])
    ax.set_ylabel("MiB per container", fontsize=8)
    ax.set_title("memory per running container (PSS of its runtime process + the daemon's growth)", fontsize=10)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=8)


def chart(info: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    keys = [k for k in ("run", "start", "exec", "status", "list_half", "list_all", "fleet_start", "burst50")
            if k in info["workloads"] and any(s["samples"] for s in info["workloads"][k]["series"].values())]
    memory = sorted((k for k in info["workloads"] if k == "memory" or k.startswith("memory_")),
                    key=lambda k: max((s.get("containers", 0) for s in info["workloads"][k]["series"].values()),
                                      default=0))
    if not keys and not memory:
        return
    cols = 2
    rows = math.ceil((len(keys) + bool(memory)) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 2.1 + 1.9 * rows * 1.3), squeeze=False)
    if memory:
        _memory_panel(list(axes.flat)[len(keys)], [info["workloads"][k] for k in memory])
    for ax, key in zip(axes.flat, keys):
        w = info["workloads"][key]
        names = [n for n, s in w["series"].items() if s["samples"]]
        data = [[x * 1000 for x in w["series"][n]["samples"]] for n in names]
        style = {"showfliers": True, "whis": (5, 95), "patch_artist": True,
                 "flierprops": {"markersize": 2, "alpha": 0.4}}
        try:
            parts = ax.boxplot(data, orientation="horizontal", **style)  # matplotlib >= 3.10
        except TypeError:
            parts = ax.boxplot(data, vert=False, **style)
        ax.set_yticks(range(1, len(names) + 1), names)
        for patch, n in zip(parts["boxes"], names):
            patch.set_facecolor("#d9534f" if n.startswith("quilt") else "#8fb3d9")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(w["title"], fontsize=10)
        ax.set_xlabel("ms (log scale; box: quartiles, whiskers: 5th-95th percentile)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(keys) + bool(memory):]:
        ax.set_visible(False)
    m = info["machine"]
    fig.suptitle(f"Quilt and peers, {info['date'][:10]}, {m['cores']} cores, Linux {m['kernel']}, "
                 f"{m['cgroups'].split(' (')[0]}, in the test host", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    hostcheck.refuse_debug_agent("bench/peers.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every repetition count (0.1: a smoke run)")
    parser.add_argument("--workloads", nargs="*", choices=("run", "start", "cli", "fleet", "burst", "logs", "scale"),
                        help="only these steps (default: all)")
    parser.add_argument("--only", nargs="*", choices=("quilt", "crun", "runc", "podman"),
                        help="fleet step: only these runtimes")
    parser.add_argument("--out", type=Path, default=PROJECT / "bench/results",
                        help="where latest.json and latest.png go")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="measure nothing: print the table of an earlier run's JSON and redraw its chart")
    args = parser.parse_args()
    if args.report:
        info = json.loads(args.report.read_text())
        print(table(info))
        try:
            chart(info, args.report.with_suffix(".png"))
        except ImportError as err:
            print(f"bench: no chart ({err}): pip install matplotlib", file=sys.stderr)
        return 0
    if os.geteuid() != 0:
        parser.error("must run as root (inside the test host: make bench)")
    in_testhost = bool(os.environ.get("QUILT_TESTHOST"))
    if not in_testhost:
        print("bench: not in the test host: Podman uses the machine's storage as configured", file=sys.stderr)
    missing = [t for t in ("crun", "runc", "podman", "bwrap", "systemd-run") if shutil.which(t) is None]
    if missing:
        parser.error(f"missing {', '.join(missing)} (make bench installs them)")
    with tempfile.TemporaryDirectory(prefix="quilt-bench-") as tmp:
        bench = Bench(args, Setup(Path(tmp), in_testhost))
        info = bench.run()
    text = table(info)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp_json = args.out / "latest.json.tmp"
    tmp_json.write_text(json.dumps({**info, "table": text}, indent=1) + "\n")
    tmp_json.rename(args.out / "latest.json")
    try:
        chart(info, args.out / "latest.png")
    except ImportError as err:
        print(f"bench: no chart ({err}): pip install matplotlib", file=sys.stderr)
    print(f"raw numbers: {args.out / 'latest.json'}, chart: {args.out / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
