"""The OCI image format (and Docker's schema 2, its twin): digests, descriptors, manifests, indexes, configs,
platforms, and what a config says a container should run with.

Pure functions over bytes and dicts: no files, no network. Everything read from outside is checked here, and
what is wrong is an ImageInvalid that says which document and which field.
"""
from __future__ import annotations

import hashlib
import json
import platform as _platform
import re
import signal
from dataclasses import dataclass, field
from typing import Any

from quilt_agent import health
from quilt_agent.errors import ImageInvalid, InvalidArgument, NoSuchImage

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# What a registry is asked for, in order of preference (the Accept header of a manifest GET).
ACCEPTED = (OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
# The media type of a layer as the content's compression (found by reading it) names it.
LAYER_TYPES = {"none": OCI_LAYER, "gzip": OCI_LAYER + "+gzip", "zstd": OCI_LAYER + "+zstd",
               "xz": OCI_LAYER + "+xz", "bzip2": OCI_LAYER + "+bzip2"}

# Manifests and configs are read whole into memory: bound them (containerd allows 4 MiB for a manifest).
MAX_MANIFEST = 4 << 20
MAX_CONFIG = 16 << 20

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
_ANY_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")
# platform.machine() -> GOARCH (and variant), the names images use.
_ARCHES = {"x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
           "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", ""), "i386": ("386", ""),
           "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
           "mips64": ("mips64le", "")}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: Any, what: str) -> str:
    """digest if it is a sha256 digest; other algorithms are refused by name (the store keeps sha256 only)."""
    if isinstance(digest, str) and _DIGEST.match(digest):
        return digest
    if isinstance(digest, str) and _ANY_DIGEST.match(digest) and not digest.startswith("sha256:"):
        raise ImageInvalid(f"{what}: digest '{digest}' uses an algorithm Quilt does not support (only sha256)")
    raise ImageInvalid(f"{what}: '{digest}' is not a valid sha256 digest")


def verify(data: bytes, digest: str, what: str) -> bytes:
    """data, if its sha256 is digest; else ImageInvalid naming both."""
    actual = sha256(data)
    if actual != digest:
        raise ImageInvalid(f"{what} does not match its digest: expected {digest}, got {actual}")
    return data


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes Quilt writes for a document it makes itself: stable, so the same content has the same digest."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise ValueError(f"Invalid platform '{text}': expected os/arch[/variant], e.g. linux/arm64")
        return cls(*parts)

    def matches(self, other: Platform) -> bool:
        """Whether an image made for `other` runs here. An image without a variant fits every variant, and
        arm64's only variant, v8, is the same as none."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        mine, theirs = ("" if v == "v8" and self.architecture == "arm64" else v
                        for v in (self.variant, other.variant))
        return not theirs or not mine or mine == theirs


def host_platform() -> Platform:
    machine = _platform.machine()
    arch, variant = _ARCHES.get(machine, (machine, ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


def descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise ImageInvalid(f"{what} is not a descriptor object")
    media_type = raw.get("mediaType", "")
    size = raw.get("size")
    if not isinstance(media_type, str):
        raise ImageInvalid(f"{what}: mediaType is not a string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageInvalid(f"{what}: size {size!r} is not a byte count")
    plat = raw.get("platform")
    parsed: Platform | None = None
    if plat is not None:
        if not isinstance(plat, dict) or not isinstance(plat.get("os"), str) \
                or not isinstance(plat.get("architecture"), str):
            raise ImageInvalid(f"{what}: platform has no os and architecture")
        parsed = Platform(plat["os"], plat["architecture"], str(plat.get("variant") or ""))
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise ImageInvalid(f"{what}: annotations are not a map of strings")
    return Descriptor(media_type, check_digest(raw.get("digest"), what), size, parsed, annotations)


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageInvalid(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ImageInvalid(f"{what} is not a JSON object")
    return doc


def media_type_of(doc: dict[str, Any], given: str = "") -> str:
    """A manifest's or index's media type: its own field, else the one it was served or described with, else
    what its shape says (OCI allows leaving mediaType out)."""
    own = doc.get("mediaType")
    if isinstance(own, str) and own:
        return own
    if given:
        return given
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[0]
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def parse_index(data: bytes, what: str, given_type: str = "") -> Index:
    doc = parse_json(data, what)
    media_type = media_type_of(doc, given_type)
    if media_type not in INDEX_TYPES:
        raise ImageInvalid(f"{what} has media type '{media_type}', not an image index")
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ImageInvalid(f"{what} has no list of manifests")
    return Index(media_type, tuple(descriptor(m, f"{what}, manifest {i}") for i, m in enumerate(entries)))


def parse_manifest(data: bytes, what: str, given_type: str = "") -> Manifest:
    doc = parse_json(data, what)
    media_type = media_type_of(doc, given_type)
    if media_type in DOCKER_SCHEMA1:
        raise ImageInvalid(f"{what} is a Docker schema 1 manifest, which Quilt does not support "
                           "(push the image again with a current tool)")
    if media_type not in MANIFEST_TYPES:
        raise ImageInvalid(f"{what} has media type '{media_type}', not an image manifest")
    if doc.get("schemaVersion") != 2:
        raise ImageInvalid(f"{what} has schemaVersion {doc.get('schemaVersion')!r}, not 2")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ImageInvalid(f"{what} has no list of layers")
    return Manifest(media_type, descriptor(doc.get("config"), f"{what}, config"),
                    tuple(descriptor(layer, f"{what}, layer {i}") for i, layer in enumerate(layers)))


def is_index(data: bytes, given_type: str = "") -> bool:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and media_type_of(doc, given_type) in INDEX_TYPES


def choose(index: Index, want: Platform, what: str) -> Descriptor:
    """The manifest of the index for platform `want`, as podman picks it: the first that fits."""
    images = [m for m in index.manifests if m.media_type not in INDEX_TYPES or m.platform]
    for m in images:
        if m.platform is not None and want.matches(m.platform):
            return m
    has = sorted({str(m.platform) for m in images if m.platform and m.platform.os != "unknown"})
    raise NoSuchImage(f"No image for {want} in {what}: it has {', '.join(has) if has else 'no platforms named'}")


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config that matter here, checked."""

    diff_ids: tuple[str, ...]
    platform: Platform | None
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    health: dict[str, Any] = field(default_factory=dict)  # Healthcheck as container spec fields (health.py)
    exposed_ports: tuple[str, ...] = ()  # ExposedPorts as "PORT/PROTO" (tcp, udp): what publish_all publishes

    def command(self, given: tuple[str, ...]) -> tuple[str, ...]:
        """The command a container runs: as Docker, a command given at create replaces Cmd, not Entrypoint."""
        return self.entrypoint + (given or self.cmd)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageInvalid(f"{what} is not a list of strings")
    return tuple(value)


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageInvalid(f"{what} is not a string")
    return value


def parse_config(data: bytes, what: str = "image config") -> ImageConfig:
    doc = parse_json(data, what)
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageInvalid(f"{what} has no rootfs of type 'layers'")
    diff_ids = tuple(check_digest(d, f"{what}, rootfs.diff_ids") for d in _strings(rootfs.get("diff_ids"),
                                                                                   f"{what} rootfs.diff_ids"))
    plat = None
    if isinstance(doc.get("os"), str) and isinstance(doc.get("architecture"), str):
        plat = Platform(doc["os"], doc["architecture"], str(doc.get("variant") or ""))
    run = doc.get("config") or {}
    if not isinstance(run, dict):
        raise ImageInvalid(f"{what}: config is not an object")
    labels = run.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ImageInvalid(f"{what}: Labels is not a map of strings")
    stop_signal = _string(run.get("StopSignal"), f"{what}: StopSignal")
    if stop_signal:
        parse_signal(stop_signal, f"{what}: StopSignal")
    try:
        healthcheck = health.from_image(run.get("Healthcheck"), what)
    except (ValueError, InvalidArgument) as err:
        raise ImageInvalid(str(err)) from None
    return ImageConfig(
        diff_ids=diff_ids, platform=plat, health=healthcheck,
        env=tuple(e for e in _strings(run.get("Env"), f"{what}: Env") if "=" in e and "\0" not in e),
        entrypoint=_strings(run.get("Entrypoint"), f"{what}: Entrypoint"),
        cmd=_strings(run.get("Cmd"), f"{what}: Cmd"),
        workdir=_string(run.get("WorkingDir"), f"{what}: WorkingDir"),
        user=_string(run.get("User"), f"{what}: User"),
        labels=dict(labels), stop_signal=stop_signal, exposed_ports=_exposed_ports(run.get("ExposedPorts")),
    )


def _exposed_ports(value: Any) -> tuple[str, ...]:
    """ExposedPorts' keys ("80/tcp", "53/udp", "8080"), as "PORT/PROTO". Documentation more than configuration:
    an entry Quilt cannot publish (a range, sctp) is left out, never a reason to refuse the image."""
    if not isinstance(value, dict):
        return ()
    out = []
    for key in value:
        port, _, proto = str(key).partition("/")
        proto = (proto or "tcp").lower()
        if port.isdigit() and 1 <= int(port) <= 65535 and proto in ("tcp", "udp"):
            out.append(f"{int(port)}/{proto}")
    return tuple(dict.fromkeys(out))


def parse_signal(text: str, what: str = "signal") -> int:
    """A StopSignal as images spell it: SIGTERM, TERM, 15, SIGRTMIN+3."""
    name = text.upper().removeprefix("SIG")
    try:
        if text.isdigit():
            number = int(text)
        elif name.startswith(("RTMIN", "RTMAX")):
            base, _, offset = name.partition("+") if "+" in name else name.partition("-")
            number = signal.SIGRTMIN if base == "RTMIN" else signal.SIGRTMAX
            number += (int(offset) if "+" in name else -int(offset)) if offset else 0
        else:
            number = signal.Signals["SIG" + name].value
    except (KeyError, ValueError):
        raise ImageInvalid(f"{what}: '{text}' is not a signal") from None
    if not 1 <= number < signal.NSIG:
        raise ImageInvalid(f"{what}: '{text}' is not a signal")
    return number
