"""The volumes, tmpfs and read_only options (quilt_agent/volumes.py) and -v/--tmpfs/--read-only (cli/volumes.py)."""
from __future__ import annotations

import pytest

from quilt_agent.cli.request import volume_options
from quilt_agent.cli.volumes import _split
from quilt_agent.errors import InvalidArgument
from quilt_agent.model import parse_options
from quilt_agent.volume_options import name_anonymous, named_volumes, parse_tmpfs, parse_volume, parse_volumes


def test_volume_entries_are_normalised() -> None:
    assert parse_volumes(["data:/var/lib/db", "/srv//conf/:/etc/app/:ro,nosuid", "/x:/y:rw"]) == (
        "data:/var/lib/db", "/srv/conf:/etc/app:ro,nosuid", "/x:/y")
    m = parse_volume("data:/d:ro")
    assert m.named and m.read_only and m.target == "/d"
    assert not parse_volume("/h:/d").named


@pytest.mark.parametrize("entry", ["data", "data:rel", ":/x", "data:/a/../b", "data:/proc", "data:/sys/fs",
                                   "data:/dev/shm", "data:/", "data:/x:bind", "data:/x:ro,rw", "da ta:/x",
                                   "/a/../b:/x", "a:/x:ro:extra"])
def test_bad_volume_entries(entry: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_volumes([entry])


def test_dest_alone_is_an_anonymous_volume_named_at_create() -> None:
    m = parse_volume("/data/")
    assert m.anonymous and not m.named and m.target == "/data" and m.text() == "/data"
    volumes, made = name_anonymous(parse_volumes(["/data", "keep:/k", "/h:/hh"]))
    (anon,) = made
    assert len(anon) == 64 and volumes == (f"{anon}:/data", "keep:/k", "/h:/hh")
    assert named_volumes(volumes) == [anon, "keep"]
    for bad in (["/proc/x"], ["/"], ["/data", "/data"]):
        with pytest.raises(InvalidArgument):
            parse_volumes(bad)


def test_tmpfs_entries() -> None:
    assert parse_tmpfs(["/t", "/s:size=2m,mode=0700", "/u:size=1g"]) == (
        "/t:size=67108864,mode=1777", "/s:size=2097152,mode=0700", "/u:size=1073741824,mode=1777")
    for bad in (["t"], ["/t:size=0"], ["/t:size=1x"], ["/t:mode=8"], ["/t:uid=0"], ["/proc/x"], ["/t", "/t"]):
        with pytest.raises(InvalidArgument):
            parse_tmpfs(bad)


def test_options_and_their_targets() -> None:
    fields = parse_options({"volumes": ["v:/a"], "tmpfs": ["/b"], "read_only": True})
    assert fields["volumes"] == ("v:/a",) and fields["read_only"] is True
    for bad in ({"volumes": ["v:/a"], "tmpfs": ["/a"]}, {"read_only": 1}, {"volumes": "v:/a"}):
        with pytest.raises(InvalidArgument):
            parse_options(bad)


def test_cli_flags() -> None:
    assert volume_options({"volume": ("./d:/x", "../e:/y:ro", "v:/z"), "tmpfs": ("/t",), "read_only": True},
                          "/home/u/p") == {"volumes": ["/home/u/p/d:/x", "/home/u/e:/y:ro", "v:/z"],
                                           "tmpfs": ["/t"], "read_only": True}
    assert volume_options({}, "/") == {}
    assert _split("web:/etc/x") == ("web", "/etc/x") and _split("web:etc") == ("web", "/etc")
    assert _split("/host/path") is None and _split("./a:b") is None and _split("plain") is None
