"""quiltctl image import|pull|ls|inspect|rm|prune.

Flags follow `podman image`. Import and pull show their progress on stderr (rich bars with bytes and speed on a
terminal, one plain line per step otherwise) and print the image's id on stdout, as podman pull does.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import click

from quilt_agent.cli import output
from quilt_agent.cli.context import fail, with_async_client, with_client
from quilt_agent.cli import hostfiles
from quilt_agent.cli.parsing import resolve_image
from quilt_agent.api import ClientError
from quilt_agent.replies import ImageProgress
from quilt_agent.cli.context import Client

SHORT = 12
# podman import --change's instructions -> ImportImage's option keys.
_CHANGES = {"CMD": "cmd", "ENTRYPOINT": "entrypoint", "ENV": "env", "WORKDIR": "workdir", "USER": "user",
            "LABEL": "labels", "STOPSIGNAL": "stop_signal"}


@click.group()
def image() -> None:
    """Manage images: import files, pull from registries, list, inspect, remove, prune."""


def parse_change(text: str, options: dict[str, Any]) -> None:
    """One --change: 'CMD ["/bin/sh","-c","x"]' or 'CMD=/bin/sh -c x', 'ENV=A=1', 'LABEL=k=v', 'WORKDIR=/x',
    'USER=1000', 'ENTRYPOINT=...', 'STOPSIGNAL=SIGINT'. Adds it to the options of ImportImage."""
    head, sep, value = text.partition("=")
    if " " in head or not sep:
        head, _, value = text.partition(" ")
    key = _CHANGES.get(head.strip().upper())
    if key is None:
        raise click.BadParameter(f"'{head}' is not one of {', '.join(_CHANGES)}", param_hint="--change")
    value = value.strip()
    if key in ("cmd", "entrypoint"):
        try:
            parsed = json.loads(value) if value.startswith("[") else shlex.split(value)
        except (ValueError, json.JSONDecodeError) as e:
            raise click.BadParameter(f"{head}: {e}", param_hint="--change") from None
        if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
            raise click.BadParameter(f"{head} must be a JSON list of strings or words", param_hint="--change")
        options[key] = parsed
    elif key == "env":
        options.setdefault("env", []).append(value)
    elif key == "labels":
        k, sep, v = value.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"LABEL must be KEY=VALUE, not '{value}'", param_hint="--change")
        options.setdefault("labels", {})[k] = v
    else:
        options[key] = value


if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class _Shown:
    """Shows an import's or pull's ImageProgress signals: rich bars on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._said: set[str] = set()
        if self.tty:
            # rich and asyncio only here, for pull and import: `images` and `rmi` start without them.
            from rich.console import Console
            from rich.progress import (
                BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(),
                                      console=Console(stderr=True), transient=False)

    def __enter__(self) -> _Shown:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def show(self, p: ImageProgress) -> None:
        verb, _, what = p.phase.partition(" ")
        if verb == "done":
            return
        short = _short(what)
        # One line per blob: "downloading" and "unpacking" fill the bar, "unpacked" and "exists" end it.
        key = short if verb in ("downloading", "unpacking", "unpacked", "exists") else p.phase
        if self._progress is not None:
            task = self._tasks.get(key)
            total = p.total or None
            if task is None:
                task = self._tasks[key] = self._progress.add_task(f"{verb} {short}", total=total)
            self._progress.update(task, description=f"{verb} {short}", completed=p.done, total=total)
            return
        # Plain: each step once, when it starts and (for the long ones) when it ends.
        line = f"{verb} {short}" + (f" ({output.size_text(p.total)})" if p.total else "")
        if verb in ("unpacked", "exists") or (p.phase not in self._said and p.done < p.total) or (
                p.phase not in self._said and not p.total):
            self._said.add(p.phase)
            click.echo(line, err=True)


def _short(what: str) -> str:
    return what[:len("sha256:") + SHORT] if what.startswith("sha256:") else what


def _with_progress(ctx: click.Context, call: Callable[[Client, str], Awaitable[str]], quiet: bool) -> str:
    """Run an import or pull with its ImageProgress shown; return the image's id."""
    import asyncio

    job = f"quiltctl-{os.getpid()}-{secrets.token_hex(4)}"

    async def body(client: Client) -> str:
        queue = None if quiet else await client.watch_image_progress(job)
        with _Shown() as shown:
            task = asyncio.ensure_future(call(client, job))
            while True:
                getter = asyncio.ensure_future(queue.get()) if queue is not None else None
                waiting = {task, getter} if getter is not None else {task}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if getter is not None and getter in done:
                    shown.show(getter.result())
                    continue
                if getter is not None:
                    getter.cancel()
                break
            path = await task  # raises the call's error
            while queue is not None and not queue.empty():  # the signals sent before the reply
                shown.show(queue.get_nowait())
        return str((await client.image_properties(path))["Id"])

    return with_async_client(ctx, body)  # the progress signals need the loop


@image.command("import")
@click.option("--ref", default=None, help="Which image of a layout or archive holding several.")
@click.option("--platform", default=None, help="os/arch[/variant] to take (default: this machine's).")
@click.option("-c", "--change", "changes", multiple=True,
              help="For a rootfs tarball: CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL or STOPSIGNAL, e.g. "
                   "'CMD=/bin/sh -c date'.")
@click.option("-q", "--quiet", is_flag=True, help="No progress; print only the image's id.")
@click.argument("source")
@click.argument("name", required=False, default="")
@click.pass_context
def import_(ctx: click.Context, ref: str | None, platform: str | None, changes: tuple[str, ...], quiet: bool,
            source: str, name: str) -> None:
    """Import SOURCE as an image named NAME: a rootfs tarball (any compression), an OCI image layout directory,
    an oci-archive or a docker save archive (the kind is read from the content). Print its id."""
    options: dict[str, Any] = {}
    if ref is not None:
        options["ref"] = ref
    if platform is not None:
        options["platform"] = platform
    for change in changes:
        parse_change(change, options)
    path = resolve_image(source, os.getcwd())
    if not path.startswith("/"):
        path = os.path.abspath(path)

    async def call(client: Client, job: str) -> str:
        return await hostfiles.import_image(client, path, name, {**options, "job": job})

    click.echo(_with_progress(ctx, call, quiet))


@image.command("pull")
@click.option("--platform", default=None, help="os/arch[/variant] to pull (default: this machine's).")
@click.option("--auth-file", default=None, type=click.Path(dir_okay=False),
              help="Credentials in docker config.json format (read by the agent).")
@click.option("-q", "--quiet", is_flag=True, help="No progress; print only the image's id.")
@click.argument("reference")
@click.pass_context
def pull(ctx: click.Context, platform: str | None, auth_file: str | None, quiet: bool, reference: str) -> None:
    """Pull REFERENCE ([registry/]repository[:tag][@digest]) from its registry; print the image's id."""
    options: dict[str, Any] = {}
    if platform is not None:
        options["platform"] = platform
    if auth_file is not None:
        options["auth_file"] = os.path.abspath(auth_file)

    async def call(client: Client, job: str) -> str:
        return await client.pull_image(reference, {**options, "job": job})

    click.echo(_with_progress(ctx, call, quiet))


async def _images(client: Client) -> list[dict[str, Any]]:
    """Each image's properties, once per image, in the order of ListImages."""
    found: dict[str, dict[str, Any]] = {}
    for entry in await client.list_images():
        if entry.id not in found:
            try:
                found[entry.id] = await client.image_properties(entry.path)
            except ClientError:
                pass  # removed since the list
    return list(found.values())


def _inspected(props: dict[str, Any]) -> dict[str, Any]:
    out = dict(props)
    try:
        out["Config"] = json.loads(props.get("Config") or "{}")
    except ValueError:
        pass
    return out


def is_setup_cache(props: dict[str, Any]) -> bool:
    """A cached setup result (an untagged image made from a container's setup steps): `SetupBase` names the
    image it was made from. An agent without setup commands has no such property."""
    return bool(props.get("SetupBase"))


def setup_text(props: dict[str, Any], width: int = 60) -> str:
    """The SETUP column of `image ls --all`: the base image's short id and the steps, or '' for a plain image."""
    if not is_setup_cache(props):
        return ""
    text = f"{str(props['SetupBase'])[:SHORT]} + " + "; ".join(props.get("SetupSteps") or [])
    return text if len(text) <= width else text[:width - 3] + "..."


@image.command("ls")
@click.option("-a", "--all", "show_all", is_flag=True,
              help="Show the cached setup results too (images made by containers' setup steps).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: a list of the images' properties.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the ids.")
@click.option("--format", "fmt", default=None, metavar="TEMPLATE",
              help="Print each name through a Go template of Podman's fields ({{.Repository}} {{.Tag}} {{.ID}} "
                   "{{.Size}} ...; 'table ...' adds a header row), or 'json'. See quiltctl(1).")
@click.option("--no-trunc", is_flag=True, help="Do not shorten the ids.")
@click.option("--noheading", is_flag=True, help="No header row.")
@click.pass_context
def ls(ctx: click.Context, show_all: bool, as_json: bool, quiet: bool, fmt: str | None, no_trunc: bool,
       noheading: bool) -> None:
    """List the images: one line per name. With --all, the cached setup results too, named <setup> and with
    the image they were made from and their steps in the SETUP column."""
    template = output.parse_format(fmt)
    images = [p for p in with_client(ctx, _images) if show_all or not is_setup_cache(p)]
    if template is not None:
        from quilt_agent.cli import items  # a template's fields; only a --format imports them

        now = time.time()
        output.print_template(template, [item for p in images for item in items.image_items(p, now, no_trunc)],
                              items.IMAGE_HEADERS, heading=not noheading,
                              example=items.image_items({}, now)[0])
        return
    if as_json or output.wants_json(fmt):
        output.print_json([{k: v for k, v in _inspected(p).items() if k != "Config"} for p in images])
        return
    width = None if no_trunc else SHORT
    if quiet:
        for props in images:
            click.echo(str(props["Id"])[:width])
        return
    now = time.time()
    columns = ("NAME", "ID", "SIZE", "CREATED") + (("SETUP",) if show_all else ())
    output.print_table(columns, (
        (name, str(props["Id"])[:width], output.size_text(int(props.get("Size", 0))),
         output.ago(int(props.get("CreatedAt", 0)), now)) + ((setup_text(props),) if show_all else ())
        for props in images
        for name in props.get("Names") or ["<setup>" if is_setup_cache(props) else "<none>"]
    ), heading=not noheading)


@image.command("inspect")
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, images: tuple[str, ...]) -> None:
    """Print the images' properties as JSON (Config as an object)."""

    async def body(client: Client) -> list[dict[str, Any]]:
        return [_inspected(await client.image_properties(await client.get_image(i))) for i in images]

    output.print_json(with_client(ctx, body))


@image.command("rm")
@click.option("-f", "--force", is_flag=True, help="Remove the containers that use the image too.")
@click.argument("images", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, images: tuple[str, ...]) -> None:
    """Remove images (or, for an image with several names, that name). Prints each as it goes."""
    failed: list[str] = []

    async def body(client: Client) -> None:
        for name in images:
            try:
                await client.remove_image(name, force)
                click.echo(name)
            except ClientError as e:
                failed.append(e.message)

    with_client(ctx, body)
    if failed:
        for message in failed[:-1]:
            click.echo(f"quiltctl: {message}", err=True)
        fail(failed[-1])


@image.command("tag")
@click.argument("image_ref", metavar="IMAGE")
@click.argument("names", nargs=-1, required=True, metavar="NAME[:TAG]...")
@click.pass_context
def tag(ctx: click.Context, image_ref: str, names: tuple[str, ...]) -> None:
    """Add names to an image (":latest" when no tag), as podman tag; an image that had one of them loses it."""

    async def body(client: Client) -> None:
        for name in names:
            await client.tag_image(image_ref, name)

    with_client(ctx, body)


@image.command("prune")
@click.pass_context
def prune(ctx: click.Context) -> None:
    """Remove the images without a name that no container uses (cached setup results among them), and unused
    layers; print the space freed."""

    async def body(client: Client) -> int:
        return await client.prune_images()

    freed = with_client(ctx, body)
    click.echo(f"{output.size_text(freed)} freed")


COMMANDS: list[click.Command] = [image]
