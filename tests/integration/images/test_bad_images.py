"""Bad images and bad registries through the real bus: each gets a named error that says what was wrong, and the
image store is left exactly as it was (every path and mode compared)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests import imagetools
from tests.integration.images.conftest import ERR, IMAGES, FakeRegistry, reply, store_tree


async def refused(call, error: str, *words: str) -> ClientError:  # type: ignore[no-untyped-def]
    before = store_tree()
    with pytest.raises(ClientError) as info:
        await call
    assert info.value.name == ERR + error, info.value
    for word in words:
        assert word in info.value.message, info.value
    assert store_tree() == before, "the image store changed"
    assert not any(p.name.startswith(f"{os.getpid()}-") for p in (IMAGES / "tmp").iterdir())
    return info.value


def layout_with(tmp_path: Path, app_layout: Path, raw: bytes, tag: str = "v1") -> Path:
    """A copy of the app layout whose image `tag` has one more layer, raw (as umoci raw add-layer takes it)."""
    layout = tmp_path / f"layout-{tag}"
    if not layout.exists():
        shutil.copytree(app_layout, layout)
    imagetools.oci_layout(layout, tag + "-new", [], raw_layers=[raw], base="v1")
    return layout


# --- layers that try to leave their root ----------------------------------------------------------


@pytest.mark.parametrize("kind,words", [("dotdot", "outside the image root"),
                                        ("absolute-symlink", "'etc/evil'"),
                                        ("hardlink", "which is not in the image")])
@pytest.mark.parametrize("how", ["import", "pull"])
async def test_a_layer_escaping_its_root_is_image_invalid(images_client: Client, app_layout: Path, tmp_path: Path,
                                                          kind: str, words: str, how: str) -> None:
    layout = layout_with(tmp_path, app_layout, imagetools.device_and_escape_layers()[kind])
    if how == "import":
        await refused(images_client.import_image(str(layout), "", {"ref": "v1-new"}), "ImageInvalid", words)
    else:
        shutil.copytree(layout, tmp_path / "served")
        index = imagetools.index_of(tmp_path / "served")
        index["manifests"] = [m for m in index["manifests"]
                              if m["annotations"]["org.opencontainers.image.ref.name"] == "v1-new"]
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = "v1"
        (tmp_path / "served/index.json").write_text(json.dumps(index))
        fake = FakeRegistry(tmp_path / "served")
        try:
            await refused(images_client.pull_image(f"{fake.host}/test/app:v1"), "ImageInvalid", words)
        finally:
            fake.close()
    for place in (Path("/"), Path("/var/lib/quilt"), IMAGES, IMAGES / "layers", Path("/tmp")):
        assert not (place / "escaped-dotdot").exists() and not (place / "escaped-symlink").exists()


async def test_device_nodes_are_skipped_and_said_so_setuid_bits_kept(images_client: Client, app_layout: Path,
                                                                     tmp_path: Path) -> None:
    layout = layout_with(tmp_path, app_layout, imagetools.device_and_escape_layers()["devices"])
    since = subprocess.run(["date", "+%Y-%m-%d %H:%M:%S"], capture_output=True, text=True).stdout.strip()
    path = await images_client.import_image(str(layout), "", {"ref": "v1-new"})
    top = (await images_client.image_properties(path))["Layers"][-1].removeprefix("sha256:")
    layer = IMAGES / "layers" / top
    assert sorted(p.name for p in (layer / "dev").iterdir()) == []
    assert stat.S_IMODE((layer / "bin/suid").stat().st_mode) == 0o4755
    journal = subprocess.run(["journalctl", "-u", "quilt-agent", "--since", since, "-o", "cat", "--no-pager"],
                             capture_output=True, text=True).stdout
    assert "skipped 2 device nodes" in journal and "character device 'dev/null'" in journal, journal


# --- broken images --------------------------------------------------------------------------------


def _rewrite(layout: Path, change: Callable[[dict, dict], None]) -> None:
    """Change the v1 manifest and config in place, writing new blobs and pointing index.json at them."""
    digest, manifest = imagetools.manifest_of(layout, "v1")
    config = json.loads(imagetools.blob(layout, manifest["config"]["digest"]).read_bytes())
    change(manifest, config)
    data = json.dumps(config).encode()
    config_digest = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    imagetools.blob(layout, config_digest).write_bytes(data)
    manifest["config"].update(digest=config_digest, size=len(data))
    data = json.dumps(manifest).encode()
    manifest_digest = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    imagetools.blob(layout, manifest_digest).write_bytes(data)
    index = imagetools.index_of(layout)
    for m in index["manifests"]:
        if m["digest"] == digest:
            m.update(digest=manifest_digest, size=len(data))
    (layout / "index.json").write_text(json.dumps(index))


@pytest.fixture
def broken(app_layout: Path, tmp_path: Path) -> Callable[[str], Path]:
    def make(kind: str) -> Path:
        layout = tmp_path / kind
        shutil.copytree(app_layout, layout)
        digest, manifest = imagetools.manifest_of(layout, "v1")
        top = imagetools.blob(layout, manifest["layers"][-1]["digest"])
        if kind == "wrong-manifest-digest":
            imagetools.blob(layout, digest).write_text(json.dumps({**manifest, "annotations": {"x": "y"}}))
        elif kind == "truncated-blob":
            top.write_bytes(top.read_bytes()[:-20])
        elif kind == "wrong-blob":
            data = bytearray(top.read_bytes())
            data[-5] ^= 0xFF
            top.write_bytes(bytes(data))
        elif kind == "other-architecture":
            _rewrite(layout, lambda m, c: c.update(architecture="s390x"))
        elif kind == "wrong-diff-id":
            _rewrite(layout, lambda m, c: c["rootfs"]["diff_ids"].__setitem__(-1, "sha256:" + "1" * 64))
        elif kind == "missing-layer":
            top.unlink()
        return layout

    return make


BROKEN = [("wrong-manifest-digest", "ImageInvalid", "does not match its digest"),
          ("truncated-blob", "ImageInvalid", "bytes, the manifest says"),
          ("wrong-blob", "ImageInvalid", "does not match its digest"),
          ("wrong-diff-id", "ImageInvalid", "does not match the config's DiffID"),
          ("missing-layer", "ImageInvalid", "is missing"),
          ("other-architecture", "NoSuchImage", "it is for linux/s390x")]


@pytest.mark.parametrize("kind,error,words", BROKEN, ids=[b[0] for b in BROKEN])
async def test_a_broken_image_layout_is_refused_by_name(images_client: Client, broken: Callable[[str], Path],
                                                        kind: str, error: str, words: str) -> None:
    await refused(images_client.import_image(str(broken(kind)), ""), error, words)


PULLED = [("wrong-manifest-digest", "ImageInvalid", "does not match its digest"),
          ("truncated-blob", "ImageInvalid", "is truncated: the registry sent"),
          ("wrong-blob", "ImageInvalid", "does not match its digest"),
          ("wrong-diff-id", "ImageInvalid", "does not match the config's DiffID"),
          ("missing-layer", "ImageInvalid", "is missing from registry"),
          ("other-architecture", "NoSuchImage", "it is for linux/s390x")]


@pytest.mark.parametrize("kind,error,words", PULLED, ids=[b[0] for b in PULLED])
async def test_a_broken_image_in_a_registry_is_refused_by_name(images_client: Client, broken: Callable[[str], Path],
                                                               kind: str, error: str, words: str) -> None:
    fake = FakeRegistry(broken(kind))
    try:
        await refused(images_client.pull_image(f"{fake.host}/test/app:v1"), error, words)
    finally:
        fake.close()


async def test_a_manifest_asked_by_digest_must_have_it(images_client: Client, fake_registry: FakeRegistry) -> None:
    digest = fake_registry.manifest_digest()
    manifest = imagetools.blob(fake_registry.layout, digest).read_bytes()
    fake_registry.routes[f"/v2/test/app/manifests/{digest}"] = lambda h: reply(
        h, 200, manifest.replace(b'"schemaVersion":2', b'"schemaVersion": 2'),
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    await refused(images_client.pull_image(f"{fake_registry.host}/test/app@{digest}"), "ImageInvalid",
                  f"expected {digest}")


# --- registries that answer badly -----------------------------------------------------------------


def _garbage_bytes(h: BaseHTTPRequestHandler) -> None:
    h.wfile.write(b"\x00\x01this is not HTTP at all\r\n\r\n")
    h.close_connection = True


def _cut_blob(h: BaseHTTPRequestHandler) -> None:
    """The blob's length announced, half of its bytes sent, the connection closed."""
    data = imagetools.blob(h.server.layout, h.path.rsplit("/", 1)[1]).read_bytes()  # type: ignore[attr-defined]
    h.send_response(200)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data[:len(data) // 2])
    h.wfile.flush()
    h.close_connection = True


ANSWERS = {
    "401": ("/v2/test/app/manifests/v1", lambda h: reply(
        h, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'),
        "RegistryError", "HTTP 401): UNAUTHORIZED: authentication required"),
    "401-basic-without-credentials": ("/v2/test/app/manifests/v1", lambda h: reply(
        h, 401, b'{"errors":[{"code":"UNAUTHORIZED","message":"login first"}]}',
        {"WWW-Authenticate": 'Basic realm="fake"', "Content-Type": "application/json"}),
        "RegistryError", "without credentials (HTTP 401): UNAUTHORIZED: login first"),
    "404": ("/v2/test/app/manifests/v1", lambda h: reply(
        h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'),
        "NoSuchImage", "(HTTP 404): MANIFEST_UNKNOWN: manifest unknown"),
    "500": ("/v2/test/app/manifests/v1", lambda h: reply(
        h, 500, b'{"errors":[{"code":"UNKNOWN","message":"the disk is on fire"}]}'),
        "RegistryError", "HTTP 500 for manifest 'test/app:v1': UNKNOWN: the disk is on fire"),
    "500-text": ("/v2/test/app/manifests/v1", lambda h: reply(h, 500, b"<html>Internal Server Error</html>",
                                                              {"Content-Type": "text/html"}),
                 "RegistryError", "<html>Internal Server Error</html>"),
    "garbage-manifest": ("/v2/test/app/manifests/v1", lambda h: reply(h, 200, b"<html>welcome to the wifi</html>",
                                                                      {"Content-Type": "text/html"}),
                         "RegistryError", "answered garbage for manifest 'test/app:v1'"),
    "garbage-bytes": ("/v2/test/app/manifests/v1", _garbage_bytes, "RegistryError", "could not be read"),
    "500-on-a-blob": ("/v2/test/app/blobs/*", lambda h: reply(
        h, 500, b'{"errors":[{"code":"UNKNOWN","message":"blob storage down"}]}'),
        "RegistryError", "blob storage down"),
    "cut-blob": ("/v2/test/app/blobs/*", _cut_blob, "RegistryError", "broke off while reading config"),
}


@pytest.mark.parametrize("answer", list(ANSWERS))
async def test_a_registry_answering_badly_is_a_named_error(images_client: Client, fake_registry: FakeRegistry,
                                                           answer: str) -> None:
    route, handler, error, words = ANSWERS[answer]
    fake_registry.routes[route] = handler
    fake_registry.httpd.layout = fake_registry.layout  # type: ignore[attr-defined]
    await refused(images_client.pull_image(f"{fake_registry.host}/test/app:v1"), error, words)


async def test_a_registry_that_is_not_there_is_a_registry_error(images_client: Client) -> None:
    from tests.integration.images.conftest import free_port
    await refused(images_client.pull_image(f"127.0.0.1:{free_port()}/test/app:v1"), "RegistryError",
                  "Connection refused")


@pytest.mark.parametrize("reference,words", [("UPPER", "Invalid image reference"),
                                             ("app@sha256:1234", "is not a sha256 digest")])
async def test_a_bad_reference_is_invalid_argument(images_client: Client, reference: str, words: str) -> None:
    await refused(images_client.pull_image(reference), "InvalidArgument", words)


async def test_bad_import_arguments_are_invalid_argument(images_client: Client, busybox_tar: Path,
                                                         app_layout: Path) -> None:
    await refused(images_client.import_image("relative.tar", ""), "InvalidArgument", "not an absolute path")
    await refused(images_client.import_image(str(busybox_tar), "Bad Name"), "InvalidArgument", "Invalid image name")
    await refused(images_client.import_image(str(busybox_tar), "", {"bogus": Variant("s", "x")}), "InvalidArgument",
                  "Unknown option 'bogus'")
    await refused(images_client.import_image(str(app_layout), "", {"cmd": ["x"]}), "InvalidArgument",
                  "apply to rootfs tarballs only")
    await refused(images_client.import_image(str(busybox_tar), "", {"stop_signal": "SIGNOPE"}), "ImageInvalid",
                  "'SIGNOPE' is not a signal")


async def test_archives_that_are_not_what_they_claim(images_client: Client, app_archives: dict[str, Path],
                                                     tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar"
    cut.write_bytes(app_archives["docker-archive"].read_bytes()[:-3000])
    await refused(images_client.import_image(str(cut), ""), "ImageInvalid")
    manifest_only = tmp_path / "manifest-only.tar"
    with tarfile.open(manifest_only, "w") as tar:
        data = b'[{"Config": "x.json", "RepoTags": [], "Layers": ["l/layer.tar"]}]'
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        import io
        tar.addfile(info, io.BytesIO(data))
    await refused(images_client.import_image(str(manifest_only), ""), "ImageInvalid", "config 'x.json' is missing")
