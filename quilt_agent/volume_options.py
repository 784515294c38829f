"""The create options volumes, tmpfs and read_only, and the named volume's record: pure rules, no disk.

A mount's source is a host path, a named volume or (DEST alone) an anonymous one; its target is resolved inside
the container's root by the container's init (helper/mounts.py). The named volumes themselves: volumes.py.
"""
from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from quilt_agent.errors import InvalidArgument, NoSuchPath

VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
ANONYMOUS_NAME_RE = re.compile(r"[0-9a-f]{64}")  # name_anonymous's names
MAX_VOLUME_NAME = 128
MOUNT_OPTIONS = ("ro", "rw", "nosuid", "nodev", "noexec")
FORBIDDEN_TARGETS = ("/proc", "/sys", "/dev")
SIZE_RE = re.compile(r"(\d+)([kmg]?)", re.IGNORECASE)
MODE_RE = re.compile(r"[0-7]{3,4}")
DEFAULT_TMPFS_SIZE = 64 * 1024 * 1024


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"Option '{key}' must be a list of strings, not {value!r}")
    return tuple(value)


def validate_volume_name(name: str) -> str:
    if not name or len(name) > MAX_VOLUME_NAME or not VOLUME_NAME_RE.fullmatch(name):
        raise InvalidArgument(f"Invalid volume name '{name}': use letters, digits, '_', '.' and '-', starting with "
                              f"a letter or digit, at most {MAX_VOLUME_NAME} characters")
    return name


def check_target(target: str, what: str) -> str:
    """A mount's destination inside the container: absolute, no '..', not /proc, /sys, /dev or below them."""
    if not target.startswith("/") or "\0" in target:
        raise InvalidArgument(f"Invalid {what} destination '{target}': must be an absolute path")
    if ".." in target.split("/"):
        raise InvalidArgument(f"Invalid {what} destination '{target}': must not contain '..'")
    norm = os.path.normpath(target)
    if norm == "/":
        raise InvalidArgument(f"Invalid {what} destination '{target}': cannot mount over the container's root")
    for forbidden in FORBIDDEN_TARGETS:
        if norm == forbidden or norm.startswith(forbidden + "/"):
            raise InvalidArgument(f"Invalid {what} destination '{target}': {forbidden} is the runtime's own")
    return norm


@dataclass(frozen=True)
class VolumeMount:
    source: str  # an absolute host path, a volume's name, or "" for an anonymous volume (named at create)
    target: str
    options: tuple[str, ...] = ()

    @property
    def named(self) -> bool:
        return bool(self.source) and not self.source.startswith("/")

    @property
    def anonymous(self) -> bool:
        return not self.source

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    def text(self) -> str:
        parts = (self.source, self.target) if self.source else (self.target,)
        return ":".join((*parts, *([",".join(self.options)] if self.options else [])))


def parse_volume(entry: str) -> VolumeMount:
    """SOURCE:DEST[:OPTIONS], OPTIONS comma-separated among ro, rw, nosuid, nodev, noexec; or DEST alone, an
    anonymous volume (as `podman run -v /data`)."""
    if entry.startswith("/") and ":" not in entry:
        return VolumeMount("", check_target(entry, "volume"))
    parts = entry.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"Invalid volume '{entry}': expected SOURCE:DEST[:OPTIONS]")
    source, target = parts[0], parts[1]
    if source.startswith("/"):
        if "\0" in source or ".." in source.split("/"):
            raise InvalidArgument(f"Invalid volume source '{source}': an absolute path without '..'")
        source = os.path.normpath(source)
    else:
        validate_volume_name(source)
    target = check_target(target, "volume")
    options: list[str] = []
    if len(parts) == 3:
        for opt in parts[2].split(","):
            if opt not in MOUNT_OPTIONS:
                raise InvalidArgument(f"Invalid volume option '{opt}' in '{entry}': choose among "
                                      f"{', '.join(MOUNT_OPTIONS)}")
            if opt in ("ro", "rw") and ({"ro", "rw"} & set(options)):
                raise InvalidArgument(f"Invalid volume options in '{entry}': ro and rw given together or twice")
            if opt not in options:
                options.append(opt)
    return VolumeMount(source, target, tuple(o for o in options if o != "rw"))


def parse_volumes(value: Any) -> tuple[str, ...]:
    mounts = [parse_volume(v) for v in _strings("volumes", value)]
    _no_duplicate_targets([m.target for m in mounts])
    return tuple(m.text() for m in mounts)


def _size(text: str, entry: str) -> int:
    m = SIZE_RE.fullmatch(text)
    if not m:
        raise InvalidArgument(f"Invalid tmpfs size '{text}' in '{entry}': expected a number with k, m or g")
    size = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    if size <= 0:
        raise InvalidArgument(f"Invalid tmpfs size '{text}' in '{entry}': must be above 0")
    return size


def parse_tmpfs_entry(entry: str) -> tuple[str, int, str]:
    """DEST[:size=64m,mode=1777] -> (dest, size in bytes, octal mode)."""
    target, _, opts = entry.partition(":")
    target = check_target(target, "tmpfs")
    size, mode = DEFAULT_TMPFS_SIZE, "1777"
    if opts:
        for opt in opts.split(","):
            key, sep, val = opt.partition("=")
            if key == "size" and sep:
                size = _size(val, entry)
            elif key == "mode" and sep and MODE_RE.fullmatch(val):
                mode = val
            else:
                raise InvalidArgument(f"Invalid tmpfs option '{opt}' in '{entry}': expected size=N[k|m|g] or "
                                      "mode=OCTAL")
    return target, size, mode


def parse_tmpfs(value: Any) -> tuple[str, ...]:
    out = []
    for entry in _strings("tmpfs", value):
        target, size, mode = parse_tmpfs_entry(entry)
        out.append(f"{target}:size={size},mode={mode}")
    _no_duplicate_targets([e.split(":")[0] for e in out])
    return tuple(out)


def _no_duplicate_targets(targets: list[str]) -> None:
    seen: set[str] = set()
    for t in targets:
        if t in seen:
            raise InvalidArgument(f"Two mounts have the same destination '{t}'")
        seen.add(t)


def _read_only(value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"Option 'read_only' must be a boolean, not {value!r}")
    return value


# Merged into model.OPTION_PARSERS: option key -> (ContainerSpec field, parser).
CONTAINER_OPTIONS = {
    "volumes": ("volumes", parse_volumes),
    "tmpfs": ("tmpfs", parse_tmpfs),
    "read_only": ("read_only", _read_only),
}


def check_mount_targets(volumes: tuple[str, ...], tmpfs: tuple[str, ...]) -> None:
    _no_duplicate_targets([parse_volume(v).target for v in volumes] + [t.split(":")[0] for t in tmpfs])


# --- named volumes --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Volume:
    id: str
    name: str
    mountpoint: str  # the _data directory a container mounts
    created_at: int
    labels: dict[str, str] = field(default_factory=dict)
    owner_uid: int = 0  # who created it (or the container whose create made it)

    @property
    def path(self) -> str:
        """The volume's own directory (the parent of its _data)."""
        return os.path.dirname(self.mountpoint)


def check_host_paths(volumes: tuple[str, ...]) -> None:
    for entry in volumes:
        m = parse_volume(entry)
        if not m.named and not m.anonymous and not os.path.exists(m.source):
            raise NoSuchPath(f"Host path '{m.source}' of volume '{entry}' does not exist")


def host_sources(volumes: object) -> list[str]:
    """The host paths a create's volumes option would bind (its bad entries are left for create to name)."""
    out = []
    for entry in volumes if isinstance(volumes, (list, tuple)) else ():
        try:
            m = parse_volume(entry) if isinstance(entry, str) else None
        except InvalidArgument:
            continue
        if m is not None and m.source.startswith("/"):
            out.append(m.source)
    return out


def named_volumes(volumes: tuple[str, ...]) -> list[str]:
    return [m.source for m in map(parse_volume, volumes) if m.named]


def name_anonymous(volumes: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Give each anonymous volume (DEST alone) a name of its own, as Podman does (64 hex digits): the volumes
    option as the container keeps it, and the names made."""
    out, made = [], []
    for entry in volumes:
        m = parse_volume(entry)
        if m.anonymous:
            m = VolumeMount(secrets.token_hex(32), m.target, m.options)
            made.append(m.source)
        out.append(m.text())
    return tuple(out), tuple(made)
