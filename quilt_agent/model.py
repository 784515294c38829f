"""Records, the container state machine and the rules for names and options."""
from __future__ import annotations

import enum
import ipaddress
import math
import os
import re
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

from quilt_agent.errors import InvalidArgument, NotSupported
from quilt_agent import capabilities
from quilt_agent import health
from quilt_agent import setup as setup_commands
from quilt_agent import volume_options
from quilt_agent.network import options as network_options
from quilt_agent.network.model import DEFAULT_NETWORK, DNS_NAME_RE

NAMESPACES = ("pid", "mount", "uts", "ipc", "net", "cgroup")
DEFAULT_STOP_TIMEOUT = 10
# The hostname defaults to the name, and a hostname has at most 64 bytes.
MAX_NAME = 63
NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
HOSTNAME_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SERVICE_RE = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.service")  # systemd's unit_name_is_valid
SECCOMP_PROFILES = ("default", "unconfined")
# host: the container's uids are the host's; auto: a user namespace with a range of host ids of its own
# (quilt_agent/userns.py), uid 0 inside being the range's first.
USERNS_MODES = ("host", "auto")
RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")  # quilt_agent/restart.py
# When a container is ready (Podman's --sdnotify): conmon, once it runs; container, once it sends READY=1 to its
# NOTIFY_SOCKET (quilt_agent/notify.py); healthy, once its health check first passes.
SDNOTIFY_MODES = ("conmon", "container", "healthy")
# Where a container's output goes (Podman's log drivers): journald, its two stdout streams (the default); k8s-file,
# the container's log file (quilt_agent/logfile.py), which its monitor writes, never rate-limited; journald+file,
# both: the journal for journalctl, the file so that no line is lost when journald drops some; none, /dev/null:
# nothing is kept. "file" is taken for k8s-file.
LOG_DRIVERS = ("journald", "k8s-file", "journald+file", "none")
FILE_LOG_DRIVERS = ("k8s-file", "journald+file")
LOG_DRIVER_ALIASES = {"file": "k8s-file"}
MIN_LOG_SIZE = 4096  # a rotation at every few lines is no log
MAX_LOG_FILES = 100
# journald+file keeps a bounded file unless told otherwise: its job is the lines journald drops, not an archive.
BOUNDED_LOG_SIZE = 10 * 1024 * 1024
BOUNDED_LOG_FILES = 2
MAX_RESTARTS = 1_000_000
MIN_MEMORY = 6 * 1024 * 1024  # as Docker and Podman: less cannot even start a shell
MAX_LIMIT = 1 << 62


def now_usec() -> int:
    return time.time_ns() // 1000


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"
    REMOVING = "removing"

    # The state owns its rules, as youki's ContainerStatus does.
    def can_start(self) -> bool:
        return self in (State.CREATED, State.EXITED, State.FAILED)


@dataclass(frozen=True)
class ContainerSpec:
    """What the caller asked for; fixed at create."""

    name: str
    image: str  # as given: a path or an image name
    image_id: str
    command: tuple[str, ...]
    env: tuple[str, ...] = ()
    workdir: str = "/"
    user: str = ""
    hostname: str = ""
    memory_max: int = 0  # 0 = no limit
    cpu_quota: float = 0.0  # percent of one CPU, 0 = no limit
    pids_max: int = 0
    namespaces: tuple[str, ...] = NAMESPACES
    remove_on_exit: bool = False
    stop_timeout: int = DEFAULT_STOP_TIMEOUT
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: int = 0  # what Stop sends first: the image's StopSignal; 0 = SIGTERM
    # Networks (quilt_agent/network): network names, or one mode (none, host, container:ID); DNS aliases; a
    # fixed address; published ports as normalised "[HOSTIP:]HOSTPORT:CONTAINERPORT/PROTO".
    networks: tuple[str, ...] = (DEFAULT_NETWORK,)
    aliases: tuple[str, ...] = ()
    ip: str = ""
    ports: tuple[str, ...] = ()
    # Mounts (quilt_agent/volumes.py): normalised "SOURCE:DEST[:OPTIONS]" and "DEST:size=N,mode=M"; a read-only root.
    volumes: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    read_only: bool = False
    anonymous_volumes: tuple[str, ...] = ()  # the named ones made for "-v DEST": removed with the container
    # Setup commands (quilt_agent/setup.py): "MANAGER: ARGS" entries run before the command at each start, and
    # whether their result may be cached and reused.
    setup: tuple[str, ...] = ()
    setup_cache: bool = True
    seccomp: str = "default"  # helper/seccomp.py's filter, or "unconfined"
    userns: str = "auto"  # USERNS_MODES
    init: bool = False  # a small init (Paths.init) as PID 1, running the command
    restart_policy: str = "no"  # RESTART_POLICIES
    restart_max: int = 0  # with on-failure: the most restarts in a row, 0 = no limit
    # Its health check (quilt_agent/health.py): the command (() = none), seconds between checks, a check's
    # timeout, the start period, the failures in a row that make it unhealthy, and what is done then.
    health_cmd: tuple[str, ...] = ()
    health_interval: float = health.DEFAULT_INTERVAL
    health_timeout: float = health.DEFAULT_TIMEOUT
    health_start_period: float = 0.0
    health_retries: int = health.DEFAULT_RETRIES
    health_on_failure: str = "none"  # health.ACTIONS
    sdnotify: str = "conmon"  # SDNOTIFY_MODES
    log_driver: str = "journald"  # LOG_DRIVERS
    # The log file's rotation (FILE_LOG_DRIVERS): a new one once it reaches log_max_size bytes (0 = never), the
    # newest log_max_files kept (1: the full file is emptied).
    log_max_size: int = 0
    log_max_files: int = 1
    # The service of the host's its processes run in instead of a scope of their own ("" = quilt-NAME.scope): a
    # unit generated from a container file (quilt_agent/generator.py), whose own settings stop and restart it.
    unit: str = ""
    # Capabilities (quilt_agent/capabilities.py) added to and dropped from the default set: names without CAP_,
    # or ALL.
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    # Its /etc/hosts and /etc/resolv.conf (quilt_agent/network/files.py): more "HOST:IP" lines; name servers,
    # search domains ("." alone: none) and options replacing those the network gives.
    add_hosts: tuple[str, ...] = ()
    dns_servers: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Container:
    """A container as the store keeps it: the spec and what happened to it."""

    id: str
    spec: ContainerSpec
    state: State = State.CREATED
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = -1
    exit_signal: int = 0
    oom_killed: bool = False
    failure_reason: str = ""
    monitor_pid: int = 0  # the helper that waits for the container's init
    monitor_start: int = 0  # its start time in clock ticks, so a reused pid is not mistaken for it
    main_pid: int = 0  # the container's init, as the host sees it
    setup_image: str = ""  # the cached setup image the last start used, below the container's own layer
    owner_uid: int = 0  # who created it: polkit rules may let a user manage only their own
    id_first: int = -1  # with userns auto: the first host id of its range (uid 0 inside); -1: the host's ids
    # Restarts by its policy (quilt_agent/restart.py): how many since a user last started it, how many of the
    # last runs in a row were short (the back-off's step), when the next one is due (usec, 0 = none pending),
    # and whether a user stopped it (no policy restarts it then).
    restart_count: int = 0
    restart_streak: int = 0
    restart_at: int = 0
    user_stopped: bool = False
    health: str = ""  # health.STATUSES: "" when it has no check; the last one's verdict once it ended
    # Whether this run is ready (spec.sdnotify says when), and the last STATUS= it sent to its NOTIFY_SOCKET.
    ready: bool = False
    notify_status: str = ""
    # Its registration with systemd-machined while it runs (quilt_agent/machines.py): the machine's object path and
    # name ("" when it is not registered).
    machine: str = ""
    machine_name: str = ""
    # Its processes frozen by Pause (quilt_agent/freezer.py) while it runs: the kernel's cgroup.freeze keeps it, not
    # the store, so an agent that restarts reads it back.
    paused: bool = False
    # The lines of its unit journald's rate limit dropped, as journald reported them (journal.Drop): how many in
    # all since it was created, this boot, and when the last report came (usec, 0 = none). Not stored: the
    # journal keeps the reports, and an agent that starts counts them again (Manager.watch_log_drops).
    logs_dropped: int = 0
    logs_dropped_at: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def unit(self) -> str:
        return self.spec.unit or scope_name(self.spec.name)

    @property
    def monitor_unit(self) -> str:
        return monitor_scope_name(self.spec.name)

    def with_(self, **changes: Any) -> Container:
        return replace(self, **changes)


@dataclass(frozen=True)
class ExitStatus:
    """How a container's init ended, as its monitor saw it."""

    exit_code: int
    exit_signal: int = 0
    oom_killed: bool = False
    reason: str = ""
    finished_at: int = 0
    failed: bool = False  # the init failed after the start was reported (a setup step): the container failed


def effective_hostname(spec: ContainerSpec) -> str:
    """The hostname the container sees: its own, or the host's when it shares the host's UTS namespace."""
    if "uts" not in spec.namespaces:
        return socket.gethostname()
    return spec.hostname or spec.name


def capability_mask(spec: ContainerSpec) -> int:
    """The container's capability set, a bit per capability, as the helper applies it."""
    return capabilities.mask(capabilities.effective(spec.cap_add, spec.cap_drop))


def scope_name(container_name: str) -> str:
    return f"quilt-{container_name}.scope"


def monitor_scope_name(container_name: str) -> str:
    """The monitor's own scope, beside the container's (as Podman's conmon scope): a stop of the container's
    scope then never ends the process that records how the container ended. ':' is in no container name."""
    return f"quilt-{container_name}:monitor.scope"


def new_id() -> str:
    return secrets.token_hex(32)


def generate_name() -> str:
    return "quilt_" + secrets.token_hex(4)


def validate_name(name: str) -> str:
    if not name:
        raise InvalidArgument("Invalid container name '': it is empty")
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"Invalid container name '{name}': longer than {MAX_NAME} characters")
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"Invalid container name '{name}': use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )
    return name


def _expect(key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise InvalidArgument(f"Option '{key}' must be {what}, not {value!r}")
    if not isinstance(value, kind):
        raise InvalidArgument(f"Option '{key}' must be {what}, not {value!r}")
    return value


def _string_list(key: str, value: Any) -> tuple[str, ...]:
    _expect(key, value, (list, tuple), "a list of strings")
    for item in value:
        _expect(key, item, str, "a list of strings")
    return tuple(value)


def parse_env(key: str, value: Any) -> tuple[str, ...]:
    env = _string_list(key, value)
    for entry in env:
        name, sep, _ = entry.partition("=")
        if not sep or not ENV_NAME_RE.fullmatch(name):
            raise InvalidArgument(f"Invalid environment entry '{entry}': expected NAME=VALUE")
        if "\0" in entry:
            raise InvalidArgument(f"Invalid environment entry '{name}=...': contains a NUL byte")
    return env


def _limit(key: str, value: Any, minimum: int) -> int:
    _expect(key, value, int, "an unsigned integer")
    if value < minimum or value > MAX_LIMIT:
        raise InvalidArgument(f"Invalid {key} {value}: must be between {minimum} and {MAX_LIMIT}")
    return value


def _parse_memory_max(value: Any) -> int:
    _expect("memory_max", value, int, "an unsigned integer (bytes)")
    if value < MIN_MEMORY:
        # As Podman: a limit given without a unit is bytes, and less than 6 MiB cannot even start a shell.
        raise InvalidArgument(f"Invalid memory_max {value} bytes: the least is {MIN_MEMORY} (6 MiB)")
    return _limit("memory_max", value, MIN_MEMORY)


def _parse_user(value: Any) -> str:
    _expect("user", value, str, "a string")
    if value and not re.fullmatch(r"[a-zA-Z0-9_][a-zA-Z0-9_.-]*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]*)?", value):
        raise InvalidArgument(f"Invalid user '{value}': expected uid[:gid] or name[:group]")
    return value


def _parse_workdir(value: Any) -> str:
    _expect("workdir", value, str, "a string")
    if not value.startswith("/") or "\0" in value:
        raise InvalidArgument(f"Invalid workdir '{value}': must be an absolute path")
    return os.path.normpath(value)


def _parse_hostname(value: Any) -> str:
    _expect("hostname", value, str, "a string")
    if value and not HOSTNAME_RE.fullmatch(value):
        raise InvalidArgument(f"Invalid hostname '{value}'")
    return value


def _parse_cpu_quota(value: Any) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    _expect("cpu_quota", value, float, "a number (percent of one CPU)")
    ncpu = os.cpu_count() or 1
    if not math.isfinite(value) or value <= 0 or value > 100.0 * ncpu:
        raise InvalidArgument(f"Invalid cpu_quota {value}: must be above 0 and at most {100 * ncpu} (percent of one CPU)")
    return value


def _parse_namespaces(value: Any) -> tuple[str, ...]:
    names = _string_list("namespaces", value)
    unknown = [n for n in names if n not in NAMESPACES]
    if unknown:
        raise InvalidArgument(f"Unknown namespace '{unknown[0]}': choose among {', '.join(NAMESPACES)}")
    if "mount" not in names:
        raise InvalidArgument("The mount namespace cannot be left out: the container's root filesystem lives in it")
    return tuple(n for n in NAMESPACES if n in names)


def _parse_labels(value: Any) -> dict[str, str]:
    _expect("labels", value, dict, "a dictionary of strings")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise InvalidArgument(f"Invalid label {k!r}={v!r}: keys and values must be strings, keys non-empty")
    return dict(value)


def _parse_stop_timeout(value: Any) -> int:
    _expect("stop_timeout", value, int, "an unsigned integer")
    if value < 0 or value > 86400:
        raise InvalidArgument(f"Invalid stop_timeout {value}: must be between 0 and 86400 seconds")
    return value


def _parse_userns(value: Any) -> str:
    _expect("userns", value, str, "a string")
    if value not in USERNS_MODES:
        raise InvalidArgument(f"Invalid userns '{value}': choose among {', '.join(USERNS_MODES)}")
    return value


def _parse_restart_policy(value: Any) -> str:
    _expect("restart_policy", value, str, "a string")
    if value not in RESTART_POLICIES:
        raise InvalidArgument(f"Invalid restart_policy '{value}': choose among {', '.join(RESTART_POLICIES)}")
    return value


def _parse_restart_max(value: Any) -> int:
    _expect("restart_max", value, int, "an unsigned integer")
    if not 0 <= value <= MAX_RESTARTS:
        raise InvalidArgument(f"Invalid restart_max {value}: must be between 0 (no limit) and {MAX_RESTARTS}")
    return value


def _parse_sdnotify(value: Any) -> str:
    _expect("sdnotify", value, str, "a string")
    if value not in SDNOTIFY_MODES:
        raise InvalidArgument(f"Invalid sdnotify '{value}': choose among {', '.join(SDNOTIFY_MODES)}")
    return value


def _parse_log_driver(value: Any) -> str:
    _expect("log_driver", value, str, "a string")
    value = LOG_DRIVER_ALIASES.get(value, value)
    if value not in LOG_DRIVERS:
        raise InvalidArgument(f"Invalid log_driver '{value}': choose among {', '.join(LOG_DRIVERS)}")
    return value


def _parse_log_max_size(value: Any) -> int:
    _expect("log_max_size", value, int, "an unsigned integer (bytes)")
    if value < MIN_LOG_SIZE or value > MAX_LIMIT:
        raise InvalidArgument(f"Invalid log_max_size {value} bytes: must be between {MIN_LOG_SIZE} and {MAX_LIMIT}")
    return value


def _parse_log_max_files(value: Any) -> int:
    _expect("log_max_files", value, int, "an unsigned integer")
    if value < 1 or value > MAX_LOG_FILES:
        raise InvalidArgument(f"Invalid log_max_files {value}: must be between 1 and {MAX_LOG_FILES}")
    return value


# Per-unit log rate limits (LogRateLimitIntervalSec=, LogRateLimitBurst=) are execution settings: systemd takes them
# for services and refuses them for a scope, in every version (src/core/dbus-scope.c sets cgroup, kill and scope
# properties only), and a slice or a journald namespace (LogNamespace=, again an execution setting) is no way around
# it. journald's global limits are the host's, never changed by Quilt. So the options are refused, saying why and
# what does keep every line, rather than accepted and silently without effect.
LOG_RATE_LIMIT_REFUSED = ("per-container log rate limits cannot be set: systemd accepts LogRateLimitIntervalSec= and "
                          "LogRateLimitBurst= for services only, and each container runs in a scope, so journald's own "
                          "limit applies. The lines it drops are counted (LogLinesDropped, marked by `quiltctl logs`); "
                          "log_driver journald+file keeps every line in a file as well")


def _refuse_log_rate_limit(key: str, kind: type, what: str) -> Any:
    def parse(value: Any) -> Any:
        _expect(key, value, kind, what)
        raise NotSupported(f"Option '{key}': {LOG_RATE_LIMIT_REFUSED}")
    return parse


def _settle_log_options(fields: dict[str, Any]) -> None:
    driver = fields.get("log_driver", "journald")
    if driver not in FILE_LOG_DRIVERS:
        for key in ("log_max_size", "log_max_files"):
            if key in fields:
                raise InvalidArgument(f"Option '{key}' needs log_driver {' or '.join(FILE_LOG_DRIVERS)}, "
                                      f"not '{driver}': only a log file is rotated")
        return
    if driver == "journald+file" and "log_max_size" not in fields:
        fields["log_max_size"] = BOUNDED_LOG_SIZE
        fields.setdefault("log_max_files", BOUNDED_LOG_FILES)
    if fields.get("log_max_files", 1) > 1 and not fields.get("log_max_size"):
        raise InvalidArgument("Option 'log_max_files' needs log_max_size: files are rotated by size")


def _parse_unit(value: Any) -> str:
    _expect("unit", value, str, "a string")
    if not SERVICE_RE.fullmatch(value) or len(value) > 255:
        raise InvalidArgument(f"Invalid unit '{value}': expected the name of a service, NAME.service")
    return value


def _parse_seccomp(value: Any) -> str:
    _expect("seccomp", value, str, "a string")
    if value not in SECCOMP_PROFILES:
        raise InvalidArgument(f"Invalid seccomp profile '{value}': choose among {', '.join(SECCOMP_PROFILES)}")
    return value


def _parse_entrypoint(value: Any) -> tuple[str, ...]:
    """What replaces the image's Entrypoint; [] or [""] clears it (Podman's --entrypoint '')."""
    entrypoint = _string_list("entrypoint", value)
    if entrypoint == ("",):
        return ()
    for arg in entrypoint:
        if "\0" in arg:
            raise InvalidArgument(f"Invalid entrypoint argument {arg!r}: contains a NUL byte")
    if entrypoint and not entrypoint[0]:
        raise InvalidArgument(f"Invalid entrypoint {list(entrypoint)!r}: its program is empty")
    return entrypoint


def _parse_stop_signal(value: Any) -> int:
    """A signal as Podman's --stop-signal takes it: SIGTERM, TERM, 15, SIGRTMIN+3."""
    _expect("stop_signal", value, str, "a string (a signal's name or number)")
    name = value.upper().removeprefix("SIG")
    number = 0
    if value.isdigit():
        number = int(value)
    elif name.startswith(("RTMIN", "RTMAX")):
        base, sign, offset = name[:5], name[5:6], name[6:]
        if (not sign and not offset) or (sign in "+-" and offset.isdigit()):
            number = signal.SIGRTMIN if base == "RTMIN" else signal.SIGRTMAX
            number += (int(offset) if sign == "+" else -int(offset)) if offset else 0
    elif ("SIG" + name) in signal.Signals.__members__:
        number = signal.Signals["SIG" + name].value
    if not 1 <= number < signal.NSIG:
        raise InvalidArgument(f"Invalid stop_signal '{value}': not a signal (TERM, SIGINT, 15, ...)")
    return number


def _ip(key: str, entry: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text[1:-1] if text.startswith("[") and text.endswith("]") else text))
    except ValueError:
        raise InvalidArgument(f"Invalid {key} entry '{entry}': '{text}' is not an IP address") from None


def _parse_add_hosts(value: Any) -> tuple[str, ...]:
    """HOST:IP lines for /etc/hosts, as Podman's --add-host (IP an IPv4 or IPv6 address)."""
    out = []
    for entry in _string_list("add_hosts", value):
        host, sep, address = entry.partition(":")
        if not sep or not DNS_NAME_RE.fullmatch(host):
            raise InvalidArgument(f"Invalid add_hosts entry '{entry}': expected HOST:IP, HOST a host name")
        out.append(f"{host}:{_ip('add_hosts', entry, address)}")
    return tuple(out)


def _parse_dns_servers(value: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_ip("dns_servers", v, v) for v in _string_list("dns_servers", value)))


def _parse_dns_search(value: Any) -> tuple[str, ...]:
    domains = _string_list("dns_search", value)
    for domain in domains:
        if domain != "." and not DNS_NAME_RE.fullmatch(domain):
            raise InvalidArgument(f"Invalid dns_search domain '{domain}': not a DNS name ('.' alone: no search)")
    if "." in domains and len(domains) > 1:
        raise InvalidArgument("Option 'dns_search': '.' (no search domain) cannot be combined with domains")
    return tuple(dict.fromkeys(domains))


def _parse_dns_options(value: Any) -> tuple[str, ...]:
    options = _string_list("dns_options", value)
    for option in options:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", option):
            raise InvalidArgument(f"Invalid dns_options entry '{option}': a resolv.conf option such as ndots:2 "
                                  "or edns0")
    return tuple(dict.fromkeys(options))


# Option key -> (spec field, parser). Unknown keys are an error, never ignored.
OPTION_PARSERS = {
    "env": ("env", lambda v: parse_env("env", v)),
    "workdir": ("workdir", _parse_workdir),
    "user": ("user", _parse_user),
    "hostname": ("hostname", _parse_hostname),
    "memory_max": ("memory_max", _parse_memory_max),
    "cpu_quota": ("cpu_quota", _parse_cpu_quota),
    "pids_max": ("pids_max", lambda v: _limit("pids_max", v, 1)),
    "namespaces": ("namespaces", _parse_namespaces),
    "remove_on_exit": ("remove_on_exit", lambda v: _expect("remove_on_exit", v, bool, "a boolean")),
    "stop_timeout": ("stop_timeout", _parse_stop_timeout),
    "labels": ("labels", _parse_labels),
    **network_options.CONTAINER_OPTIONS,  # networks, aliases, ip, ports
    **volume_options.CONTAINER_OPTIONS,  # volumes, tmpfs, read_only
    "setup": ("setup", lambda v: setup_commands.parse_option("setup", v)),
    "setup_cache": ("setup_cache", lambda v: _expect("setup_cache", v, bool, "a boolean")),
    "seccomp": ("seccomp", _parse_seccomp),
    "userns": ("userns", _parse_userns),
    "init": ("init", lambda v: _expect("init", v, bool, "a boolean")),
    "restart_policy": ("restart_policy", _parse_restart_policy),
    "restart_max": ("restart_max", _parse_restart_max),
    **health.CONTAINER_OPTIONS,  # health_cmd, health_interval, ...
    "sdnotify": ("sdnotify", _parse_sdnotify),
    "log_driver": ("log_driver", _parse_log_driver),
    "log_max_size": ("log_max_size", _parse_log_max_size),
    "log_max_files": ("log_max_files", _parse_log_max_files),
    "log_rate_limit_burst": ("", _refuse_log_rate_limit("log_rate_limit_burst", int, "an unsigned integer")),
    "log_rate_limit_interval": ("", _refuse_log_rate_limit("log_rate_limit_interval", int,
                                                           "an unsigned integer (microseconds)")),
    "unit": ("unit", _parse_unit),
    "cap_add": ("cap_add", lambda v: capabilities.normalise("cap_add", v)),
    "cap_drop": ("cap_drop", lambda v: capabilities.normalise("cap_drop", v)),
    "stop_signal": ("stop_signal", _parse_stop_signal),
    "add_hosts": ("add_hosts", _parse_add_hosts),
    "dns_servers": ("dns_servers", _parse_dns_servers),
    "dns_search": ("dns_search", _parse_dns_search),
    "dns_options": ("dns_options", _parse_dns_options),
    # Not spec fields: the image's defaults take them (images/service.py container_defaults), the command's
    # program (entrypoint) and the image's exposed ports published to free host ports (publish_all).
    "entrypoint": ("entrypoint", _parse_entrypoint),
    "publish_all": ("publish_all", lambda v: _expect("publish_all", v, bool, "a boolean")),
}


def parse_options(options: dict[str, Any]) -> dict[str, Any]:
    """Turn a create call's option dictionary into ContainerSpec fields."""
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if key not in OPTION_PARSERS:
            raise InvalidArgument(f"Unknown option '{key}': known options are {', '.join(sorted(OPTION_PARSERS))}")
        name, parser = OPTION_PARSERS[key]
        fields[name] = parser(value)
    if fields.get("hostname") and "uts" not in fields.get("namespaces", NAMESPACES):
        # As Podman: the hostname would be silently ignored (or, set, change the host's).
        raise InvalidArgument(f"Cannot set hostname '{fields['hostname']}' without the uts namespace: "
                              "the container shares the host's hostname")
    policy = fields.get("restart_policy", "no")
    if fields.get("restart_max") and policy != "on-failure":
        raise InvalidArgument(f"Option 'restart_max' needs restart_policy 'on-failure', not '{policy}'")
    if fields.get("unit") and policy != "no":
        raise InvalidArgument(f"Options 'unit' and restart_policy '{policy}' contradict each other: the service's "
                              "own Restart= restarts it")
    if fields.get("remove_on_exit") and policy != "no":
        raise InvalidArgument(f"Options 'remove_on_exit' and restart_policy '{policy}' contradict each other: a "
                              "container removed at its exit cannot be restarted")
    capabilities.check(fields.get("cap_add", ()), fields.get("cap_drop", ()))
    _settle_log_options(fields)
    health.settle(fields)
    network_options.settle(fields, fields.get("namespaces", NAMESPACES))
    volume_options.check_mount_targets(fields.get("volumes", ()), fields.get("tmpfs", ()))
    return fields


def validate_command(command: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if not command or not command[0]:
        raise InvalidArgument("The command is empty: give at least the program to run")
    for arg in command:
        if "\0" in arg:
            raise InvalidArgument(f"Invalid command argument {arg!r}: contains a NUL byte")
    return tuple(command)
