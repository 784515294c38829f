"""Authorization decided on the object a call resolves to: polkit rules written against canonical names hold for
every alias, force removals authorize each container they take, a create's references are authorized as what
they are, owners are recorded and the shipped example rule confines a user to what it owns, every decision is
audited in the journal, and signals reach root alone."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.bus import rules
from tests.integration.bus.rules import BUS_NAME, MANAGER, MANAGER_PATH, run_as
from tests.integration.bus.test_polkit import CONTAINER, NETWORK, USERS, VOLUME
from tests.integration.waiting import until

NOBODY = USERS["nobody"]
PROJECT = Path(__file__).resolve().parents[3]
EXAMPLE_RULE = PROJECT / "polkit/quilt-owner-example.rules"
QUILTCTL = "quiltctl"


def busctl(path: str, iface: str, method: str, *args: str) -> list[str]:
    return ["busctl", "call", BUS_NAME, path, iface, method, *args]


def denied(r: subprocess.CompletedProcess, *words: str) -> bool:
    """Refused as AccessDenied (busctl words it "Access denied", without the message; gdbus prints both)."""
    return (r.returncode != 0 and ("Access denied" in r.stderr or "AccessDenied" in r.stderr)
            and all(w in r.stderr for w in words))


def denies(words: str) -> str:
    """A rule body: nobody may do anything to Quilt's objects but what the JavaScript condition `words` names."""
    return ("    if (subject.user != 'nobody' || action.id.indexOf('org.quilt.runtime.') != 0)\n"
            "        return polkit.Result.NOT_HANDLED;\n"
            f"    if ({words}) return polkit.Result.NO;\n"
            "    if (action.id == 'org.quilt.runtime.manage-privileged' || action.id == 'org.quilt.runtime.host')\n"
            "        return polkit.Result.NOT_HANDLED;\n"
            "    return polkit.Result.YES;")


async def image_id(client: Client) -> str:
    (found,) = {i.id for i in await client.list_images()}  # busybox, imported by the test's first create
    return found


async def remove_what_was_made(client: Client, name: str) -> None:
    """Every container, and the network, volume and image NAME-net, NAME-vol, NAME-img:1."""
    for entry in await client.list_containers():
        await client.remove(entry.path, force=True)
    await client.remove_network(f"{name}-net")
    await client.remove_volume(f"{name}-vol")
    await client.remove_image(f"{name}-img:1")

async def test_a_rule_on_a_canonical_name_holds_for_every_alias(client: Client, busybox_tar: Path, name: str) -> None:
    guarded = await client.create_container(f"{name}-prod", str(busybox_tar), ["/bin/true"])
    other = await client.create_container(f"{name}-other", str(busybox_tar), ["/bin/true"])
    image = await image_id(client)
    await client.import_image(str(busybox_tar), f"{name}-img:1")
    net = await client.create_network(f"{name}-net")
    vol = await client.create_volume(f"{name}-vol")
    cid, nid, vid = (p.rsplit("/", 1)[1] for p in (guarded, net, vol))
    rule = denies(f"action.lookup('container') == '{name}-prod' || action.lookup('network') == '{name}-net' || "
                  f"action.lookup('volume') == '{name}-vol' || "
                  f"(action.lookup('names') || '').split(',').indexOf('{name}-img:1') >= 0")
    try:
        async with rules.installed(name, rule, NOBODY):
            calls = [busctl(MANAGER_PATH, MANAGER, m, "sb", alias, "false") for m, alias in (
                ("RemoveNetwork", f"{name}-net"), ("RemoveNetwork", nid), ("RemoveNetwork", nid[:12]),
                ("RemoveVolume", f"{name}-vol"), ("RemoveVolume", vid), ("RemoveVolume", vid[:12]),
                ("RemoveImage", image), ("RemoveImage", image[:12]), ("RemoveImage", f"sha256:{image}"))]
            calls += [busctl(guarded, CONTAINER, "Remove", "b", "false"), busctl(net, NETWORK, "Remove", "b", "false"),
                      busctl(vol, VOLUME, "Remove", "b", "false")]
            lookups = [busctl(MANAGER_PATH, MANAGER, "GetContainer", "s", alias)
                       for alias in (f"{name}-prod", cid, cid[:12])]
            results = await asyncio.gather(*(run_as(NOBODY, *cmd) for cmd in calls + lookups))
            for cmd, r in zip(calls, results):
                assert denied(r), (cmd, r)
            # The rule forbids seeing it too, by every alias.
            for cmd, r in zip(lookups, results[len(calls):]):
                assert denied(r), (cmd, r)
            # What the rule does not name, nobody may remove, by its id.
            removed = await run_as(NOBODY, *busctl(other, CONTAINER, "Remove", "b", "false"))
            assert removed.returncode == 0, removed
        assert [e.name for e in await client.list_containers()] == [f"{name}-prod"]
        assert f"{name}-img:1" in {i.name for i in await client.list_images()}
        assert await client.get_network(f"{name}-net") == net and await client.get_volume(f"{name}-vol") == vol
    finally:
        await remove_what_was_made(client, name)


@pytest.mark.parametrize("kind", ["network", "volume", "image"])
async def test_a_force_removal_that_would_take_a_container_the_caller_may_not_touch_changes_nothing(
        client: Client, busybox_tar: Path, name: str, kind: str) -> None:
    # An image of the test's own (its label makes another config, so another id), with this one name.
    await client.import_image(str(busybox_tar), f"{name}-img:1", {"labels": {"test": name}})
    await client.create_network(f"{name}-net")
    await client.create_volume(f"{name}-vol")
    options = {"networks": [f"{name}-net"], "volumes": [f"{name}-vol:/data"]}
    free = await client.run_container(f"{name}-free", f"{name}-img:1", ["/bin/sleep", "300"], options)
    guarded = await client.run_container(f"{name}-guarded", f"{name}-img:1", ["/bin/sleep", "300"], options)
    target = {"network": f"{name}-net", "volume": f"{name}-vol", "image": f"{name}-img:1"}[kind]
    method = {"network": "RemoveNetwork", "volume": "RemoveVolume", "image": "RemoveImage"}[kind]
    try:
        async with rules.installed(name, denies(f"action.lookup('container') == '{name}-guarded'"), NOBODY):
            r = await run_as(NOBODY, *busctl(MANAGER_PATH, MANAGER, method, "sb", target, "true"))
            assert denied(r), r
            assert [(await client.properties(p))["State"] for p in (free, guarded)] == ["running", "running"]
            # Without the guarded container, the same call by the same caller removes the other with it.
            await client.remove(guarded, force=True)
            r = await run_as(NOBODY, *busctl(MANAGER_PATH, MANAGER, method, "sb", target, "true"))
            assert r.returncode == 0, r
        assert await client.list_containers() == []
    finally:
        for entry in await client.list_containers():
            await client.remove(entry.path, force=True)
        for cleanup in (client.remove_network(f"{name}-net"), client.remove_volume(f"{name}-vol"),
                        client.remove_image(f"{name}-img:1")):
            try:
                await cleanup
            except ClientError as err:
                assert err.name.startswith("org.quilt.Runtime.Error.NoSuch"), err  # removed by the call


async def test_what_a_create_names_is_authorized_as_what_it_is(client: Client, busybox_tar: Path, name: str) -> None:
    image = await client.import_image(str(busybox_tar), f"{name}-img:1")
    await client.create_network(f"{name}-net")
    await client.create_volume(f"{name}-vol")
    await client.run_container(f"{name}-db", f"{name}-img:1", ["/bin/sleep", "300"])
    rule = denies(f"action.lookup('volume') == '{name}-vol' || action.lookup('network') == '{name}-net' || "
                  f"action.lookup('container') == '{name}-db'")
    create = [MANAGER_PATH, f"{MANAGER}.CreateContainer", f"{name}-new", f"{name}-img:1", "['/bin/true']"]
    try:
        async with rules.installed(name, rule, NOBODY):
            cases = [(f"{{'volumes': <['{name}-vol:/x']>}}", f"volume '{name}-vol'"),
                     (f"{{'volumes': <['{name}-vol:/x:ro']>}}", f"volume '{name}-vol'"),
                     (f"{{'networks': <['{name}-net']>}}", f"network '{name}-net'"),
                     (f"{{'networks': <['container:{name}-db']>}}", f"container '{name}-db'")]
            results = await asyncio.gather(*(run_as(NOBODY, "gdbus", "call", "--system", "--dest", BUS_NAME,
                                                    "--object-path", create[0], "--method", *create[1:], options)
                                             for options, _ in cases))
            for (options, words), r in zip(cases, results):
                assert denied(r, words), (options, r)
            assert [e.name for e in await client.list_containers()] == [f"{name}-db"]
            # The same create naming nothing guarded is let through.
            ok = await run_as(NOBODY, "gdbus", "call", "--system", "--dest", BUS_NAME, "--object-path", create[0],
                              "--method", *create[1:], "{'networks': <['none']>}")
            assert ok.returncode == 0, ok
    finally:
        await remove_what_was_made(client, name)
    assert image


def _journal(*matches: str) -> list[dict[str, str]]:
    out = subprocess.run(["journalctl", "-o", "json", "--no-pager", *matches], capture_output=True, text=True,
                         check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


async def test_every_decision_on_a_change_is_an_audit_entry_in_the_journal(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.create_container("", str(busybox_tar), ["/bin/true"])  # no name: one is made
    made = (await client.properties(path))["Name"]
    cid = path.rsplit("/", 1)[1]
    refused = await run_as(NOBODY, *busctl(path, CONTAINER, "Remove", "b", "false"))
    assert denied(refused), refused

    def with_refusal() -> list[dict[str, str]] | None:  # journald has each entry once its sender has written it
        entries = _journal(f"QUILT_OBJECT_ID={cid}")
        return entries if any(e["QUILT_RESULT"] == "denied" for e in entries) else None

    entries = await until(with_refusal, "the journal has no entry of the refusal", interval=0.05)
    no = [e for e in entries if e["QUILT_RESULT"] == "denied"]
    assert [(e["QUILT_ACTION"], e["QUILT_VERB"], e["QUILT_OBJECT_KIND"], e["QUILT_OBJECT_NAME"], e["QUILT_CALLER_UID"])
            for e in no] == [("org.quilt.runtime.manage", "remove", "container", made, "65534")]
    assert int(no[0]["QUILT_CALLER_PID"]) > 0
    # The create was root's, decided before the container had its id: found by the name it was given.
    created = _journal(f"QUILT_OBJECT_NAME={made}", "QUILT_VERB=create")
    assert [(e["QUILT_RESULT"], e["QUILT_CALLER_UID"]) for e in created] == [("allowed", "0")]


def example_rule_for_nobody() -> str:
    """The shipped example rule's body, for the user nobody instead of the group quilt."""
    text = EXAMPLE_RULE.read_text().replace('subject.isInGroup("quilt")', 'subject.user == "nobody"')
    return text[text.index("polkit.addRule(function(action, subject) {") + 43:text.rindex("});")]


async def streaming_as_nobody(*cmd: str) -> asyncio.subprocess.Process:
    """A command run as nobody whose output the test reads as it comes."""
    return await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={NOBODY[0]}", f"--regid={NOBODY[1]}", "--clear-groups", *cmd,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "HOME": "/"})


async def test_the_example_rule_confines_a_user_to_what_it_owns(client: Client, busybox_tar: Path, name: str) -> None:
    """The shipped rule, for the group quilt; here for the user nobody (the test host's users are the machine's:
    no group is added to them)."""
    assert EXAMPLE_RULE.read_text().count('subject.isInGroup("quilt")') == 1
    body = example_rule_for_nobody()
    roots = await client.run_container(f"{name}-root", str(busybox_tar), ["/bin/sleep", "300"],
                                       {"env": ["TOKEN=s3cr3t"]})
    image = await image_id(client)
    async with rules.installed(name, body, NOBODY):
        mine = await run_as(NOBODY, QUILTCTL, "run", "-d", "--name", f"{name}-mine", "-v", f"{name}-vol:/data",
                            image, "--", "sleep", "300")
        assert mine.returncode == 0, mine
        mine_path = await client.get_container(f"{name}-mine")
        assert (await client.properties(mine_path))["Owner"] == NOBODY[0]
        assert (await client.properties(roots))["Owner"] == 0
        vol = await client.get_volume(f"{name}-vol")
        owner = await run_as(None, "busctl", "get-property", BUS_NAME, vol, VOLUME, "Owner")
        assert owner.stdout.strip() == f"u {NOBODY[0]}", owner
        # The default network, which both are on, names to it only its own.
        on_net = await run_as(NOBODY, "busctl", "get-property", BUS_NAME, await client.get_network("quilt"),
                              NETWORK, "Containers")
        assert on_net.stdout.strip() == f'as 1 "{name}-mine"', on_net
        ps = await run_as(NOBODY, QUILTCTL, "ps", "-a")
        assert ps.returncode == 0 and f"{name}-mine" in ps.stdout and f"{name}-root" not in ps.stdout, ps
        inspected = await run_as(NOBODY, QUILTCTL, "inspect", f"{name}-mine")
        assert inspected.returncode == 0 and json.loads(inspected.stdout)[0]["Owner"] == NOBODY[0], inspected
        for cmd in ((QUILTCTL, "inspect", f"{name}-root"), (QUILTCTL, "logs", f"{name}-root"),
                    (QUILTCTL, "rm", "-f", f"{name}-root"), (QUILTCTL, "rm", f"{name}-no-such"),
                    (QUILTCTL, "exec", f"{name}-root", "env")):
            r = await run_as(NOBODY, *cmd)
            assert r.returncode != 0 and "s3cr3t" not in r.stdout + r.stderr, (cmd, r)
            (line,) = r.stderr.splitlines()
            assert line.startswith("quiltctl: ") and "ot authorized" in line, (cmd, line)
        # Its own: logs, exec, removal.
        assert (await run_as(NOBODY, QUILTCTL, "exec", f"{name}-mine", "true")).returncode == 0
        assert (await run_as(NOBODY, QUILTCTL, "rm", "-f", f"{name}-mine")).returncode == 0
        assert (await run_as(NOBODY, QUILTCTL, "volume", "rm", f"{name}-vol")).returncode == 0
    # Root sees root's, untouched, and nothing of nobody's is left.
    assert [(e.name, e.state) for e in await client.list_containers()] == [(f"{name}-root", "running")]
    assert f"{name}-vol" not in [n for n, _, _ in await client.list_volumes()]


async def _monitor(user: tuple[int, int] | None) -> asyncio.subprocess.Process:
    prefix = [] if user is None else ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups"]
    proc = await asyncio.create_subprocess_exec(*prefix, "gdbus", "monitor", "--system", "--dest", BUS_NAME,
                                                stdout=asyncio.subprocess.PIPE, env={**os.environ, "HOME": "/"})
    assert proc.stdout is not None
    # gdbus prints this once its match rule is in place.
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert b"Monitoring signals" in line, line
    return proc


async def test_signals_reach_root_and_no_one_else(client: Client, busybox_tar: Path, name: str) -> None:
    root_watch, nobody_watch = await _monitor(None), await _monitor(NOBODY)
    try:
        path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "exit 3"],
                                          {"env": ["TOKEN=s3cr3t"], "labels": {"k": "s3cr3t"}})
        await client.wait(path)
        await client.remove(path)
        seen = b""
        assert root_watch.stdout is not None
        while b"ContainerRemoved" not in seen:
            seen += await asyncio.wait_for(root_watch.stdout.readline(), 30)
        assert b"PropertiesChanged" in seen and b"s3cr3t" in seen  # the labels, in InterfacesAdded
    finally:
        for proc in (root_watch, nobody_watch):
            proc.send_signal(signal.SIGTERM)
    assert nobody_watch.stdout is not None
    rest = await asyncio.wait_for(nobody_watch.stdout.read(), 30)
    assert b"/org/quilt/Runtime" not in rest, rest
    await root_watch.wait()
    await nobody_watch.wait()


# Run as the subscriber: subscribes, then prints each relayed signal as a JSON line (member, path, its string
# arguments, destination).
SUBSCRIBER = r'''
import asyncio, json, sys
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    reply = await bus.call(Message(destination="org.quilt.Runtime", path="/org/quilt/Runtime",
                                   interface="org.quilt.Runtime.Manager", member="Subscribe"))
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    relay = reply.body[0]
    def seen(msg):
        if msg.message_type is MessageType.SIGNAL and msg.sender == relay:
            strings = [b for b in msg.body if isinstance(b, str)]
            print(json.dumps([msg.member, msg.path, strings, msg.destination]), flush=True)
    bus.add_message_handler(seen)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=[f"type='signal',sender='{relay}'"]))
    print(json.dumps(["ready", relay, [bus.unique_name], ""]), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''


async def relayed_until(subscriber: asyncio.subprocess.Process, member: str) -> list[list]:
    """The SUBSCRIBER's lines up to the first signal named member."""
    assert subscriber.stdout is not None
    lines: list[list] = []
    while not any(m == member for m, *_ in lines):
        lines.append(json.loads(await asyncio.wait_for(subscriber.stdout.readline(), 30)))
    return lines

async def test_a_subscriber_other_than_root_receives_the_signals_of_what_it_may_see_and_no_other(
        client: Client, busybox_tar: Path, name: str) -> None:
    body = example_rule_for_nobody()
    image = None
    async with rules.installed(name, body, NOBODY):
        proc = await streaming_as_nobody(str(PROJECT / ".venv/bin/python"), "-c", SUBSCRIBER)
        assert proc.stdout is not None
        try:
            _ready, relay, (me,), _ = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            assert _ready == "ready"
            roots = await client.run_container(f"{name}-root", str(busybox_tar), ["/bin/true"],
                                               {"labels": {"k": "s3cr3t"}})
            image = await image_id(client)
            mine = await run_as(NOBODY, QUILTCTL, "run", "--name", f"{name}-mine", image, "--", "true")
            assert mine.returncode == 0, mine
            await client.wait(roots)
            await client.remove(roots)
            gone = await run_as(NOBODY, QUILTCTL, "rm", f"{name}-mine")
            assert gone.returncode == 0, gone
            lines = await relayed_until(proc, "ContainerRemoved")
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    members = {m for m, *_ in lines}
    assert {"ContainerNew", "PropertiesChanged", "Event", "ContainerRemoved"} <= members, lines
    paths = {p for _, p, _, _ in lines}
    mine_ids = {strings[0] for m, _, strings, _ in lines if m == "ContainerNew"}
    assert len(mine_ids) == 1, lines
    (mine_id,) = mine_ids
    assert paths <= {"/org/quilt/Runtime", f"/org/quilt/Runtime/container/{mine_id}"}, lines
    assert {strings[1] for m, _, strings, _ in lines if m == "Event"} == {mine_id}, lines  # kind, id, details
    assert {strings[0] for m, _, strings, _ in lines if m == "ContainerRemoved"} == {mine_id}, lines
    assert not any("s3cr3t" in json.dumps(line) for line in lines)
    assert {d for *_, d in lines} == {me}  # addressed to it alone
    assert relay != me and image


async def test_a_caller_other_than_root_receives_the_progress_of_its_own_import_and_owns_what_it_brought_in(
        client: Client, name: str) -> None:
    readable = Path(tempfile.mkdtemp(prefix="quilt-progress-"))  # pytest's tmp_path is root's alone
    readable.chmod(0o755)
    (readable / "hello").write_text(f"content no image has yet: {name}\n")
    tar = readable / "hello.tar"
    subprocess.run(["tar", "-C", str(readable), "-cf", str(tar), "hello"], check=True)
    tar.chmod(0o644)
    grant = ('if (subject.user == "nobody" && (action.id == "org.quilt.runtime.manage"'
             ' || action.id == "org.quilt.runtime.read")) return polkit.Result.YES;')
    async with rules.installed(name, grant, NOBODY):
        spy = await streaming_as_nobody(str(PROJECT / ".venv/bin/python"), "-c", SUBSCRIBER)
        assert spy.stdout is not None
        try:
            assert json.loads(await asyncio.wait_for(spy.stdout.readline(), 30))[0] == "ready"
            # quiltctl draws the progress of its own import, from the copies addressed to it.
            mine = await run_as(NOBODY, QUILTCTL, "image", "import", str(tar), f"{name}:mine")
            assert mine.returncode == 0, mine
            assert mine.stderr and all(line.split()[0] in ("checking", "unpacking", "unpacked", "exists")
                                       for line in mine.stderr.splitlines()), mine.stderr
            again = await client.import_image(str(tar), f"{name}:root", {"job": f"{name}-root"})
            # The image is nobody's, who brought its content in first; root's import of it named it, no more.
            assert (await client.image_properties(again))["Owner"] == NOBODY[0]
            assert await client.get_image(f"{name}:mine") == again
            # The spy, subscribed as the same user, got neither job's progress: a volume of its own ends it.
            made = await run_as(NOBODY, QUILTCTL, "volume", "create", f"{name}-end")
            assert made.returncode == 0, made
            lines = await relayed_until(spy, "VolumeNew")
        finally:
            spy.send_signal(signal.SIGTERM)
            await spy.wait()
            for leftover in (client.remove_volume(f"{name}-end"), client.remove_image(f"{name}:mine"),
                             client.remove_image(f"{name}:root")):
                with contextlib.suppress(ClientError):  # what the test did not get to make
                    await leftover
            shutil.rmtree(readable)
    assert not any(m == "ImageProgress" for m, *_ in lines), lines


async def test_quiltctl_events_shows_a_confined_user_only_its_own_containers(
        client: Client, busybox_tar: Path, name: str) -> None:
    body = example_rule_for_nobody()
    since = f"{time.time() - 1:.6f}"  # the history from before the watch began, so that nothing is missed
    async with rules.installed(name, body, NOBODY):
        watch = await streaming_as_nobody(QUILTCTL, "events", "--json", "--since", since)
        assert watch.stdout is not None
        try:
            roots = await client.run_container(f"{name}-root", str(busybox_tar), ["/bin/true"])
            await client.wait(roots)
            root_id = (await client.properties(roots))["Id"]
            image = await image_id(client)
            mine = await run_as(NOBODY, QUILTCTL, "run", "-d", "--name", f"{name}-mine", image, "--", "true")
            assert mine.returncode == 0, mine
            mine_id = (await client.properties(await client.get_container(f"{name}-mine")))["Id"]
            assert (await run_as(NOBODY, QUILTCTL, "rm", "-f", f"{name}-mine")).returncode == 0
            await client.remove(roots)
            seen: list[dict] = []
            while not any(e["kind"] == "removed" and e["container_id"] == mine_id for e in seen):
                seen.append(json.loads(await asyncio.wait_for(watch.stdout.readline(), 30)))
        finally:
            watch.send_signal(signal.SIGTERM)
            await watch.wait()
    assert {e["kind"] for e in seen} >= {"created", "started", "removed"}, seen
    assert {e["container_id"] for e in seen} == {mine_id} and root_id not in json.dumps(seen), seen
