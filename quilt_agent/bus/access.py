"""What a call acts on, described for polkit. Every object is resolved first (by name, id, short id, digest or
tag) and described by what it is, never by the string the caller sent: a rule written against a container's name
holds whatever alias the caller used (systemd-machined resolves the machine first in the same way).

polkit details of a Target (action.lookup() in a rule; all strings):
    kind: "container", "image", "network" or "volume"
    KIND (the kind itself as the key): the canonical name (an image: the tag the caller named, else its first tag,
        else its id)
    id: the object's full id ("" for an object that does not exist, or not yet)
    owner_uid: the uid that created it (an image: that first brought its content into the store; "" for an
        object not there); caller_is_owner: "true" or "false"
    names (images): every tag, comma-separated; setup_base: for a setup cache image (a container's setup result,
        which may hold what its environment held), the id of the image its steps ran on, else ""
    a container's: image, image_id, networks (its named networks, or its mode: none, host, container:ID),
        volumes (named volumes), ports (published), aliases (its other names on its networks), privileged (the options that hand it the host, comma-separated,
        see privileged_options)
"""
from __future__ import annotations

from dataclasses import dataclass

from quilt_agent import capabilities
from quilt_agent.errors import QuiltError
from quilt_agent.images.service import Images
from quilt_agent.images.store import Image
from quilt_agent.manager import CreatePlan, Manager
from quilt_agent.model import NAMESPACES, Container, ContainerSpec
from quilt_agent.network.core import Networks
from quilt_agent.network.model import Network
from quilt_agent.network.options import ports_of
from quilt_agent.volume_options import Volume, named_volumes, parse_volume
from quilt_agent.volumes import Volumes

NO_OWNER = -1
PRIVILEGED_PORTS = 1024  # the kernel's default ip_unprivileged_port_start


@dataclass(frozen=True)
class Target:
    """One object a call acts on, as polkit's details and the refusal's words name it."""

    kind: str  # polkit.KINDS
    name: str  # canonical; for an object that does not exist, the string the caller sent
    id: str = ""
    owner_uid: int = NO_OWNER
    more: tuple[tuple[str, str], ...] = ()  # further details, by kind (module docstring)

    @property
    def exists(self) -> bool:
        return bool(self.id)

    def details(self, caller_uid: int) -> dict[str, str]:
        out = {"kind": self.kind, self.kind: self.name, "id": self.id,
               "owner_uid": str(self.owner_uid) if self.owner_uid != NO_OWNER else "",
               "caller_is_owner": "true" if self.owner_uid == caller_uid else "false"}
        out.update(self.more)
        return out

    def __str__(self) -> str:
        return f"{self.kind} '{self.name}'"


def privileged_options(spec: ContainerSpec) -> tuple[str, ...]:
    """What of a container's spec hands it the host: host paths bound in, the host's namespaces kept (through
    /proc/1/root a process in the host's pid namespace reaches every file), no seccomp filter, the host's
    user ids (no user namespace of its own), capabilities beyond the default set."""
    out = [f"bind:{m.source}" for m in map(parse_volume, spec.volumes) if m.source.startswith("/")]
    out += [f"host-{ns}" for ns in NAMESPACES if ns not in spec.namespaces]  # networks ['host'] leaves out net
    if spec.seccomp == "unconfined":
        out.append("seccomp-unconfined")
    if spec.userns == "host":
        out.append("host-user")  # its root is the host's root
    # A host port below 1024 is one only the host's root may listen on (sshd's, a print server's): the agent binds
    # it as root for the container.
    out += [f"port:{m}" for m in ports_of(spec.ports) if 0 < m.host_port < PRIVILEGED_PORTS]  # 0: a free one, >1023
    # A capability beyond Podman's default set: with the host's user ids it is the host's (SYS_ADMIN, SYS_MODULE,
    # SYS_PTRACE...); in a user namespace of its own, NET_RAW or NET_ADMIN still reach the network the container
    # shares with others (spoofing its neighbours on the bridge). Each is named, so that a rule may allow some.
    out += [f"cap-add:{name}" for name in capabilities.beyond_default(spec.cap_add, spec.cap_drop)]
    if spec.unit:
        out.append(f"unit:{spec.unit}")  # its processes go into a host service's cgroup
    return tuple(out)


def _spec_details(spec: ContainerSpec) -> tuple[tuple[str, str], ...]:
    return (("image", spec.image), ("image_id", spec.image_id), ("networks", ",".join(spec.networks)),
            ("volumes", ",".join(named_volumes(spec.volumes))), ("ports", ",".join(spec.ports)),
            ("aliases", ",".join(spec.aliases)),
            ("privileged", ",".join(privileged_options(spec))))


def container(c: Container) -> Target:
    return Target("container", c.name, c.id, c.owner_uid, _spec_details(c.spec))


def new_container(plan: CreatePlan) -> Target:
    """The container a create would make: no id yet, owned by the caller."""
    return Target("container", plan.spec.name, "", plan.owner_uid, _spec_details(plan.spec))


def image(img: Image) -> Target:
    return Target("image", img.names[0] if img.names else img.id, img.id, img.owner_uid,
                  more=(("names", ",".join(img.names)), ("digest", img.digest), ("setup_base", img.setup_base)))


def network(n: Network) -> Target:
    return Target("network", n.name, n.id, n.owner_uid, (("internal", "true" if n.internal else "false"),))


def volume(v: Volume) -> Target:
    return Target("volume", v.name, v.id, v.owner_uid)


def absent(kind: str, text: str) -> Target:
    """What a call names that does not exist (yet): a create's new name, or a name that finds nothing."""
    return Target(kind, text)


class Resolver:
    """Finds what a Manager method's argument names, by any alias the core accepts."""

    def __init__(self, manager: Manager, images: Images, networks: Networks, volumes: Volumes) -> None:
        self._manager = manager
        self._images = images
        self._networks = networks
        self._volumes = volumes

    def find(self, kind: str, text: str) -> Target:
        """The object `text` names, or an absent Target naming `text`."""
        try:
            if kind == "container":
                return container(self._manager.get(text))
            if kind == "image":
                return image(self._images.get(text))
            if kind == "network":
                return network(self._networks.get(text))
            if kind == "volume":
                return volume(self._volumes.get(text))
        except QuiltError:
            pass  # not found, or not a name at all: the method says which, to a caller allowed to know
        return absent(kind, text)
