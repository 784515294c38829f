"""Where Quilt keeps things. One place, so tests and packaging agree."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path
    userdb: Path = Path("/run/userdb")  # the user records naming containers' host ids (userdb.py)

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
