"""Pure parsers for quiltctl's flag values; each raises ValueError with a message fit for a usage line. Their
click types are cli/paramtypes.py's.

Free of click: `run` on cli/quick.py's path resolves its image here. re, signal and datetime are imported by the
parsers that use them (each module costs a one-shot command a millisecond or more; see quilt_agent/wire.py); re
keeps the patterns it compiles, so naming them as strings costs nothing after the first use.
"""

from __future__ import annotations

import math
import os

# Podman's spellings (docker/go-units RAMInBytes): binary units whatever the case, optional "i" and "b".
_SIZE_RE = r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$"
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

_DURATION_PART_RE = r"(\d+(?:\.\d+)?)(ms|s|m|h|d)"
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# The contract's set; the aliases are the spellings of unshare(1) and Podman's --network.
NAMESPACES = ("pid", "mount", "uts", "ipc", "net", "cgroup")
_NAMESPACE_ALIASES = {"mnt": "mount", "network": "net"}


def parse_memory(text: str) -> int:
    """'512M' -> 536870912. A plain number is bytes."""
    import re

    match = re.match(_SIZE_RE, text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"'{text}' is not a size (a number with an optional k, m, g or t suffix)")
    number, unit, _ = match.groups()
    size = int(float(number) * _SIZE_UNITS[unit.lower()])
    if size <= 0:
        raise ValueError(f"'{text}' must be more than 0 bytes")
    return size


def parse_cpus(text: str) -> float:
    """'--cpus 0.5' (CPUs) -> 50.0, the percent of one CPU that cpu_quota takes."""
    try:
        cpus = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number of CPUs") from None
    if not math.isfinite(cpus) or cpus <= 0:
        raise ValueError(f"'{text}' must be a number of CPUs greater than 0")
    return round(cpus * 100.0, 6)


def parse_cpu_percent(text: str) -> float:
    """The original project's '--cpu-limit 50.0': already percent of one CPU."""
    try:
        percent = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a percentage") from None
    if not math.isfinite(percent) or percent <= 0:
        raise ValueError(f"'{text}' must be a percentage greater than 0")
    return percent


def parse_signal(text: str) -> int:
    """'TERM', 'sigterm', 'SIGTERM' or '15' -> 15."""
    import signal

    value = text.strip()
    if value.isdigit():
        number = int(value)
        if not 1 <= number <= signal.SIGRTMAX:
            raise ValueError(f"'{text}' is not a signal number (1-{int(signal.SIGRTMAX)})")
        return number
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"'{text}' is not a signal name") from None


def parse_duration(text: str) -> float:
    """'10s', '5m', '1h30m', '1.5h' -> seconds. Go's duration spelling, as Podman's --since takes it."""
    value = text.strip().lower()
    position = 0
    total = 0.0
    import re

    for match in re.finditer(_DURATION_PART_RE, value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(value):
        raise ValueError(f"'{text}' is not a duration (like 10s, 5m, 2h, 1h30m)")
    return total


def parse_seconds(text: str) -> float:
    """A duration ('30s', '1m30s', '500ms') or a plain number of seconds."""
    try:
        return float(text)
    except ValueError:
        return parse_duration(text)


_AGO_RE = r"(.*?)\s+ago"
_TIME_FORMS = "a duration like 10s, 5m, 2h or '2h ago'; a Unix timestamp; or an ISO 8601 time"


def parse_since(text: str, now: float) -> int:
    """--since/--until as usec since the epoch: a duration ago ('10m' or '10m ago'), a Unix timestamp, or an
    ISO 8601 time.

    `now` is passed in (seconds since the epoch) so the result does not depend on when it is computed.
    A naive ISO time is local time, as for journalctl --since.
    """
    import re
    from datetime import datetime

    value = text.strip()
    ago = re.fullmatch(_AGO_RE, value, re.IGNORECASE)
    if ago is not None:
        # '2h ago', as the help's examples read: only a duration may come before it.
        try:
            return int((now - parse_duration(ago.group(1))) * 1_000_000)
        except ValueError:
            raise ValueError(f"'{text}' is not a time ({_TIME_FORMS})") from None
    try:
        return int((now - parse_duration(value)) * 1_000_000)
    except ValueError:
        pass
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return int(float(value) * 1_000_000)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"'{text}' is not a time ({_TIME_FORMS})") from None
    return int(moment.timestamp() * 1_000_000)


def parse_key_value(text: str, what: str) -> tuple[str, str]:
    """'K=V' -> ('K', 'V'); the value may hold further '=' and may be empty, the key may not."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{what} '{text}' is not in the form KEY=VALUE")
    return key, value


def parse_env_entry(text: str) -> tuple[str, str | None]:
    """'K=V' -> ('K', 'V'); 'K' alone -> ('K', this process's value of K, None when unset), as Podman's -e."""
    key, sep, value = text.partition("=")
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"environment variable '{text}' is not in the form KEY=VALUE or KEY")
    return key, value if sep else os.environ.get(key)


def parse_namespaces(text: str) -> list[str]:
    """'pid,mount,net' -> ['pid', 'mount', 'net'], checked against the contract's set."""
    chosen: list[str] = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        name = _NAMESPACE_ALIASES.get(name, name)
        if name not in NAMESPACES:
            raise ValueError(f"'{part.strip()}' is not a namespace (one of {', '.join(NAMESPACES)})")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise ValueError("no namespace named")
    return chosen


def resolve_image(text: str, cwd: str) -> str:
    """A path to a rootfs tarball becomes absolute (the agent does not share our cwd); a name stays as given.

    Something that looks like a path ('/x', './x', '../x', '~/x') or names an existing file is a path; the rest
    (debian:12, registry.example/app) are image names, which may hold '/' too.
    """
    if text.startswith("/"):
        return text
    if text.startswith(("./", "../", "~")) or text in (".", ".."):
        return os.path.normpath(os.path.join(cwd, os.path.expanduser(text)))
    candidate = os.path.join(cwd, text)
    if os.path.exists(candidate):
        return os.path.normpath(candidate)
    return text
