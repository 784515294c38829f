"""click types for quiltctl's flag values, around cli/parsing.py's parsers: a bad value is click's one-line usage
error."""

from __future__ import annotations

from typing import Any, Callable

import click

from quilt_agent.cli.parsing import (
    parse_cpu_percent, parse_cpus, parse_env_entry, parse_key_value, parse_memory, parse_namespaces, parse_seconds,
    parse_signal,
)


class _ParsedType(click.ParamType):
    """A click type around one of cli/parsing.py's parsers, so a bad value is click's one-line usage error."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


MEMORY = _ParsedType("size", parse_memory)
CPUS = _ParsedType("cpus", parse_cpus)
CPU_PERCENT = _ParsedType("percent", parse_cpu_percent)
SIGNAL = _ParsedType("signal", parse_signal)
NAMESPACE_LIST = _ParsedType("namespaces", parse_namespaces)
ENV = _ParsedType("KEY[=VALUE]", parse_env_entry)  # a value of None: KEY is unset here, and not passed
LABEL = _ParsedType("KEY=VALUE", lambda text: parse_key_value(text, "label"))
SECONDS = _ParsedType("duration", parse_seconds)


def _health_command(text: str) -> list[str]:
    from quilt_agent import health  # only --health-cmd needs it (and its logging): not every verb's start-up

    return health.parse_command_line(text)


HEALTH_CMD = _ParsedType("command", _health_command)
