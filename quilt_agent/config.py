"""Where Quilt keeps things, and its settings file. One place, so tests and packaging agree."""
from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("quilt.config")

CONFIG_FILE = Path("/etc/quilt/quilt.conf")


def config_path() -> Path:
    """The agent's settings (TOML); QUILT_CONFIG names another file (tests)."""
    return Path(os.environ.get("QUILT_CONFIG", str(CONFIG_FILE)))


def read_table(path: Path, table: str) -> dict[str, Any]:
    """One table of the settings file; {} when the file is missing, or (logged) unreadable: a typo never keeps
    the agent, and its running containers' management, from starting."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f).get(table, {})
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        log.error("ignoring %s: %s", path, e)
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Paths:
    root: Path
    userdb: Path = Path("/run/userdb")  # the user records naming containers' host ids (userdb.py)
    run: Path = Path("/run/quilt")  # notes for this boot only (RuntimeDirectory=, emptied by a reboot)
    # The init a container created with `init` runs as its PID 1 (Debian's catatonit, static, as Podman's --init):
    # it forwards signals to the command and reaps orphans, which a command as PID 1 of its own rarely does.
    init: Path = Path("/usr/bin/catatonit")
    # What each container's monitor becomes once the container runs (monitor/quilt-monitor.c): the waiting and the
    # recording of its end, in C, the package's own.
    monitor: Path = Path("/usr/libexec/quilt/quilt-monitor")
    # The containers' NOTIFY_SOCKETs (notify.py), a directory each that the container sees as /run/notify. Under the
    # runtime directory: a socket lives as long as the agent listening on it and the containers sending to it, none
    # of which outlives a boot.
    notify: Path = Path("/run/quilt/notify")

    @property
    def database(self) -> Path:
        return self.root / "quilt.db"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def containers(self) -> Path:
        return self.root / "containers"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"

    def container(self, container_id: str) -> Path:
        return self.containers / container_id


def default_paths() -> Paths:
    # systemd's StateDirectory= sets STATE_DIRECTORY; outside a unit the packaged default applies.
    return Paths(Path(os.environ.get("STATE_DIRECTORY", "/var/lib/quilt").split(":")[0]))
