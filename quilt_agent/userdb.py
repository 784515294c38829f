"""Names for containers' host ids: a user and a group record per container, quilt-NAME-0 for the first id of its
range (its root), as JSON drop-ins in /run/userdb (systemd's userdb, which nss-systemd reads: `ps`, `ls -l` and
`id` then show the name), as systemd-nspawn's vu-NAME-0. Written by hand: the drop-in format is a few JSON
fields (https://systemd.io/USER_RECORD/, https://systemd.io/GROUP_RECORD/) and no library writes it.

Each record is NAME.user (or .group) with a symlink from its number, as systemd-userdbd's drop-in lookup wants;
both are written whole (a temporary file renamed into place). /run is emptied at boot: the agent writes the
records of its containers again when it starts.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("quilt.userdb")

USERDB = Path("/run/userdb")


def record_name(container_name: str) -> str:
    return f"quilt-{container_name}-0"


def register(container_name: str, first: int, root: Path = USERDB) -> None:
    """The container's root (host id first) as a user and a group named quilt-NAME-0."""
    name = record_name(container_name)
    user = {"userName": name, "uid": first, "gid": first, "realName": f"root of Quilt container {container_name}",
            "homeDirectory": "/", "shell": "/usr/sbin/nologin", "disposition": "container", "locked": True}
    group = {"groupName": name, "gid": first, "disposition": "container"}
    try:
        root.mkdir(mode=0o755, exist_ok=True)
        for kind, record in (("user", user), ("group", group)):
            _write(root / f"{name}.{kind}", json.dumps(record, sort_keys=True) + "\n")
            _link(root / f"{first}.{kind}", f"{name}.{kind}")
    except OSError as e:
        # Names are for people reading ps: a container runs without them.
        log.warning("cannot name the ids of container %s in %s: %s", container_name, root, e)


def unregister(container_name: str, first: int, root: Path = USERDB) -> None:
    name = record_name(container_name)
    for path in (root / f"{first}.user", root / f"{first}.group", root / f"{name}.user", root / f"{name}.group"):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s: %s", path, e)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _link(path: Path, target: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, path)
