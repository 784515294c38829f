"""What ps, inspect and the ls verbs show, as pure functions over the agent's property dicts.

ps's --filter, --last and --latest (Podman's rules), and the items --format templates read: Podman's field names
for a container in ps and inspect, an image, a network and a volume, built from Quilt's properties (the keys of
the Container, Image, Network and Volume interfaces in dbus/org.quilt.Runtime.xml). How the rows were fetched
does not matter here.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from quilt_agent.cli.template import Record

SHORT_ID = 12

# --- times -----------------------------------------------------------------------------------------------------

# The Container properties that are times (usec since the epoch); the Health* durations are not.
CONTAINER_TIMES = ("CreatedAt", "StartedAt", "FinishedAt", "RestartAt")
GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # how Podman's inspect shows a time that never was


def rfc3339(usec: int) -> str:
    """A time in usec since the epoch as Podman's inspect shows one: RFC 3339, local time; 0 is Go's zero time."""
    if not usec:
        return GO_ZERO_TIME
    return _local(usec).isoformat(timespec="microseconds")


def _local(usec: int) -> datetime:
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
    if isinstance(log, Mapping):
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
            try:
                re.compile(value)
            except re.error as e:
                raise ListingError(f"invalid filter '{spec}': the {key} is a regular expression: {e}") from None
        elif key == "status" and value not in STATUSES:
            raise ListingError(f"invalid filter '{spec}': the status is one of {', '.join(STATUSES)}")
        elif key == "health" and value not in HEALTHS:
            raise ListingError(f"invalid filter '{spec}': the health is one of {', '.join(HEALTHS)}")
        elif key == "exited" and not re.fullmatch(r"-?\d+", value):
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
    if image == value or (_is_id(image) and len(value) >= 3 and image.startswith(value)):
        return True
    name, colon, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    try:
        return re.search(value, image) is not None or (bool(colon) and tag == "latest" and re.search(value, name)
                                                        is not None)
    except re.error:
        return False


def _volume(row: Mapping[str, Any], value: str) -> bool:
    source, sep, destination = value.partition(":")
    return any((m.source, m.destination) == (source, destination) if sep else source in (m.source, m.destination)
               for m in mounts(row) if m.type != "tmpfs")


_MATCHERS = {
    "id": lambda row, v: str(row.get("Id", "")).startswith(v),
    # As Podman: Docker's names begin with "/", which a filter may copy.
    "name": lambda row, v: re.search(v.replace("/", ""), str(row.get("Name", ""))) is not None,
    "command": lambda row, v: re.search(v, (list(row.get("Command") or []) or [""])[0]) is not None,
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


def _is_id(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


# --- what --format reads ---------------------------------------------------------------------------------------


def _record(kind: str, fields: Mapping[str, Any], lacking: Mapping[str, str] | None = None) -> Record:
    # Only a --format needs the template module: ps, inspect and the ls verbs without one do not import it.
    from quilt_agent.cli.template import Record

    return Record(kind, fields, lacking)

NO_PODS = "Quilt has no pods"
NO_SIZES = "Quilt does not measure a container's size"

# Podman's column names where they are not the field's own words.
PS_HEADERS = {"ID": "CONTAINER ID", "CreatedHuman": "CREATED", "Names": "NAMES", "Pid": "PID"}
IMAGE_HEADERS = {"ID": "IMAGE ID", "ReadOnly": "R/O"}
NETWORK_HEADERS = {"ID": "NETWORK ID"}
VOLUME_HEADERS = {"Name": "VOLUME NAME"}


def podman_state(props: Mapping[str, Any]) -> str:
    """Podman's word for the state: a command that could not run ("failed" in Quilt) has exited."""
    state = str(props.get("State", ""))
    if state == "paused":
        return "paused"
    return "exited" if state == "failed" else state


def ps_status(props: Mapping[str, Any], now: float) -> str:
    """ps's STATUS as Podman words it: "Up 3 minutes (healthy)", "Exited (0) 5 seconds ago", "Created"."""
    state = podman_state(props)
    if props.get("Restarting"):
        text = f"Restarting ({props.get('ExitCode', 0)}) {ago(int(props.get('FinishedAt', 0) or 0), now)}"
    elif state == "running":
        text = "Up " + human_duration(max(0.0, now - int(props.get("StartedAt", 0) or 0) / 1e6))
    elif state == "exited":
        text = f"Exited ({props.get('ExitCode', 0)}) {ago(int(props.get('FinishedAt', 0) or 0), now)}"
    else:
        text = state.title()
    return text + (f" ({props['Health']})" if props.get("Health") else "")


def podman_ports(ports: Sequence[str]) -> str:
    """Quilt's published ports ("[HOSTIP:]HOSTPORT:CONTAINERPORT/PROTO") as Podman's ps shows them
    ("0.0.0.0:8080->80/tcp, ...")."""
    shown = []
    for port in ports:
        spec, _, proto = port.partition("/")
        parts = spec.rsplit(":", 2)
        host_ip = parts[0] if len(parts) == 3 else ""
        host_port, container_port = parts[-2], parts[-1]
        shown.append(f"{host_ip or '0.0.0.0'}:{host_port}->{container_port}/{proto or 'tcp'}")
    return ", ".join(shown)


@dataclass(frozen=True)
class Mount:
    """One of a container's mounts, from its Volumes ("SOURCE:DEST[:OPTIONS]") or Tmpfs ("DEST[:OPTIONS]")."""

    type: str
    source: str
    destination: str
    options: tuple[str, ...]

    @property
    def read_write(self) -> bool:
        return "ro" not in self.options


def mounts(props: Mapping[str, Any]) -> list[Mount]:
    found = []
    for spec in props.get("Volumes") or []:
        source, _, rest = spec.partition(":")
        destination, _, options = rest.partition(":")
        kind = "bind" if source.startswith("/") else "volume"
        found.append(Mount(kind, source, destination, tuple(o for o in options.split(",") if o)))
    for spec in props.get("Tmpfs") or []:
        destination, _, options = spec.partition(":")
        found.append(Mount("tmpfs", "tmpfs", destination, tuple(o for o in options.split(",") if o)))
    return found


def ps_item(props: Mapping[str, Any], now: float, no_trunc: bool = False) -> Record:
    """A container as `podman ps --format` reads it: Podman's fields, then Quilt's other properties."""
    command = " ".join(props.get("Command") or [])
    if not no_trunc and len(command) > 17:
        command = command[:17] + "..."
    ident = str(props.get("Id", ""))
    image = str(props.get("Image", ""))
    created = int(props.get("CreatedAt", 0) or 0)
    state = podman_state(props)
    podman = {
        "AutoRemove": bool(props.get("RemoveOnExit")),
        "Command": command,
        "Created": go_time(created),
        "CreatedAt": go_time(created),
        "CreatedHuman": ago(created, now),
        "Exited": state == "exited",
        "ExitedAt": int(props.get("FinishedAt", 0) or 0) // 1_000_000,
        "ExitCode": int(props.get("ExitCode", 0) or 0),
        "ID": ident if no_trunc else ident[:SHORT_ID],
        "Image": image if no_trunc or not _is_id(image) else image[:SHORT_ID],
        "ImageID": (image if no_trunc else image[:SHORT_ID]) if _is_id(image) else "",
        "IsInfra": False,
        "Labels": dict(props.get("Labels") or {}),
        "Mounts": [m.destination for m in mounts(props)],
        "Names": str(props.get("Name", "")),
        "Networks": ",".join(props.get("Networks") or []),
        "Pid": int(props.get("MainPID", 0) or 0),
        "Ports": podman_ports(props.get("Ports") or []),
        "Restarts": int(props.get("RestartCount", 0) or 0),
        "RunningFor": ago(created, now),
        "StartedAt": int(props.get("StartedAt", 0) or 0) // 1_000_000,
        "State": state,
        "Status": ps_status(props, now),
    }
    quilt = {k: v for k, v in dated(props).items() if k not in podman}
    return _record("container", {**podman, **quilt}, {
        "Pod": NO_PODS, "PodName": NO_PODS, "Size": NO_SIZES,
        "Namespaces": "ps --ns is not supported; .Namespaces of inspect lists them",
        "CIDFile": "Quilt writes no container id file"})


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def inspect_item(props: Mapping[str, Any]) -> Record:
    """A container as `podman inspect --format` reads it: Podman's inspect shape where Quilt has the data
    (.State.Status, .Config.Env, .HostConfig.Memory, .NetworkSettings.Networks, .Mounts, ...), and Quilt's own
    properties (times as RFC 3339) at the top where Podman has no field of that name."""
    command = list(props.get("Command") or [])
    health_log = props.get("HealthLog") or {}
    state = {
        "Status": podman_state(props),
        "Running": props.get("State") == "running",
        "Paused": podman_state(props) == "paused",
        "Restarting": bool(props.get("Restarting")),
        "OOMKilled": bool(props.get("OOMKilled")),
        "Dead": False,
        "Pid": int(props.get("MainPID", 0) or 0),
        "ExitCode": int(props.get("ExitCode", 0) or 0),
        "Error": str(props.get("FailureReason", "") or ""),
        "StartedAt": rfc3339(int(props.get("StartedAt", 0) or 0)),
        "FinishedAt": rfc3339(int(props.get("FinishedAt", 0) or 0)),
    }
    # There without a health check too, empty: `{{.State.Health.Status}}` prints "" then, not an error.
    state["Health"] = _record("health log", {
        "Status": health_log.get("Status", props.get("Health", "") or ""),
        "FailingStreak": health_log.get("FailingStreak", 0),
        "Log": [_record("health check", {"Start": rfc3339(c["Start"]), "End": rfc3339(c["End"]),
                                        "ExitCode": c["ExitCode"], "Output": c["Output"]})
                for c in health_log.get("Log", [])]})
    ports: dict[str, list[dict[str, str]]] = {}
    for port in props.get("Ports") or []:
        spec, _, proto = port.partition("/")
        parts = spec.rsplit(":", 2)
        ports.setdefault(f"{parts[-1]}/{proto or 'tcp'}", []).append(
            {"HostIp": parts[0] if len(parts) == 3 else "", "HostPort": parts[-2]})
    addresses = dict(props.get("Addresses") or [])
    networks = {name: _record("network", {"IPAddress": addresses.get(name, ""),
                                         "Aliases": list(props.get("NetworkAliases") or [])})
                for name in addresses}
    quota = float(props.get("CPUQuota", 0) or 0)
    policy = str(props.get("RestartPolicy", "") or "no")
    config = _record("config", {
        "Hostname": props.get("Hostname", ""),
        "User": props.get("User", ""),
        "Env": list(props.get("Environment") or []),
        "Cmd": command,
        "Image": props.get("Image", ""),
        "WorkingDir": props.get("WorkingDirectory", ""),
        "Labels": dict(props.get("Labels") or {}),
        "StopSignal": _signal_name(int(props.get("StopSignal", 15) or 15)),
        "StopTimeout": int(props.get("StopTimeout", 0) or 0),
        "Healthcheck": _record("health check", {
            "Test": ["CMD", *props["HealthCommand"]],
            "Interval": int(props.get("HealthInterval", 0) or 0) * 1000,  # Go durations count nanoseconds
            "Timeout": int(props.get("HealthTimeout", 0) or 0) * 1000,
            "StartPeriod": int(props.get("HealthStartPeriod", 0) or 0) * 1000,
            "Retries": int(props.get("HealthRetries", 0) or 0)}) if props.get("HealthCommand") else None,
        "HealthcheckOnFailureAction": props.get("HealthOnFailure", "none") or "none",
    }, {"Entrypoint": "Quilt keeps the entrypoint and the command as one command, .Config.Cmd"})
    host_config = _record("host config", {
        "Memory": int(props.get("MemoryMax", 0) or 0),
        "PidsLimit": int(props.get("PidsMax", 0) or 0),
        "CpuPeriod": 100_000 if quota else 0,
        "CpuQuota": int(quota * 1000),  # a percent of one CPU, in usec of a 100 ms period
        "RestartPolicy": _record("restart policy", {"Name": "" if policy == "no" else policy,
                                                   "MaximumRetryCount": int(props.get("RestartMax", 0) or 0)}),
        "AutoRemove": bool(props.get("RemoveOnExit")),
        "ReadonlyRootfs": bool(props.get("ReadOnly")),
        "Init": bool(props.get("Init")),
        "Binds": list(props.get("Volumes") or []),
        "Tmpfs": {m.destination: ",".join(m.options) for m in mounts(props) if m.type == "tmpfs"},
        "PortBindings": ports,
        "NetworkMode": (props.get("Networks") or ["bridge"])[0],
    })
    podman = {
        "Id": props.get("Id", ""),
        "Created": rfc3339(int(props.get("CreatedAt", 0) or 0)),
        "Path": command[0] if command else "",
        "Args": command[1:],
        "State": _record("state", state),
        "Image": props.get("Image", ""),
        "ImageName": props.get("Image", ""),
        "Name": props.get("Name", ""),
        "RestartCount": int(props.get("RestartCount", 0) or 0),
        "Config": config,
        "HostConfig": host_config,
        "NetworkSettings": _record("network settings", {
            "IPAddress": next(iter(addresses.values()), ""),
            "Networks": networks,
            "Ports": ports,
        }),
        "Mounts": [_record("mount", {"Type": m.type, "Source": m.source, "Destination": m.destination,
                                    "Options": list(m.options), "RW": m.read_write}) for m in mounts(props)],
    }
    quilt = {k: v for k, v in dated(props).items() if k not in podman}
    return _record("container", {**podman, **quilt}, {"Pod": NO_PODS, "SizeRw": NO_SIZES, "SizeRootFs": NO_SIZES})


def split_name(name: str) -> tuple[str, str]:
    """An image name as Podman's REPOSITORY and TAG: "docker.io/library/alpine:3" -> ("docker.io/library/alpine",
    "3"); no tag (or a digest) -> "<none>"."""
    base = name.split("@", 1)[0]
    if ":" in base.rsplit("/", 1)[-1]:
        repository, _, tag = base.rpartition(":")
        return repository, tag
    return base, "<none>"


def podman_size(size: int) -> str:
    """A size as Podman's images shows it: decimal units, 3 significant digits ("5.59 MB")."""
    value, unit = float(size), "B"
    for next_unit in ("kB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, next_unit
    return f"{value:.3g} {unit}"


def image_items(props: Mapping[str, Any], now: float, no_trunc: bool = False) -> list[Record]:
    """An image as `podman images --format` reads it: one item per name (one "<none>" item without a name)."""
    try:
        config = json.loads(props.get("Config") or "{}")
    except ValueError:
        config = {}
    labels = (config.get("config") or {}).get("Labels") or {} if isinstance(config, dict) else {}
    ident = str(props.get("Id", ""))
    created = int(props.get("CreatedAt", 0) or 0)
    names = list(props.get("Names") or [])
    items = []
    for name in names or [""]:
        repository, tag = split_name(name) if name else ("<none>", "<none>")
        podman = {
            "ID": ident if no_trunc else ident[:SHORT_ID],
            "Repository": repository,
            "Tag": tag,
            "Digest": props.get("Digest", ""),
            "Created": ago(created, now),
            "CreatedSince": ago(created, now),
            "CreatedAt": go_time(created),
            "CreatedTime": go_time(created),
            "Size": podman_size(int(props.get("Size", 0) or 0)),
            "VirtualSize": podman_size(int(props.get("Size", 0) or 0)),
            "Labels": dict(labels),
            "ReadOnly": False,
            "Dangling": not names,
            "Names": names,
        }
        quilt = {k: v for k, v in props.items() if k not in podman}
        items.append(_record("image", {**podman, **quilt}, {
            "Containers": "Quilt does not count an image's containers",
            "History": "Quilt keeps no image history", "SharedSize": NO_SIZES, "UniqueSize": NO_SIZES}))
    return items


def network_item(props: Mapping[str, Any]) -> Record:
    """A network as `podman network ls --format` reads it."""
    ident = str(props.get("Id", ""))
    podman = {
        "ID": ident[:SHORT_ID],
        "Name": props.get("Name", ""),
        "Driver": "bridge",
        "NetworkInterface": props.get("Bridge", ""),
        "Internal": bool(props.get("Internal")),
        "DNSEnabled": bool(props.get("DNS")),
        "IPv6Enabled": False,
        "Subnets": [_record("subnet", {"Subnet": props.get("Subnet", ""), "Gateway": props.get("Gateway", "")})],
        "Labels": {},
        "Options": {},
    }
    quilt = {k: v for k, v in props.items() if k not in podman}
    return _record("network", {**podman, **quilt})


def volume_item(props: Mapping[str, Any]) -> Record:
    """A volume as `podman volume ls --format` reads it."""
    podman = {
        "Name": props.get("Name", ""),
        "Driver": "local",
        "Scope": "local",
        "Mountpoint": props.get("Mountpoint", ""),
        "Labels": dict(props.get("Labels") or {}),
        "Options": {},
        "CreatedAt": rfc3339(int(props.get("CreatedAt", 0) or 0)),
    }
    quilt = {k: v for k, v in props.items() if k not in podman}
    return _record("volume", {**podman, **quilt})
