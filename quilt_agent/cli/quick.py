"""quiltctl's entry point: the commonest commands without click, everything else through it (cli/main.py).

Importing click costs a `quiltctl ps` more than the rest of it together (~25 ms of ~45 on these machines), so the
common forms of ps, inspect, status, logs, start, stop, rm, wait, exec and run (without a terminal) are parsed here, by a
table of their options, and handed to the same functions the click commands call (cli/verbs.py, cli/running.py).
Anything the table does not take exactly as written (--help, combined short flags, an unknown option, a number
that is not one, a missing argument, `--`, a flag whose value click converts) goes to click, which parses,
explains and refuses as it always does; a `run` whose flags cli/request.py refuses is refused here in click's
words. This path only ever answers what click would have answered the same way. tests/unit/cli/test_quick.py holds the table to the click commands' declarations, and
runs an assortment of command lines through both paths against one fake agent, comparing what each prints.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence

EXIT_INTERRUPTED = 130
USAGE_ERROR = 2  # click's status for a command line it refuses
UINT32_MAX = (1 << 32) - 1

# How an option takes its value: a flag takes none; TEXT one string; TEXTS one string each time it is given
# (a tuple); COUNT a whole number, within (minimum, maximum). CLICK: an option whose every use is left to click
# (its value needs click's converter, or the command's other path: exec's -t).
FLAG, TEXT, TEXTS, COUNT, CLICK = "flag", "text", "texts", "count", "click"


class Option:
    """One option, by all its names: the parameter it sets and how it takes its value (a kind above)."""

    def __init__(self, names: Sequence[str], param: str, kind: str, bounds: tuple[int, int | None] = (0, None),
                 default: Any = None) -> None:
        self.names, self.param, self.kind, self.bounds = tuple(names), param, kind, bounds
        self.default = {FLAG: False, TEXTS: ()}.get(kind, default)  # what click passes for an option not given


class Argument:
    """A positional parameter: `nargs` 1 for exactly one, -1 for any number (at least one when `required`)."""

    def __init__(self, param: str, nargs: int = 1, required: bool = True) -> None:
        self.param, self.nargs, self.required = param, nargs, required


class Verb:
    """One command's options and positional arguments, and the function that runs it ("module.function" under
    quilt_agent.cli: cli/verbs.py's, cli/running.py's). Options may follow arguments unless `interspersed` is
    False (then the first argument ends the options, as exec's command does). `valid` says whether a parse is
    one click would take (a rule the command's body checks)."""

    def __init__(self, options: Sequence[Option], arguments: Sequence[Argument], run: str,
                 valid: Callable[[dict[str, Any]], bool] = lambda params: True, interspersed: bool = True) -> None:
        self.options = {name: option for option in options for name in option.names}
        self.arguments, self.run, self.valid, self.interspersed = tuple(arguments), run, valid, interspersed

    def parse(self, args: Sequence[str]) -> dict[str, Any] | None:
        """The parameters, as click would pass them, or None for a command line this table does not take."""
        params = {option.param: option.default for option in self.options.values()}
        positional: list[str] = []
        rest = list(args)
        while rest:
            arg = rest.pop(0)
            if not arg.startswith("-") or arg == "-":
                positional.append(arg)
                if not self.interspersed:
                    positional.extend(rest)
                    break
                continue
            name, equals, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            option = self.options.get(name)
            if option is None or option.kind == CLICK:
                return None
            if option.kind == FLAG:
                if equals:
                    return None
                params[option.param] = True
                continue
            if not equals:
                if not rest:
                    return None
                value = rest.pop(0)
            if option.kind == TEXTS:
                params[option.param] = (*params[option.param], value)
            elif option.kind == COUNT:
                low, high = option.bounds
                try:
                    number = int(value)
                except ValueError:
                    return None
                if number < low or (high is not None and number > high):
                    return None
                params[option.param] = number
            else:
                params[option.param] = value
        fixed = sum(1 for argument in self.arguments if argument.nargs == 1)
        spare = len(positional) - fixed  # what an argument of any number takes
        if spare < 0 or (spare and all(argument.nargs == 1 for argument in self.arguments)):
            return None
        for argument in self.arguments:
            if argument.nargs == 1:
                params[argument.param] = positional.pop(0)
                continue
            if argument.required and not spare:
                return None
            params[argument.param], positional = tuple(positional[:spare]), positional[spare:]
        return params if self.valid(params) else None


def _one_way(params: dict[str, Any]) -> bool:
    """stop's and rm's rule: containers named, or -a, not both and not neither."""
    return bool(params["every"]) != bool(params["containers"])


def _a_command(params: dict[str, Any]) -> bool:
    """exec's rule: a command, after the `--` that may separate it from the container."""
    command = params["command"]
    return bool(command[1:] if command[:1] == ("--",) else command)


_CONTAINERS = Argument("containers", -1)
_ANY_CONTAINERS = Argument("containers", -1, required=False)
_RM = Verb([Option(["-f", "--force"], "force", FLAG), Option(["-a", "--all"], "every", FLAG)], [_ANY_CONTAINERS],
           "verbs.rm", _one_way)

VERBS: dict[str, Verb] = {
    "ps": Verb([
        Option(["-a", "--all"], "show_all", FLAG),
        Option(["--json"], "as_json", FLAG),
        Option(["-q", "--quiet"], "quiet", FLAG),
        Option(["--format"], "fmt", TEXT),
        Option(["-f", "--filter"], "filter_specs", TEXTS),
        Option(["-n", "--last"], "last", COUNT),
        Option(["-l", "--latest"], "latest", FLAG),
        Option(["--no-trunc"], "no_trunc", FLAG),
        Option(["--noheading"], "noheading", FLAG),
    ], [], "verbs.ps"),
    "inspect": Verb([Option(["-f", "--format"], "fmt", TEXT)], [_CONTAINERS], "verbs.inspect"),
    "status": Verb([], [Argument("container")], "verbs.status"),
    "start": Verb([], [_CONTAINERS], "verbs.start"),
    "logs": Verb([
        Option(["-n", "--tail"], "lines", COUNT, (0, UINT32_MAX)),
        Option(["--since"], "since", CLICK),  # a time, read by click's path (its errors are click's)
        Option(["--until"], "until", CLICK),
        Option(["-f", "--follow"], "follow", CLICK, default=False),  # cli/observe.py's stream, on asyncio
        Option(["-t", "--timestamps"], "timestamps", FLAG),
        Option(["--setup"], "setup", FLAG),
    ], [Argument("container")], "verbs.logs_now"),
    "stop": Verb([Option(["-t", "--time"], "timeout", COUNT, (0, UINT32_MAX)), Option(["-a", "--all"], "every", FLAG)],
                 [_ANY_CONTAINERS], "verbs.stop", _one_way),
    "rm": _RM,
    "remove": _RM,
    "wait": Verb([Option(["--condition"], "conditions", TEXTS)], [_CONTAINERS], "verbs.wait"),
    "exec": Verb([
        Option(["-i", "--interactive"], "interactive", FLAG),
        Option(["-t", "--tty"], "tty", CLICK, default=False),
        Option(["-e", "--env"], "env", CLICK, default=()),
        Option(["-w", "--workdir"], "workdir", TEXT),
        Option(["-u", "--user"], "user", TEXT),
    ], [Argument("container"), Argument("command", -1)], "verbs.exec_", _a_command, interspersed=False),
    # run and create's flags (cli/containers.py): those whose values click converts (sizes, durations, KEY=VALUE
    # pairs, namespaces, a health command) and -i/-t (cli/interactive.py's) leave the line to click.
    "run": Verb([
        Option(["-d", "--detach"], "detach", FLAG),
        Option(["--ready-timeout"], "ready_timeout", CLICK, default=90.0),
        Option(["-i", "--interactive"], "interactive", CLICK, default=False),
        Option(["-t", "--tty"], "tty", CLICK, default=False),
        Option(["--name"], "name", TEXT),
        Option(["-e", "--env"], "env", CLICK, default=()),
        Option(["-w", "--workdir"], "workdir", TEXT),
        Option(["-u", "--user"], "user", TEXT),
        Option(["--hostname"], "hostname", TEXT),
        Option(["-m", "--memory"], "memory", CLICK),
        Option(["--memory-limit"], "memory_limit", COUNT, (1, None)),
        Option(["--cpus"], "cpus", CLICK),
        Option(["--cpu-limit"], "cpu_limit", CLICK),
        Option(["--pids-limit"], "pids_limit", COUNT, (1, None)),
        Option(["--rm"], "rm", FLAG),
        Option(["-l", "--label"], "label", CLICK, default=()),
        Option(["--network", "--net"], "network", TEXTS),
        Option(["--network-alias"], "network_alias", TEXTS),
        Option(["--ip"], "ip", TEXT),
        Option(["-p", "--publish"], "publish", TEXTS),
        Option(["--stop-timeout"], "stop_timeout", COUNT, (0, 86400)),
        Option(["--namespaces"], "namespaces", CLICK),
        Option(["--enable-all-namespaces"], "enable_all_namespaces", FLAG),
        Option(["-v", "--volume"], "volume", TEXTS),
        Option(["--tmpfs"], "tmpfs", TEXTS),
        Option(["--read-only"], "read_only", FLAG),
        Option(["--entrypoint"], "entrypoint", TEXT),
        Option(["--env-file"], "env_file", TEXTS),
        Option(["--add-host"], "add_host", TEXTS),
        Option(["--dns"], "dns", TEXTS),
        Option(["--dns-search"], "dns_search", TEXTS),
        Option(["--dns-option"], "dns_option", TEXTS),
        Option(["--cap-add"], "cap_add", TEXTS),
        Option(["--cap-drop"], "cap_drop", TEXTS),
        Option(["--stop-signal"], "stop_signal", TEXT),
        Option(["-P", "--publish-all"], "publish_all", FLAG),
        Option(["--setup"], "setup", TEXTS),
        Option(["--no-setup-cache"], "no_setup_cache", FLAG),
        Option(["--security-opt"], "security_opt", TEXTS),
        Option(["--userns"], "userns", TEXT),
        Option(["--restart"], "restart", TEXT),
        Option(["--init"], "init", FLAG),
        Option(["--health-cmd"], "health_cmd", CLICK),
        Option(["--health-interval"], "health_interval", CLICK),
        Option(["--health-timeout"], "health_timeout", CLICK),
        Option(["--health-start-period"], "health_start_period", CLICK),
        Option(["--health-retries"], "health_retries", COUNT, (0, None)),
        Option(["--health-on-failure"], "health_on_failure", TEXT),
        Option(["--no-healthcheck"], "no_healthcheck", FLAG),
        Option(["--sdnotify"], "sdnotify", TEXT),
        Option(["--log-driver"], "log_driver", TEXT),
        Option(["--log-opt"], "log_opt", TEXTS),
        Option(["--image-path", "--image"], "image_path", TEXT),
    ], [Argument("args", -1, required=False)], "running.run", interspersed=False),
}


def parse(argv: Sequence[str]) -> tuple[Verb, dict[str, Any]] | None:
    """The verb and its parameters, or None when click is to take this command line."""
    verb = VERBS.get(argv[0]) if argv else None
    if verb is None:
        return None
    params = verb.parse(argv[1:])
    return None if params is None else (verb, params)


def run(verb: Verb, params: dict[str, Any], ctx: Any = None) -> int:
    """Run a parsed command: its exit status. `ctx` as cli/verbs.py's (a click context with tests' fake client)."""
    module, _, name = verb.run.rpartition(".")
    action: Callable[..., int] = getattr(__import__(f"quilt_agent.cli.{module}", fromlist=[name]), name)
    return action(ctx, **params)


def _refusal(error: Exception) -> str | None:
    """The usage line click would print for a request cli/request.py refuses (`run`'s flags that cannot go
    together, a flag's bad value), or None for any other error."""
    from quilt_agent.cli.request import RequestError
    from quilt_agent.cli.runflags import FlagError

    if isinstance(error, FlagError):
        return f"Invalid value for '{error.flag}': {error}"  # click's BadParameter
    return str(error) if isinstance(error, RequestError) else None


def dispatch(argv: Sequence[str], ctx: Any = None) -> int | None:
    """The exit status of a command line run here, or None when click is to take it (decided before any bus
    call)."""
    if list(argv) == ["--version"]:  # click's version_option, in its words (cli/main.py)
        from quilt_agent import __version__

        sys.stdout.write(f"quiltctl {__version__}\n")
        return 0
    parsed = parse(argv)
    if parsed is None:
        return None
    try:
        return run(*parsed, ctx=ctx)
    except ValueError as e:
        refusal = _refusal(e)
        if refusal is None:
            raise
    # Said here, in click's words, rather than by handing the line to click: the request was built already, and
    # building it again could read a different --env-file (a pipe reads empty the second time).
    sys.stderr.write(f"quiltctl: {refusal} (see 'quiltctl {argv[0]} --help')\n")
    return USAGE_ERROR


def main() -> None:
    # Shell completion is click's: it runs quiltctl with no arguments and the request in the environment.
    argv = [] if "_QUILTCTL_COMPLETE" in os.environ else sys.argv[1:]
    try:
        code = dispatch(argv) if argv else None
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # as click does: the shell's prompt on a line of its own
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # `quiltctl ps | head`: the reader has gone; send the rest of our output nowhere, quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 1
    if code is None:
        from quilt_agent.cli.main import main as click_main

        click_main()
        return
    _exit_now(code)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's finalization: its module and object teardown costs a one-shot command
    ~2.5 ms, a sixth of a `quiltctl ps`, and nothing the quick path leaves needs it (no thread, no atexit
    handler, no temporary file; the kernel closes the bus connection). Only the output must be flushed first."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        code = code or 1  # as when the pipe broke earlier: quietly, and not as a success
    except OSError as e:
        sys.stderr.write(f"quiltctl: cannot write the output: {e.strerror}\n")
        code = code or 1
    try:
        sys.stderr.flush()
    except OSError:
        pass  # nowhere left to say it
    os._exit(code)
