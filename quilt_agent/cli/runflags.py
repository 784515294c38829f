"""create/run's flags for the command, environment, /etc files, capabilities, stop signal and published ports, as
Podman spells them: their click options (FLAGS) and what they become in CreateContainer's options (options()).

The agent checks every value (a capability's name, a signal, an address): quiltctl only turns the spellings into
the options, so the bus and the command line agree on what is valid.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import click

from quilt_agent.cli.parsing import parse_env_entry

ENV_FILE_HELP = ("Read environment variables from FILE: KEY=VALUE lines, '#' comments; a KEY alone passes this "
                 "shell's value (none when it is unset).")


def _split(values: tuple[str, ...] | None) -> list[str]:
    """Repeated flags, each of which may hold a comma-separated list (Podman's string slices)."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def parse_entrypoint(text: str) -> list[str]:
    """--entrypoint as Podman takes it: a JSON array of strings, or else one program (not split at spaces);
    '' clears the image's."""
    if text.lstrip().startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            return parsed
        raise click.BadParameter(f"'{text}' is not a JSON array of strings", param_hint="'--entrypoint'")
    return [text] if text else []


def read_env_file(path: str) -> list[tuple[str, str | None]]:
    """Podman's --env-file: one KEY=VALUE a line, taken literally (no quotes, no expansion); blank lines and lines
    starting with '#' skipped; a KEY alone passes this process's value."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"cannot read '{path}': {getattr(e, 'strerror', None) or e}",
                                 param_hint="'--env-file'") from None
    entries = []
    for number, line in enumerate(lines, 1):
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        try:
            entries.append(parse_env_entry(line))
        except ValueError as e:
            raise click.BadParameter(f"{path}, line {number}: {e}", param_hint="'--env-file'") from None
    return entries


def environment(params: dict[str, Any]) -> list[str]:
    """The env option: --env-file's entries, then -e's (a later one wins), leaving out names that are unset here."""
    env: dict[str, str | None] = {}
    for path in params.get("env_file") or ():
        for key, value in read_env_file(path):
            env.pop(key, None)
            env[key] = value
    for key, value in params.get("env") or ():
        env.pop(key, None)
        env[key] = value
    return [f"{key}={value}" for key, value in env.items() if value is not None]


def options(params: dict[str, Any]) -> dict[str, Any]:
    """CreateContainer's options for these flags; .get: callers that build params by hand may leave them out."""
    out: dict[str, Any] = {}
    if params.get("entrypoint") is not None:
        out["entrypoint"] = parse_entrypoint(params["entrypoint"])
    for flag, key in (("add_host", "add_hosts"), ("dns", "dns_servers"), ("dns_search", "dns_search"),
                      ("dns_option", "dns_options"), ("cap_add", "cap_add"), ("cap_drop", "cap_drop")):
        values = _split(params.get(flag)) if flag.startswith("cap_") else list(params.get(flag) or ())
        if values:
            out[key] = values
    if params.get("stop_signal") is not None:
        out["stop_signal"] = params["stop_signal"]
    if params.get("publish_all"):
        out["publish_all"] = True
    return out


FLAGS: list[Callable[[Any], Any]] = [
    click.option("--entrypoint", default=None, metavar="CMD",
                 help="The program to run instead of the image's ENTRYPOINT (its CMD is not used then): one program, "
                      "or a JSON array; '' runs the command alone."),
    click.option("--env-file", multiple=True, metavar="FILE", help=ENV_FILE_HELP),
    click.option("--add-host", multiple=True, metavar="HOST:IP", help="Add a line to the container's /etc/hosts."),
    click.option("--dns", multiple=True, metavar="IP",
                 help="A name server for the container's /etc/resolv.conf (repeat for several; replaces the "
                      "network's, so other containers' names are not resolved then)."),
    click.option("--dns-search", multiple=True, metavar="DOMAIN",
                 help="A search domain for /etc/resolv.conf (repeat for several; '.' for none)."),
    click.option("--dns-option", multiple=True, metavar="OPTION", help="An /etc/resolv.conf option, e.g. ndots:2."),
    click.option("--cap-add", multiple=True, metavar="CAP",
                 help="Add a capability (NET_RAW or CAP_NET_RAW, or ALL) to the default set; one beyond it needs "
                      "the manage-privileged action."),
    click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability (or ALL) from the set."),
    click.option("--stop-signal", default=None, metavar="SIGNAL",
                 help="The signal stop sends first (default: the image's STOPSIGNAL, else SIGTERM)."),
    click.option("-P", "--publish-all", is_flag=True,
                 help="Publish every port the image exposes to a free host port (`inspect` shows which)."),
]
