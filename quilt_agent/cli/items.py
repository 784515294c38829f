"""What --format templates read: Podman's field names for a container in ps and inspect, an image, a network and
a volume, built from Quilt's properties (the keys of the Container, Image, Network and Volume interfaces in
dbus/org.quilt.Runtime.xml). Imported only for a --format (and ps's volume= filter), as the template module is.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from quilt_agent.cli.listing import (
    SHORT_ID, ago, dated, go_time, human_duration, is_full_id, mount_specs, rfc3339,
)
from quilt_agent.cli.template import Record


def _record(kind: str, fields: Mapping[str, Any], lacking: Mapping[str, str] | None = None) -> Record:
    return Record(kind, fields, lacking)


# Where the agent keeps a container's log file (quilt_agent/logfile.py) with the file log drivers.
LOG_FILE = "/var/lib/quilt/containers/{id}/ctr.log"
FILE_DRIVERS = ("k8s-file", "journald+file")


def _log_config(props: Mapping[str, Any]) -> Record:
    """Podman's .HostConfig.LogConfig: the driver, its rotation (as --log-opt spells it) and the file's path."""
    driver = str(props.get("LogDriver") or "journald")
    options = {}
    if int(props.get("LogMaxSize") or 0):
        options = {"max-size": str(int(props["LogMaxSize"])), "max-files": str(int(props.get("LogMaxFiles") or 1))}
    return _record("log config", {
        "Type": driver, "Config": options or None,
        "Path": LOG_FILE.format(id=props.get("Id", "")) if driver in FILE_DRIVERS else "",
        "Size": str(int(props.get("LogMaxSize") or 0))})


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
    return [Mount(*spec) for spec in mount_specs(props)]


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
        "Image": image if no_trunc or not is_full_id(image) else image[:SHORT_ID],
        "ImageID": (image if no_trunc else image[:SHORT_ID]) if is_full_id(image) else "",
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
        "LogConfig": _log_config(props),
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
