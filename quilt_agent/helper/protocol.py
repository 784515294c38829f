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

MAX_MESSAGE = 1 << 20


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a monitor needs to set up and run one container."""

    container_id: str
    name: str
    unit: str
    lower: str  # the image's rootfs: overlayfs lower directory
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


@dataclass(frozen=True)
class Spawned:
    """Monitor -> agent: both processes exist; put them into the scope."""

    monitor_pid: int
    monitor_start: int
    init_pid: int


@dataclass(frozen=True)
class Go:
    """Agent -> monitor: the processes are in the scope; exec the command."""


@dataclass(frozen=True)
class Abort:
    """Agent -> monitor: give up (the scope could not be made)."""

    reason: str


@dataclass(frozen=True)
class Started:
    """Monitor -> agent: the command was executed."""


@dataclass(frozen=True)
class ExecFailed:
    """Monitor -> agent: setup or exec failed; the container's init is gone."""

    reason: str
    exit_code: int


@dataclass(frozen=True)
class ExtractLayer:
    """Agent -> fork server: unpack an image tarball into dest (an empty directory)."""

    path: str
    dest: str


@dataclass(frozen=True)
class ExtractDone:
    """Extractor -> agent: error is "" on success, else the name of the core error to raise."""

    error: str = ""
    message: str = ""
    errno: int = 0


MESSAGES = {cls.__name__: cls for cls in (LaunchSpec, Spawned, Go, Abort, Started, ExecFailed, ExtractLayer,
                                          ExtractDone)}
M = TypeVar("M")


class ProtocolError(Exception):
    pass


def encode(message: object) -> bytes:
    return json.dumps({"type": type(message).__name__, **dataclasses.asdict(message)}).encode()


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


def receive(sock: socket.socket, *expected: type[M]) -> M:
    return decode(sock.recv(MAX_MESSAGE), *expected)
