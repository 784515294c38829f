"""create/run's flags for the command, environment, /etc files, capabilities, stop signal and published ports, as
Podman spells them: what they become in CreateContainer's options (options()). Their click options are
cli/containers.py's; this module is free of click, for `run` on cli/quick.py's path.

The agent checks every value (a capability's name, a signal, an address): quiltctl only turns the spellings into
the options, so the bus and the command line agree on what is valid.
"""

from __future__ import annotations

from quilt_agent.cli.parsing import parse_env_entry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class FlagError(ValueError):
    """A flag's value that cannot be taken; `flag` names it (click's BadParameter, on the click path)."""

    def __init__(self, message: str, flag: str) -> None:
        super().__init__(message)
        self.flag = flag


def _split(values: tuple[str, ...] | None) -> list[str]:
    """Repeated flags, each of which may hold a comma-separated list (Podman's string slices)."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def parse_entrypoint(text: str) -> list[str]:
    """--entrypoint as Podman takes it: a JSON array of strings, or else one program (not split at spaces);
    '' clears the image's."""
    if text.lstrip().startswith("["):
        import json

        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            return parsed
        raise FlagError(f"'{text}' is not a JSON array of strings", "--entrypoint")
    return [text] if text else []


def read_env_file(path: str) -> list[tuple[str, str | None]]:
    """Podman's --env-file: one KEY=VALUE a line, taken literally (no quotes, no expansion); blank lines and lines
    starting with '#' skipped; a KEY alone passes this process's value."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FlagError(f"cannot read '{path}': {getattr(e, 'strerror', None) or e}", "--env-file") from None
    entries = []
    for number, line in enumerate(lines, 1):
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        try:
            entries.append(parse_env_entry(line))
        except ValueError as e:
            raise FlagError(f"{path}, line {number}: {e}", "--env-file") from None
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


# Podman's --log-opt keys for the log file's rotation (k8s-file, journald+file); max-file is Docker's spelling.
LOG_OPTS = {"max-size": "log_max_size", "max-files": "log_max_files", "max-file": "log_max_files",
            "rate-limit-burst": "log_rate_limit_burst", "rate-limit-interval": "log_rate_limit_interval"}


def log_options(values: tuple[str, ...] | list[str] | None) -> dict[str, Any]:
    """--log-opt KEY=VALUE, repeated: max-size=SIZE (10m, 1g; bytes without a unit), max-files=N, and Podman's
    rate-limit-burst=N, rate-limit-interval=DURATION (30s), which the agent refuses, saying why."""
    from quilt_agent.cli.parsing import parse_memory, parse_seconds

    out: dict[str, Any] = {}
    for text in values or ():
        key, sep, value = text.partition("=")
        if not sep or key not in LOG_OPTS:
            raise FlagError(f"'{text}': the known log options are max-size=SIZE, max-files=N, rate-limit-burst=N "
                            "and rate-limit-interval=DURATION", "--log-opt")
        try:
            if key == "max-size":
                out[LOG_OPTS[key]] = parse_memory(value)
            elif key == "rate-limit-interval":
                out[LOG_OPTS[key]] = round(parse_seconds(value) * 1_000_000)
            else:
                out[LOG_OPTS[key]] = int(value)
            if out[LOG_OPTS[key]] < 0:
                raise ValueError(value)
        except ValueError:
            what = {"max-size": "a size", "rate-limit-interval": "a duration"}.get(key, "a number")
            raise FlagError(f"'{text}': {value!r} is not {what}", "--log-opt") from None
    return out


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
    out.update(log_options(params.get("log_opt")))  # the agent checks the values against the driver
    return out
