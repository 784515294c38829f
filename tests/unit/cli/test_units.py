"""quiltctl unit-check (a good file's service, a bad file's one line and status 1) and quiltctl generate unit
(a container's properties and environment, asked of a fake client, as a .container file)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from quilt_agent import unitfiles
from quilt_agent.cli.context import CliState
from quilt_agent.cli.main import cli

PATH = "/org/quilt/Runtime/container/" + "ab" * 32


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def get_container(self, name: str) -> str:
        self.calls.append(("get_container", name))
        return PATH

    async def properties(self, path: str) -> dict[str, Any]:
        self.calls.append(("properties", path))
        return {"Name": "web", "Image": "debian:12", "Command": ["sleep", "600"], "User": "0", "Hostname": "web",
                "Addresses": [["quilt", "10.89.0.2"]], "MemoryMax": 64 << 20, "StopSignal": 15, "StopTimeout": 10}

    async def get_environment(self, path: str) -> list[str]:
        self.calls.append(("get_environment", path))
        return ["PATH=/usr/bin:/bin", "SECRET=s3cret value"]


def quiltctl(*args: str, client: FakeClient | None = None) -> Result:
    state = CliState(client_factory=lambda: client) if client else CliState()
    return CliRunner().invoke(cli, list(args), obj=state)


@pytest.fixture(autouse=True)
def unit_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "units"
    directory.mkdir()
    monkeypatch.setenv("QUILT_UNIT_DIRS", str(directory))
    return directory


def test_unit_check_prints_the_service_of_a_good_file(unit_dirs: Path) -> None:
    (unit_dirs / "db.network").write_text("[Network]\n")
    path = unit_dirs / "web.container"
    path.write_text("[Container]\nImage=busybox\nNetwork=db.network\n")
    result = quiltctl("unit-check", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == unitfiles.service_text(unitfiles.load(path))
    assert "Requires=db-network.service\n" in result.stdout


def test_unit_check_of_a_bad_file_is_one_line_and_status_1(unit_dirs: Path) -> None:
    path = unit_dirs / "web.container"
    path.write_text("[Container]\nImage=busybox\n\nPidsLimit=many\n")
    result = quiltctl("unit-check", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"quiltctl: {path}:4: PidsLimit: 'many' is not a whole number\n"


def test_unit_check_of_a_relative_path_names_the_absolute_one(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("job.container").write_text("[Container]\nImage=busybox\n")
    result = quiltctl("unit-check", "job.container")
    assert result.exit_code == 0 and f"ExecStart=/usr/bin/quiltctl unit-run {tmp_path}/job.container\n" \
        in result.stdout


def test_unit_check_of_a_missing_file(tmp_path: Path) -> None:
    result = quiltctl("unit-check", str(tmp_path / "gone.container"))
    assert result.exit_code == 1 and "cannot read it: No such file or directory" in result.stderr


def test_generate_unit_prints_the_containers_file() -> None:
    client = FakeClient()
    result = quiltctl("generate", "unit", "web", client=client)
    assert result.exit_code == 0, result.output
    assert client.calls == [("get_container", "web"), ("properties", PATH), ("get_environment", PATH)]
    assert result.stdout == unitfiles.container_file_text(
        {"Name": "web", "Image": "debian:12", "Command": ["sleep", "600"], "User": "0", "Hostname": "web",
         "Addresses": [["quilt", "10.89.0.2"]], "MemoryMax": 64 << 20, "StopSignal": 15, "StopTimeout": 10},
        ["PATH=/usr/bin:/bin", "SECRET=s3cret value"])
    assert 'Environment="SECRET=s3cret value"\n' in result.stdout and "Network=" not in result.stdout
