"""Pulling from a registry: the OCI distribution API v2, with urllib from the standard library.

GET /v2/<name>/manifests/<tag|digest> and /v2/<name>/blobs/<digest>; anonymous access, bearer tokens
(the WWW-Authenticate challenge flow) and basic credentials from a docker config.json-format file; image
indexes and manifest lists (linux and this host's architecture), Docker schema 2 and OCI manifests; layers
downloaded in parallel, each checked against its digest before it is kept, and skipped when the store has
its layer or its blob already. Plain HTTP only for the registries /etc/quilt/registries.toml names
(loopback addresses unless it says otherwise).

Blocking: the agent runs pull() in a worker thread, and it starts a few threads of its own for the layers.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import threading
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import Any, BinaryIO

from quilt_agent import __version__
from quilt_agent.errors import ImageInvalid, InvalidArgument, NoSuchImage, RegistryError
from quilt_agent.images import oci
from quilt_agent.images.reference import Reference
from quilt_agent.images.store import Image, ImageStore, Progress, Session

log = logging.getLogger("quilt.images")

CONFIG_FILE = Path(os.environ.get("QUILT_REGISTRIES_CONF", "/etc/quilt/registries.toml"))
DEFAULT_INSECURE = ("localhost", "127.0.0.0/8", "::1")
DEFAULT_AUTH_FILES = (Path("/etc/quilt/auth.json"), Path("/run/containers/0/auth.json"),
                      Path("/root/.docker/config.json"))
PARALLEL_LAYERS = 3  # as Docker's max-concurrent-downloads: a few, not one per layer
TIMEOUT = 60.0  # seconds without a byte before a request fails
_CHUNK = 1 << 20
_USER_AGENT = f"quilt/{__version__}"
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"|(\w+)=([^\s,]+)')


@dataclass(frozen=True)
class RegistryConfig:
    """/etc/quilt/registries.toml:

        insecure = ["localhost", "127.0.0.0/8", "::1", "registry.lan:5000"]   # may speak plain HTTP
        auth_file = "/etc/quilt/auth.json"                                     # docker config.json format
    """

    insecure: tuple[str, ...] = DEFAULT_INSECURE
    auth_files: tuple[Path, ...] = DEFAULT_AUTH_FILES

    @classmethod
    def load(cls, path: Path = CONFIG_FILE) -> RegistryConfig:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (tomllib.TOMLDecodeError, OSError) as e:
            raise InvalidArgument(f"Cannot read {path}: {e}") from None
        insecure = data.get("insecure", list(DEFAULT_INSECURE))
        auth = data.get("auth_file")
        if not isinstance(insecure, list) or not all(isinstance(x, str) for x in insecure):
            raise InvalidArgument(f"{path}: insecure must be a list of registry names")
        if auth is not None and not isinstance(auth, str):
            raise InvalidArgument(f"{path}: auth_file must be a path")
        return cls(tuple(insecure), (Path(auth),) if auth else DEFAULT_AUTH_FILES)

    def allows_http(self, host_port: str) -> bool:
        host, port = _split_host(host_port)
        for entry in self.insecure:
            if entry in (host_port, host):
                return True
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        return False


def _split_host(host_port: str) -> tuple[str, str]:
    if host_port.startswith("["):
        host, _, rest = host_port[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = host_port.partition(":")
    return host, port


@dataclass(frozen=True)
class PullOptions:
    platform: oci.Platform | None = None
    auth_file: Path | None = None


def credentials(registry: str, files: tuple[Path, ...]) -> tuple[str, str] | None:
    """(user, password) for registry from the first auth file that names it (docker config.json format:
    {"auths": {"host[:port]": {"auth": base64("user:password")}}})."""
    keys = {registry, f"https://{registry}", f"http://{registry}"}
    if registry in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        keys |= {"docker.io", "index.docker.io", "https://index.docker.io/v1/", "registry-1.docker.io"}
    for path in files:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (ValueError, OSError) as e:
            raise InvalidArgument(f"Cannot read the auth file {path}: {e}") from None
        auths = data.get("auths") if isinstance(data, dict) else None
        if not isinstance(auths, dict):
            continue
        for key, entry in auths.items():
            if key.rstrip("/") not in keys and key not in keys or not isinstance(entry, dict):
                continue
            if isinstance(entry.get("auth"), str) and entry["auth"]:
                try:
                    user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise InvalidArgument(f"Auth file {path}: the auth of '{key}' is not base64 of user:password")
                if sep:
                    return user, password
            if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
                return entry["username"], entry["password"]
    return None


class _KeepAuthOff(urllib.request.HTTPRedirectHandler):
    """Redirects only to http(s). Authorization is sent as an unredirected header, so that a blob's redirect
    to a storage host never carries the registry's credentials."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise RegistryError(f"Registry redirected to '{newurl}', which is not HTTP")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Registry:
    """One repository of one registry, for one pull."""

    def __init__(self, ref: Reference, config: RegistryConfig, auth_files: tuple[Path, ...]) -> None:
        self.ref = ref
        self.host = ref.endpoint
        self._config = config
        self._creds = credentials(ref.registry, auth_files)
        self._scheme = "https"
        self._checked_scheme = False
        self._authorization = ""
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_KeepAuthOff())

    # --- what a pull asks ----------------------------------------------------------------------

    def manifest(self, ref: str) -> tuple[bytes, str]:
        """The manifest (or index) for a tag or digest, and its media type, checked against the digest when
        asked by one, and against what the registry says its digest is."""
        what = f"manifest '{self.ref.repository}:{ref}'" if not ref.startswith("sha256:") else f"manifest {ref}"
        with self._get(f"manifests/{ref}", accept=", ".join(oci.ACCEPTED), what=what) as resp:
            data = _read_limited(resp, oci.MAX_MANIFEST, what)
            media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
            said = resp.headers.get("Docker-Content-Digest") or ""
        actual = oci.sha256(data)
        if ref.startswith("sha256:") and actual != ref:
            raise ImageInvalid(f"Image '{self.ref}' is invalid: the registry's {what} does not match its digest: "
                               f"expected {ref}, got {actual}")
        if said.startswith("sha256:") and said != actual:
            raise ImageInvalid(f"Image '{self.ref}' is invalid: the registry's {what} does not match its digest: "
                               f"the registry says {said}, it is {actual}")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict):
            raise RegistryError(f"Registry {self.host} answered garbage for {what}: not a JSON document "
                                f"(Content-Type '{media_type or 'none'}', {len(data)} bytes: {_excerpt(data)})")
        return data, media_type if media_type in oci.ACCEPTED else ""

    def blob_bytes(self, digest: str, limit: int, what: str) -> bytes:
        with self._get(f"blobs/{digest}", what=f"{what} {digest}") as resp:
            data = _read_limited(resp, limit, f"{what} {digest}")
        return oci.verify(data, digest, f"{what} of '{self.ref}'")

    def blob_to(self, digest: str, size: int, sink: BinaryIO, progress: Progress, stop: threading.Event) -> None:
        """Write blob digest (size bytes, as the manifest says) into sink, checking both."""
        h = hashlib.sha256()
        got = 0
        phase = f"downloading {digest}"
        progress(phase, 0, size)
        with self._get(f"blobs/{digest}", what=f"layer {digest}") as resp:
            while chunk := _read(resp, _CHUNK, self.host):
                if stop.is_set():
                    raise _Stopped()
                got += len(chunk)
                if got > size:
                    raise ImageInvalid(f"Image '{self.ref}' is invalid: layer {digest} is longer than the "
                                       f"{size} bytes its manifest says")
                h.update(chunk)
                sink.write(chunk)
                progress(phase, got, size)
            _complete(resp, got, f"layer {digest}")
        if got < size:
            raise ImageInvalid(f"Image '{self.ref}' is invalid: layer {digest} is truncated: the registry sent "
                               f"{got} of {size} bytes")
        if "sha256:" + h.hexdigest() != digest:
            raise ImageInvalid(f"Image '{self.ref}' is invalid: layer {digest} does not match its digest: got "
                               f"sha256:{h.hexdigest()}")

    # --- HTTP ----------------------------------------------------------------------------------

    def _get(self, path: str, what: str, accept: str = "") -> HTTPResponse:
        """GET /v2/<repository>/<path>, authenticating when challenged; errors as the core's."""
        self._choose_scheme()
        for attempt in range(3):
            url = f"{self._scheme}://{self.host}/v2/{self.ref.repository}/{path}"
            request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
            if accept:
                request.add_header("Accept", accept)
            with self._lock:
                authorization = self._authorization
            if authorization:
                request.add_unredirected_header("Authorization", authorization)
            try:
                return self._opener.open(request, timeout=TIMEOUT)
            except urllib.error.HTTPError as e:
                body = _read_error(e)
                if e.code == 401 and attempt < 2:
                    challenge = e.headers.get("WWW-Authenticate", "")
                    if self._authenticate(challenge, authorization, body):
                        continue
                raise self._error(e.code, body, what) from None
            except (urllib.error.URLError, HTTPException, OSError) as e:
                raise RegistryError(f"Registry {self.host} could not be read for {what}: {_reason(e)}") from None
        raise RegistryError(f"Registry {self.host} keeps asking to authenticate for {what}")

    def _choose_scheme(self) -> None:
        """HTTPS, or plain HTTP for a registry the configuration allows that does not speak TLS."""
        with self._lock:
            if self._checked_scheme:
                return
            self._checked_scheme = True
        if not self._config.allows_http(self.host):
            return
        try:
            with socket.create_connection(_address(self.host, 443), timeout=10) as sock:
                with ssl.create_default_context().wrap_socket(sock, server_hostname=_split_host(self.host)[0]):
                    return
        except ssl.SSLCertVerificationError:
            return  # TLS it is; the request will fail naming the certificate problem
        except (ssl.SSLError, ConnectionResetError, OSError):
            self._scheme = "http"
            log.info("Registry %s does not speak TLS: using plain HTTP, as configured", self.host)

    def _authenticate(self, challenge: str, tried: str, body: str) -> bool:
        """Answer a 401's challenge: fetch a bearer token, or use basic credentials. False when there is
        nothing (more) to try."""
        scheme, _, params = challenge.partition(" ")
        fields = {m.group(1) or m.group(3): m.group(2) if m.group(1) else m.group(4)
                  for m in _CHALLENGE.finditer(params)}
        if scheme.lower() == "basic":
            if self._creds is None:
                return False
            value = "Basic " + base64.b64encode(f"{self._creds[0]}:{self._creds[1]}".encode()).decode()
        elif scheme.lower() == "bearer" and fields.get("realm"):
            value = "Bearer " + self._token(fields)
        else:
            return False
        if value == tried:
            return False  # the same answer again would be refused again
        with self._lock:
            self._authorization = value
        return True

    def _token(self, fields: dict[str, str]) -> str:
        realm = fields["realm"]
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("http", "https") or (parts.scheme == "http"
                                                      and not self._config.allows_http(parts.netloc)):
            raise RegistryError(f"Registry {self.host} sends clients for tokens to '{realm}', which is not HTTPS")
        query = {"service": fields.get("service", ""),
                 "scope": fields.get("scope") or f"repository:{self.ref.repository}:pull"}
        url = realm + ("&" if parts.query else "?") + urllib.parse.urlencode({k: v for k, v in query.items() if v})
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        if self._creds is not None:
            request.add_unredirected_header(
                "Authorization", "Basic " + base64.b64encode(f"{self._creds[0]}:{self._creds[1]}".encode()).decode())
        try:
            with self._opener.open(request, timeout=TIMEOUT) as resp:
                data = json.loads(_read_limited(resp, 1 << 20, "token"))
        except urllib.error.HTTPError as e:
            raise RegistryError(f"Token server {parts.netloc} refused a token for '{self.ref}' (HTTP {e.code}): "
                                f"{_message(_read_error(e))}") from None
        except (urllib.error.URLError, HTTPException, OSError) as e:
            raise RegistryError(f"Token server {parts.netloc} could not be read: {_reason(e)}") from None
        except ValueError:
            raise RegistryError(f"Token server {parts.netloc} answered garbage, not a JSON token") from None
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"Token server {parts.netloc} answered without a token")
        return token

    def _error(self, code: int, body: str, what: str) -> Exception:
        said = _message(body)
        if code == 404 and what.startswith("manifest"):
            return NoSuchImage(f"No image '{self.ref}' in registry {self.host} (HTTP 404): {said}")
        if code == 404:
            # The manifest names a blob the registry does not have: the image, as served, is broken.
            return ImageInvalid(f"Image '{self.ref}' is invalid: its {what} is missing from registry {self.host} "
                                f"(HTTP 404): {said}")
        if code in (401, 403):
            how = "with the credentials of the auth file" if self._creds else "without credentials"
            return RegistryError(f"Registry {self.host} refused access to {what} {how} (HTTP {code}): {said}")
        return RegistryError(f"Registry {self.host} answered HTTP {code} for {what}: {said}")


class _Stopped(Exception):
    """Another layer failed: this one stops too."""


def _address(host_port: str, default_port: int) -> tuple[str, int]:
    host, port = _split_host(host_port)
    return host, int(port) if port else default_port


def _read(resp: HTTPResponse, n: int, host: str) -> bytes:
    try:
        return resp.read(n)
    except (HTTPException, OSError) as e:
        raise RegistryError(f"Registry {host} broke off: {_reason(e)}") from None


def _read_limited(resp: HTTPResponse, limit: int, what: str) -> bytes:
    try:
        data = resp.read(limit + 1)
    except (HTTPException, OSError) as e:
        raise RegistryError(f"Reading {what} failed: {_reason(e)}") from None
    if len(data) > limit:
        raise ImageInvalid(f"{what} is more than {limit} bytes")
    _complete(resp, len(data), what)
    return data


def _complete(resp: HTTPResponse, got: int, what: str) -> None:
    """A response that ended before its Content-Length: the connection broke, the content is not to blame."""
    missing = getattr(resp, "length", None)
    if missing:
        raise RegistryError(f"The connection broke off while reading {what}: {got} of {got + missing} bytes came")


def _read_error(e: urllib.error.HTTPError) -> str:
    """The error's body; the response is closed, so that its connection goes with it."""
    try:
        return e.read(64 << 10).decode(errors="replace")
    except (HTTPException, OSError):
        return ""
    finally:
        e.close()


def _message(body: str) -> str:
    """The registry's own words: its errors array (CODE: message), else the start of its body."""
    try:
        errors = json.loads(body).get("errors")
        said = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors
                         if isinstance(e, dict))
        if said:
            return said
    except (ValueError, AttributeError, TypeError):
        pass
    return _excerpt(body.encode()) or "no message"


def _excerpt(data: bytes) -> str:
    """The start of what a registry sent, as one printable line (it may be anything at all)."""
    text = "".join(c if c.isprintable() else " " for c in data[:200].decode(errors="replace"))
    return " ".join(text.split()) + ("..." if len(data) > 200 else "")


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    text = str(reason) or type(reason).__name__
    if isinstance(reason, HTTPException):
        text = f"{type(reason).__name__}: {text}"  # BadStatusLine's text is the line alone
    return _excerpt(text.encode(errors="replace"))


def pull(store: ImageStore, ref: Reference, options: PullOptions, progress: Progress,
         config: RegistryConfig | None = None, owner_uid: int = 0) -> Image:
    """Pull ref into store and name it; the same image again downloads and unpacks nothing."""
    config = config or RegistryConfig.load()
    auth_files = (options.auth_file,) if options.auth_file else config.auth_files
    registry = Registry(ref, config, auth_files)
    want = options.platform or oci.host_platform()
    progress(f"resolving {ref}", 0, 0)
    data, media_type = registry.manifest(ref.manifest_ref)
    digest = oci.sha256(data)
    if oci.is_index(data, media_type):
        try:
            index = oci.parse_index(data, f"index of '{ref}'", media_type)
        except ImageInvalid as e:
            raise ImageInvalid(f"Image '{ref}' is invalid: {e}") from None
        chosen = oci.choose(index, want, f"'{ref}'")
        data, media_type = registry.manifest(chosen.digest)
        digest = chosen.digest
        single = False
    else:
        single = True
    try:
        manifest = oci.parse_manifest(data, f"manifest {digest}", media_type)
    except ImageInvalid as e:
        raise ImageInvalid(f"Image '{ref}' is invalid: {e}") from None
    with store.session(owner_uid) as s:
        config_bytes = _config(store, s, registry, manifest.config.digest)
        try:
            image_config = oci.parse_config(config_bytes, f"config {manifest.config.digest}")
        except ImageInvalid as e:
            raise ImageInvalid(f"Image '{ref}' is invalid: {e}") from None
        if len(image_config.diff_ids) != len(manifest.layers):
            raise ImageInvalid(f"Image '{ref}' is invalid: the manifest has {len(manifest.layers)} layers, the "
                               f"config {len(image_config.diff_ids)} DiffIDs")
        if single and image_config.platform is not None and not want.matches(image_config.platform):
            hint = "" if options.platform else " (the 'platform' option takes it anyway)"
            raise NoSuchImage(f"No image for {want} in '{ref}': it is for {image_config.platform}{hint}")
        _layers(store, s, registry, manifest, image_config, progress)
        names = [str(ref)]
        image = store.commit(s, data, config_bytes, list(image_config.diff_ids), names, str(ref), want)
    log.info("Pulled %s: image %s, manifest %s", ref, image.id[:12], digest)
    return image


def _config(store: ImageStore, s: Session, registry: Registry, digest: str) -> bytes:
    loc = store.blob_location(s, digest)
    if loc is not None:
        with open(loc.path, "rb") as f:
            data = f.read(oci.MAX_CONFIG + 1)
        if oci.sha256(data) == digest:
            return data
    data = registry.blob_bytes(digest, oci.MAX_CONFIG, "config")
    store.keep_blob(s, digest, data)
    return data


def _layers(store: ImageStore, s: Session, registry: Registry, manifest: oci.Manifest,
            config: oci.ImageConfig, progress: Progress) -> None:
    stop = threading.Event()
    todo = [(d, diff_id) for d, diff_id in zip(manifest.layers, config.diff_ids)]
    with ThreadPoolExecutor(max_workers=PARALLEL_LAYERS, thread_name_prefix="quilt-pull") as pool:
        futures = [pool.submit(_layer, store, s, registry, d, diff_id, progress, stop) for d, diff_id in todo]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            stop.set()
            for f in pending:
                f.cancel()
            wait(futures)
            real = [f.exception() for f in futures if f.done() and not f.cancelled()
                    and f.exception() is not None and not isinstance(f.exception(), _Stopped)]
            raise real[0] if real else failed[0].exception()  # type: ignore[misc]


def _layer(store: ImageStore, s: Session, registry: Registry, desc: oci.Descriptor, diff_id: str,
           progress: Progress, stop: threading.Event) -> None:
    if store.has_layer(s, diff_id):
        progress(f"exists {desc.digest}", desc.size, desc.size)
        return
    loc = store.blob_location(s, desc.digest)
    if loc is None or loc.size != desc.size:
        work = store.work_file(".blob")
        try:
            with open(work, "wb") as sink:
                registry.blob_to(desc.digest, desc.size, sink, progress, stop)
                sink.flush()
                os.fsync(sink.fileno())
            loc = store.add_blob(s, work, desc.digest)
        finally:
            work.unlink(missing_ok=True)
    if stop.is_set():
        raise _Stopped()
    store.ensure_layer(s, loc, label=f"{registry.ref}, layer {desc.digest}", digest=desc.digest, diff_id=diff_id,
                       progress=progress)
    store.drop_blob(desc.digest)


