"""cli/quick.py: the common forms of ps, inspect, status, start, stop, rm and exec without click. Its table must declare
what the click commands declare, every command line it takes must mean to it what it means to click, and what it
prints must be what the click path prints; anything else it must leave to click."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from quilt_agent.cli import quick
from quilt_agent.cli.context import CliState
from quilt_agent.cli.main import COMMANDS, cli, load_command
from tests.unit.cli.fake_agent import ROWS, FakeAgent

PROJECT = Path(__file__).resolve().parents[3]


Declared = tuple[dict[str, tuple[str, str, Any, Any]], list[tuple[str, int, bool]], bool]


def _click_declares(command: click.Command, left_to_click: set[str]) -> Declared:
    options: dict[str, tuple[str, str, Any, Any]] = {}
    arguments = []
    for param in command.params:
        if isinstance(param, click.Argument):
            arguments.append((str(param.name), param.nargs, param.required))
            continue
        assert isinstance(param, click.Option)
        if param.name in left_to_click:
            kind, bounds = quick.CLICK, None
        elif param.is_flag:
            kind, bounds = quick.FLAG, None
        elif param.multiple:
            kind, bounds = quick.TEXTS, None
        elif isinstance(param.type, click.IntRange):
            kind, bounds = quick.COUNT, (param.type.min, param.type.max)
        else:
            assert param.type is click.STRING, f"{param.name}: a type the quick table has no kind for"
            kind, bounds = quick.TEXT, None
        # A flag given nowhere is False (click 8.2 declares that as its UNSET sentinel, 8.1 as False).
        default = () if param.multiple else (param.default is True) if param.is_flag else param.default
        for name in (*param.opts, *param.secondary_opts):
            options[name] = (str(param.name), kind, bounds, default)
    interspersed = command.context_settings.get("allow_interspersed_args", True)
    return options, arguments, interspersed


def _table_declares(verb: quick.Verb) -> Declared:
    options = {name: (o.param, o.kind, o.bounds if o.kind == quick.COUNT else None, o.default)
               for name, o in verb.options.items()}
    return options, [(a.param, a.nargs, a.required) for a in verb.arguments], verb.interspersed


@pytest.mark.parametrize("name", sorted(quick.VERBS))
def test_the_table_declares_what_the_click_command_declares(name: str) -> None:
    verb = quick.VERBS[name]
    left_to_click = {o.param for o in verb.options.values() if o.kind == quick.CLICK}
    assert _table_declares(verb) == _click_declares(load_command(*COMMANDS[name]), left_to_click)


LINES = [
    "ps", "ps -a", "ps --all", "ps -q", "ps -a -q", "ps -aq", "ps --json", "ps --format json", "ps --format={{.ID}}",
    "ps --format", "ps -f name=web", "ps -f name=web --filter status=exited", "ps --filter=label=app=shop",
    "ps -n 2", "ps -n=2", "ps -n2", "ps --last 3", "ps --last=x", "ps -n -1", "ps -n +2", "ps -n 1_0", "ps -l",
    "ps --latest", "ps --no-trunc", "ps --noheading", "ps web", "ps --help", "ps -h", "ps --bogus", "ps -- -a",
    "ps --all=yes", "ps -a -a", "ps --format a --format b",
    "inspect web", "inspect web db", "inspect", "inspect -f {{.Id}} web", "inspect web --format={{.Name}}",
    "inspect --format", "inspect -", "inspect web -x", "inspect -- web", "inspect --help", "inspect -f",
    "status web", "status", "status web db", "status --help",
    "logs web", "logs -n 5 web", "logs --tail=0 web", "logs -t --setup web", "logs web -n 3", "logs -f web",
    "logs --since 5m web", "logs --until 1h web", "logs -n -1 web", "logs", "logs web db", "logs -tn 3 web",
    "start web", "start web db", "start", "start -a web",
    "stop web", "stop -t 0 web", "stop web -t 5", "stop --time=3 web", "stop -t 4294967295 web",
    "stop -t 4294967296 web", "stop -t -1 web", "stop -t x web", "stop -a", "stop -a web", "stop", "stop -t",
    "stop --all", "stop -at 0",
    "rm web", "rm -f web", "rm --force web db", "rm -a", "rm -a -f", "rm -af", "rm", "rm -a web", "rm -f",
    "remove web", "remove -f web", "remove",
    "wait web", "wait web db", "wait", "wait --condition ready web", "wait web --condition=healthy --condition running",
    "wait --condition", "wait -x web",
    "exec web true", "exec web sh -c x", "exec web -- ls -l", "exec web --", "exec web", "exec", "exec -i web cat",
    "exec --interactive web cat -", "exec -w /tmp web pwd", "exec --workdir=/tmp web pwd", "exec -u 1000 web id",
    "exec web ls -i", "exec -t web sh", "exec -it web sh", "exec -e A=1 web env", "exec -- web true",
    "exec --help", "exec web --help", "exec -w", "exec -x web true", "exec - true",
    "run img", "run --rm img true", "run -d --name web img sleep 1", "run --rm --network none img /bin/true",
    "run --net=none --net=quilt img", "run img ls -l", "run --rm img -- ls -l", "run -it img sh", "run -i img cat",
    "run -e A=1 img env", "run -m 1g img", "run --memory-limit 0 img", "run --memory-limit 5 img",
    "run --stop-timeout 86401 img", "run --stop-timeout 30 img", "run --help", "run", "run --rm", "run -d",
    "run -p 80 -v ./d:/d --tmpfs /t --read-only img", "run --image /x.tar", "run -dq img", "run --rm -- img",
    "run --health-retries 2 --health-on-failure kill img", "run --health-cmd true img", "run -l a=b img",
    "run --cap-add NET_RAW --cap-drop ALL --init -P --stop-signal TERM img", "run --restart on-failure:3 img",
    "run --setup 'pip: flask' --no-setup-cache img", "run --userns host --security-opt seccomp=unconfined img",
    "run --entrypoint /bin/sh --env-file ./e img", "run --pids-limit 0 img", "run --enable-all-namespaces img",
    "run --log-driver k8s-file --log-opt max-size=10m --log-opt max-files=3 img", "run --log-opt max-size img",
]


def _click_params(argv: list[str]) -> dict[str, Any] | None:
    command = load_command(*COMMANDS[argv[0]])
    try:
        ctx = command.make_context(argv[0], argv[1:], resilient_parsing=False)
    except (click.UsageError, click.exceptions.Exit):
        return None
    return dict(ctx.params)


@pytest.mark.parametrize("line", LINES)
def test_a_line_the_table_takes_means_to_it_what_it_means_to_click(line: str) -> None:
    argv = line.split()
    parsed = quick.parse(argv)
    if parsed is None:
        return  # click's to take, explain or refuse
    _verb, params = parsed
    assert params == _click_params(argv)


def test_the_table_takes_the_common_lines_and_leaves_the_rest_to_click() -> None:
    taken = {line for line in LINES if quick.parse(line.split()) is not None}
    assert {"ps", "ps -a", "ps --format json", "inspect web", "stop -t 0 web", "rm -f web", "stop -a",
            "exec web true", "exec web ls -i", "exec -i web cat", "run --rm img true", "run -d --name web img sleep 1",
            "run --rm --network none img /bin/true"} <= taken
    left = {"ps --help", "ps -aq", "ps -n2", "ps --last=x", "ps web", "inspect", "stop -a web", "stop", "rm",
            "stop -t 4294967296 web", "inspect -- web", "status web db", "ps --all=yes", "exec web --", "exec web",
            "exec -t web sh", "exec -e A=1 web env", "run -it img sh", "run -e A=1 img env", "run -m 1g img",
            "run --memory-limit 0 img", "run -dq img"}
    assert not left & taken
    # what click refuses, the table never takes
    for line in LINES:
        if _click_params(line.split()) is None:
            assert line not in taken, line
    assert quick.parse([]) is None and quick.parse(["pull", "img"]) is None and quick.parse(["-a"]) is None


def _through_click(argv: list[str], agent: FakeAgent) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, argv, obj=CliState(client_factory=lambda: agent), prog_name="quiltctl")
    return result.exit_code, result.stdout, result.stderr


def _through_quick(argv: list[str], agent: FakeAgent,
                   capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str] | None:
    """What the quick path printed and ended with; None when it handed the line to click."""
    assert quick.parse(argv) is not None
    ctx = click.Context(cli, obj=CliState(client_factory=lambda: agent))
    try:
        code = quick.dispatch(argv, ctx)
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return None if code is None else (code, captured.out, captured.err)


RUNS = [
    "ps", "ps -a", "ps -a -q", "ps -a --no-trunc", "ps --noheading", "ps -n 2", "ps -l -q", "ps --json",
    "ps -a --format json", "ps -a --format {{.Names}}:{{.Status}}", "ps --format {{if}}", "ps -f status=exited",
    "ps -f name=[", "ps -f nosuch=1", "ps -a -f label=app=shop -q", "ps -n 1 -l",
    "inspect web", "inspect web nosuch db", "inspect nosuch", "inspect -f {{.State.Status}} web old",
    "inspect -f {{.Nope}} web",
    "status old", "status nosuch",
    "logs old", "logs -t web", "logs -n 0 web", "logs -n 1 --setup web", "logs nosuch",
    "start new", "start web", "start new nosuch",
    "stop web", "stop -t 0 web old", "stop -a", "stop nosuch web",
    "rm old", "rm web", "rm -f web", "rm -a", "rm -a -f", "remove old nosuch",
    "wait old", "wait old broken nosuch", "wait --condition running web old",
    "exec web echo hi", "exec -i -w /srv -u 7 web -- sh -c exit", "exec old true", "exec nosuch true",
    "exec web exit 3",
    "run --rm --network none img echo hi", "run --rm --name one img exit 3", "run -d --name two img sleep 9",
    "run --name web img true", "run --security-opt bogus img", "run --restart always:3 img",
    "run --image img --name three", "run --rm --name four -w /srv -u 7 --hostname h img -- ls -l",
    "run --entrypoint [1] img", "run --env-file /nonexistent/env img", "run --name x",
    "run --log-driver file --log-opt max-size=1k --log-opt max-file=2 img", "run --log-opt tag=x img",
    "run --log-opt max-size=lots img",
]


@pytest.mark.parametrize("line", RUNS)
def test_the_quick_path_prints_and_ends_as_the_click_path(line: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = line.split()
    clicked, quicked = FakeAgent(copy.deepcopy(ROWS)), FakeAgent(copy.deepcopy(ROWS))
    expected = _through_click(argv, clicked)
    assert _through_quick(argv, quicked, capsys) == expected
    assert quicked.calls == clicked.calls and quicked.rows == clicked.rows


def test_a_refused_run_reads_its_env_file_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that reads differently the second time (a pipe) must not pass on a second reading."""
    env_file = tmp_path / "env"
    env_file.write_text("BAD KEY=1\n")
    agent = FakeAgent(copy.deepcopy(ROWS))
    real_open = open
    opened: list[str] = []

    def read_once(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == str(env_file):
            if opened:
                env_file.write_text("")  # as a pipe: empty the second time
            opened.append(str(path))
        return real_open(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.open", read_once)
        code, out, err = _through_quick(["run", "--env-file", str(env_file), "img", "true"], agent, capsys) or (0, "", "")
    assert (code, out, agent.calls, len(opened)) == (2, "", [], 1)
    assert err.startswith("quiltctl: Invalid value for '--env-file': ") and "line 1" in err


def test_version_is_what_click_prints(capsys: pytest.CaptureFixture[str]) -> None:
    clicked = CliRunner().invoke(cli, ["--version"], prog_name="quiltctl")
    assert quick.dispatch(["--version"]) == clicked.exit_code == 0
    assert capsys.readouterr().out == clicked.stdout


def _quiltctl(args: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
    """quiltctl as the package's wrapper runs it (-S, the libraries' directory added by hand)."""
    code = (f"import sys; sys.path.append({sysconfig.get_paths()['purelib']!r}); "
            f"sys.argv = ['quiltctl', *{args!r}]; from quilt_agent.cli.quick import main; main()")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    return subprocess.run([sys.executable, "-S", "-c", code], env=env, timeout=60, **kw)


def test_the_quick_path_flushes_its_output_before_it_exits() -> None:
    """It ends by os._exit, which skips the interpreter's own flushing: every byte still reaches a pipe."""
    result = _quiltctl(["--version"], capture_output=True)
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.startswith(b"quiltctl ") and result.stdout.endswith(b"\n")


def test_a_reader_gone_before_the_exit_is_no_success_and_no_traceback() -> None:
    """`quiltctl --version | true`: the pipe breaks at the final flush; the exit says so, quietly."""
    read, write = os.pipe()
    os.close(read)
    try:
        result = _quiltctl(["--version"], stdout=write, stderr=subprocess.PIPE)
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (1, b"")


def test_a_failure_keeps_its_exit_status_and_its_message() -> None:
    """The agent out of reach: 125 and the one-line message, both intact past the early exit."""
    result = _quiltctl(["ps", "-a"], capture_output=True)
    assert result.returncode == 125
    assert result.stderr.decode().count("\n") == 1 and "/nonexistent/bus" in result.stderr.decode()
