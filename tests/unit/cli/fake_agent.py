"""A fake agent for quiltctl's verbs: containers as property dicts (the Container interface's keys), answered by
the calls ps, inspect, status, start, stop, kill and rm make. Not a mock of the bus: the verbs' own code runs, only
the agent behind the client is this table."""

from __future__ import annotations

from typing import Any, Sequence

from quilt_agent.api import ClientError
from quilt_agent.client import Client
from quilt_agent.replies import ContainerEntry, LogLine

NOW = 1_800_000_000.0
SEC = 1_000_000


def container(name: str, state: str = "running", created: float = 0, **extra: Any) -> dict[str, Any]:
    """A container's properties as the agent gives them (the Container interface's keys)."""
    return {"Id": (name.encode().hex() * 64)[:64], "Name": name, "Image": "docker.io/library/alpine:latest",
            "Command": ["sleep", "600"], "State": state, "ExitCode": 0, "ExitSignal": 0,
            "CreatedAt": int((NOW - 3600 + created) * SEC), "StartedAt": int((NOW - 120) * SEC),
            "FinishedAt": int((NOW - 5) * SEC) if state in ("exited", "failed") else 0, "MainPID": 0,
            "Labels": {}, "Ports": [], "Networks": ["quilt"], "Health": "", "Restarting": False, **extra}


ROWS = [
    container("web", created=1, Labels={"app": "shop", "tier": "front"}),
    container("db", created=2, Labels={"app": "shop"}),
    container("old", "exited", created=3, ExitCode=3),
    container("broken", "failed", created=4, ExitCode=127, Image="busybox"),
    container("new", "created", created=5, Image="a" * 64),
]


class FakeAgent(Client):
    """Answers the calls ps, inspect and the ls verbs make, from ROWS."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        self.rows = rows
        self.calls: list[str] = []

    async def connect(self) -> None:
        self.calls.append("connect")

    def close(self) -> None:
        pass

    async def list_container_properties(self, names: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
        self.calls.append("list_container_properties")
        return [(f"/c/{r['Name']}", {k: v for k, v in r.items() if not names or k in names}) for r in self.rows]

    async def list_containers(self) -> list[ContainerEntry]:
        return [ContainerEntry(r["Id"], r["Name"], r["State"], f"/c/{r['Name']}") for r in self.rows]

    async def get_container(self, name_or_id: str) -> str:
        if not any(r["Name"] == name_or_id for r in self.rows):
            raise ClientError("org.quilt.Runtime.Error.NoSuchContainer", f"No container '{name_or_id}' known")
        return f"/c/{name_or_id}"

    async def properties(self, path: str) -> dict[str, Any]:
        return dict(next(r for r in self.rows if f"/c/{r['Name']}" == path))

    async def get_container_properties(self, name_or_id: str) -> tuple[str, dict[str, Any]]:
        path = await self.get_container(name_or_id)
        return path, await self.properties(path)

    async def get_environment(self, path: str) -> list[str]:
        return ["A=1"]

    async def health_log(self, path: str) -> tuple[str, int, list[Any]]:
        return "healthy", 0, [[int((NOW - 1) * SEC), int(NOW * SEC), 0, "ok"]]

    def _row(self, path: str) -> dict[str, Any]:
        return next(r for r in self.rows if f"/c/{r['Name']}" == path)

    async def start(self, path: str) -> None:
        self.calls.append(f"start {path}")
        row = self._row(path)
        if row["State"] == "running":
            raise ClientError("org.quilt.Runtime.Error.AlreadyRunning", f"Container '{row['Name']}' is running")
        row["State"] = "running"

    async def stop(self, path: str, timeout: int = 0) -> None:
        self.calls.append(f"stop {path} {timeout}")
        self._row(path)["State"] = "exited"

    async def kill(self, path: str, signal: int) -> None:
        self.calls.append(f"kill {path} {signal}")
        row = self._row(path)
        if row["State"] != "running":
            raise ClientError("org.quilt.Runtime.Error.NotRunning", f"Container '{row['Name']}' is not running")
        row["State"] = "exited"

    async def wait(self, path: str) -> int:
        return int(self._row(path)["ExitCode"])

    async def remove(self, path: str, force: bool = False) -> None:
        self.calls.append(f"remove {path} {force}")
        row = self._row(path)
        if row["State"] == "running" and not force:
            raise ClientError("org.quilt.Runtime.Error.AlreadyRunning", f"Container '{row['Name']}' is running")
        self.rows.remove(row)

    async def exec_with_fds(self, path: str, command: Sequence[str], options: dict[str, Any], stdin: int,
                            stdout: int, stderr: int) -> int:
        """As the agent: runs nothing, but says what it was asked on the command's stdout, and exits with the
        number a command `exit N` names."""
        row = self._row(path)
        self.calls.append(f"exec {path} {list(command)} {sorted(options.items())} stdin={'ours' if stdin == 0 else 'null'}")
        if row["State"] != "running":
            raise ClientError("org.quilt.Runtime.Error.NotRunning", f"Container '{row['Name']}' is not running")
        import sys

        sys.stdout.write(f"ran {' '.join(command)}\n")
        return int(command[1]) if list(command[:1]) == ["exit"] else 0

    async def run_container(self, name: str, image: str, command: Sequence[str],
                            options: dict[str, Any] | None = None) -> str:
        """Runs nothing: the container has exited at once, with the code a command `exit N` names."""
        options = dict(options or {})
        self.calls.append(f"run {name} {image} {list(command)} {sorted(options.items())}")
        if any(r["Name"] == name for r in self.rows):
            raise ClientError("org.quilt.Runtime.Error.NameInUse", f"The name '{name}' is already in use")
        code = int(command[1]) if list(command[:1]) == ["exit"] else 0
        self.rows.append(container(name or "generated", "exited", ExitCode=code, Image=image, Command=list(command)))
        return f"/c/{name or 'generated'}"

    async def get_property(self, path: str, name: str) -> Any:
        return self._row(path).get(name, f"quilt-{self._row(path)['Name']}.scope" if name == "Unit" else None)

    async def get_logs(self, path: str, options: dict[str, Any] | None = None) -> list[LogLine]:
        row = self._row(path)
        return [LogLine(int(NOW * SEC), "stdout", f"ran {' '.join(row['Command'])}"),
                LogLine(int(NOW * SEC) + 1, "stderr", "a line on stderr")]

    async def wait_condition(self, path: str, conditions: Sequence[str]) -> tuple[str, int]:
        row = self._row(path)
        if row["State"] == "running" and "running" in conditions:
            return "running", 0
        return "exited", int(row["ExitCode"])
