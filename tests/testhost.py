#!/usr/bin/env python3
"""A throwaway systemd host for Quilt's tests.

    python3 tests/testhost.py run [--keep-on-failure] [--name NAME] [--cgroup unified] [--loop-check MS]
                                  [--state DIR] [--etc-quilt DIR]
                                  [--deb build/quilt-runtime_VERSION_ARCH.deb | --bare]
                                  -- CMD ARGS...
    python3 tests/testhost.py cleanup

`run` boots a real systemd as PID 1 of its own pid, mount, cgroup, uts, ipc and
net namespaces, over an overlay of the machine's root whose upper layer is a
tmpfs, so nothing it writes reaches the machine. The project's units, bus and
polkit files are installed into that overlay, CMD runs inside (working
directory = the project checkout, the project's .venv first on PATH), and
everything is torn down afterwards. The exit status is CMD's. Installed from the
checkout, quilt-restart.service is enabled, as the package's postinst enables it,
so each boot starts the containers whose restart policy says so (with --deb, the
package's postinst enables it after the boot: no boot of that host runs it).

The agent's data directory, /var/lib/quilt, is a fresh tmpfs; with --state DIR
it is DIR (made, mode 0700, if missing), bound from the machine: a second host
booted with the same DIR finds the first one's database, containers and images,
as a machine finds them after a reboot (a host's processes die with it, as at a
power cut). Likewise --etc-quilt DIR (made, mode 0755, if missing) is bound on
the host's /etc/quilt, which is otherwise the machine's seen through the overlay:
with both, a second host boots on the first one's container files
(/etc/quilt/containers) too, and its systemd's generator makes their services
and the links their [Install] sections ask for, as at a machine's boot.

With --deb, the Debian package is installed instead, with apt-get inside the
booted host as an admin would (its dependencies must be on the machine: the
host has no network), and the venv comes last on PATH, so that /usr/bin/quiltctl
and the packaged agent are what runs. --bare installs nothing of Quilt.

Either way quilt-agent.service gets a drop-in that runs the agent's event loop in asyncio's debug mode
(QUILT_LOOP_CHECK=MS, quilt_agent/loopcheck.py): it logs every callback that holds the loop longer than MS
(default 100; 0: off), and the integration suite fails the test during which one did
(tests/integration/loopcheck.py, told MS in QUILT_TESTHOST_LOOP_CHECK).

Only the standard library is used: this runs before the project's venv exists.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "quilt-testhost-"
TARGET = "quilt-testhost.target"
CONSOLE = "/run/quilt-testhost-console.log"
BOOT_TIMEOUT = 30.0
# Debug mode records where every task and future was made: on a loaded 2-core CI host, plain steps (a polkit
# check's, a bus object's export) reached 50 ms with nothing blocking in them. The blocking calls found so far
# took 100 ms and more there (forking nft from the loop, a lock held across an fsync).
LOOP_CHECK_MS = 100
LOOP_CHECK_DROPIN = "etc/systemd/system/quilt-agent.service.d/50-testhost-loop-check.conf"

# Units that would change machine-wide state (sysctls, binfmt, modules, the
# clock) or that make no sense in a throwaway host. Masked in the overlay.
MASKED_UNITS = (
    "systemd-sysctl.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "systemd-timesyncd.service",
    "systemd-hwdb-update.service",
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "systemd-pstore.service",
    "systemd-repart.service",
    "systemd-random-seed.service",
    "systemd-remount-fs.service",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "getty.target",
    "console-getty.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_reap.service",
    "postgresql.service",
)

# Capabilities the whole test host (systemd and everything entered with
# nsenter) gives up: with them, a test could load a kernel module, set the
# machine's clock or poke raw I/O ports. No test needs them.
DROPPED_CAPS = {"sys_module": 16, "sys_rawio": 17, "sys_time": 25, "wake_alarm": 35}

# Device nodes bound from the machine into the test host's own /dev.
DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty")

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 1, 24, 36
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str | Path, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    _check(
        _libc.mount(source.encode(), str(target).encode(), fstype.encode() if fstype else None, flags,
                    data.encode() if data else None),
        f"mount {source} on {target}",
    )


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(SYS_PIVOT_ROOT[os.uname().machine], new_root.encode(), put_old.encode()), "pivot_root")


def drop_capabilities() -> None:
    for cap in DROPPED_CAPS.values():
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


def log(message: str) -> None:
    print(f"testhost: {message}", file=sys.stderr, flush=True)


# --- cgroups -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy of the machine."""

    mountpoint: Path
    fstype: str  # "cgroup" (v1) or "cgroup2"
    options: str  # v1: controllers / name=..., as the mount needs them

    def own_cgroup(self, pid: int | str = "self") -> Path:
        """The directory of `pid`'s cgroup in this hierarchy."""
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            hid, controllers, path = line.split(":", 2)
            if self.fstype == "cgroup2" and hid == "0":
                return self.mountpoint / path.lstrip("/")
            if self.fstype == "cgroup" and set(controllers.split(",")) == set(self.options.split(",")) - {"none"}:
                return self.mountpoint / path.lstrip("/")
        return self.mountpoint


def hierarchies() -> list[Hierarchy]:
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _src, target, fstype, opts, *_ = line.split()
        if fstype not in ("cgroup", "cgroup2") or not target.startswith(str(CGROUP_ROOT)):
            continue
        keep = [o for o in opts.split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")
                and not o.startswith(("clone_children", "nsdelegate", "memory_recursiveprot", "release_agent"))]
        if fstype == "cgroup" and any(o.startswith("name=") for o in keep) and "none" not in keep:
            keep.insert(0, "none")
        found.append(Hierarchy(Path(target), fstype, ",".join(keep)))
    return found


def unified_only() -> bool:
    return any(h.mountpoint == CGROUP_ROOT and h.fstype == "cgroup2" for h in hierarchies())


class Cgroups:
    """The test host's cgroup in every hierarchy, made under the runner's own cgroup."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dirs = [h.own_cgroup() / name for h in hierarchies()]

    def create(self) -> None:
        for d in self.dirs:
            d.mkdir()
            for f in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset starts empty: a task can't join it
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((d.parent / f).read_text())
            if unified_only() and (d.parent / "cgroup.subtree_control").exists():
                # On a pure v2 host, hand the test host's systemd what controllers its parent has.
                avail = (d.parent / "cgroup.controllers").read_text().split()
                try:
                    (d.parent / "cgroup.subtree_control").write_text(" ".join("+" + c for c in avail))
                except OSError as err:
                    log(f"could not enable controllers {avail} under {d.parent}: {err}")

    def join(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def remove(self, timeout: float = 10.0) -> None:
        remove_cgroup_trees(self.dirs, timeout)


def cgroup_dirs(tree: Path) -> list[Path]:
    """tree and its sub-cgroups, deepest first. os.walk, not rglob: another runner may be removing them."""
    found = [Path(d) for d, _, _ in os.walk(tree)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def cgroup_pids(tree: Path) -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs(tree):
        try:
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        except OSError:
            pass
    return pids


def remove_cgroup_trees(dirs: list[Path], timeout: float) -> None:
    """Kill whatever is left in the trees, then rmdir them depth-first."""
    deadline = time.monotonic() + timeout
    for top in dirs:
        while top.exists():
            for pid in cgroup_pids(top):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                for d in cgroup_dirs(top):
                    d.rmdir()
            except OSError as err:
                if err.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT):
                    raise
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cgroup {top} still busy: {err}") from err
                time.sleep(0.02)


def process_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def cleanup_orphans() -> list[Path]:
    """Remove test hosts whose runner is gone (a crashed or killed run)."""
    orphans: list[Path] = []
    for h in hierarchies():
        # os.walk, not glob: other runners create and remove their cgroups meanwhile.
        for top, dirs, _files in os.walk(h.mountpoint):
            if top.count("/") - str(h.mountpoint).count("/") >= 5:
                dirs[:] = []
            for name in [d for d in dirs if d.startswith(CGROUP_PREFIX)]:
                dirs.remove(name)
                runner = name[len(CGROUP_PREFIX):].split("-")
                if len(runner) != 3 or process_start_time(int(runner[0])) == runner[1]:
                    continue
                orphans.append(Path(top) / name)
    if orphans:
        log(f"removing {len(orphans)} cgroups left by crashed runs")
        remove_cgroup_trees(orphans, timeout=10.0)
    return orphans


# --- inside the new namespaces, as their PID 1, before systemd -------------------------------------


def setup_root(name: str, project_fd: int, unified: bool, bare: bool = False, loop_check_ms: int = 0,
               state_fd: int = -1, etc_quilt_fd: int = -1) -> Path:
    """Build the test host's root filesystem; return its path (still in the old root).

    state_fd: a directory of the machine's to be the agent's data directory (-1: a fresh tmpfs).
    etc_quilt_fd: a directory of the machine's to be /etc/quilt (-1: the overlay's, the machine's /etc/quilt)."""
    stage = Path("/tmp")  # a private mount namespace: this tmpfs is invisible to the machine
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for d in ("upper", "work", "root"):
        (stage / d).mkdir()
    root = stage / "root"
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={stage}/upper,workdir={stage}/work")

    mount("proc", root / "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # /proc/sys read-only but for /proc/sys/net, which belongs to the test host's network namespace.
    for sub, ro in (("proc/sys", True), ("proc/sys/net", False), ("proc/sysrq-trigger", True)):
        if not (root / sub).exists():
            continue
        mount(str(root / sub), root / sub, None, MS_BIND)
        mount("none", root / sub, None, MS_REMOUNT | MS_BIND | (MS_RDONLY if ro else 0) | MS_NOSUID | MS_NODEV)
    mount("sysfs", root / "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount_cgroups(root / "sys/fs/cgroup", unified)
    make_dev(root / "dev")
    for d, mode in (("run", "0755"), ("tmp", "1777")):
        mount("tmpfs", root / d, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")
    # The agent's data directory must not be on the overlay: overlayfs refuses an upper dir on overlayfs.
    (root / "var/lib/quilt").mkdir(parents=True, exist_ok=True)
    if state_fd >= 0:
        mount(f"/proc/self/fd/{state_fd}", root / "var/lib/quilt", None, MS_BIND)
    else:
        mount("tmpfs", root / "var/lib/quilt", "tmpfs", 0, "mode=0700")
    if etc_quilt_fd >= 0:
        # Made in the overlay's upper layer (the machine may have no /etc/quilt): the bind hides it.
        (root / "etc/quilt").mkdir(mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{etc_quilt_fd}", root / "etc/quilt", None, MS_BIND)
    target = root / str(PROJECT).lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    mount(f"/proc/self/fd/{project_fd}", target, None, MS_BIND | MS_REC)

    configure_systemd(root, name, loop_check_ms)
    if not bare:
        install_project(root, target)
    return root


def mount_cgroups(at: Path, unified: bool) -> None:
    """The machine's layout, or (unified) only cgroup2, as a pure v2 host has it."""
    hs = hierarchies()
    if unified or unified_only():
        # On a hybrid machine the cgroup2 hierarchy lacks the controllers v1 holds: systemd boots in
        # unified mode all the same, which tries the v2 code paths (no memory or pids limits there).
        mount("cgroup2", at, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return
    mount("tmpfs", at, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755")
    for h in hs:
        mp = at / h.mountpoint.relative_to(CGROUP_ROOT)
        mp.mkdir(parents=True, exist_ok=True)
        mount("cgroup", mp, h.fstype, MS_NOSUID | MS_NODEV | MS_NOEXEC, h.options or None)
    for link in CGROUP_ROOT.iterdir():  # cpu -> cpu,cpuacct and the like
        if link.is_symlink():
            (at / link.name).symlink_to(os.readlink(link))


def make_dev(dev: Path) -> None:
    """A /dev of the test host's own: binding the machine's recursively would leak mounts back."""
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=0755")
    for node in DEVICE_NODES:
        (dev / node).touch()
        mount(f"/dev/{node}", dev / node, None, MS_BIND)
    (dev / "pts").mkdir()
    mount("devpts", dev / "pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5")
    (dev / "ptmx").symlink_to("pts/ptmx")
    (dev / "shm").mkdir()
    mount("tmpfs", dev / "shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        (dev / name).symlink_to(target)
    if Path("/dev/net/tun").exists():
        (dev / "net").mkdir()
        (dev / "net/tun").touch()
        mount("/dev/net/tun", dev / "net/tun", None, MS_BIND)


def configure_systemd(root: Path, name: str, loop_check_ms: int = 0) -> None:
    etc = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        path = etc / unit
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to("/dev/null")
    for wants in etc.glob("*.wants"):
        if wants.name.startswith(("multi-user", "timers", "getty")):
            for link in wants.iterdir():
                link.unlink()
    (etc / TARGET).write_text(
        "[Unit]\nDescription=Quilt test host\n"
        "Requires=basic.target\nWants=dbus.socket systemd-journald.socket\n"
        "After=basic.target dbus.socket systemd-journald.socket\nAllowIsolate=yes\n"
    )
    # A container image's policy-rc.d (Docker's refuses every service action) would keep a package's maintainer
    # scripts from restarting or stopping its services: a booted host has none.
    policy = root / "usr/sbin/policy-rc.d"
    if policy.is_symlink() or policy.exists():
        policy.unlink()
    if loop_check_ms:
        # In /etc: over the unit wherever it is installed, by the checkout's files or by the package.
        dropin = root / LOOP_CHECK_DROPIN
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(f"[Service]\nEnvironment=QUILT_LOOP_CHECK={loop_check_ms}\n")
    (root / "etc/hostname").write_text(name + "\n")
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    os.sethostname(name) if hasattr(os, "sethostname") else subprocess.run(["hostname", name], check=True)


def install_project(root: Path, checkout: Path) -> None:
    """Install units, bus and polkit files as a package would, binaries from the project's venv.

    checkout is the project as bound into root: the stage's tmpfs may hide PROJECT (a clone in /tmp).
    """
    subprocess.run(["make", "-s", "-C", str(checkout), "install-data", f"DESTDIR={root}"], check=True)
    enable_restart_unit(root)
    venv_bin = PROJECT / ".venv/bin"
    # The generator too, which systemd runs at boot and at each daemon-reload: install-data put the package's
    # wrapper there, which finds no Quilt outside the package's private directory.
    for tool, where in (("quilt-agent", "usr/bin"), ("quiltctl", "usr/bin"),
                        ("quilt-generator", "usr/lib/systemd/system-generators")):
        link = root / where / tool
        if (checkout / ".venv/bin" / tool).exists():
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(venv_bin / tool)


def enable_restart_unit(root: Path) -> None:
    """Enable quilt-restart.service as the package's postinst does (WantedBy=multi-user.target), so that
    `systemctl is-enabled` and `disable` inside act on it as on a machine.

    The test host boots TARGET, not multi-user.target (whose other wants configure_systemd empties): the unit is
    hooked there too, so that each boot, like a machine's, starts the containers whose policy says so."""
    unit = "/usr/lib/systemd/system/quilt-restart.service"
    for target in ("multi-user.target", TARGET):
        link = root / "etc/systemd/system" / f"{target}.wants" / "quilt-restart.service"
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(unit)


def boot(name: str, unified: bool, bare: bool = False, loop_check_ms: int = 0, state: Path | None = None,
         etc_quilt: Path | None = None) -> None:
    """PID 1 of the new namespaces: build the root, pivot into it, exec systemd."""
    # Opened before the stage's tmpfs covers /tmp, where any of them may be (a clone, pytest's tmp_path).
    project_fd = os.open(PROJECT, os.O_PATH | os.O_DIRECTORY)
    state_fd = os.open(state, os.O_PATH | os.O_DIRECTORY) if state is not None else -1
    etc_quilt_fd = os.open(etc_quilt, os.O_PATH | os.O_DIRECTORY) if etc_quilt is not None else -1
    root = setup_root(name, project_fd, unified, bare, loop_check_ms, state_fd, etc_quilt_fd)
    console = os.open(root / CONSOLE.lstrip("/"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chdir(root)
    pivot_root(".", ".")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    os.dup2(console, 1)
    os.dup2(console, 2)
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    drop_capabilities()
    env = {"container": "quilt-testhost", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    os.execve("/lib/systemd/systemd", ["/lib/systemd/systemd", f"--unit={TARGET}", "--show-status=no"], env)


# --- the runner, on the machine ------------------------------------------------------------------


class TestHost:
    def __init__(self, name: str, unified: bool = False, bare: bool = False,
                 loop_check_ms: int = LOOP_CHECK_MS, state: Path | None = None,
                 etc_quilt: Path | None = None) -> None:
        me = os.getpid()
        self.name = name
        self.unified = unified
        self.bare = bare  # nothing of Quilt installed at boot: a package is, or the command installs one
        self.loop_check_ms = loop_check_ms
        self.state = state  # the agent's data directory, kept across hosts; None: a tmpfs of this host's own
        self.etc_quilt = etc_quilt  # /etc/quilt, kept across hosts; None: the machine's, through the overlay
        self.cgroups = Cgroups(f"{CGROUP_PREFIX}{me}-{process_start_time(me)}-{name}")
        self.unshare_pid = 0
        self.pid1 = 0

    def start(self) -> None:
        self.cgroups.create()
        pid = os.fork()
        if pid == 0:
            try:
                self.cgroups.join(os.getpid())
                # If the runner dies, unshare dies, and --kill-child takes the whole host with it.
                _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                os.execvp("unshare", [
                    "unshare", "--pid", "--fork", "--kill-child", "--mount", "--cgroup", "--uts", "--ipc",
                    "--net", "--propagation", "private",
                    sys.executable, str(Path(__file__).resolve()), "_boot", "--name", self.name,
                    *(["--cgroup=unified"] if self.unified else []), *(["--bare"] if self.bare else []),
                    f"--loop-check={self.loop_check_ms}",
                    *([f"--state={self.state}"] if self.state is not None else []),
                    *([f"--etc-quilt={self.etc_quilt}"] if self.etc_quilt is not None else []),
                ])
            finally:
                os._exit(127)
        self.unshare_pid = pid
        deadline = time.monotonic() + 5
        children = Path(f"/proc/{pid}/task/{pid}/children")
        while not self.pid1:
            try:
                self.pid1 = int(children.read_text().split()[0])
            except (OSError, IndexError):
                if time.monotonic() > deadline or os.waitpid(pid, os.WNOHANG) != (0, 0):
                    raise RuntimeError("the test host's PID 1 did not start")
                time.sleep(0.002)

    def wait_ready(self, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until systemd runs and the bus answers; return is-system-running's verdict."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitpid(self.unshare_pid, os.WNOHANG) != (0, 0):
                self.unshare_pid = 0
                raise RuntimeError("the test host died while booting")
            try:
                exe = os.readlink(f"/proc/{self.pid1}/exe")
            except OSError:
                exe = ""
            if exe.endswith("/systemd"):
                out = self.exec(["systemctl", "is-system-running", "--wait"], capture=True, timeout=timeout)
                state = out.stdout.strip()
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.01)
        raise TimeoutError(f"the test host did not boot within {timeout:.0f} s")

    def nsenter(self, cmd: list[str]) -> list[str]:
        # cd inside: nsenter's --wd would keep a directory of the machine's mount namespace.
        return ["nsenter", "-t", str(self.pid1), "-a", "/bin/sh", "-c", 'cd "$0" && exec "$@"', str(PROJECT), *cmd]

    def exec(self, cmd: list[str], capture: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run cmd inside the test host, in its cgroup, so its teardown takes cmd's leftovers too."""
        env = dict(os.environ)
        system_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        # Without the project installed from the venv, the venv's tools (pytest, py-spy) stay reachable but
        # quiltctl and quilt-agent are the ones in /usr/bin.
        env["PATH"] = f"{system_path}:{PROJECT}/.venv/bin" if self.bare else f"{PROJECT}/.venv/bin:{system_path}"
        env["QUILT_TESTHOST"] = self.name
        env["QUILT_TESTHOST_LOOP_CHECK"] = str(self.loop_check_ms)
        env.pop("VIRTUAL_ENV", None)

        def enter() -> None:
            self.cgroups.join(os.getpid())
            drop_capabilities()

        return subprocess.run(self.nsenter(cmd), env=env, preexec_fn=enter, text=True, timeout=timeout,
                              capture_output=capture)

    def console(self) -> str:
        try:
            return Path(f"/proc/{self.pid1}/root{CONSOLE}").read_text()
        except OSError as err:
            return f"(no console log: {err})"

    def destroy(self) -> None:
        # Killing unshare makes the kernel kill PID 1 (--kill-child is a parent-death signal), and
        # the namespace's other processes die with it. The runner is a subreaper: it reaps PID 1 too.
        if self.unshare_pid:
            os.kill(self.unshare_pid, signal.SIGKILL)
            os.waitpid(self.unshare_pid, 0)
        deadline = time.monotonic() + 10
        while self.pid1 and time.monotonic() < deadline:
            try:
                if os.waitpid(self.pid1, os.WNOHANG) != (0, 0):
                    break
            except ChildProcessError:
                if not Path(f"/proc/{self.pid1}").exists():
                    break
            time.sleep(0.005)
        self.cgroups.remove()


def wait_for_signal() -> None:
    got = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: got.append(s))
    while not got:
        signal.pause()


def install_package(host: TestHost, deb: Path) -> None:
    """apt-get install ./quilt-runtime_*.deb inside the host, as an admin would; offline, as the host is."""
    started = time.monotonic()
    out = host.exec(["apt-get", "install", "-y", "-q", "--no-install-recommends", str(deb)], capture=True)
    if out.returncode != 0:
        raise RuntimeError(f"apt-get install {deb} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    version = host.exec(["dpkg-query", "-W", "-f=${Version}", "quilt-runtime"], capture=True).stdout
    log(f"installed quilt-runtime {version} from {deb} in {time.monotonic() - started:.1f} s")


def run(cmd: list[str], name: str, keep_on_failure: bool, unified: bool = False, deb: Path | None = None,
        bare: bool = False, loop_check_ms: int = LOOP_CHECK_MS, state: Path | None = None,
        etc_quilt: Path | None = None) -> int:
    cleanup_orphans()
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    host = TestHost(name, unified, bare=bare or deb is not None, loop_check_ms=loop_check_ms, state=state,
                    etc_quilt=etc_quilt)
    rc = 125
    started = time.monotonic()
    try:
        host.start()
        state = host.wait_ready()
        log(f"{name} booted in {time.monotonic() - started:.2f} s ({state}), PID 1 is {host.pid1}")
        if state != "running":
            host.exec(["systemctl", "--failed", "--no-pager"])
        if deb is not None:
            install_package(host, deb)
        rc = host.exec(cmd).returncode
    except Exception as err:  # noqa: BLE001 - report and tear down whatever went wrong
        log(f"failed: {err}")
        if host.pid1:
            log("console of the test host's systemd:\n" + host.console())
    finally:
        if rc != 0 and keep_on_failure and host.pid1:
            log(f"kept for inspection: nsenter -t {host.pid1} -a bash   (Ctrl-C here tears it down)")
            wait_for_signal()
        host.destroy()
    return rc


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="testhost.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p_run = sub.add_parser("run", help="boot a test host, run CMD inside, tear it down")
    p_run.add_argument("--keep-on-failure", action="store_true", help="keep the host until Ctrl-C if CMD fails")
    p_run.add_argument("--name", default=f"th{os.getpid()}", help="host name, distinct for concurrent hosts")
    p_run.add_argument("--cgroup", choices=("host", "unified"), default="host",
                       help="the machine's cgroup layout, or only cgroup2 as on a pure v2 host")
    p_run.add_argument("--loop-check", type=int, default=LOOP_CHECK_MS, metavar="MS",
                       help="the agent logs each event-loop callback over MS milliseconds, and the integration "
                            "tests fail on it (0: off)")
    p_run.add_argument("--state", type=Path, metavar="DIR",
                       help="bind DIR (made, mode 0700, if missing) on the host's /var/lib/quilt instead of a fresh "
                            "tmpfs: a second host booted with the same DIR finds the first one's containers, as "
                            "after a reboot")
    p_run.add_argument("--etc-quilt", type=Path, metavar="DIR",
                       help="bind DIR (made, mode 0755, if missing) on the host's /etc/quilt: a second host booted "
                            "with the same DIR finds the first one's container files and configuration")
    installs = p_run.add_mutually_exclusive_group()
    installs.add_argument("--deb", type=Path, help="install this Debian package of Quilt (apt-get, inside the host) "
                                                   "instead of the checkout's files and venv")
    installs.add_argument("--bare", action="store_true", help="install nothing of Quilt (CMD installs a package)")
    p_run.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("cleanup", help="remove what crashed runs left")
    p_boot = sub.add_parser("_boot")
    p_boot.add_argument("--name", required=True)
    p_boot.add_argument("--cgroup", choices=("host", "unified"), default="host")
    p_boot.add_argument("--bare", action="store_true")
    p_boot.add_argument("--loop-check", type=int, default=0)
    p_boot.add_argument("--state", type=Path)
    p_boot.add_argument("--etc-quilt", type=Path)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("must run as root")
    if args.verb == "_boot":
        boot(args.name, args.cgroup == "unified", args.bare, args.loop_check, args.state, args.etc_quilt)
        return 127
    if args.verb == "cleanup":
        return 0 if cleanup_orphans() is not None else 1
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")
    if "-" in args.name or "/" in args.name:
        parser.error("--name may not contain '-' or '/'")
    deb = None
    if args.deb is not None:
        deb = args.deb.resolve()
        if not deb.is_file():
            parser.error(f"--deb {args.deb}: no such file (make deb builds it)")
        # The host sees the machine's files through its overlay, and the checkout, but has a /tmp of its own.
        hidden = [d for d in ("/tmp", "/run", "/dev", "/proc", "/sys", "/var/lib/quilt") if deb.is_relative_to(d)]
        if hidden and not deb.is_relative_to(PROJECT):
            parser.error(f"--deb {args.deb}: the test host has its own {hidden[0]}")
    if args.loop_check < 0:
        parser.error("--loop-check: a number of milliseconds, 0 for none")
    state = None
    if args.state is not None:
        state = args.state.resolve()
        if state.exists() and not state.is_dir():
            parser.error(f"--state {args.state}: not a directory")
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
    etc_quilt = None
    if args.etc_quilt is not None:
        etc_quilt = args.etc_quilt.resolve()
        if etc_quilt.exists() and not etc_quilt.is_dir():
            parser.error(f"--etc-quilt {args.etc_quilt}: not a directory")
        etc_quilt.mkdir(mode=0o755, parents=True, exist_ok=True)
    return run(cmd, args.name, args.keep_on_failure, args.cgroup == "unified", deb, args.bare, args.loop_check,
               state, etc_quilt)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
