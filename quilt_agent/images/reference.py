"""Image references (registry/repository:tag@digest) and image names, with Docker's grammar and defaults.

`docker.io/library/busybox:latest`, `busybox`, `127.0.0.1:5000/test/app:v1`, `app@sha256:...`: the first
component is a registry when it has a '.' or a ':' or is `localhost` (Docker's rule); a bare name is on
Docker Hub, under library/ when it has one component; no tag means `latest`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from quilt_agent.errors import InvalidArgument

DEFAULT_REGISTRY = "docker.io"
# Docker Hub's API lives on another host than its name, as every client knows.
_ENDPOINTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_REGISTRY = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                       r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}\Z")
MAX_NAME = 255


@dataclass(frozen=True)
class Reference:
    registry: str  # "" for a local name (import) that names none
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def endpoint(self) -> str:
        """host[:port] that serves the registry's API."""
        return _ENDPOINTS.get(self.registry, self.registry)

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"


def parse(text: str, *, default_registry: str | None = DEFAULT_REGISTRY) -> Reference:
    """Parse a reference. default_registry=None keeps a name without a registry local (for import names)."""
    what = "image reference" if default_registry else "image name"
    if not text or len(text) > MAX_NAME + 80 or text != text.strip():
        raise InvalidArgument(f"Invalid {what} '{text}'")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise InvalidArgument(f"Invalid {what} '{text}': '{digest}' is not a sha256 digest")
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise InvalidArgument(f"Invalid {what} '{text}': '{tag}' is not a valid tag")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, repository = first, remainder
        if not _REGISTRY.match(registry):
            raise InvalidArgument(f"Invalid {what} '{text}': '{registry}' is not a registry host")
    else:
        registry, repository = "", rest
    if not _REPOSITORY.match(repository) or len(repository) > MAX_NAME:
        raise InvalidArgument(f"Invalid {what} '{text}': '{repository}' is not a valid repository name "
                              "(lower-case letters, digits and separators)")
    if not registry and default_registry:
        registry = default_registry
        if registry == DEFAULT_REGISTRY and "/" not in repository:
            repository = "library/" + repository
    if not tag and not digest:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def normalize_name(text: str) -> str:
    """An image name as the store keeps it: as given, with ':latest' when it has no tag or digest."""
    return str(parse(text, default_registry=None))


def candidates(text: str) -> list[str]:
    """The stored names `text` may mean, most literal first: `busybox` finds `busybox:latest` (imported as
    such) and `docker.io/library/busybox:latest` (pulled)."""
    out: list[str] = []
    for default in (None, DEFAULT_REGISTRY):
        try:
            name = str(parse(text, default_registry=default))
        except InvalidArgument:
            continue
        if name not in out:
            out.append(name)
    return out
