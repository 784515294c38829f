"""Lines journald's rate limit drops, against the test host's journald: the agent reads journald's report of them
("Suppressed N messages from quilt-NAME.scope") and says so in the container's properties, an event, GetLogs'
marks and `quiltctl logs`, instead of a log silently cut short.

journald writes its report when the unit's next line passes the limit again, after the limit's interval (30 s by
default, which the test host keeps): the container here floods, then writes one more line 31 s later. One test of
half a minute, for the one behaviour that needs it.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from quilt_agent.api import ClientError
from quilt_agent.client import Client
from tests.integration.test_events import events_of

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
FLOOD = 150_000  # more than journald's burst (10,000 scaled up by the free space: 35,000-45,000 here)
COMMAND = (f"i=0; while [ $i -lt {FLOOD} ]; do echo line $i; i=$((i+1)); done; "
           "sleep 31; echo after")


# The flood keeps both cores busy (the shell's loop on one, journald storing its lines on the other): the agent's
# callbacks meanwhile wait for a CPU, which asyncio's wall clock counts as blocking (callbacks that take microseconds
# were reported at 105 to 152 ms in three suite runs).
@pytest.mark.starves_cpu
async def test_lines_journald_drops_are_counted_marked_and_told(client: Client, busybox_tar: Path, name: str) -> None:
    queue = await client.watch_events()
    path = await client.run_container(name, str(busybox_tar), ["sh", "-c", COMMAND], {"networks": ["none"]})
    cid = (await client.properties(path))["Id"]
    assert await asyncio.wait_for(client.wait(path), 120) == 0
    told = await events_of(queue, cid, "logs_dropped", timeout=30)
    props = await client.properties(path)
    dropped = props["LogLinesDropped"]
    assert dropped > 0 and told[-1].details["count"] == dropped
    assert props["LogLinesDroppedAt"] == told[-1].details["at"]

    # More lines than one GetLogs reply carries: a named error, and the same read streamed through FollowLogs.
    with pytest.raises(ClientError) as caught:
        await client.get_logs(path, {"dropped": True})
    assert caught.value.name == "org.quilt.Runtime.Error.TooLarge" and "FollowLogs" in str(caught.value)
    lines = await client.read_logs(path, {"dropped": True})
    marks = [line for line in lines if line.stream == "dropped"]
    kept = [line for line in lines if line.stream == "stdout"]
    # Every line is either kept or counted, none twice: journald's count is exact.
    assert [int(m.text) for m in marks] == [dropped]
    assert len(kept) + dropped == FLOOD + 1
    assert lines[-2:] == [marks[0], kept[-1]] and kept[-1].text == "after"  # the mark where the gap is
    assert not [line for line in await client.read_logs(path, {}) if line.stream == "dropped"]  # only when asked
    # A part that one reply carries has its mark too
    tail = await client.get_logs(path, {"dropped": True, "lines": 3})
    assert [line.stream for line in tail] == ["stdout", "stdout", "dropped", "stdout"]

    shown = subprocess.run([QUILTCTL, "logs", "-n", "2", name], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.splitlines() == [kept[-2].text, "after"]
    assert shown.stderr == f"quiltctl: journald dropped {dropped} lines here (its rate limit)\n"
    status = subprocess.run([QUILTCTL, "status", name], capture_output=True, text=True, timeout=60).stdout
    assert f"journald dropped {dropped} lines (its rate limit), the last reported" in status
    await client.remove(path)


async def test_a_container_whose_lines_all_pass_has_no_drops(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["sh", "-c", "echo one; echo two"],
                                      {"networks": ["none"]})
    assert await client.wait(path) == 0
    assert (await client.properties(path))["LogLinesDropped"] == 0
    assert [line.text for line in await client.get_logs(path, {"dropped": True})] == ["one", "two"]
    await client.remove(path)
