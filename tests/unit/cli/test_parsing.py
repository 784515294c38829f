"""quiltctl's pure parts: flag value parsing, and how flags (Podman's and the original CLI's) become the D-Bus
calls' arguments. The CLI runs against a fake Client handed in through click's context obj (CliState)."""

from __future__ import annotations

import os
import signal
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import pytest
from click.testing import CliRunner, Result
from dbus_fast import Variant

from quilt_agent.cli import listing
from quilt_agent.cli.context import CliState
from quilt_agent.cli.main import cli
from quilt_agent.cli.parsing import (
    parse_cpus,
    parse_duration,
    parse_key_value,
    parse_memory,
    parse_namespaces,
    parse_signal,
    parse_since,
    resolve_image,
)
from quilt_agent.client import (
    CONTAINER_OPTION_SIGNATURES,
    AgentNotReachable,
    Client,
    ClientError,
    ContainerEntry,
    ImageEntry,
    LogLine,
    wrap_options,
)

MIB = 1 << 20
FULL_ID = "0123456789abcdef" * 4
PATH = "/org/quilt/Runtime/container/" + FULL_ID  # as the agent names it: the id is in the path


# --- flag values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512M", 512 * MIB),
        ("512m", 512 * MIB),
        ("512MiB", 512 * MIB),
        ("512mb", 512 * MIB),
        ("1g", 1 << 30),
        ("2 G", 2 << 30),
        ("1.5k", 1536),
        ("4096", 4096),
        ("100b", 100),
    ],
)
def test_memory_sizes_are_binary_units(text: str, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["lots", "", "-1", "0", "5x", "M", "1.2.3m"])
def test_memory_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_memory(text)


@pytest.mark.parametrize(
    ("text", "percent"), [("0.5", 50.0), ("1", 100.0), ("2", 200.0), ("0.01", 1.0), ("1.25", 125.0)]
)
def test_cpus_become_percent_of_one_cpu(text: str, percent: float) -> None:
    assert parse_cpus(text) == percent


@pytest.mark.parametrize("text", ["-1", "0", "nan", "inf", "half"])
def test_cpus_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpus(text)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("TERM", 15), ("SIGTERM", 15), ("sigkill", 9), ("kill", 9), ("HUP", 1), ("9", 9), (" 15 ", 15),
        ("USR1", signal.SIGUSR1),
    ],
)
def test_signals_by_name_or_number(text: str, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["FOO", "SIGFOO", "0", "65", "-9", ""])
def test_signal_rejects_unknown(text: str) -> None:
    with pytest.raises(ValueError):
        parse_signal(text)


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds_ago"),
    [("10s", 10), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("1d", 86400), ("0s", 0)],
)
def test_since_durations_count_back_from_now(text: str, seconds_ago: int) -> None:
    assert parse_since(text, NOW) == int((NOW - seconds_ago) * 1_000_000)


def test_since_accepts_iso_times_and_unix_timestamps() -> None:
    utc = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    assert parse_since("2024-01-02T03:04:05Z", NOW) == int(utc * 1_000_000)
    assert parse_since("2024-01-02T05:04:05+02:00", NOW) == int(utc * 1_000_000)
    local = datetime(2024, 1, 2, 3, 4, 5).timestamp()
    assert parse_since("2024-01-02 03:04:05", NOW) == int(local * 1_000_000)
    assert parse_since("1700000000", NOW) == 1_700_000_000_000_000


@pytest.mark.parametrize("text", ["yesterday", "10x", "", "m5", "5m junk"])
def test_since_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text, NOW)


def test_duration_sums_its_parts() -> None:
    assert parse_duration("1h2m3s") == 3723


def test_key_value_splits_at_the_first_equals_only() -> None:
    assert parse_key_value("A=b=c", "label") == ("A", "b=c")
    assert parse_key_value("EMPTY=", "label") == ("EMPTY", "")
    for bad in ("NOEQUALS", "=value"):
        with pytest.raises(ValueError):
            parse_key_value(bad, "label")


def test_namespaces_are_checked_and_deduplicated() -> None:
    assert parse_namespaces("pid,mnt, network,pid") == ["pid", "mount", "net"]
    for bad in ("pid,user", "", ","):
        with pytest.raises(ValueError):
            parse_namespaces(bad)


def test_image_paths_become_absolute_and_names_stay(tmp_path: Any) -> None:
    (tmp_path / "rootfs.tar").write_bytes(b"")
    cwd = str(tmp_path)
    assert resolve_image("rootfs.tar", cwd) == str(tmp_path / "rootfs.tar")
    assert resolve_image("./missing.tar.gz", cwd) == str(tmp_path / "missing.tar.gz")
    assert resolve_image("../x.tar", cwd) == os.path.join(os.path.dirname(cwd), "x.tar")
    assert resolve_image("/srv/images/x.tar", cwd) == "/srv/images/x.tar"
    assert resolve_image("debian:12", cwd) == "debian:12"
    assert resolve_image("registry.example/team/app", cwd) == "registry.example/team/app"


def test_options_are_wrapped_with_the_contracts_types() -> None:
    wrapped = wrap_options(
        {"memory_max": 512 * MIB, "cpu_quota": 50, "env": ("A=1",), "labels": {"k": "v"}, "remove_on_exit": 1},
        CONTAINER_OPTION_SIGNATURES,
    )
    assert wrapped == {
        "memory_max": Variant("t", 512 * MIB),
        "cpu_quota": Variant("d", 50.0),
        "env": Variant("as", ["A=1"]),
        "labels": Variant("a{ss}", {"k": "v"}),
        "remove_on_exit": Variant("b", True),
    }
    assert wrap_options({"future": Variant("s", "x")}, CONTAINER_OPTION_SIGNATURES) == {"future": Variant("s", "x")}
    with pytest.raises(ValueError):
        wrap_options({"future": "x"}, CONTAINER_OPTION_SIGNATURES)


# --- the CLI against a fake client --------------------------------------------------------------------------------


IMAGE_ID = "e" * 64
IMAGE_PATH = "/org/quilt/Runtime/image/" + IMAGE_ID


class FakeClient(Client):
    """Records calls; `errors` maps a method name to the ClientError it raises."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.errors: dict[str, ClientError] = {}
        self.exit_code = 0
        self.entries = [
            ContainerEntry(FULL_ID, "web", "running", PATH),
            ContainerEntry("f" * 64, "old", "exited", "/org/quilt/Runtime/container/old"),
        ]
        self.logs = [LogLine(1, "stdout", "out 1"), LogLine(2, "stderr", "err 1"), LogLine(3, "stdout", "out 2")]

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        if call[0] in self.errors:
            raise self.errors[call[0]]

    async def connect(self) -> None:
        self._record("connect")

    def close(self) -> None:
        pass

    async def create_container(
        self, name: str, image: str, command: Sequence[str], options: Mapping[str, Any] | None = None
    ) -> str:
        self._record("create_container", name, image, list(command), dict(options or {}))
        return PATH

    async def run_container(
        self, name: str, image: str, command: Sequence[str], options: Mapping[str, Any] | None = None
    ) -> str:
        self._record("run_container", name, image, list(command), dict(options or {}))
        return PATH

    async def get_container(self, name_or_id: str) -> str:
        self._record("get_container", name_or_id)
        if name_or_id == "missing":
            raise ClientError("org.quilt.Runtime.Error.NoSuchContainer", "No container 'missing' known")
        return PATH

    async def list_containers(self) -> list[ContainerEntry]:
        self._record("list_containers")
        return self.entries

    async def get_container_properties(self, name_or_id: str) -> tuple[str, dict[str, Any]]:
        path = await self.get_container(name_or_id)
        self._record("get_container_properties", name_or_id)
        return path, self._props(path)

    async def list_container_properties(self, names: Sequence[str] = ()) -> list[tuple[str, dict[str, Any]]]:
        self._record("list_container_properties", tuple(names))
        return [(e.path, {k: v for k, v in self._props(e.path).items() if not names or k in names})
                for e in self.entries]

    async def start(self, path: str) -> None:
        self._record("start", path)

    async def stop(self, path: str, timeout: int = 0) -> None:
        self._record("stop", path, timeout)

    async def kill(self, path: str, signal: int) -> None:
        self._record("kill", path, int(signal))

    async def remove(self, path: str, force: bool = False) -> None:
        self._record("remove", path, force)

    async def wait(self, path: str) -> int:
        self._record("wait", path)
        return self.exit_code

    async def hold_removal(self, path: str) -> None:
        self._record("hold_removal", path)

    async def get_logs(self, path: str, options: Mapping[str, Any] | None = None) -> list[LogLine]:
        self._record("get_logs", path, dict(options or {}))
        return self.logs

    async def get_environment(self, path: str) -> list[str]:
        self._record("get_environment", path)
        return ["SECRET=1"]

    async def properties(self, path: str) -> dict[str, Any]:
        self._record("properties", path)
        return self._props(path)

    async def get_property(self, path: str, name: str) -> Any:
        self._record("get_property", path, name)
        return (await self.properties(path)).get(name, "quilt-web.scope" if name == "Unit" else "")

    def _props(self, path: str) -> dict[str, Any]:
        entry = next((e for e in self.entries if e.path == path), self.entries[0])
        state = entry.state if entry.path == path else "running"
        return {"Id": entry.id, "Name": entry.name, "Image": "/i.tar", "Command": ["sh", "-c", "echo hi"], "State": state,
                "ExitCode": 0, "ExitSignal": 0, "CreatedAt": 0}

    async def import_image_fd(self, archive: int, name: str = "", options: Mapping[str, Any] | None = None) -> str:
        self._record("import_image_fd", os.readlink(f"/proc/self/fd/{archive}"), name)
        return IMAGE_PATH

    async def image_properties(self, path: str) -> dict[str, Any]:
        self._record("image_properties", path)
        return {"Id": IMAGE_ID}

    async def copy_to_fd(self, path: str, archive: int, container_path: str) -> None:
        self._record("copy_to_fd", path, archive, container_path)

    async def copy_from_fd(self, path: str, container_path: str, archive: int) -> None:
        self._record("copy_from_fd", path, container_path, archive)

    def calls_to(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == name]


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


def quiltctl(fake: FakeClient, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), obj=CliState(client_factory=lambda: fake))


def created(fake: FakeClient, *args: str) -> tuple[Any, ...]:
    result = quiltctl(fake, "create", *args)
    assert result.exit_code == 0, result.output
    (call,) = fake.calls_to("create_container")
    return call


def test_original_spellings_map_onto_the_same_call(fake: FakeClient, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nixos-minimal.tar.gz").write_bytes(b"")
    original = created(
        fake, "--image-path", "./nixos-minimal.tar.gz", "--memory-limit", "512", "--cpu-limit", "50.0",
        "--enable-all-namespaces", "--", "/bin/sh", "-c", "echo hello",
    )
    podman = created(
        FakeClient(), "-m", "512M", "--cpus", "0.5", "./nixos-minimal.tar.gz", "--", "/bin/sh", "-c", "echo hello"
    )
    # An image path is read by quiltctl, with the caller's rights, and sent open; the create names its id.
    assert fake.calls_to("import_image_fd") == [(str(tmp_path / "nixos-minimal.tar.gz"), "")]
    assert original == podman == (
        "",
        IMAGE_ID,
        ["/bin/sh", "-c", "echo hello"],
        {"memory_max": 512 * MIB, "cpu_quota": 50.0},
    )


def test_every_podman_flag_reaches_the_options(fake: FakeClient) -> None:
    name, image, command, options = created(
        fake, "--name", "web", "-e", "A=1", "--env", "B=x=y", "-w", "/srv", "-u", "1000:1000", "--hostname", "h",
        "-m", "1g", "--cpus", "1.5", "--pids-limit", "64", "--rm", "--label", "k=v", "-l", "k2=v2",
        "--stop-timeout", "3", "--namespaces", "pid,mount,net", "--init", "debian:12", "ls", "-l",
    )
    assert (name, image, command) == ("web", "debian:12", ["ls", "-l"])
    assert options == {
        "env": ["A=1", "B=x=y"], "workdir": "/srv", "user": "1000:1000", "hostname": "h", "memory_max": 1 << 30,
        "cpu_quota": 150.0, "pids_max": 64, "namespaces": ["pid", "mount", "net"], "remove_on_exit": True,
        "stop_timeout": 3, "labels": {"k": "v", "k2": "v2"}, "init": True,
    }


def test_create_prints_the_id(fake: FakeClient) -> None:
    result = quiltctl(fake, "create", "img", "true")
    assert result.stdout == FULL_ID + "\n"


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "lots", "img"],
        ["--cpus", "-1", "img"],
        ["-e", "=value", "img"],
        ["--namespaces", "pid,user", "img"],
        ["-m", "1g", "--memory-limit", "5", "img"],
        ["--namespaces", "pid", "--enable-all-namespaces", "img"],
        [],
    ],
)
def test_bad_flags_are_one_line_usage_errors_without_a_call(fake: FakeClient, args: list[str]) -> None:
    result = quiltctl(fake, "run", *args)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("quiltctl: ")
    assert fake.calls == []


def test_foreground_run_prints_logs_by_stream_and_exits_with_the_code(fake: FakeClient) -> None:
    fake.exit_code = 3
    result = quiltctl(fake, "run", "--rm", "img", "sh")
    assert result.exit_code == 3
    assert result.stdout == "out 1\nout 2\n"
    assert result.stderr == "err 1\n"
    # The agent removes it on exit (whatever becomes of quiltctl), held from before its start until quiltctl has
    # read the exit code and the logs and removed it: one call.
    assert fake.calls_to("run_container")[0][3] == {"remove_on_exit": True, "hold_removal": True}
    calls = [c[0] for c in fake.calls]
    assert "create_container" not in calls and "start" not in calls
    assert calls[-3:] == ["wait", "get_logs", "remove"]


def test_detached_run_prints_the_id_and_lets_the_agent_remove(fake: FakeClient) -> None:
    result = quiltctl(fake, "run", "-d", "--rm", "img", "--", "sleep", "9")
    assert (result.exit_code, result.stdout) == (0, FULL_ID + "\n")
    assert fake.calls_to("run_container") == [("", "img", ["sleep", "9"], {"remove_on_exit": True})]
    assert fake.calls_to("wait") == []


def test_kill_and_stop_flags(fake: FakeClient) -> None:
    assert quiltctl(fake, "kill", "web").exit_code == 0
    assert quiltctl(fake, "kill", "-s", "SIGHUP", "web").exit_code == 0
    assert quiltctl(fake, "stop", "web").exit_code == 0
    assert quiltctl(fake, "stop", "-t", "5", "web").exit_code == 0
    assert quiltctl(fake, "stop", "-t", "0", "web").exit_code == 0
    assert fake.calls_to("kill") == [(PATH, 9), (PATH, 1), (PATH, 9)]
    assert fake.calls_to("stop") == [(PATH, 0), (PATH, 5)]


def test_stop_without_grace_on_a_stopped_container_succeeds(fake: FakeClient) -> None:
    fake.errors["kill"] = ClientError("org.quilt.Runtime.Error.NotRunning", "Container 'web' is not running")
    result = quiltctl(fake, "stop", "-t", "0", "web")
    assert (result.exit_code, result.stdout) == (0, "web\n")


def test_foreground_run_without_an_exit_status_is_a_quilt_error(fake: FakeClient) -> None:
    fake.exit_code = -1
    result = quiltctl(fake, "run", "img", "sh")
    assert result.exit_code == 125
    assert result.stderr.endswith("quiltctl: the container ended without an exit status (exit code -1)\n")


def test_rm_goes_on_after_a_failure_and_exits_125(fake: FakeClient) -> None:
    result = quiltctl(fake, "rm", "-f", "web", "missing", "web")
    assert result.exit_code == 125
    assert result.stdout == "web\nweb\n"
    assert result.stderr == "quiltctl: No container 'missing' known\n"
    assert fake.calls_to("remove") == [(PATH, True), (PATH, True)]
    assert quiltctl(fake, "remove", "--force", "web").exit_code == 0


def test_agent_errors_are_one_line_and_125(fake: FakeClient) -> None:
    fake.errors["start"] = ClientError("org.quilt.Runtime.Error.AlreadyRunning", "Container 'web' is already running")
    result = quiltctl(fake, "start", "web")
    assert (result.exit_code, result.stderr) == (125, "quiltctl: Container 'web' is already running\n")


def test_unreachable_agent_is_one_line_and_125(fake: FakeClient) -> None:
    fake.errors["connect"] = AgentNotReachable("org.freedesktop.DBus.Error.NoReply", "no reply")
    result = quiltctl(fake, "ps")
    assert result.exit_code == 125
    assert result.stderr == "quiltctl: quilt-agent is not reachable on the system bus: no reply\n"


def test_ps_shows_running_ones_unless_all(fake: FakeClient) -> None:
    running = quiltctl(fake, "ps", "--json")
    assert running.exit_code == 0
    assert '"State": "running"' in running.stdout and '"exited"' not in running.stdout
    table = quiltctl(fake, "ps", "-a")
    assert table.stdout.splitlines()[0].split() == ["ID", "NAME", "IMAGE", "COMMAND", "STATE", "EXIT", "CREATED"]
    assert FULL_ID[:12] in table.stdout and FULL_ID[:13] not in table.stdout
    assert len(table.stdout.splitlines()) == 3


def test_ps_shows_an_image_named_by_its_id_as_the_short_id(fake: FakeClient, monkeypatch: Any) -> None:
    real = fake._props
    monkeypatch.setattr(fake, "_props", lambda path: {**real(path), "Image": IMAGE_ID})
    table = quiltctl(fake, "ps", "-a").stdout
    assert IMAGE_ID[:12] in table and IMAGE_ID[:13] not in table


def test_inspect_leaves_out_the_environment_when_denied(fake: FakeClient) -> None:
    assert '"SECRET=1"' in quiltctl(fake, "inspect", "web").stdout
    fake.errors["get_environment"] = ClientError("org.freedesktop.DBus.Error.AccessDenied", "Access denied")
    result = quiltctl(fake, "inspect", "web")
    assert result.exit_code == 0 and "Environment" not in result.stdout and result.stderr == ""


def test_logs_options(fake: FakeClient) -> None:
    result = quiltctl(fake, "logs", "-n", "5", "--since", "1700000000", "web")
    assert result.exit_code == 0
    assert fake.calls_to("get_logs") == [(PATH, {"lines": 5, "since": 1_700_000_000_000_000, "dropped": True})]
    assert quiltctl(fake, "logs", "--since", "yesterday", "web").exit_code == 2


def test_wait_prints_exit_codes(fake: FakeClient) -> None:
    fake.exit_code = 7
    result = quiltctl(fake, "wait", "web", "web")
    assert (result.exit_code, result.stdout) == (0, "7\n7\n")


# --- setup commands -----------------------------------------------------------------------------------------------


def test_setup_flags_go_in_order_and_unchecked_to_the_agent(fake: FakeClient) -> None:
    _, _, command, options = created(fake, "--setup", "pip: flask==3.0", "--setup", "sh: echo a; echo b",
                                     "--setup", "bogus: x", "--no-setup-cache", "img", "true")
    # The agent checks each entry (one error line and 125 for a bad one): quiltctl passes them as typed.
    assert options == {"setup": ["pip: flask==3.0", "sh: echo a; echo b", "bogus: x"], "setup_cache": False}
    assert command == ["true"]
    assert created(FakeClient(), "img")[3] == {}
    assert wrap_options(options, CONTAINER_OPTION_SIGNATURES) == {
        "setup": Variant("as", ["pip: flask==3.0", "sh: echo a; echo b", "bogus: x"]),
        "setup_cache": Variant("b", False)}


def test_logs_setup_asks_for_the_setup_lines_only(fake: FakeClient) -> None:
    assert quiltctl(fake, "logs", "--setup", "-n", "2", "web").exit_code == 0
    assert quiltctl(fake, "logs", "web").exit_code == 0
    assert fake.calls_to("get_logs") == [(PATH, {"setup": True, "lines": 2, "dropped": True}), (PATH, {"dropped": True})]


class SetupFake(FakeClient):
    """GetLogs as the agent answers it: without `setup` every line, with it the setup steps' lines only."""

    def __init__(self, failed: bool) -> None:
        super().__init__()
        self.setup_lines = [LogLine(1, "stdout", "quilt: setup step 1/1: pip: flask"),
                            LogLine(2, "stderr", "ERROR: No matching distribution found for flask")]
        self.own_lines = [] if failed else [LogLine(3, "stdout", "3.0")]
        self.failed = failed
        self.exit_code = 1 if failed else 0

    async def get_logs(self, path: str, options: Mapping[str, Any] | None = None) -> list[LogLine]:
        self._record("get_logs", path, dict(options or {}))
        return self.setup_lines if (options or {}).get("setup") else self.setup_lines + self.own_lines

    async def properties(self, path: str) -> dict[str, Any]:
        props = await super().properties(path)
        if self.failed:
            props.update(State="failed", ExitCode=1, FailureReason="setup step 1 (pip: flask) exited with code 1")
        return props


def test_a_foreground_run_prints_the_commands_output_not_the_package_managers() -> None:
    fake = SetupFake(failed=False)
    result = quiltctl(fake, "run", "--setup", "pip: flask", "img", "python3", "-c", "import flask")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "3.0\n", "")


def test_a_foreground_run_whose_setup_fails_shows_the_steps_output_and_reason_on_stderr() -> None:
    fake = SetupFake(failed=True)
    result = quiltctl(fake, "run", "--rm", "--setup", "pip: flask", "img", "true")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.splitlines() == ["quilt: setup step 1/1: pip: flask",
                                          "ERROR: No matching distribution found for flask",
                                          "quiltctl: setup step 1 (pip: flask) exited with code 1"]
    assert fake.calls_to("remove") == [(PATH, False)]


class ImagesFake(FakeClient):
    IMAGES = {
        "/img/a": {"Id": "a" * 64, "Names": ["app:v1"], "Size": 1000, "CreatedAt": 0, "SetupBase": "",
                   "SetupSteps": []},
        "/img/c": {"Id": "c" * 64, "Names": [], "Size": 5000, "CreatedAt": 0, "SetupBase": "a" * 64,
                   "SetupSteps": ["pip: flask", "sh: true"]},
    }

    async def list_images(self) -> list[ImageEntry]:
        self._record("list_images")
        return [ImageEntry(p["Id"], (p["Names"] or [""])[0], p["Size"], path) for path, p in self.IMAGES.items()]

    async def image_properties(self, path: str) -> dict[str, Any]:
        return dict(self.IMAGES[path])


def test_image_ls_hides_setup_results_unless_all() -> None:
    plain = quiltctl(ImagesFake(), "image", "ls")
    assert plain.exit_code == 0
    assert [line.split()[:2] for line in plain.stdout.splitlines()] == [["NAME", "ID"], ["app:v1", "a" * 12]]
    assert quiltctl(ImagesFake(), "image", "ls", "-q").stdout == "a" * 12 + "\n"
    every = quiltctl(ImagesFake(), "image", "ls", "--all").stdout.splitlines()
    assert every[0].split() == ["NAME", "ID", "SIZE", "CREATED", "SETUP"]
    assert every[1].split()[:2] == ["app:v1", "a" * 12] and every[1].rstrip().endswith("1.0 kB")  # no SETUP
    assert every[2].split()[:2] == ["<setup>", "c" * 12]
    assert every[2].endswith(f"{'a' * 12} + pip: flask; sh: true")
    assert quiltctl(ImagesFake(), "image", "ls", "-a", "-q").stdout == "a" * 12 + "\n" + "c" * 12 + "\n"


def test_security_opt_seccomp_becomes_the_seccomp_option(fake: FakeClient) -> None:
    assert created(fake, "--security-opt", "seccomp=unconfined", "img", "true")[3] == {"seccomp": "unconfined"}
    for bad in ("label=disable", "seccomp", "apparmor=unconfined"):
        result = quiltctl(FakeClient(), "create", "--security-opt", bad, "img", "true")
        assert result.exit_code == 2 and "only seccomp=default and seccomp=unconfined" in result.output, bad


# --- what a new user's trial found --------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "call"), [
    (["web:/etc/passwd", "-"], ("copy_from_fd", PATH, "/etc/passwd", 1)),
    (["-", "web:/tmp/x"], ("copy_to_fd", PATH, 0, "/tmp/x")),
])
def test_cp_dash_is_a_tar_stream_on_stdout_or_stdin(fake: FakeClient, args: list[str], call: tuple[Any, ...],
                                                    tmp_path: Any, monkeypatch: Any) -> None:
    # As docker cp: the agent writes the archive to quiltctl's own stdout, or reads it from its stdin; once a
    # file named '-' was written instead.
    monkeypatch.chdir(tmp_path)
    result = quiltctl(fake, "cp", *args)
    assert result.exit_code == 0, result.output
    assert fake.calls_to(call[0]) == [call[1:]]
    assert list(tmp_path.iterdir()) == []


def test_cp_help_and_usage_name_the_arguments_alike(fake: FakeClient) -> None:
    help_text = quiltctl(fake, "cp", "--help").stdout
    assert "cp [OPTIONS] SRC DEST" in help_text
    assert "SOURCE" not in help_text and "SRC and DEST" in help_text


@pytest.mark.parametrize(("text", "seconds_ago"),
                         [("2h ago", 7200), ("10s ago", 10), ("1h30m  AGO", 5400), (" 5m ago ", 300)])
def test_since_takes_a_duration_followed_by_ago(text: str, seconds_ago: int) -> None:
    assert parse_since(text, NOW) == int((NOW - seconds_ago) * 1_000_000)


@pytest.mark.parametrize("text", ["ago", " ago", "yesterday ago", "1700000000 ago", "2h agoo", "2hago"])
def test_since_takes_ago_after_a_duration_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since(text, NOW)


def test_logs_since_takes_what_its_help_offers(fake: FakeClient) -> None:
    assert "2h ago" in quiltctl(fake, "logs", "--help").stdout
    before = datetime.now().timestamp()
    result = quiltctl(fake, "logs", "--since", "2h ago", "web")
    assert result.exit_code == 0, result.output
    ((_, options),) = fake.calls_to("get_logs")
    assert (before - 7200) * 1e6 - 1e6 <= options["since"] <= (datetime.now().timestamp() - 7200) * 1e6


class EventsFake(FakeClient):
    async def watch_events(self) -> Any:
        import asyncio

        self._record("watch_events")
        return asyncio.Queue()

    async def watch_agent(self) -> Any:
        from quilt_agent.client import AgentWatch

        return AgentWatch(":1.1")

    async def list_events(self, since: int, until: int) -> list[Any]:
        self._record("list_events", since, until)
        return []


def test_events_since_and_until_take_ago_too() -> None:
    fake = EventsFake()
    now = datetime.now().timestamp()
    result = quiltctl(fake, "events", "--since", "2h ago", "--until", "1h ago")
    assert result.exit_code == 0, result.output
    ((since, until),) = fake.calls_to("list_events")
    assert abs(since / 1e6 - (now - 7200)) < 60 and abs(until / 1e6 - (now - 3600)) < 60


def test_stop_timeout_stops_where_the_agent_does(fake: FakeClient) -> None:
    # The agent refuses a stop_timeout above 86400 (a day): the flag's range says so, and refuses it first.
    assert "0<=x<=86400" in quiltctl(fake, "run", "--help").stdout
    assert created(fake, "--stop-timeout", "86400", "img", "true")[3] == {"stop_timeout": 86400}
    too_long = quiltctl(FakeClient(), "create", "--stop-timeout", "86401", "img", "true")
    assert too_long.exit_code == 2 and "86401" in too_long.stderr


class PruneFake(FakeClient):
    async def prune_volumes(self) -> int:
        self._record("prune_volumes")
        return 2_000_000

    async def prune_images(self) -> int:
        self._record("prune_images")
        return 2_000_000


def test_volume_and_image_prune_word_the_space_freed_alike() -> None:
    from quilt_agent.cli import images, output, volumes

    volume = quiltctl(PruneFake(), "volume", "prune")
    image = quiltctl(PruneFake(), "image", "prune")
    assert (volume.exit_code, volume.stdout) == (0, "2.0 MB freed\n")
    assert image.stdout == volume.stdout
    assert output.size_text(999) == "999 B" and output.size_text(1500) == "1.5 kB"
    # One function: neither module keeps its own copy.
    assert not hasattr(images, "output_size") and not hasattr(volumes, "output_size")


def test_ps_quiet_prints_short_ids(fake: FakeClient) -> None:
    running = quiltctl(fake, "ps", "-q")
    assert (running.exit_code, running.stdout) == (0, FULL_ID[:12] + "\n")
    assert quiltctl(fake, "ps", "-a", "--quiet").stdout == f"{FULL_ID[:12]}\n{'f' * 12}\n"
    assert fake.calls_to("properties") == []
    assert fake.calls_to("list_container_properties") == [(listing.TABLE_PROPERTIES,)] * 2
    assert quiltctl(FakeClient(), "ps", "-q", "--json").stdout.startswith("[")  # --json wins, as in image ls


def test_ps_json_help_says_what_it_leaves_out(fake: FakeClient) -> None:
    help_text = " ".join(quiltctl(fake, "ps", "--help").stdout.split())
    assert "every property" not in help_text and "without Environment" in help_text
    assert "Environment" not in quiltctl(fake, "ps", "--json").stdout


def test_run_help_says_what_image_may_be(fake: FakeClient) -> None:
    help_text = " ".join(quiltctl(fake, "run", "--help").stdout.split())
    for form in ("image name", "id prefix", "rootfs tarball", "OCI layout", "oci-archive", "docker save"):
        assert form in help_text, form


def test_without_a_system_bus_the_one_line_says_what_to_do(fake: FakeClient) -> None:
    fake.errors["connect"] = AgentNotReachable(
        "org.freedesktop.DBus.Error.NoServer",
        "cannot connect to unix:path=/var/run/dbus/system_bus_socket: No such file or directory")
    result = quiltctl(fake, "ps")
    assert result.exit_code == 125
    (line,) = result.stderr.splitlines()
    assert line.startswith("quiltctl: quilt-agent is not reachable on the system bus: cannot connect to unix:")
    assert "python3 tests/testhost.py run -- bash" in line and "make install" in line and "dbus" in line


def test_an_agent_not_installed_gets_its_hint_and_other_unreachables_none(fake: FakeClient) -> None:
    fake.errors["connect"] = AgentNotReachable("org.freedesktop.DBus.Error.ServiceUnknown",
                                               "The name org.quilt.Runtime was not provided by any .service files")
    (line,) = quiltctl(fake, "ps").stderr.splitlines()
    assert "make install" in line and "testhost" not in line
    fake.errors["connect"] = AgentNotReachable("org.freedesktop.systemd1.UnitMasked", "Unit is masked.")
    assert quiltctl(fake, "ps").stderr == "quiltctl: quilt-agent is not reachable on the system bus: Unit is masked.\n"
