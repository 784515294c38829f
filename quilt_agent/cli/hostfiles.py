"""The caller's own files on the host, read and written here, in quiltctl, with the caller's rights.

The agent runs as root: a path sent to it would be opened with root's rights for whoever asked. So quiltctl opens
an image file itself and passes the open file, and `cp` packs or unpacks a tar stream through a pipe whose other end
is the agent's (CopyToWithFd, CopyFromWithFd). What comes out of a container is unpacked by filetree's rules:
nothing below the destination the caller named is followed through a symlink, and no setuid bit survives.

tarfile and filetree are imported where a copy needs them: `run IMAGE` with an image's name passes through
image_ref and needs neither.
"""
from __future__ import annotations

import errno
import os
import stat

from quilt_agent.api import ClientError
from quilt_agent.cli.context import Client, HostFileError  # noqa: F401 (HostFileError: raised here, caught there)

TYPE_CHECKING = False
if TYPE_CHECKING:  # `run` imports this module on cli/quick.py's path
    from collections.abc import Awaitable, Callable


async def _with_pipe(call: Callable[[int], Awaitable[None]], here: Callable[[int], None], ours_reads: bool) -> None:
    """call(agent's end) while here(our end) runs in a thread; the agent's error first, then ours. Needs the
    asyncio loop (with_async_client)."""
    import asyncio
    import tarfile

    from quilt_agent import filetree

    read, write = os.pipe2(os.O_CLOEXEC)
    theirs, ours = (write, read) if ours_reads else (read, write)
    worker = asyncio.ensure_future(asyncio.to_thread(here, ours))
    try:
        await call(theirs)
    except ClientError:
        os.close(theirs)
        theirs = -1
        try:
            await worker  # its error (a file we could not read) explains the agent's cut archive better
        except (HostFileError, OSError, filetree.CopyError) as e:
            raise HostFileError(str(e)) from None
        except Exception:  # noqa: BLE001 - a broken archive, caused by the agent's failure
            pass
        raise
    finally:
        if theirs >= 0:
            os.close(theirs)
    try:
        await worker
    except (OSError, tarfile.TarError) as e:
        raise HostFileError(f"the copy failed: {e}") from None


def _pack(source: str, fd: int) -> None:
    from quilt_agent import filetree

    try:
        with os.fdopen(fd, "wb") as out:
            try:
                top = os.open(source, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise HostFileError(f"cannot read '{source}': {e.strerror}") from None
            try:
                filetree.write_tar(filetree.walk(top), filetree.tar_top(source), out)
            except PermissionError as e:
                raise HostFileError(f"cannot read '{e.filename or source}': {e.strerror}") from None
            finally:
                os.close(top)
    except BrokenPipeError:
        pass  # the agent stopped reading: its reply says why


def _unpack(dest: str, fd: int) -> None:
    from quilt_agent import filetree

    with os.fdopen(fd, "rb") as inp:
        top, entries = filetree.read_tar(inp)
        try:
            parent, name = filetree.destination(
                lambda p: os.open(p, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), dest, top)
        except FileNotFoundError as e:
            raise HostFileError(f"no directory '{e.filename}' on the host") from None
        try:
            # As the caller: a non-root caller's copy is its own (as cp without -p), root keeps the owners.
            filetree.copy(entries, filetree.Sink(parent, name, owners=os.geteuid() == 0, strip_setid=True))
        except OSError as e:
            if e.errno == errno.EACCES:
                raise HostFileError(f"cannot write in '{dest}': permission denied") from None
            raise HostFileError(f"copying to '{dest}' failed: {e.strerror}") from None
        finally:
            os.close(parent)


async def copy_in(client: Client, container: str, source: str, dest: str) -> None:
    """Host's source (or a tar stream on our stdin, for '-') -> dest in the container."""
    if source == "-":
        await client.copy_to_fd(container, 0, dest)
        return
    try:
        os.lstat(source)
    except OSError as e:
        raise HostFileError(f"cannot read '{source}': {e.strerror}") from None
    await _with_pipe(lambda fd: client.copy_to_fd(container, fd, dest), lambda fd: _pack(source, fd),
                     ours_reads=False)


async def copy_out(client: Client, container: str, source: str, dest: str) -> None:
    """source in the container -> the host's dest (or a tar stream on our stdout, for '-')."""
    if dest == "-":
        if os.isatty(1):
            raise HostFileError("will not write a tar archive to a terminal: redirect stdout")
        await client.copy_from_fd(container, source, 1)
        return
    await _with_pipe(lambda fd: client.copy_from_fd(container, source, fd), lambda fd: _unpack(dest, fd),
                     ours_reads=True)


async def import_image(client: Client, path: str, name: str = "", options: dict | None = None) -> str:
    """The image at path, read with our rights: a file is passed open, a directory (an OCI layout) as an
    oci-archive stream. Returns the image's object path."""
    from quilt_agent import filetree

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise HostFileError(f"cannot read the image '{path}': {e.strerror}") from None
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            return await client.import_image_fd(fd, name, options)
        result: list[str] = []

        async def call(theirs: int) -> None:
            result.append(await client.import_image_fd(theirs, name, options))

        def pack(ours: int) -> None:
            try:
                with os.fdopen(ours, "wb") as out:
                    filetree.write_tar(filetree.walk(fd), "", out)
            except PermissionError as e:
                raise HostFileError(f"cannot read '{e.filename or path}': {e.strerror}") from None
            except BrokenPipeError:
                pass

        await _with_pipe(call, pack, ours_reads=False)
        return result[0]
    finally:
        os.close(fd)


async def image_ref(client: Client, image: str) -> str:
    """What a create names: an image path (absolute: made so by the command line) is imported here first, read
    with our rights, and named by its id; a name or id is passed on as it is."""
    if not image.startswith("/"):
        return image
    path = await import_image(client, image)
    return str((await client.image_properties(path))["Id"])
