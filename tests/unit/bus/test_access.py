"""What polkit is told of an object: canonical details, and which options of a container hand it the host."""
from __future__ import annotations

from dataclasses import replace

import pytest

from quilt_agent.bus import access
from quilt_agent.images.store import Image
from quilt_agent.model import NAMESPACES, Container, ContainerSpec

SPEC = ContainerSpec(name="web", image="debian:12", image_id="ab" * 32, command=("true",))


def test_a_containers_details_name_it_canonically_with_its_owner_and_references() -> None:
    spec = replace(SPEC, networks=("front", "back"), volumes=("data:/data", "/srv:/srv:ro", "cache:/c"),
                   ports=("8080:80/tcp",))
    target = access.container(Container(id="cd" * 32, spec=spec, owner_uid=1000))
    assert target.details(1000) == {
        "kind": "container", "container": "web", "id": "cd" * 32, "owner_uid": "1000", "caller_is_owner": "true",
        "image": "debian:12", "image_id": "ab" * 32, "networks": "front,back", "volumes": "data,cache",
        "ports": "8080:80/tcp", "aliases": "", "privileged": "bind:/srv"}
    assert target.details(1001)["caller_is_owner"] == "false"
    assert str(target) == "container 'web'"


def test_an_images_details_name_every_tag_and_its_owner() -> None:
    image = Image(id="ef" * 32, digest="sha256:" + "01" * 32, config_digest="sha256:" + "ef" * 32,
                  names=("localhost/app:v1", "localhost/app:v2"), layers=(), layer_dirs=(), size=0, created_at=0,
                  source="/srv/app.tar", owner_uid=1000)
    assert access.image(image).details(1000) == {
        "kind": "image", "image": "localhost/app:v1", "id": "ef" * 32, "owner_uid": "1000",
        "caller_is_owner": "true", "names": "localhost/app:v1,localhost/app:v2", "digest": "sha256:" + "01" * 32,
        "setup_base": ""}


def test_what_does_not_exist_has_no_id_and_no_owner() -> None:
    target = access.absent("volume", "nope")
    assert not target.exists
    assert target.details(0) == {"kind": "volume", "volume": "nope", "id": "", "owner_uid": "", "caller_is_owner": "false"}


@pytest.mark.parametrize("changes, expected", [
    ({}, ()),
    ({"volumes": ("/:/host", "data:/d")}, ("bind:/",)),
    ({"namespaces": tuple(n for n in NAMESPACES if n != "net"), "networks": ("host",)}, ("host-net",)),
    ({"namespaces": tuple(n for n in NAMESPACES if n not in ("pid", "ipc"))}, ("host-pid", "host-ipc")),
    ({"seccomp": "unconfined"}, ("seccomp-unconfined",)),
    ({"userns": "host"}, ("host-user",)),
    ({"ports": ("80:8080/tcp", "8080:80/tcp", "127.0.0.1:631:80/tcp")}, ("port:80:8080/tcp", "port:127.0.0.1:631:80/tcp")),
])
def test_privileged_options_are_those_that_hand_the_host_to_the_container(changes: dict, expected: tuple) -> None:
    assert access.privileged_options(replace(SPEC, **changes)) == expected
