"""quiltctl info (system info) and system prune, as Podman's.

info's facts of the host (kernel, cgroup layout) are read here, where quiltctl runs, which is the agent's host;
the agent's are asked over the bus (its version, its containers, images, networks and volumes).
"""
from __future__ import annotations

import json
import os
import platform
import socket
from collections import Counter
from typing import Any

import click

from quilt_agent import __version__, errors
from quilt_agent.api import ClientError
from quilt_agent.bus.error_names import ERROR_NAMES
from quilt_agent.cli.context import Client, error_message, warn, with_client
from quilt_agent.cli.manage import confirm, prune_containers

DEFAULT_NETWORK = "quilt"
NETWORK_IN_USE = ERROR_NAMES[errors.NetworkInUse]
IMAGE_IN_USE = ERROR_NAMES[errors.ImageInUse]


def human_size(size: float) -> str:
    """A size as Podman prints a reclaimed one (go-units' HumanSize: decimal units, 4 significant digits):
    0B, 999B, 1.5kB, 12.35MB."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.4g}{units[i]}"


def cgroup_layout(root: str = "/sys/fs/cgroup") -> tuple[str, str]:
    """(Podman's cgroupVersion, the layout in words): v2 when the root is cgroup2, else v1, hybrid when a unified
    hierarchy is mounted beside the v1 ones."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return "v2", "unified"
    if os.path.exists(os.path.join(root, "unified", "cgroup.controllers")):
        return "v1", "hybrid (v1 controllers, a v2 hierarchy at /sys/fs/cgroup/unified)"
    return "v1", "legacy"


def container_counts(states: list[str]) -> dict[str, int]:
    """Podman's containerStore: number, paused, running, stopped (every other state)."""
    counted = Counter(states)
    return {"number": len(states), "paused": counted["paused"], "running": counted["running"],
            "stopped": len(states) - counted["paused"] - counted["running"]}


def yaml_lines(value: Any, indent: int = 0) -> list[str]:
    """A nested dict as the YAML podman info prints (keys in order, lists as '- ' items)."""
    lines: list[str] = []
    pad = "  " * indent
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{pad}{key}:")
            lines += yaml_lines(item, indent + 1)
        elif isinstance(item, list):
            lines.append(f"{pad}{key}:" + ("" if item else " []"))
            lines += [f"{pad}- {entry}" for entry in item]
        else:
            lines.append(f"{pad}{key}: {item}")
    return lines


async def _facts(client: Client) -> dict[str, Any]:
    containers = await client.list_containers()
    images = {entry.id for entry in await client.list_images()}
    networks = await client.list_networks()
    volumes = await client.list_volumes()
    return {"version": await client.version(), "states": [e.state for e in containers], "images": len(images),
            "networks": len(networks), "volumes": len(volumes)}


def info_report(facts: dict[str, Any]) -> dict[str, Any]:
    from quilt_agent.config import default_paths

    paths = default_paths()
    version, layout = cgroup_layout()
    uname = platform.uname()
    return {
        "host": {
            "arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(uname.machine, uname.machine),
            "cgroupManager": "systemd",
            "cgroupVersion": version,
            "cgroupLayout": layout,
            "freezer": "cgroup v2 (cgroup.freeze)" if layout != "legacy" else "none: pause is not supported",
            "hostname": socket.gethostname(),
            "kernel": uname.release,
            "os": "linux",
            "cpus": os.cpu_count() or 0,
            "memTotal": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        },
        "store": {
            "containerStore": container_counts(facts["states"]),
            "graphRoot": str(paths.root),
            "imageStore": {"number": facts["images"], "path": str(paths.images)},
            "containersPath": str(paths.containers),
            "networks": facts["networks"],
            "volumeStore": {"number": facts["volumes"], "path": str(paths.volumes)},
            "database": str(paths.database),
        },
        "version": {"Client": __version__, "Agent": facts["version"]},
    }


@click.command()
@click.option("-f", "--format", "format_", default=None, metavar="json",
              help="json: print it as JSON (Podman's Go templates are not supported).")
@click.pass_context
def info(ctx: click.Context, format_: str | None) -> None:
    """Facts of the host and of quilt-agent: versions, cgroup layout, containers by state, images, storage paths."""
    if format_ not in (None, "json", "{{json .}}"):
        raise click.UsageError(f"--format '{format_}': only json is supported")
    report = info_report(with_client(ctx, _facts))
    if format_ is None:
        for line in yaml_lines(report):
            click.echo(line)
    else:
        click.echo(json.dumps(report, indent=4))


@click.group()
def system() -> None:
    """Manage Quilt as a whole: info, prune."""


system.add_command(info, "info")


async def _prune_networks(client: Client) -> tuple[list[str], bool]:
    removed, ok = [], True
    for entry in await client.list_networks():
        if entry.name == DEFAULT_NETWORK:
            continue
        try:
            if (await client.network_properties(entry.path)).get("Containers"):
                continue
            await client.remove_network(entry.name, False)
            removed.append(entry.name)
        except ClientError as e:
            if e.name != NETWORK_IN_USE:  # a container came meanwhile
                warn(error_message(e))
                ok = False
    return removed, ok


async def _prune_images(client: Client, every: bool) -> tuple[list[str], int, bool]:
    """The images removed (ids) and the bytes freed: unnamed ones no container uses, or with every, every image no
    container uses."""
    before = {entry.id for entry in await client.list_images()}
    ok = True
    if every:
        for image_id in sorted(before):
            try:
                await client.remove_image(image_id, False)
            except ClientError as e:
                if e.name != IMAGE_IN_USE:
                    warn(error_message(e))
                    ok = False
    freed = await client.prune_images()
    after = {entry.id for entry in await client.list_images()}
    return sorted(before - after), freed, ok


async def _prune_volumes(client: Client) -> tuple[list[str], int]:
    before = {name for name, _, _ in await client.list_volumes()}
    freed = await client.prune_volumes()
    after = {name for name, _, _ in await client.list_volumes()}
    return sorted(before - after), freed


@system.command("prune")
@click.option("-a", "--all", "every", is_flag=True, help="Remove every image no container uses, not only unnamed ones.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--volumes", is_flag=True, help="Remove the volumes no container uses too.")
@click.pass_context
def prune(ctx: click.Context, every: bool, force: bool, volumes: bool) -> None:
    """Remove the containers that do not run, the networks no container is on (not the default one), the unnamed
    images no container uses (every unused image with -a) and with --volumes the unused volumes; print what went,
    as podman system prune."""
    images_line = ("all images without at least one container associated to them" if every
                   else "all dangling images")
    volumes_line = "\n\t- all volumes not used by at least one container" if volumes else ""
    warning = ("WARNING! This command removes:\n\t- all stopped containers\n"
               f"\t- all networks not used by at least one container{volumes_line}\n\t- {images_line}\n")
    if not confirm(warning, force):
        return

    async def body(client: Client) -> tuple[list[tuple[str, list[str]]], int, bool]:
        containers, ok_c = await prune_containers(client)
        networks, ok_n = await _prune_networks(client)
        gone_volumes, volume_bytes = await _prune_volumes(client) if volumes else ([], 0)
        images, image_bytes, ok_i = await _prune_images(client, every)
        sections = [("Containers", containers), ("Networks", networks), ("Volumes", gone_volumes),
                    ("Images", images)]
        return sections, volume_bytes + image_bytes, ok_c and ok_n and ok_i

    sections, freed, ok = with_client(ctx, body)
    for title, names in sections:
        if names:
            click.echo(f"Deleted {title}")
            for name in names:
                click.echo(name)
    click.echo(f"Total reclaimed space: {human_size(freed)}")
    if not ok:
        ctx.exit(125)
