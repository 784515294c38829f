"""quiltctl's entry point: the commonest commands without click, everything else through it (cli/main.py).

Importing click costs a `quiltctl ps` more than the rest of it together (~25 ms of ~45 on these machines), so the
common forms of ps, inspect, status, start, stop and rm are parsed here, by a table of their options, and handed
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
# (a tuple); COUNT a whole number, within (minimum, maximum).
FLAG, TEXT, TEXTS, COUNT = "flag", "text", "texts", "count"


class Option:
    def __init__(self, names: Sequence[str], param: str, kind: str, bounds: tuple[int, int | None] = (0, None)):
        self.names, self.param, self.kind, self.bounds = tuple(names), param, kind, bounds

    @property
    def default(self) -> Any:
        return {FLAG: False, TEXTS: ()}.get(self.kind)


class Verb:
    """One command's options and positional arguments (`arguments` is their parameter's name; `nargs` 0 for
    none, 1 for exactly one, -1 for any number, at least one when `required`), and the function of cli/verbs.py
    that runs it.
    `valid` says whether a parse is one click would take (a rule click checks in the command's body)."""

    def __init__(self, options: Sequence[Option], arguments: str, nargs: int, required: bool, run: str,
                 valid: Callable[[dict[str, Any]], bool] = lambda params: True) -> None:
        self.options = {name: option for option in options for name in option.names}
        self.arguments, self.nargs, self.required, self.run, self.valid = arguments, nargs, required, run, valid

    def parse(self, args: Sequence[str]) -> dict[str, Any] | None:
        """The parameters, as click would pass them, or None for a command line this table does not take."""
        params = {option.param: option.default for option in self.options.values()}
        positional: list[str] = []
        rest = list(args)
        while rest:
            arg = rest.pop(0)
            if not arg.startswith("-") or arg == "-":
                positional.append(arg)
                continue
            name, equals, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            option = self.options.get(name)
            if option is None:
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
        if self.nargs == 0:
            if positional:
                return None
        elif self.nargs == 1:
            if len(positional) != 1:
                return None
            params[self.arguments] = positional[0]
        elif self.required and not positional:
            return None
        else:
            params[self.arguments] = tuple(positional)
        return params if self.valid(params) else None


def _one_way(params: dict[str, Any]) -> bool:
    """stop's and rm's rule: containers named, or -a, not both and not neither."""
    return bool(params["every"]) != bool(params["containers"])


_RM = Verb([Option(["-f", "--force"], "force", FLAG), Option(["-a", "--all"], "every", FLAG)],
           "containers", -1, False, "rm", _one_way)

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
    ], "", 0, False, "ps"),
    "inspect": Verb([Option(["-f", "--format"], "fmt", TEXT)], "containers", -1, True, "inspect"),
    "status": Verb([], "container", 1, True, "status"),
    "start": Verb([], "containers", -1, True, "start"),
    "stop": Verb([Option(["-t", "--time"], "timeout", COUNT, (0, UINT32_MAX)), Option(["-a", "--all"], "every", FLAG)],
                 "containers", -1, False, "stop", _one_way),
    "rm": _RM,
    "remove": _RM,
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
