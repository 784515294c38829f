"""What the image tests share: test images built with umoci, Debian's docker-registry started on loopback inside
the test host (anonymous, with htpasswd basic auth, or with bearer tokens from a token server run here), a fake
registry for the answers a real one does not give on demand (500, garbage, a cut blob, a slow blob), and a
snapshot of the image store to compare before and after."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from quilt_agent.client import Client
from tests import imagetools
from tests.integration.cleanup import IMAGE_GONE, Cleanup
from tests.packageindex import access_log_requests, wait_listening

IMAGES = Path("/var/lib/quilt/images")
ERR = "org.quilt.Runtime.Error."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store_tree() -> dict[str, int]:
    """Every path of the image store but its scratch directory, with its mode."""
    out = {}
    for directory, dirs, files in os.walk(IMAGES):
        for name in (*dirs, *files):
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, IMAGES)
            if rel != "tmp" and not rel.startswith("tmp/"):
                out[rel] = os.lstat(path).st_mode
    return out


@pytest.fixture
async def images_client(client: Client) -> AsyncIterator[Client]:
    """The client fixture; after the test, the images it made are removed (with their containers)."""
    before = {e.id for e in await client.list_images()}
    yield client
    cleanup = Cleanup("images_client")
    await cleanup.attempt("list images", remove_new_images(client, before, cleanup))
    cleanup.report()


async def remove_new_images(client: Client, before: set[str], cleanup: Cleanup) -> None:
    """Remove (with their containers) the images not in before; what stays is a failure of cleanup."""
    for entry in await client.list_images():
        if entry.id not in before:
            await cleanup.attempt(f"remove image {entry.id[:12]}", client.remove_image(entry.id, True), IMAGE_GONE)
    cleanup.left("images", [e.id[:12] for e in await client.list_images() if e.id not in before])


# --- test images ---------------------------------------------------------------------------------


def _app_steps() -> list[imagetools.Step]:
    def app(rootfs: Path) -> None:
        (rootfs / "srv/old").parent.mkdir(parents=True, exist_ok=True)
        (rootfs / "srv/old").write_text("hidden by the opaque layer\n")
        (rootfs / "work").mkdir()
        os.chown(rootfs / "work", 1000, 1000)
        # Prints what the tests look at; traps the image's stop signal to show it is the one sent.
        (rootfs / "bin/app").write_text(
            "#!/bin/sh\n"
            "trap 'echo got-usr1; exit 7' USR1\n"
            "echo cwd=$(pwd) uid=$(id -u) A=$A B=$B args=\"$*\"\n"
            "[ -e /etc/deleted ] && echo deleted=present || echo deleted=absent\n"
            "echo opt=$(cat /opt/dir 2>&1)\n"
            "echo srv=$(ls /srv | tr '\\n' ' ')\n"
            "[ \"$1\" = wait ] && { while :; do sleep 0.1; done; }\n"
            "exit 0\n")
        os.chmod(rootfs / "bin/app", 0o755)

    return [*imagetools.whiteout_steps(), app]


APP_CONFIG = ["--config.entrypoint=/bin/app", "--config.cmd=from-cmd", "--config.env=A=from-image",
              "--config.env=B=image-b", "--config.workingdir=/work", "--config.user=1000",
              "--config.stopsignal=SIGUSR1", "--config.label=org.example.role=test"]


@pytest.fixture(scope="session")
def app_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout, tag v1: busybox; files; a file deleted and a directory replaced (umoci's whiteouts);
    /bin/app and /srv/old; then a raw layer making /srv opaque. Entrypoint /bin/app, Cmd from-cmd, Env, WorkingDir
    /work, User 1000, StopSignal SIGUSR1, a label."""
    root = tmp_path_factory.mktemp("app")
    return imagetools.oci_layout(root / "layout", "v1", _app_steps(), APP_CONFIG, [imagetools.opaque_layer()])


@pytest.fixture(scope="session")
def app_archives(app_layout: Path) -> dict[str, Path]:
    """The app image as oci-archive, docker-archive (skopeo) and the layout itself."""
    out = {"oci-dir": app_layout}
    imagetools.copy(f"oci:{app_layout}:v1", f"oci-archive:{app_layout.parent}/app-oci.tar")
    imagetools.copy(f"oci:{app_layout}:v1", f"docker-archive:{app_layout.parent}/app-docker.tar:test/app:v1")
    out["oci-archive"] = app_layout.parent / "app-oci.tar"
    out["docker-archive"] = app_layout.parent / "app-docker.tar"
    return out


# --- a real registry -----------------------------------------------------------------------------


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log: Path
    creds: tuple[str, str] | None = None

    def push(self, source: str, repo: str, *flags: str) -> str:
        """skopeo copy source (e.g. oci:DIR:TAG) to repo:tag here; returns the reference."""
        dest = f"{self.host}/{repo}"
        creds = ["--dest-creds", f"{self.creds[0]}:{self.creds[1]}"] if self.creds else []
        imagetools.copy(source, f"docker://{dest}", "--dest-tls-verify=false", *creds, *flags)
        return dest

    def requests(self) -> list[str]:
        """The request lines of the access log so far, e.g. 'GET /v2/test/app/blobs/sha256:...'."""
        return access_log_requests(self.log)


def start_registry(directory: Path, auth: dict | None = None, creds: tuple[str, str] | None = None) -> Registry:
    port = free_port()
    config = {"version": 0.1, "log": {"level": "warn", "accesslog": {"disabled": False}},
              "storage": {"filesystem": {"rootdirectory": str(directory / "data")}, "delete": {"enabled": True}},
              "http": {"addr": f"127.0.0.1:{port}", "secret": "quilt-test"}}
    if auth:
        config["auth"] = auth
    (directory / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    log = directory / "registry.log"
    process = subprocess.Popen(["docker-registry", "serve", str(directory / "config.yml")],
                               stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    wait_listening(port, process, log, "docker-registry")
    return Registry(f"127.0.0.1:{port}", process, log, creds)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry on loopback, anonymous."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    stop(reg.process)


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry on loopback with htpasswd basic auth: alice / s3cret."""
    d = tmp_path_factory.mktemp("basic-registry")
    htpasswd = subprocess.run(["htpasswd", "-Bbn", "alice", "s3cret"], capture_output=True, text=True, check=True)
    (d / "htpasswd").write_text(htpasswd.stdout)
    reg = start_registry(d, {"htpasswd": {"realm": "quilt-test", "path": str(d / "htpasswd")}}, ("alice", "s3cret"))
    yield reg
    stop(reg.process)


def auth_file(path: Path, registry: str, user: str, password: str) -> Path:
    path.write_text(json.dumps({"auths": {registry: {"auth": base64.b64encode(f"{user}:{password}".encode())
                                                     .decode()}}}))
    return path


# --- bearer tokens: a token server here, trusted by the registry ----------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The token endpoint of the distribution spec's auth flow: GET ?service=&scope= (with basic credentials
    when the client has them) -> {"token": JWT}. JWTs are RS256, signed by openssl with a key whose self-signed
    certificate the registry trusts (rootcertbundle), and carry it in their x5c header."""

    def __init__(self, directory: Path, users: dict[str, str]) -> None:
        self.key, self.cert = directory / "key.pem", directory / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=quilt-test-token"],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.users = users
        self.asked: list[tuple[str, str]] = []  # (user or "", scope)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                user = ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                    if server.users.get(user) != password:
                        self.send_response(401)
                        self.end_headers()
                        self.wfile.write(b'{"details": "wrong password"}')
                        return
                server.asked.append((user, query.get("scope", "")))
                token = server.token(query.get("service", ""), query.get("scope", ""), user)
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, service: str, scope: str, user: str) -> str:
        # Anonymous callers may pull the public/ repositories only; users anything they ask.
        access = []
        if scope.startswith("repository:"):
            _, name, actions = scope.split(":", 2)
            if user or name.startswith("public/"):
                access.append({"type": "repository", "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        claims = {"iss": "quilt-test-issuer", "sub": user, "aud": service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": hashlib.sha1(os.urandom(8)).hexdigest(), "access": access}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(),
                                   capture_output=True, check=True).stdout
        return f"{signing}.{_b64url(signature)}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenServer]]:
    """docker-registry with bearer-token auth from a TokenServer; user bob / t0ken may push and pull anything,
    anonymous callers pull public/*."""
    d = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(d, {"bob": "t0ken"})
    reg = start_registry(d, {"token": {"realm": tokens.url, "service": "quilt-test-registry",
                                       "issuer": "quilt-test-issuer", "rootcertbundle": str(tokens.cert)}},
                         ("bob", "t0ken"))
    yield reg, tokens
    stop(reg.process)
    tokens.close()


# --- a fake registry -----------------------------------------------------------------------------


Handler = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class FakeRegistry:
    """Serves the blobs and manifests of an OCI layout as a registry would (repository 'test/app', any tag
    names the layout's v1), unless `routes` says otherwise for a path: a callable that answers by itself."""

    layout: Path
    routes: dict[str, Handler] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    host: str = ""

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                fake.seen.append(self.path)
                route = fake.routes.get(self.path) or next(
                    (h for p, h in fake.routes.items() if p.endswith("*") and self.path.startswith(p[:-1])), None)
                if route is not None:
                    route(self)
                    return
                fake.serve(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def manifest_digest(self) -> str:
        return imagetools.manifest_of(self.layout, "v1")[0]

    def manifest(self) -> dict:
        return imagetools.manifest_of(self.layout, "v1")[1]

    def serve(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        if path == "/v2/":
            reply(h, 200, b"{}")
        elif path.startswith("/v2/test/app/manifests/"):
            ref = path.rsplit("/", 1)[1]
            digest = ref if ref.startswith("sha256:") else self.manifest_digest()
            blob = imagetools.blob(self.layout, digest)
            if not blob.exists():
                reply(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
                return
            data = blob.read_bytes()
            media = json.loads(data).get("mediaType") or "application/vnd.oci.image.manifest.v1+json"
            reply(h, 200, data, {"Content-Type": media, "Docker-Content-Digest": digest})
        elif path.startswith("/v2/test/app/blobs/"):
            blob = imagetools.blob(self.layout, path.rsplit("/", 1)[1])
            if not blob.exists():
                reply(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}')
                return
            reply(h, 200, blob.read_bytes(), {"Content-Type": "application/octet-stream"})
        else:
            reply(h, 404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}')

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(h: BaseHTTPRequestHandler, code: int, body: bytes, headers: dict[str, str] | None = None,
          length: int | None = None) -> None:
    h.send_response(code)
    for key, value in (headers or {"Content-Type": "application/json"}).items():
        h.send_header(key, value)
    h.send_header("Content-Length", str(len(body) if length is None else length))
    h.end_headers()
    h.wfile.write(body)


@pytest.fixture
def fake_registry(app_layout: Path) -> Iterator[FakeRegistry]:
    fake = FakeRegistry(app_layout)
    yield fake
    fake.close()
