"""How quiltctl shows things: the ps table, JSON, log lines, the status summary."""

from __future__ import annotations

import os
import sys

# Free of click and of what only some output needs (json, datetime, typing): ps, inspect and status import this on
# cli/quick.py's path, where each module costs a millisecond or more of start-up (see quilt_agent/wire.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping, Sequence

    from quilt_agent.replies import LogLine

SHORT_ID = 12
_FINISHED_STATES = ("exited", "failed")


def echo(text: str = "", err: bool = False, nl: bool = True) -> None:
    """click.echo's job, without click: write, then flush, so stdout and stderr keep their order on a shared
    terminal. Unlike click.echo it leaves escape sequences in when the stream is not a terminal: a container's
    output reaches a file or a pipe as it wrote it, as with `podman logs`."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # started with the stream closed (`quiltctl stop web >&-`): nowhere to say it, as click.echo
        return
    stream.write(f"{text}\n" if nl else text)
    stream.flush()


def print_json(value: Any) -> None:
    import json

    echo(json.dumps(value, indent=2, sort_keys=False))


DROPPED = "dropped"  # GetLogs' stream of the marks where lines were lost (text: how many)
FILE_LOG_DRIVERS = ("k8s-file", "journald+file")  # model.FILE_LOG_DRIVERS: logs are read from the log file


def print_logs(lines: Iterable[LogLine], timestamps: bool = False, driver: str = "journald") -> None:
    # echo flushes each line, so stdout and stderr keep the journal's order on a shared terminal.
    for line in lines:
        if line.stream == DROPPED:
            # Where the lines went missing, on stderr: a log cut short must not pass for a whole one.
            echo(f"quiltctl: {dropped_text(line.text, driver)}{_at(line, timestamps)}", err=True)
            continue
        text = f"{log_timestamp(line.usec)} {line.text}" if timestamps else line.text
        echo(text, err=line.stream == "stderr")


def dropped_text(count: object, driver: str, where: str = " here") -> str:
    if driver in FILE_LOG_DRIVERS:
        return f"{count} lines could not be written to the log file{where} (a full disk, or a failing one)"
    return f"journald dropped {count} lines{where} (its rate limit)"


def _at(line: LogLine, timestamps: bool) -> str:
    return f", reported at {log_timestamp(line.usec)}" if timestamps else ""


def log_timestamp(usec: int) -> str:
    """A log line's time as `podman logs --timestamps` shows it: RFC 3339, local time, to the microsecond."""
    from datetime import datetime

    return datetime.fromtimestamp(usec / 1_000_000).astimezone().isoformat(timespec="microseconds")


def ago(usec: int, now: float) -> str:
    """How long ago, in Podman's words ("1 second ago", "About a minute ago", "2 hours ago"); "" for never."""
    from quilt_agent.cli import listing  # for the listings alone: a foreground run prints none

    return listing.ago(usec, now)


def timestamp(usec: int) -> str:
    if not usec:
        return "-"
    from datetime import datetime

    return datetime.fromtimestamp(usec / 1_000_000).astimezone().isoformat(timespec="seconds")


# shlex.quote's safe characters. Written out here because shlex imports re (~5 ms of every `quiltctl ps`) for
# one character class; tests/unit/cli/test_output.py checks this against shlex.join.
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def _quote(word: str) -> str:
    if not word:
        return "''"
    if all(c in _SAFE for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def command_text(command: Sequence[str]) -> str:
    """A command as a shell would take it back, as shlex.join writes it."""
    return " ".join(_quote(word) for word in command)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def exit_text(props: Mapping[str, Any]) -> str:
    if props.get("State") not in _FINISHED_STATES:
        return ""
    signal = props.get("ExitSignal") or 0
    return f"{props.get('ExitCode', '')}" + (f" (signal {signal})" if signal else "")


def colour() -> bool:
    """Whether to style output: only on a terminal, and never with NO_COLOR set (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]], heading: bool = True) -> None:
    """A listing for people: no borders or rules, like podman's, since awk and grep read it as often; columns
    two spaces apart, never cut (a script reads the whole row). Plain text: rich would cost ~25 ms of start-up
    for what padding does."""
    cells = [list(map(str, row)) for row in rows]
    widths = [max([len(column), *(len(row[i]) for row in cells)]) for i, column in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths)).rstrip()

    header = line(columns)
    if heading:
        echo(f"\x1b[1m{header}\x1b[0m" if colour() else header)  # bold, as click.style(bold=True) writes it
    for row in cells:
        echo(line(row))


def state_word(props: Mapping[str, Any]) -> str:
    """The state, or "restarting (N)" while a restart by its policy is pending, as Docker shows it."""
    if props.get("Restarting"):
        return f"restarting ({int(props.get('RestartCount', 0)) + 1})"
    if props.get("State") == "running" and props.get("Health"):
        return f"running ({props['Health']})"  # as Podman's "Up 2 minutes (healthy)"
    return str(props.get("State", ""))


def print_ps_table(rows: Sequence[Mapping[str, Any]], now: float, no_trunc: bool = False,
                   heading: bool = True) -> None:
    def cut(text: str, width: int) -> str:
        return text if no_trunc else _truncate(text, width)

    print_table(("ID", "NAME", "IMAGE", "COMMAND", "STATE", "EXIT", "CREATED"), (
        (
            str(props.get("Id", ""))[:None if no_trunc else SHORT_ID],
            str(props.get("Name", "")),
            str(props.get("Image", "")) if no_trunc else _truncate(_image_text(str(props.get("Image", ""))), 40),
            cut(command_text(props.get("Command", [])), 30),
            state_word(props),
            exit_text(props),
            ago(int(props.get("CreatedAt", 0) or 0), now),
        )
        for props in rows
    ), heading)


def parse_format(text: str | None) -> Any:
    """A --format checked before the agent is asked anything: its parsed template, or None for none, `json`
    (and `{{json .}}`) and a bare `table`, which mean the verb's own JSON or table. A template quiltctl does not
    take ends the command with one line, status 125."""
    if text is None:
        return None
    from quilt_agent.cli import template
    from quilt_agent.cli.context import fail

    if template.is_json(text) or text.strip() == "table":
        return None
    try:
        return template.parse(text)
    except template.TemplateError as e:
        fail(f"--format: {e}")


def print_template(parsed: Any, items: Sequence[Any], headers: Mapping[str, str] | None = None,
                   heading: bool = True, example: Any = None) -> None:
    """items through a template from parse_format; an item it cannot be run on ends the command with one line.
    With no items, the template is still checked on `example` (an item of the kind shown) for fields it lacks."""
    from quilt_agent.cli import template
    from quilt_agent.cli.context import fail

    try:
        if not items and example is not None:
            template.check_fields(parsed, example)
        text = template.render(parsed, items, headers, heading)
    except template.TemplateError as e:
        fail(f"--format: {e}")
    echo(text, nl=False)


def wants_json(text: str | None) -> bool:
    """--format json or {{json .}}: the verb's JSON, as Podman prints it for both."""
    if text is None:
        return False
    from quilt_agent.cli import template

    return template.is_json(text)


def size_text(size: int) -> str:
    """A size on disk or on the wire as podman shows one: decimal units, one decimal ("2.0 MB")."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _human_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def status_lines(props: Mapping[str, Any], now: float) -> list[str]:
    state = str(props.get("State", ""))
    if state in ("running", "paused"):
        state_text = f"{state} (pid {props.get('MainPID', 0)})"
    elif state in _FINISHED_STATES:
        state_text = f"{state} (exit code {exit_text(props)})"
        if props.get("OOMKilled"):
            state_text += ", killed for lack of memory"
        if props.get("FailureReason"):
            state_text += f": {props['FailureReason']}"
    else:
        state_text = state

    limits = []
    if props.get("MemoryMax"):
        limits.append(f"memory {_human_size(int(props['MemoryMax']))}")
    if props.get("CPUQuota"):
        limits.append(f"cpu {props['CPUQuota']:g}%")
    if props.get("PidsMax"):
        limits.append(f"pids {props['PidsMax']}")

    created = int(props.get("CreatedAt", 0) or 0)
    fields = [
        ("ID", props.get("Id", "")),
        ("Name", props.get("Name", "")),
        ("State", state_text),
        ("Image", props.get("Image", "")),
        ("Command", command_text(props.get("Command", []))),
        ("Created", f"{timestamp(created)} ({ago(created, now)})" if created else "-"),
        ("Started", timestamp(int(props.get("StartedAt", 0) or 0))),
        ("Finished", timestamp(int(props.get("FinishedAt", 0) or 0))),
        ("Limits", ", ".join(limits) or "none"),
        ("Namespaces", " ".join(props.get("Namespaces", [])) or "-"),
        ("Unit", props.get("Unit", "") or "-"),
    ]
    policy = str(props.get("RestartPolicy", "no") or "no")
    if policy != "no":
        text = f"{policy}:{props['RestartMax']}" if props.get("RestartMax") else policy
        text += f", {props.get('RestartCount', 0)} restarts"
        if props.get("Restarting"):
            text += f", the next {timestamp(int(props.get('RestartAt', 0) or 0))}"
        elif props.get("StoppedByUser"):
            text += ", stopped by a user"
        fields.append(("Restart", text))
    if props.get("SdNotify", "conmon") != "conmon" or props.get("NotifyStatus"):
        ready = "yes" if props.get("Ready") else "no"
        fields.append(("Ready", f"{ready} (sdnotify {props.get('SdNotify')})" + (
            f": {props['NotifyStatus']}" if props.get("NotifyStatus") else "")))
    if props.get("HealthCommand"):
        fields.append(("Health", f"{props.get('Health') or '-'}: {command_text(props['HealthCommand'])} every "
                                 f"{int(props.get('HealthInterval', 0)) / 1e6:g} s"))
    if props.get("LogLinesDropped"):
        fields.append(("Logs", f"{dropped_text(props['LogLinesDropped'], str(props.get('LogDriver', '')), '')}, the last "
                               f"reported {timestamp(int(props.get('LogLinesDroppedAt', 0) or 0))}"))
    if props.get("Setup") or props.get("SetupImage"):
        setup = "; ".join(props.get("Setup") or [])
        if props.get("SetupImage"):
            setup += f" (cached: {str(props['SetupImage'])[:SHORT_ID]})"
        fields.append(("Setup", setup.strip()))
    return [f"{label + ':':<12}{value}" for label, value in fields]


def _image_text(image: str) -> str:
    """An image named by its full id (quiltctl imports an image file itself and creates from its id) as the short
    id, as Podman shows an image without a name."""
    from quilt_agent.cli import listing

    return image[:SHORT_ID] if listing.is_full_id(image) else image
