"""Typed messages between the agent, the fork server and a container's monitor.

Each message is one SOCK_SEQPACKET datagram of JSON. An unexpected message is
its own error ("received X, expected Y"), as in youki's channel.
"""
from __future__ import annotations

import dataclasses
import json
import socket
from dataclasses import dataclass
from typing import TypeVar

from quilt_agent import errors
from quilt_agent.capabilities import DEFAULT_MASK

MAX_MESSAGE = 1 << 20
MAX_REQUEST = 128 << 10  # the command, environment, labels and setup steps of a container or an exec


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a monitor needs to set up and run one container."""

    container_id: str
    name: str
    unit: str
    lower: str  # the image's layers: overlayfs lowerdir, ':'-joined, top layer first
    upper: str
    work: str
    merged: str
    exit_file: str  # where the monitor records how the container ended
    command: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    hostname: str
    namespaces: tuple[str, ...]
    # Networks (quilt_agent/network): a network namespace to join instead of unsharing one (Quilt's pinned
    # /run/netns/quilt-ID, or another container's), and (source, target) files bound over the image's
    # (/etc/resolv.conf, /etc/hosts, /etc/hostname).
    netns: str = ""
    bind_files: tuple[tuple[str, str], ...] = ()
    # StartWithFds: the request carries the caller's stdin, stdout and stderr for the init; with tty, stdin is a
    # terminal that becomes the init's controlling one.
    tty: bool = False
    # Volumes (quilt_agent/volumes.py, helper/mounts.py): (host source, target, comma-joined options) binds,
    # (target, tmpfs options) tmpfs mounts, and a read-only root.
    mounts: tuple[tuple[str, str, str], ...] = ()
    tmpfs: tuple[tuple[str, str], ...] = ()
    read_only: bool = False
    # Setup commands (quilt_agent/setup.py): the entries to run before the command; where to pack the
    # container's layer once they succeeded, for the setup cache ("" = not cached); or the id of the cached
    # setup image the lower layers come from, when its steps need not run again.
    setup: tuple[str, ...] = ()
    setup_layer: str = ""
    setup_cached: str = ""
    seccomp: bool = True  # the default filter (helper/seccomp.py); False: unconfined
    # A user namespace of its own (quilt_agent/userns.py): "0 FIRST COUNT" for uid_map and gid_map; "" = the
    # host's ids. id_first is FIRST (-1 without).
    id_map: str = ""
    id_first: int = -1
    # A host program bound read-only at INIT_TARGET to run the command as its child ("" = the command is PID 1).
    init: str = ""
    # The agent's directory of the container's NOTIFY_SOCKET (quilt_agent/notify.py), bound read-only at
    # NOTIFY_TARGET ("" = none).
    notify_dir: str = ""
    # Its capability set (bounding, and its root's permitted and effective), a bit per capability
    # (quilt_agent/capabilities.py): the default set unless cap_add/cap_drop changed it.
    capabilities: int = DEFAULT_MASK
    # The program the monitor execs once the command runs, to wait for it and record its end at a tenth of a
    # Python process's memory (monitor/quilt-monitor.c); "" = the monitor waits itself.
    monitor: str = ""
    log_driver: str = "journald"  # model.LOG_DRIVERS: "none" gives the command /dev/null for its output
    # With k8s-file and journald+file: the directory of its log file (ctr.log, quilt_agent/logfile.py), which
    # quilt-monitor writes from the pipes of its output, and the file's rotation.
    log_dir: str = ""
    log_max_size: int = 0
    log_max_files: int = 1


INIT_TARGET = "/dev/init"  # in the container's own /dev: never a file of its image or its layer
# Where the container finds its notify socket's directory, as with Podman's --sdnotify container (crun binds it
# there too): NOTIFY_SOCKET=/run/notify/notify.sock.
NOTIFY_TARGET = "/run/notify"

@dataclass(frozen=True)
class MonitorForked:
    """Monitor -> agent, its first word: put it into its scope now. systemd's first move of a process into a
    cgroup waits for an RCU grace period (writing cgroup.procs takes the kernel's cgroup_threadgroup_rwsem), and
    moves within that period do not: begun while the monitor forks the init, that wait overlaps its work, and the
    init's move into the container's scope, after it, finds the period passed."""

    monitor_pid: int
    monitor_start: int


@dataclass(frozen=True)
class Spawned:
    """Monitor -> agent: the container's init exists, held before its command; put it into its scope."""

    init_pid: int


@dataclass(frozen=True)
class Go:
    """Agent -> monitor: the monitor and the init are each in their scope; exec the command."""


@dataclass(frozen=True)
class Abort:
    """Agent -> monitor: give up, kill the init unrun (a scope could not be made, the network not readied, the start
    was given up); it may come before the agent has read Spawned."""

    reason: str


@dataclass(frozen=True)
class Started:
    """Monitor -> agent: the command was executed."""


@dataclass(frozen=True)
class ExecFailed:
    """Monitor -> agent: setup or exec failed; the container's init is gone."""

    reason: str
    exit_code: int
    exhausted: str = ""  # the host's limit that ran out, when that is why (ResourceExhausted then)


@dataclass(frozen=True)
class SetupDone:
    """Monitor -> agent: the setup steps succeeded and the container's layer is packed at layer (an OCI layer
    tar, for the setup cache); error says why it is not, when packing failed. The command runs meanwhile."""

    layer: str = ""
    error: str = ""


@dataclass(frozen=True)
class MakeUserNamespace:
    """Agent -> fork server: a user namespace with this id map ("INSIDE HOST COUNT"), for the idmapped mounts of
    a container that does not run (a copy into or out of it). Answered by UserNamespaceMade, with the
    namespace's fd as the datagram's one fd on success."""

    id_map: str


@dataclass(frozen=True)
class UserNamespaceMade:
    error: str = ""  # "" on success


@dataclass(frozen=True)
class ExtractLayer:
    """Agent -> fork server: unpack a layer tarball into dest (an empty directory): the whole file, or size
    bytes from offset (a member of an archive); label names it in errors."""

    path: str
    dest: str
    offset: int = 0
    size: int = -1  # -1: to the end of the file
    label: str = ""


@dataclass(frozen=True)
class ExtractProgress:
    """Extractor -> agent, now and then while unpacking: bytes read so far."""

    done: int


@dataclass(frozen=True)
class ExtractDone:
    """Extractor -> agent: error is "" on success, else the name of the core error to raise."""

    error: str = ""
    message: str = ""
    errno: int = 0
    # On success (images.tarball.Extracted):
    digest: str = ""
    diff_id: str = ""
    size: int = 0
    compression: str = ""
    skipped: tuple[tuple[str, str], ...] = ()  # (member, what): device nodes and FIFOs not unpacked
    skipped_count: int = 0


@dataclass(frozen=True)
class ExecSpec:
    """Agent -> fork server: run a command inside a running container (Exec). The fds sent with it are the
    helper's socket, the command's stdin, stdout and stderr, and a pidfd of the container's init."""

    container_id: str
    name: str
    command: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    namespaces: tuple[str, ...]  # the container's: those the command enters
    tty: bool  # stdin is a terminal to make the controlling one
    cgroup_procs: tuple[str, ...]  # the container's cgroups (its scope), one cgroup.procs file per hierarchy
    seccomp: bool = True  # the container's filter, as its init has it
    capabilities: int = DEFAULT_MASK  # the container's set, as its init has it


@dataclass(frozen=True)
class ExecSpawned:
    """Exec helper -> agent: the command's process exists (host pid), in the container's scope."""

    pid: int


@dataclass(frozen=True)
class ExecExited:
    """Exec helper -> agent: the command ran and ended (exit_code 128+N for signal N)."""

    exit_code: int
    exit_signal: int = 0


@dataclass(frozen=True)
class ExecSetupFailed:
    """Exec helper -> agent: the command could not be started. kind: "invalid" (a bad user or working
    directory), "gone" (the container's init no longer exists), "failed" (anything else)."""

    kind: str
    reason: str


MESSAGES = {cls.__name__: cls for cls in (LaunchSpec, MonitorForked, Spawned, Go, Abort, Started, ExecFailed, SetupDone, ExtractLayer,
                                          ExtractProgress, ExtractDone, ExecSpec, ExecSpawned, ExecExited, ExecSetupFailed,
                                          MakeUserNamespace, UserNamespaceMade)}
M = TypeVar("M")


class ProtocolError(Exception):
    pass


def encode(message: object) -> bytes:
    return json.dumps({"type": type(message).__name__, **dataclasses.asdict(message)}).encode()


def check_size(message: object, what: str) -> None:
    """A request goes to the fork server as one datagram, which the socket's buffer bounds (net.core.wmem_max,
    212992 bytes by default): refuse, before anything is stored or forked, what would not fit."""
    size = len(encode(message))
    if size > MAX_REQUEST:
        raise errors.InvalidArgument(f"{what} take {size} bytes; at most {MAX_REQUEST} fit: pass large data in "
                                     "a file or a volume instead")


def decode(data: bytes, *expected: type[M]) -> M:
    if not data:
        raise ProtocolError(f"received end of stream, expected {' or '.join(e.__name__ for e in expected)}")
    fields = json.loads(data)
    kind = MESSAGES.get(fields.pop("type", None))
    if kind not in expected:
        raise ProtocolError(f"received {kind.__name__ if kind else 'garbage'}, "
                            f"expected {' or '.join(e.__name__ for e in expected)}")
    for f in dataclasses.fields(kind):
        if f.type.startswith("tuple"):
            fields[f.name] = tuple(fields[f.name])
    return kind(**fields)


def send(sock: socket.socket, message: object) -> None:
    sock.send(encode(message))


def tell(sock: socket.socket, message: object) -> None:
    """send, for a helper whose agent may have gone: the agent restarted (a monitor's exit file tells it then)
    or the caller hung up; the helper goes on either way."""
    try:
        send(sock, message)
    except OSError:
        pass


def receive(sock: socket.socket, *expected: type[M]) -> M:
    return decode(sock.recv(MAX_MESSAGE), *expected)
