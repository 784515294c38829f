"""The records org.quilt.Runtime's calls return (quilt_agent.api's), apart from api itself so that a command
that needs none of them does not import dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageEntry:
    id: str
    name: str  # one row per name; "" for an image without one
    size: int
    path: str


@dataclass(frozen=True)
class ImageProgress:
    phase: str  # "<verb> <what>": resolving REF, downloading/unpacking/unpacked/exists DIGEST, checking PATH, done ID
    done: int  # bytes
    total: int  # bytes; 0 when not known


@dataclass(frozen=True)
class ContainerEntry:
    id: str
    name: str
    state: str
    path: str


@dataclass(frozen=True)
class Event:
    time: int  # usec since the epoch
    kind: str  # created, started, failed, oom, exited, removed
    container_id: str
    details: dict[str, Any]  # name, and what the kind adds (exit_code, oom_killed, reason)


@dataclass(frozen=True)
class ExecOutput:
    exit_code: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class NetworkEntry:
    name: str
    subnet: str
    path: str


@dataclass(frozen=True)
class LogLine:
    usec: int
    stream: str
    text: str
