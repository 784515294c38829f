"""Image references, OCI documents and platforms, what a container takes from its image, and the registry
settings: the pure parts, without files or network."""

import base64
import json
import signal
from pathlib import Path

import pytest

from quilt_agent.errors import ImageInvalid, InvalidArgument, NoSuchImage
from quilt_agent.images import oci, reference
from quilt_agent.images.registry import RegistryConfig, credentials
from quilt_agent.images.service import container_defaults
from quilt_agent.images.store import Image

DIGEST = "sha256:" + "ab" * 32


# --- references ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text,registry,repository,tag,digest", [
    ("busybox", "docker.io", "library/busybox", "latest", ""),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", ""),
    ("team/app", "docker.io", "team/app", "latest", ""),
    ("127.0.0.1:5000/test/app:v1", "127.0.0.1:5000", "test/app", "v1", ""),
    ("localhost/app", "localhost", "app", "latest", ""),
    ("registry.lan/a/b/c@" + DIGEST, "registry.lan", "a/b/c", "", DIGEST),
    ("registry.lan:443/app:v1@" + DIGEST, "registry.lan:443", "app", "v1", DIGEST),
    ("[::1]:5000/app", "[::1]:5000", "app", "latest", ""),
])
def test_references_are_parsed_with_dockers_defaults(text: str, registry: str, repository: str, tag: str,
                                                     digest: str) -> None:
    ref = reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.manifest_ref == (digest or tag)


def test_docker_hub_is_reached_on_its_api_host() -> None:
    assert reference.parse("busybox").endpoint == "registry-1.docker.io"
    assert reference.parse("127.0.0.1:5000/app").endpoint == "127.0.0.1:5000"


@pytest.mark.parametrize("text", ["", "Upper", "app:", "app:bad tag", "app@sha256:123", "a//b", "-app",
                                  " app", "app@md5:" + "0" * 32, "registry.lan/"])
def test_bad_references_are_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument, match="Invalid image reference"):
        reference.parse(text)


def test_local_names_keep_no_registry_and_get_latest() -> None:
    assert reference.normalize_name("app") == "app:latest"
    assert reference.normalize_name("team/app:v2") == "team/app:v2"
    assert reference.candidates("busybox") == ["busybox:latest", "docker.io/library/busybox:latest"]


# --- OCI documents -------------------------------------------------------------------------------


def test_a_digest_of_another_algorithm_is_refused_by_name() -> None:
    with pytest.raises(ImageInvalid, match="algorithm Quilt does not support"):
        oci.check_digest("sha512:" + "a" * 128, "layer")
    with pytest.raises(ImageInvalid, match="not a valid sha256 digest"):
        oci.check_digest("sha256:xyz", "layer")


def test_manifest_media_types() -> None:
    layer = {"mediaType": oci.OCI_LAYER + "+gzip", "digest": DIGEST, "size": 3}
    doc = {"schemaVersion": 2, "config": {"mediaType": oci.OCI_CONFIG, "digest": DIGEST, "size": 2}, "layers": [layer]}
    assert oci.parse_manifest(json.dumps(doc).encode(), "m").media_type == oci.OCI_MANIFEST  # none given: OCI
    docker = {**doc, "mediaType": oci.DOCKER_MANIFEST}
    assert oci.parse_manifest(json.dumps(docker).encode(), "m").layers[0].size == 3
    with pytest.raises(ImageInvalid, match="schema 1"):
        oci.parse_manifest(json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), "m")
    with pytest.raises(ImageInvalid, match="size -1 is not a byte count"):
        oci.parse_manifest(json.dumps({**doc, "layers": [{**layer, "size": -1}]}).encode(), "m")


def test_platforms_match_as_podman_matches_them() -> None:
    arm64 = oci.Platform("linux", "arm64")
    assert arm64.matches(oci.Platform("linux", "arm64", "v8")) and oci.Platform("linux", "arm64", "v8").matches(arm64)
    assert not oci.Platform("linux", "arm", "v7").matches(oci.Platform("linux", "arm", "v6"))
    assert oci.Platform("linux", "arm", "v7").matches(oci.Platform("linux", "arm"))
    assert not arm64.matches(oci.Platform("linux", "amd64"))
    index = oci.Index(oci.OCI_INDEX, (oci.Descriptor(oci.OCI_MANIFEST, DIGEST, 1, oci.Platform("linux", "s390x")),))
    with pytest.raises(NoSuchImage, match="No image for linux/arm64 in 'x': it has linux/s390x"):
        oci.choose(index, arm64, "'x'")


@pytest.mark.parametrize("text,number", [("SIGTERM", 15), ("TERM", 15), ("9", 9), ("sigusr1", 10),
                                         ("SIGRTMIN+3", signal.SIGRTMIN + 3)])
def test_stop_signals_are_read_as_images_spell_them(text: str, number: int) -> None:
    assert oci.parse_signal(text) == number


@pytest.mark.parametrize("text", ["SIGNOPE", "0", "99", ""])
def test_unknown_stop_signals_are_invalid(text: str) -> None:
    with pytest.raises(ImageInvalid):
        oci.parse_signal(text)


# --- what a container takes from its image -------------------------------------------------------


def config(**run: object) -> oci.ImageConfig:
    doc = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}, "config": run}
    return oci.parse_config(json.dumps(doc).encode())


IMAGE = Image(id="c" * 64, digest=DIGEST, config_digest=DIGEST, names=("app:v1",), layers=(), layer_dirs=(),
              size=0, created_at=0, source="")


def test_a_command_given_replaces_cmd_and_keeps_the_entrypoint() -> None:
    c = config(Entrypoint=["/bin/tini", "--"], Cmd=["/bin/sh"])
    assert container_defaults(IMAGE, c, (), {}).command == ("/bin/tini", "--", "/bin/sh")
    assert container_defaults(IMAGE, c, ("/bin/date",), {}).command == ("/bin/tini", "--", "/bin/date")
    assert container_defaults(IMAGE, config(Cmd=["/bin/sh"]), ("ls",), {}).command == ("ls",)


def test_no_command_anywhere_is_invalid_argument_naming_the_image() -> None:
    with pytest.raises(InvalidArgument, match="command is empty.*'app:v1' has no Entrypoint or Cmd"):
        container_defaults(IMAGE, config(), (), {})


def test_env_workdir_user_labels_and_stop_signal_are_defaults_under_the_callers() -> None:
    c = config(Env=["PATH=/usr/bin", "A=image", "B=image"], WorkingDir="srv", User="1000:1000",
               Labels={"x": "image", "y": "image"}, StopSignal="SIGINT", Cmd=["x"])
    given = container_defaults(IMAGE, c, (), {"env": ("A=caller",), "labels": {"y": "caller"}}).fields
    assert given["env"] == ("PATH=/usr/bin", "B=image", "A=caller")
    assert (given["workdir"], given["user"], given["stop_signal"]) == ("/srv", "1000:1000", signal.SIGINT)
    assert given["labels"] == {"x": "image", "y": "caller"}
    own = container_defaults(IMAGE, c, (), {"workdir": "/", "user": "0"}).fields
    assert (own["workdir"], own["user"]) == ("/", "0")


def test_a_config_with_wrong_types_is_image_invalid() -> None:
    with pytest.raises(ImageInvalid, match="Cmd is not a list of strings"):
        config(Cmd="/bin/sh")
    with pytest.raises(ImageInvalid, match="StopSignal"):
        config(StopSignal="SIGNOPE")


# --- registry settings ---------------------------------------------------------------------------


def test_plain_http_only_for_the_registries_named(tmp_path: Path) -> None:
    default = RegistryConfig()
    assert default.allows_http("127.0.0.1:5000") and default.allows_http("localhost:5000")
    assert default.allows_http("[::1]:5000") and default.allows_http("127.8.9.1")
    assert not default.allows_http("registry.lan:5000") and not default.allows_http("docker.io")
    conf = tmp_path / "registries.toml"
    conf.write_text('insecure = ["registry.lan:5000", "10.0.0.0/8"]\nauth_file = "/srv/auth.json"\n')
    loaded = RegistryConfig.load(conf)
    assert loaded.allows_http("registry.lan:5000") and not loaded.allows_http("registry.lan:5001")
    assert loaded.allows_http("10.1.2.3:80") and not loaded.allows_http("127.0.0.1:5000")
    assert loaded.auth_files == (Path("/srv/auth.json"),)
    conf.write_text("insecure = 1\n")
    with pytest.raises(InvalidArgument, match="insecure must be a list"):
        RegistryConfig.load(conf)


def test_credentials_come_from_a_docker_config_json(tmp_path: Path) -> None:
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {
        "127.0.0.1:5000": {"auth": base64.b64encode(b"alice:s3cr:et").decode()},
        "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}}))
    assert credentials("127.0.0.1:5000", (tmp_path / "missing.json", auth)) == ("alice", "s3cr:et")
    assert credentials("docker.io", (auth,)) == ("bob", "pw")
    assert credentials("other:5000", (auth,)) is None
