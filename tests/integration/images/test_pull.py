"""PullImage from Debian's docker-registry on loopback (anonymous, basic auth, bearer tokens), images pushed with
skopeo: OCI and Docker schema 2 manifests, manifest lists, blobs skipped when stored, layers in parallel; a pull
cut short by a killed agent leaves no image and its retry downloads only what was missing."""
from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from quilt_agent.images import oci
from tests import imagetools
from tests.integration.conftest import systemctl
from tests.integration.images.conftest import (
    ERR, IMAGES, FakeRegistry, Registry, TokenServer, auth_file, store_tree,
)
from tests.integration.images.test_import import fields, run_logs
from tests.integration.waiting import until


def registry_digest(registry: Registry, repo: str, tag: str, accept: str = oci.OCI_MANIFEST) -> str:
    request = urllib.request.Request(f"http://{registry.host}/v2/{repo}/manifests/{tag}",
                                     headers={"Accept": ", ".join(oci.ACCEPTED)}, method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.headers["Docker-Content-Digest"]


async def test_pull_over_plain_http_on_loopback_oci_and_docker_manifests(
        images_client: Client, registry: Registry, app_layout: Path, name: str) -> None:
    oci_ref = registry.push(f"oci:{app_layout}:v1", "test/app:oci")
    docker_ref = registry.push(f"oci:{app_layout}:v1", "test/app:docker", "--format", "v2s2")
    oci_path = await images_client.pull_image(oci_ref)
    docker_path = await images_client.pull_image(docker_ref)
    # One config, so one image, with both names; Digest is the manifest last pulled, as the registry has it.
    assert oci_path == docker_path
    props = await images_client.image_properties(oci_path)
    assert props["Names"] == sorted([oci_ref, docker_ref])
    assert props["Digest"] == registry_digest(registry, "test/app", "docker")
    assert json.loads(props["Config"])["config"]["Entrypoint"] == ["/bin/app"]
    seen = fields(await run_logs(images_client, name, oci_ref, []))
    assert (seen["deleted"], seen["opt"], seen["srv"], seen["args"]) == ("absent", "now a file", "new", "from-cmd")


async def test_a_second_pull_downloads_no_blob_and_unpacks_nothing(images_client: Client, registry: Registry,
                                                                    app_layout: Path) -> None:
    ref = registry.push(f"oci:{app_layout}:v1", "test/again:v1")
    await images_client.pull_image(ref)
    before = len(registry.requests())
    progress = await images_client.watch_image_progress("again")
    started = time.monotonic()
    await images_client.pull_image(ref, {"job": "again"})
    took = time.monotonic() - started
    new = registry.requests()[before:]
    assert [r for r in new if "/blobs/" in r] == [], new
    phases = []
    while not progress.empty():
        phases.append(progress.get_nowait().phase.split()[0])
    assert set(phases) == {"resolving", "exists", "done"}, phases
    assert took < 1.0


async def test_layers_are_downloaded_in_parallel_and_reported(images_client: Client, app_layout: Path,
                                                              fake_registry: FakeRegistry) -> None:
    inflight, most = [0], [0]
    together = threading.Condition()
    deadline = time.monotonic() + 10

    def held_blob(h: BaseHTTPRequestHandler) -> None:
        # Each layer is held until a second download is in flight: one after the other, they never overlap (each
        # then waits out the one deadline, and most stays 1).
        with together:
            inflight[0] += 1
            most[0] = max(most[0], inflight[0])
            together.notify_all()
            together.wait_for(lambda: most[0] >= 2, timeout=max(0.0, deadline - time.monotonic()))
            inflight[0] -= 1
        fake_registry.serve(h)

    for layer in fake_registry.manifest()["layers"]:
        fake_registry.routes[f"/v2/test/app/blobs/{layer['digest']}"] = held_blob
    progress = await images_client.watch_image_progress("parallel")
    await images_client.pull_image(f"{fake_registry.host}/test/app:v1", {"job": "parallel"})
    assert most[0] >= 2, most
    downloads = []
    while not progress.empty():
        p = progress.get_nowait()
        if p.phase.startswith("downloading"):
            downloads.append(p)
    assert {p.phase.split()[1] for p in downloads} == {layer["digest"] for layer in fake_registry.manifest()["layers"]}
    assert all(p.total > 0 and p.done <= p.total for p in downloads)


async def test_a_manifest_list_gives_this_platforms_image(images_client: Client, registry: Registry,
                                                          tmp_path: Path, app_layout: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(app_layout, layout)
    here = oci.host_platform().architecture
    imagetools.oci_layout(layout, "other", [], ["--architecture=s390x"], base="v1")
    imagetools.image_index(layout, "multi", [("other", "linux", "s390x"), ("v1", "linux", here)])
    ref = registry.push(f"oci:{layout}:multi", "test/multi:v1", "--all")
    path = await images_client.pull_image(ref)
    assert (await images_client.image_properties(path))["Digest"] == imagetools.manifest_of(layout, "v1")[0]
    # Asked for by its digest, the list gives the same.
    list_digest = registry_digest(registry, "test/multi", "v1")
    assert await images_client.pull_image(f"{registry.host}/test/multi@{list_digest}") == path


async def test_the_platform_option_takes_another_architecture(images_client: Client, registry: Registry,
                                                              tmp_path: Path, app_layout: Path) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(app_layout, layout)
    imagetools.oci_layout(layout, "other", [], ["--architecture=s390x"], base="v1")
    imagetools.image_index(layout, "multi", [("other", "linux", "s390x")])
    ref = registry.push(f"oci:{layout}:multi", "test/s390x-only:v1", "--all")
    before = store_tree()
    with pytest.raises(ClientError) as err:
        await images_client.pull_image(ref)
    assert err.value.name == ERR + "NoSuchImage" and "it has linux/s390x" in err.value.message, err.value
    assert store_tree() == before
    path = await images_client.pull_image(ref, {"platform": "linux/s390x"})
    assert json.loads((await images_client.image_properties(path))["Config"])["architecture"] == "s390x"


async def test_basic_auth_with_credentials_from_an_auth_file(images_client: Client, basic_registry: Registry,
                                                             app_layout: Path, tmp_path: Path) -> None:
    ref = basic_registry.push(f"oci:{app_layout}:v1", "private/app:v1")
    before = store_tree()
    with pytest.raises(ClientError) as err:
        await images_client.pull_image(ref)
    assert err.value.name == ERR + "RegistryError", err.value
    assert "HTTP 401" in err.value.message and "UNAUTHORIZED" in err.value.message, err.value
    wrong = auth_file(tmp_path / "wrong.json", basic_registry.host, "alice", "nope")
    with pytest.raises(ClientError) as err:
        await images_client.pull_image(ref, {"auth_file": str(wrong)})
    assert err.value.name == ERR + "RegistryError" and "with the credentials of the auth file" in err.value.message
    assert store_tree() == before
    good = auth_file(tmp_path / "auth.json", basic_registry.host, "alice", "s3cret")
    path = await images_client.pull_image(ref, {"auth_file": str(good)})
    assert (await images_client.image_properties(path))["Names"] == [ref]


async def test_bearer_tokens_anonymous_and_with_credentials(images_client: Client,
                                                            token_registry: tuple[Registry, TokenServer],
                                                            app_layout: Path, tmp_path: Path) -> None:
    registry, tokens = token_registry
    public = registry.push(f"oci:{app_layout}:v1", "public/app:v1")
    private = registry.push(f"oci:{app_layout}:v1", "private/app:v1")
    tokens.asked.clear()
    assert await images_client.pull_image(public)
    assert ("", "repository:public/app:pull") in tokens.asked  # an anonymous token, for that repository
    before = store_tree()
    with pytest.raises(ClientError) as err:
        await images_client.pull_image(private)
    assert err.value.name == ERR + "RegistryError" and "UNAUTHORIZED" in err.value.message, err.value
    assert store_tree() == before
    creds = auth_file(tmp_path / "auth.json", registry.host, "bob", "t0ken")
    assert await images_client.pull_image(private, {"auth_file": str(creds)})
    assert ("bob", "repository:private/app:pull") in tokens.asked
    wrong = auth_file(tmp_path / "wrong.json", registry.host, "bob", "wrong")
    with pytest.raises(ClientError) as err:
        await images_client.pull_image(private, {"auth_file": str(wrong)})
    assert err.value.name == ERR + "RegistryError" and "Token server" in err.value.message, err.value


async def test_plain_http_is_only_for_the_registries_configured(images_client: Client, registry: Registry,
                                                                app_layout: Path) -> None:
    ref = registry.push(f"oci:{app_layout}:v1", "test/insecure:v1")
    conf = Path("/etc/quilt/registries.toml")
    conf.parent.mkdir(exist_ok=True)
    conf.write_text("insecure = []\n")
    try:
        with pytest.raises(ClientError) as err:
            await images_client.pull_image(ref)
        assert err.value.name == ERR + "RegistryError", err.value
        conf.write_text(f'insecure = ["{registry.host}"]\n')
        assert await images_client.pull_image(ref)
    finally:
        conf.unlink()


def stored(digest: str) -> bool:
    """The blob is in the image store: as a verified blob, or unpacked into a layer that records it."""
    hexdigest = digest.removeprefix("sha256:")
    if (IMAGES / "blobs" / "sha256" / hexdigest).exists():
        return True
    for meta in (IMAGES / "layers").glob("*.json"):
        try:
            if digest in json.loads(meta.read_text()).get("blobs", []):
                return True
        except (OSError, ValueError):
            pass  # replaced meanwhile: written by rename, read again at the next poll
    return False


async def test_a_pull_cut_short_leaves_no_image_and_its_retry_fetches_only_the_rest(
        images_client: Client, fake_registry: FakeRegistry) -> None:
    layers = [layer["digest"] for layer in fake_registry.manifest()["layers"]]
    last = layers[-1]
    entered, release = threading.Event(), threading.Event()

    def stuck(h: BaseHTTPRequestHandler) -> None:
        entered.set()
        release.wait(30)
        h.close_connection = True

    # Every layer but the last arrives; the last one hangs until the agent is killed.
    fake_registry.routes[f"/v2/test/app/blobs/{last}"] = stuck
    ref = f"{fake_registry.host}/test/app:v1"
    before = await images_client.list_images()
    pull = asyncio.ensure_future(images_client.pull_image(ref))
    assert await asyncio.to_thread(entered.wait, 20)
    # The kill comes once the config and every other layer are in the store (they are small).
    config = fake_registry.manifest()["config"]["digest"]
    await until(lambda: all(stored(d) for d in [config, *layers[:-1]]),
                "the config and the first layers never landed in the store", timeout=20)
    systemctl("kill", "-s", "KILL", "quilt-agent")
    with pytest.raises(ClientError):
        await pull
    release.set()
    del fake_registry.routes[f"/v2/test/app/blobs/{last}"]
    systemctl("start", "quilt-agent")
    async with Client() as fresh:
        assert await fresh.list_images() == before  # no half image
        fake_registry.seen.clear()
        path = await fresh.pull_image(ref)
        blobs = [p for p in fake_registry.seen if "/blobs/" in p]
        # The config and the layers stored before the kill are not fetched again.
        assert blobs == [f"/v2/test/app/blobs/{last}"], blobs
        assert len((await fresh.image_properties(path))["Layers"]) == len(layers)
