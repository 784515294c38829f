"""What the agent asks of the fork server: the Manager's starts, the Executor's execs and the image store's
layer extractions go through this interface, whose one real implementation is helper/zygote.py's Zygote.

spawn and execute hand back the agent's end of a SOCK_SEQPACKET socket to the forked helper, non-blocking;
the conversation on it is helper/protocol.py's:

- spawn: MonitorForked (the monitor exists: the agent begins its scope at once), then Spawned (the container's
  init exists, held before its command); the agent sends Go (the monitor and the init are each in their scope)
  or Abort (a scope could not be made, the network not readied, or the start was given up, possibly before
  Spawned came); after Go, Started or ExecFailed and, for a start whose setup steps are to be cached, SetupDone
  later. The monitor records how the init ended in spec.exit_file (the fields of model.ExitStatus, as JSON) and
  exits: its exit, seen on a pidfd of it, is how the agent learns of the container's. After Abort, or when the
  agent hangs up before Go, the init is killed before its command runs, and nothing is recorded; a monitor that
  fails between its two messages just closes the socket, and the init, its go pipe closed, exits unrun.
- execute: ExecSpawned, with a pidfd of the command's process as the datagram's one fd, then ExecExited; or
  ExecSetupFailed at either point.
"""
from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from quilt_agent.helper.protocol import ExecSpec, LaunchSpec
from quilt_agent.images import tarball


class ForkServer(Protocol):
    """The agent's handle on the process that forks its containers' monitors, exec helpers and extractors."""

    @property
    def pid(self) -> int:
        """The fork server's pid: an exec helper, forked from it, starts in the fork server's cgroups."""

    async def spawn(self, spec: LaunchSpec, stdio: tuple[int, ...] = ()) -> socket.socket:
        """Fork a monitor for spec; return the agent's end of the socket to it, non-blocking. stdio: the init's
        stdin, stdout and stderr, copied into the request (the caller still owns its own); none: /dev/null and
        the journal."""

    async def execute(self, spec: ExecSpec, stdin: int, stdout: int, stderr: int, init_pidfd: int) -> socket.socket:
        """Fork an exec helper for spec, which enters the container whose init init_pidfd names; the fds are
        copied into the request (the caller still owns its own). Returns the agent's end of the socket to the
        helper, non-blocking."""

    def extract(self, path: Path, dest: Path, *, offset: int = 0, size: int | None = None, label: str = "",
                progress: Callable[[int], None] | None = None) -> tarball.Extracted:
        """tarball.extract (its arguments, result and errors), done outside the agent's process. Blocking: call
        it from a worker thread."""

    def user_namespace(self, id_map: str) -> int:
        """An fd (the caller's to close) of a new user namespace whose uids and gids map as id_map ("INSIDE HOST
        COUNT"): what the idmapped mounts of a container that does not run shift through. OSError when the
        kernel refuses. Blocking: call it from a worker thread."""
