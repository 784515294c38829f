"""What ps, inspect and the ls verbs show, as pure functions over the agent's property dicts.

ps's --filter, --last and --latest (Podman's rules), and the items --format templates read: Podman's field names
for a container in ps and inspect, an image, a network and a volume, built from Quilt's properties (the keys of
the Container, Image, Network and Volume interfaces in dbus/org.quilt.Runtime.xml). How the rows were fetched
does not matter here.
"""

from __future__ import annotations

# Imported by every ps and inspect: re (filters), datetime (dates) and typing are imported where they are needed,
# since each module costs a one-shot command a millisecond or more of start-up (see quilt_agent/wire.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any, Mapping, Sequence

SHORT_ID = 12

# --- times -----------------------------------------------------------------------------------------------------

# The Container properties that are times (usec since the epoch); the Health* durations are not.
CONTAINER_TIMES = ("CreatedAt", "StartedAt", "FinishedAt", "RestartAt", "LogLinesDroppedAt")
GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # how Podman's inspect shows a time that never was


def rfc3339(usec: int) -> str:
    """A time in usec since the epoch as Podman's inspect shows one: RFC 3339, local time; 0 is Go's zero time."""
    if not usec:
        return GO_ZERO_TIME
    return _local(usec).isoformat(timespec="microseconds")


def _local(usec: int) -> datetime:
    from datetime import datetime

    # Whole seconds, then the microseconds: a float of usec / 1e6 may be a microsecond off.
    return datetime.fromtimestamp(usec // 1_000_000).astimezone().replace(microsecond=usec % 1_000_000)


def go_time(usec: int) -> str:
    """A time as Go's time.Time prints itself (Podman's ps .CreatedAt): "2006-01-02 15:04:05.123 +0000 UTC"."""
    if not usec:
        return "0001-01-01 00:00:00 +0000 UTC"
    moment = _local(usec)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (f".{fraction}" if fraction else "") + moment.strftime(" %z %Z")


def human_duration(seconds: float) -> str:
    """A duration in Podman's words (go-units' HumanDuration): "Less than a second", "1 second", "About a minute",
    "3 minutes", "About an hour", "5 hours", "3 days", "2 weeks", "4 months", "2 years"."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = whole // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)  # Go's Duration.Round(time.Hour)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def ago(usec: int, now: float) -> str:
    """How long ago, as Podman's ps and images say it ("2 hours ago"); "" for a time that never was."""
    if not usec:
        return ""
    return human_duration(max(0.0, now - usec / 1_000_000)) + " ago"


def dated(props: Mapping[str, Any]) -> dict[str, Any]:
    """inspect's JSON: the properties with their times (and the health checks' times) as RFC 3339 dates."""
    out = dict(props)
    for key in CONTAINER_TIMES:
        if isinstance(out.get(key), int):
            out[key] = rfc3339(out[key])
    log = out.get("HealthLog")
    if isinstance(log, dict):
        out["HealthLog"] = {**log, "Log": [
            {**check, "Start": rfc3339(check["Start"]), "End": rfc3339(check["End"])}
            if isinstance(check.get("Start"), int) else check
            for check in log.get("Log", [])]}
    return out


# --- ps: filters, --last, --latest -----------------------------------------------------------------------------


class ListingError(ValueError):
    """A --filter, --last or --latest that cannot be taken; the message is one line."""


FILTER_KEYS = ("ancestor", "before", "command", "exited", "health", "id", "label", "label!", "name", "network",
               "restart-policy", "since", "status", "volume")
STATUSES = ("created", "running", "paused", "restarting", "exited", "failed", "stopped", "removing", "unknown")
RESTART_POLICIES = ("no", "none", "on-failure", "always", "unless-stopped")
HEALTHS = ("starting", "healthy", "unhealthy", "none")


def parse_filters(specs: Sequence[str]) -> dict[str, list[str]]:
    """--filter KEY=VALUE, each as given: KEY -> its values, checked (a bad regex, status or number is refused)."""
    filters: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep:
            raise ListingError(f"invalid filter '{spec}': expected KEY=VALUE, KEY one of {', '.join(FILTER_KEYS)}")
        if key not in FILTER_KEYS:
            raise ListingError(f"invalid filter '{spec}': '{key}' is not one of {', '.join(FILTER_KEYS)}")
        if key in ("name", "command"):
            import re  # only a filter that takes a regular expression pays for re

            try:
                re.compile(value)
            except re.error as e:
                raise ListingError(f"invalid filter '{spec}': the {key} is a regular expression: {e}") from None
        elif key == "status" and value not in STATUSES:
            raise ListingError(f"invalid filter '{spec}': the status is one of {', '.join(STATUSES)}")
        elif key == "health" and value not in HEALTHS:
            raise ListingError(f"invalid filter '{spec}': the health is one of {', '.join(HEALTHS)}")
        elif key == "exited" and not value.removeprefix("-").isdecimal():
            raise ListingError(f"invalid filter '{spec}': the exit code is a number")
        elif key == "restart-policy" and value not in RESTART_POLICIES:
            raise ListingError(f"invalid filter '{spec}': the restart policy is one of {', '.join(RESTART_POLICIES)}")
        elif key in ("before", "since") and not value:
            raise ListingError(f"invalid filter '{spec}': expected {key}=CONTAINER")
        elif key == "volume" and not value:
            raise ListingError(f"invalid filter '{spec}': expected volume=NAME, volume=DEST or volume=NAME:DEST")
        elif key in ("label", "label!") and not value.partition("=")[0]:
            raise ListingError(f"invalid filter '{spec}': expected {key}=KEY or {key}=KEY=VALUE")
        filters.setdefault(key, []).append(value)
    return filters


def shows_all(show_all: bool, filters: Mapping[str, Sequence[str]], last: int | None, latest: bool) -> bool:
    """Whether ps lists containers in every state: -a, --last, --latest, and (as in Docker) a status filter."""
    return show_all or bool(last and last > 0) or latest or bool(filters.get("status"))


def fetches_all(show_all: bool, filters: Mapping[str, Sequence[str]], last: int | None, latest: bool) -> bool:
    """Whether ps needs the containers in every state: those it shows, and those before= and since= name."""
    return shows_all(show_all, filters, last, latest) or bool(filters.get("before") or filters.get("since"))


# The properties ps's table, -q, its filters and its choice of rows read: all that ps asks the agent for unless a
# template or JSON may show any (tests/unit/cli/test_listing.py checks that nothing else is read).
TABLE_PROPERTIES = ("Id", "Name", "Image", "Command", "State", "Restarting", "RestartCount", "Health",
                    "ExitCode", "ExitSignal", "CreatedAt", "Labels", "RestartPolicy", "Networks", "Volumes", "Tmpfs")


def select(rows: Sequence[Mapping[str, Any]], show_all: bool, filters: Mapping[str, Sequence[str]],
           last: int | None = None, latest: bool = False) -> list[dict[str, Any]]:
    """ps's rows, as Podman picks them: running ones unless all are shown, those every filter key matches (its
    values or'ed; label's and'ed), in the order of creation; with --last N the newest N, --latest the newest.
    before= and since= name containers among rows (which must hold them, whatever their state)."""
    if last is not None and last >= 0 and latest:
        raise ListingError("--last and --latest cannot be used together")
    every = shows_all(show_all, filters, last, latest)
    filters = {**filters, **{k: [str(_created_of(rows, k, v)) for v in filters[k]]
                             for k in ("before", "since") if filters.get(k)}}
    chosen = [dict(r) for r in rows if (every or r.get("State", "running") in ("running", "paused")) and matches(r, filters)]
    chosen.sort(key=lambda r: int(r.get("CreatedAt", 0) or 0))
    count = 1 if latest else last
    if count is not None and count > 0:
        chosen = chosen[-count:]
    return chosen


def matches(row: Mapping[str, Any], filters: Mapping[str, Sequence[str]]) -> bool:
    """Whether the container matches every filter key: any of a key's values, but all of label's (Podman's
    one exception: filters with the same key are or'ed, label's and'ed)."""
    for key, values in filters.items():
        if key == "label":
            if not all(_has_label(row, v) for v in values):
                return False
        elif key == "label!":
            if any(_has_label(row, v) for v in values):
                return False
        elif not any(_MATCHERS[key](row, v) for v in values):
            return False
    return True


def _created_of(rows: Sequence[Mapping[str, Any]], key: str, name: str) -> int:
    """The creation time of the container before= or since= names: by its name, its id or its id's prefix."""
    for row in rows:
        if row.get("Name") == name or str(row.get("Id", "")).startswith(name):
            return int(row.get("CreatedAt", 0) or 0)
    raise ListingError(f"invalid filter '{key}={name}': no container '{name}'")


def _has_label(row: Mapping[str, Any], spec: str) -> bool:
    key, sep, value = spec.partition("=")
    labels = row.get("Labels") or {}
    return key in labels and (not sep or labels[key] == value)


def _status(row: Mapping[str, Any], value: str) -> bool:
    state = str(row.get("State", ""))
    if value == "restarting":
        return bool(row.get("Restarting"))
    if value == "paused":
        return state == "paused"  # the agent shows a paused container so
    if value in ("exited", "stopped"):
        return state in ("exited", "failed")  # Podman calls a command that could not run exited too
    return state == value


def _ancestor(row: Mapping[str, Any], value: str) -> bool:
    # As Podman: the image's id, or a regular expression over its name; a name without a tag also matches its
    # :latest. Quilt keeps the image as given (a name, an id or an image file's path).
    image = str(row.get("Image", ""))
    if image == value or (is_full_id(image) and len(value) >= 3 and image.startswith(value)):
        return True
    import re

    name, colon, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    try:
        return re.search(value, image) is not None or (bool(colon) and tag == "latest" and re.search(value, name)
                                                        is not None)
    except re.error:
        return False


def mount_specs(props: Mapping[str, Any]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """A container's mounts as (type, source, destination, options), from its Volumes ("SOURCE:DEST[:OPTIONS]")
    and Tmpfs ("DEST[:OPTIONS]")."""
    found = []
    for spec in props.get("Volumes") or []:
        source, _, rest = spec.partition(":")
        destination, _, options = rest.partition(":")
        kind = "bind" if source.startswith("/") else "volume"
        found.append((kind, source, destination, tuple(o for o in options.split(",") if o)))
    for spec in props.get("Tmpfs") or []:
        destination, _, options = spec.partition(":")
        found.append(("tmpfs", "tmpfs", destination, tuple(o for o in options.split(",") if o)))
    return found


def _volume(row: Mapping[str, Any], value: str) -> bool:
    source, sep, destination = value.partition(":")
    return any((mounted, at) == (source, destination) if sep else source in (mounted, at)
               for kind, mounted, at, _options in mount_specs(row) if kind != "tmpfs")


def _search(pattern: str, text: str) -> bool:
    import re  # only a filter that takes a regular expression pays for re

    return re.search(pattern, text) is not None


_MATCHERS = {
    "id": lambda row, v: str(row.get("Id", "")).startswith(v),
    # As Podman: Docker's names begin with "/", which a filter may copy.
    "name": lambda row, v: _search(v.replace("/", ""), str(row.get("Name", ""))),
    "command": lambda row, v: _search(v, (list(row.get("Command") or []) or [""])[0]),
    "before": lambda row, v: int(row.get("CreatedAt", 0) or 0) < int(v),
    "since": lambda row, v: int(row.get("CreatedAt", 0) or 0) > int(v),
    "restart-policy": lambda row, v: (row.get("RestartPolicy") or "no") == ("no" if v == "none" else v),
    "volume": _volume,
    "status": _status,
    "ancestor": _ancestor,
    "exited": lambda row, v: row.get("State") in ("exited", "failed") and int(row.get("ExitCode", 0)) == int(v),
    "health": lambda row, v: (row.get("Health") or "none") == v,
    "network": lambda row, v: v in (row.get("Networks") or []),
}


def is_full_id(text: str) -> bool:
    """Whether text is a whole id (an image's or a container's: 64 lowercase hex digits), not a name."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)
