"""The records org.quilt.Runtime's calls return (quilt_agent.api's).

Written out rather than made with @dataclass(frozen=True): importing dataclasses costs ~16 ms on these machines
(it imports inspect, ast, re and more), which would be a third of a `quiltctl run`'s start-up, and every `logs`
and `run` builds LogLines. _Record gives each what the decorator would: keyword or positional construction,
equality by value, hashing, a repr, pickling and copying, positional match patterns, and no assignment after
construction (tests/unit/test_replies.py).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Record:
    __slots__: tuple[str, ...] = ()

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is a record: its {name} cannot be set")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is a record: its {name} cannot be deleted")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy rebuild it through __init__, since restoring slots would go through __setattr__
        return type(self), self._values()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class ImageEntry(_Record):
    __slots__ = ("id", "name", "size", "path")
    __match_args__ = __slots__
    id: str
    name: str  # one row per name; "" for an image without one
    size: int
    path: str

    def __init__(self, id: str, name: str, size: int, path: str) -> None:
        self._set(id=id, name=name, size=size, path=path)


class ImageProgress(_Record):
    __slots__ = ("phase", "done", "total")
    __match_args__ = __slots__
    phase: str  # "<verb> <what>": resolving REF, downloading/unpacking/unpacked/exists DIGEST, checking PATH, done ID
    done: int  # bytes
    total: int  # bytes; 0 when not known

    def __init__(self, phase: str, done: int, total: int) -> None:
        self._set(phase=phase, done=done, total=total)


class ContainerEntry(_Record):
    __slots__ = ("id", "name", "state", "path")
    __match_args__ = __slots__
    id: str
    name: str
    state: str
    path: str

    def __init__(self, id: str, name: str, state: str, path: str) -> None:
        self._set(id=id, name=name, state=state, path=path)


class Event(_Record):
    __slots__ = ("time", "kind", "container_id", "details")
    __match_args__ = __slots__
    time: int  # usec since the epoch
    kind: str  # created, started, failed, oom, exited, removed
    container_id: str
    details: dict[str, Any]  # name, and what the kind adds (exit_code, oom_killed, reason)

    def __init__(self, time: int, kind: str, container_id: str, details: dict[str, Any]) -> None:
        self._set(time=time, kind=kind, container_id=container_id, details=details)


class ExecOutput(_Record):
    __slots__ = ("exit_code", "stdout", "stderr")
    __match_args__ = __slots__
    exit_code: int
    stdout: bytes
    stderr: bytes

    def __init__(self, exit_code: int, stdout: bytes, stderr: bytes) -> None:
        self._set(exit_code=exit_code, stdout=stdout, stderr=stderr)


class NetworkEntry(_Record):
    __slots__ = ("name", "subnet", "path")
    __match_args__ = __slots__
    name: str
    subnet: str
    path: str

    def __init__(self, name: str, subnet: str, path: str) -> None:
        self._set(name=name, subnet=subnet, path=path)


class LogLine(_Record):
    __slots__ = ("usec", "stream", "text")
    __match_args__ = __slots__
    usec: int
    stream: str
    text: str

    def __init__(self, usec: int, stream: str, text: str) -> None:
        self._set(usec=usec, stream=stream, text=text)
