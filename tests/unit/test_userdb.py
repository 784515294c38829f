"""The user and group records that name containers' host ids, as systemd's userdb drop-ins."""
from __future__ import annotations

import json
import os
from pathlib import Path

from quilt_agent import userdb


def test_a_containers_root_is_named_by_a_user_and_a_group_record(tmp_path: Path) -> None:
    userdb.register("web", 524288, tmp_path)
    user = json.loads((tmp_path / "quilt-web-0.user").read_text())
    group = json.loads((tmp_path / "quilt-web-0.group").read_text())
    assert (user["userName"], user["uid"], user["gid"], user["disposition"]) == ("quilt-web-0", 524288, 524288,
                                                                                "container")
    assert (group["groupName"], group["gid"]) == ("quilt-web-0", 524288)
    assert os.readlink(tmp_path / "524288.user") == "quilt-web-0.user"
    assert os.readlink(tmp_path / "524288.group") == "quilt-web-0.group"
    userdb.register("web", 524288, tmp_path)  # again, at the agent's start: the same files
    userdb.unregister("web", 524288, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_cannot_be_written_leaves_the_container_without_names(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    userdb.register("web", 524288, blocked)  # logged, not raised
    userdb.unregister("web", 524288, blocked)
