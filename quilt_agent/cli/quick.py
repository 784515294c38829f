"""quiltctl's entry point: the commonest commands without click, everything else through it (cli/main.py).

Importing click costs a `quiltctl ps` more than the rest of it together (~25 ms of ~45 on these machines), so the
common forms of ps, inspect, status, start, stop, rm and exec (without a terminal) are parsed here, by a table of their options, and handed
to the same functions the click commands call (cli/verbs.py). Anything the table does not take exactly as
written (--help, combined short flags, an unknown option, a number that is not one, a missing argument, `--`) goes
to click, which parses, explains and refuses as it always does: this path only ever answers what click would
have answered the same way. tests/unit/cli/test_quick.py holds the table to the click commands' declarations, and
runs an assortment of command lines through both paths against one fake agent, comparing what each prints.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Sequence

EXIT_INTERRUPTED = 130
UINT32_MAX = (1 << 32) - 1

# How an option takes its value: a flag takes none; TEXT one string; TEXTS one string each time it is given
# (a tuple); COUNT a whole number, within (minimum, maximum). CLICK: an option whose every use is left to click
# (its value needs click's converter, or the command's other path: exec's -t).
FLAG, TEXT, TEXTS, COUNT, CLICK = "flag", "text", "texts", "count", "click"


class Option:
    def __init__(self, names: Sequence[str], param: str, kind: str, bounds: tuple[int, int | None] = (0, None),
                 default: Any = None) -> None:
        self.names, self.param, self.kind, self.bounds = tuple(names), param, kind, bounds
        self.default = {FLAG: False, TEXTS: ()}.get(kind, default)  # what click passes for an option not given


class Argument:
    """A positional parameter: `nargs` 1 for exactly one, -1 for any number (at least one when `required`)."""

    def __init__(self, param: str, nargs: int = 1, required: bool = True) -> None:
        self.param, self.nargs, self.required = param, nargs, required


class Verb:
    """One command's options and positional arguments, and the function of cli/verbs.py that runs it. Options
    may follow arguments unless `interspersed` is False (then the first argument ends the options, as exec's
    command does). `valid` says whether a parse is one click would take (a rule the command's body checks)."""

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
           "rm", _one_way)

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
    ], [], "ps"),
    "inspect": Verb([Option(["-f", "--format"], "fmt", TEXT)], [_CONTAINERS], "inspect"),
    "status": Verb([], [Argument("container")], "status"),
    "start": Verb([], [_CONTAINERS], "start"),
    "stop": Verb([Option(["-t", "--time"], "timeout", COUNT, (0, UINT32_MAX)), Option(["-a", "--all"], "every", FLAG)],
                 [_ANY_CONTAINERS], "stop", _one_way),
    "rm": _RM,
    "remove": _RM,
    "exec": Verb([
        Option(["-i", "--interactive"], "interactive", FLAG),
        Option(["-t", "--tty"], "tty", CLICK, default=False),
        Option(["-e", "--env"], "env", CLICK, default=()),
        Option(["-w", "--workdir"], "workdir", TEXT),
        Option(["-u", "--user"], "user", TEXT),
    ], [Argument("container"), Argument("command", -1)], "exec_", _a_command, interspersed=False),
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
    from quilt_agent.cli import verbs

    action: Callable[..., int] = getattr(verbs, verb.run)
    return action(ctx, **params)


def main() -> None:
    argv = sys.argv[1:]
    # Shell completion is click's: it runs quiltctl with no arguments and the request in the environment.
    parsed = None if "_QUILTCTL_COMPLETE" in os.environ else parse(argv)
    if parsed is None:
        from quilt_agent.cli.main import main as click_main

        click_main()
        return
    try:
        code = run(*parsed)
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # as click does: the shell's prompt on a line of its own
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # `quiltctl ps | head`: the reader has gone; send the rest of our output nowhere, quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 1
    sys.exit(code)
