"""Authorization as a person sees it with busctl: unprivileged callers are refused whatever changes or reveals a
container, see nothing of what others own, and root passes; the polkit policy is installed and loaded.

Every action needs an administrator's password by default (auth_admin_keep; host and manage-privileged:
auth_admin). A process started with setpriv from a test (or a service, or cron) has no authentication agent to
ask it, so polkit answers "not authorized" and the agent replies AccessDenied, even with busctl's
ALLOW_INTERACTIVE_AUTHORIZATION flag set.
"""
from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from quilt_agent.client import Client
from tests.integration.waiting import until

PROJECT = Path(__file__).resolve().parents[3]
CONTRACT = PROJECT / "dbus/org.quilt.Runtime.xml"
POLICY = PROJECT / "polkit/org.quilt.runtime.policy"
BUS_NAME = "org.quilt.Runtime"
MANAGER_PATH = "/org/quilt/Runtime"
MANAGER = "org.quilt.Runtime.Manager"
CONTAINER = "org.quilt.Runtime.Container"
NETWORK = "org.quilt.Runtime.Network"
VOLUME = "org.quilt.Runtime.Volume"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
# Anyone may call these; each answers only what the caller may see (test_unprivileged_callers_see_nothing_...).
PUBLIC_METHODS = {"ListContainers", "ListContainerProperties", "GetContainer", "GetContainerProperties",
                  "ListImages", "GetImage", "ListNetworks", "GetNetwork", "ListVolumes", "GetVolume", "ListEvents",
                  "Subscribe", "Unsubscribe"}


def _passwd_user() -> tuple[int, int]:
    """A user of the test host's /etc/passwd other than root and nobody, a regular one if there is one."""
    users = [p for p in pwd.getpwall() if 0 < p.pw_uid < 65534]
    user = ([p for p in users if p.pw_uid >= 1000] or users)[0]
    return user.pw_uid, user.pw_gid


# (A uid with no passwd entry cannot even connect: dbus-daemon looks up its groups, fails and hangs up.)
USERS = {"nobody": (65534, 65534), "passwd-user": _passwd_user()}


async def run_as(user: tuple[int, int] | None, *cmd: str) -> subprocess.CompletedProcess:
    prefix = [] if user is None else ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups"]
    proc = await asyncio.create_subprocess_exec(*prefix, *cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env={**os.environ, "HOME": "/"})
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())


def refused(r: subprocess.CompletedProcess) -> bool:
    # busctl words org.freedesktop.DBus.Error.AccessDenied as "Access denied", whatever the message.
    return r.returncode != 0 and "Call failed: Access denied" in r.stderr


def contract_methods() -> list[tuple[str, str, str]]:
    """(interface, method, in-signature) for every method of the contract."""
    out = []
    for iface in ET.parse(CONTRACT).getroot().findall("interface"):
        for m in iface.findall("method"):
            sig = "".join(a.get("type", "") for a in m.findall("arg") if a.get("direction", "in") == "in")
            out.append((iface.get("name", ""), m.get("name", ""), sig))
    return out


def contract_properties() -> list[tuple[str, str]]:
    """(interface, property) for every property of the contract."""
    return [(iface.get("name", ""), p.get("name", "")) for iface in ET.parse(CONTRACT).getroot().findall("interface")
            for p in iface.findall("property")]


def busctl_args(iface: str, method: str, sig: str, path: str, new_name: str, image: Path) -> list[str]:
    args = {"ssasa{sv}": [new_name, str(image), "1", "/bin/true", "0"], "": [], "u": ["1"], "i": ["9"],
            "b": ["true"], "a{sv}": ["0"], "s": [new_name], "asa{sv}": ["1", "/bin/true", "0"],
            "as": ["1", "ready"],  # WaitCondition
            # Images: ImportImage, PullImage, RemoveImage.
            "ssa{sv}": [str(image), new_name, "0"], "sa{sv}": ["127.0.0.1:1/nothing", "0"], "sb": [new_name, "true"],
            "su": [new_name, "1"],  # Ping
            "ss": ["/etc/hostname", f"/tmp/{new_name}"]}[sig]  # CopyTo, CopyFrom
    return ["busctl", "call", BUS_NAME, path, iface, method, *([sig] if sig else []), *args]


@pytest.fixture
async def two_containers(client: Client, busybox_tar: Path, name: str) -> dict[str, str]:
    """A running container and a created one, by name -> object path."""
    running = await client.run_container(f"{name}-run", str(busybox_tar), ["/bin/sleep", "300"],
                                         {"env": ["SECRET=s3cr3t"]})
    created = await client.create_container(f"{name}-new", str(busybox_tar), ["/bin/true"], {})
    return {f"{name}-run": running, f"{name}-new": created}


@pytest.mark.parametrize("who", list(USERS))
async def test_unprivileged_callers_are_refused_every_method_but_list_and_get(
        client: Client, busybox_tar: Path, name: str, two_containers: dict[str, str], who: str) -> None:
    user = USERS[who]
    before = {e.path: (await client.properties(e.path)) for e in await client.list_containers()}
    calls = []
    for iface, method, sig in contract_methods():
        if method in PUBLIC_METHODS or "h" in sig:  # busctl cannot pass fds: test_exec.py refuses ExecWithFds
            continue
        if iface == "org.quilt.Runtime.Network":  # Remove, on the default network's object
            paths = [await client.get_network("quilt")]
        elif iface == "org.quilt.Runtime.Volume":  # Remove, on a volume made for the test
            paths = [await client.create_volume(f"{name}-vol")]
        else:
            paths = [MANAGER_PATH] if iface == MANAGER else list(two_containers.values())
        for path in paths:
            calls.append((method, path, busctl_args(iface, method, sig, path, f"{name}-{method.lower()}", busybox_tar)))
    assert {m for m, _, _ in calls} >= {"CreateContainer", "RunContainer", "Start", "Stop", "Kill", "Remove",
                                        "GetEnvironment", "GetLogs", "Wait"}
    results = await asyncio.gather(*(run_as(user, *cmd) for _, _, cmd in calls))
    for (method, path, _), r in zip(calls, results):
        assert refused(r), (method, path, r)
        assert "s3cr3t" not in r.stdout
    # Nothing was created, started, stopped, killed or removed.
    assert [n for n, _, _ in await client.list_volumes()] == [f"{name}-vol"]
    await client.remove_volume(f"{name}-vol")
    after = {e.path: (await client.properties(e.path)) for e in await client.list_containers()}
    assert after == before
    assert [p["State"] for p in after.values()] == ["running", "created"]
    assert len(os.listdir("/var/lib/quilt/containers")) == 2
    units = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "quilt-*.scope"],
                           capture_output=True, text=True, check=True).stdout
    assert [line.split()[0] for line in units.splitlines()] == [f"quilt-{name}-run.scope",
                                                                f"quilt-{name}-run:monitor.scope"]


def gdbus(path: str, method: str, *args: str) -> list[str]:
    return ["gdbus", "call", "--system", "--dest", BUS_NAME, "--object-path", path, "--method", method, *args]


async def test_the_refusal_is_access_denied_naming_the_verb_and_polkit_action(
        client: Client, busybox_tar: Path, name: str, two_containers: dict[str, str]) -> None:
    running = two_containers[f"{name}-run"]
    volume = await client.create_volume(f"{name}-vol")
    network = await client.get_network("quilt")
    manage = "org.quilt.runtime.manage"
    (image, *_) = [i.id for i in await client.list_images()]  # the busybox image, imported by the creates above
    cases = [
        (gdbus(MANAGER_PATH, f"{MANAGER}.CreateContainer", f"{name}-x", image, "['/bin/true']", "{}"),
         f"Not authorized to create container '{name}-x'", manage),
        (gdbus(MANAGER_PATH, f"{MANAGER}.CreateContainer", f"{name}-y", str(busybox_tar), "['/bin/true']", "{}"),
         f"Not authorized to create a container from a host file container '{name}-y'", "org.quilt.runtime.host"),
        (gdbus(running, f"{CONTAINER}.Stop", "1"), f"Not authorized to stop container '{name}-run'", manage),
        (gdbus(running, f"{CONTAINER}.GetEnvironment"), f"container '{name}-run'", manage),
        (gdbus(running, f"{CONTAINER}.GetLogs", "{}"), f"container '{name}-run'", "org.quilt.runtime.read"),
        # Objects that are not containers, and Manager methods about images, networks and volumes.
        (gdbus(network, f"{NETWORK}.Remove", "false"), "Not authorized to remove network 'quilt'",
         manage),
        (gdbus(volume, f"{VOLUME}.Remove", "false"), f"Not authorized to remove volume '{name}-vol'",
         manage),
        (gdbus(MANAGER_PATH, f"{MANAGER}.RemoveImage", "debian:12", "false"),
         "Not authorized to remove image 'debian:12'", manage),
        (gdbus(MANAGER_PATH, f"{MANAGER}.ImportImage", str(busybox_tar), f"{name}-img:v1", "{}"),
         f"Not authorized to import image '{name}-img:v1'", manage),
        (gdbus(MANAGER_PATH, f"{MANAGER}.PullImage", "127.0.0.1:1/nothing:v1", "{}"),
         "Not authorized to pull image '127.0.0.1:1/nothing:v1'", manage),
        (gdbus(MANAGER_PATH, f"{MANAGER}.CreateNetwork", f"{name}-net", "{}"),
         f"Not authorized to create network '{name}-net'", manage),
        (gdbus(MANAGER_PATH, f"{MANAGER}.RemoveVolume", f"{name}-vol", "false"),
         f"Not authorized to remove volume '{name}-vol'", manage),
        (gdbus(MANAGER_PATH, f"{MANAGER}.PruneVolumes"), "Not authorized to prune volumes (polkit action", manage),
    ]
    try:
        results = await asyncio.gather(*(run_as(USERS["nobody"], *cmd) for cmd, _, _ in cases))
    finally:
        await client.remove_volume(f"{name}-vol")
    for (cmd, words, action), r in zip(cases, results):
        assert r.returncode != 0, (cmd, r)
        assert f"GDBus.Error:{ACCESS_DENIED}: " in r.stderr and words in r.stderr and action in r.stderr, (cmd, r)
        if "container" not in words:
            assert "container" not in r.stderr, (cmd, r)


async def test_polkit_rules_see_the_subject_under_its_kind(
        client: Client, name: str, two_containers: dict[str, str]) -> None:
    """polkit's details name the subject by its kind: a rule granting nobody what is about NAME-new (container),
    NAME-img:v1 (image), NAME-net (network) and NAME-vol (volume) lets those calls through to the core, whose
    answer is then not AccessDenied; the same calls about other names stay refused."""
    rules = Path(f"/etc/polkit-1/rules.d/10-quilt-test-{name}.rules")
    granted = {"container": f"{name}-new", "image": f"{name}-img:v1", "network": f"{name}-net",
               "volume": f"{name}-vol"}
    rules.write_text(
        "polkit.addRule(function(action, subject) {\n"
        '    if (subject.user != "nobody" || action.id != "org.quilt.runtime.manage")\n'
        "        return polkit.Result.NOT_HANDLED;\n"
        f"    var granted = {json.dumps(granted)};\n"
        "    for (var kind in granted) if (action.lookup(kind) == granted[kind]) return polkit.Result.YES;\n"
        "    return polkit.Result.NOT_HANDLED;\n"
        "});\n")
    rules.chmod(0o644)
    created = two_containers[f"{name}-new"]
    let_through = [
        (gdbus(created, f"{CONTAINER}.Kill", "9"), "org.quilt.Runtime.Error.NotRunning"),
        (gdbus(MANAGER_PATH, f"{MANAGER}.RemoveImage", f"{name}-img:v1", "false"),
         "org.quilt.Runtime.Error.NoSuchImage"),
        (gdbus(MANAGER_PATH, f"{MANAGER}.RemoveNetwork", f"{name}-net", "false"),
         "org.quilt.Runtime.Error.NoSuchNetwork"),
        (gdbus(MANAGER_PATH, f"{MANAGER}.RemoveVolume", f"{name}-vol", "false"),
         "org.quilt.Runtime.Error.NoSuchVolume"),
    ]
    refused_still = [
        gdbus(two_containers[f"{name}-run"], f"{CONTAINER}.Kill", "9"),
        gdbus(MANAGER_PATH, f"{MANAGER}.RemoveImage", f"{name}-img:v2", "false"),
        gdbus(MANAGER_PATH, f"{MANAGER}.RemoveNetwork", f"{name}-vol", "false"),  # a volume's name, as a network
        gdbus(MANAGER_PATH, f"{MANAGER}.RemoveVolume", f"{name}-net", "false"),
    ]
    try:
        # polkitd reloads its rules when the directory changes (inotify): wait for it to have this one.
        async def loaded() -> bool:
            return ACCESS_DENIED not in (await run_as(USERS["nobody"], *let_through[1][0])).stderr

        await until(loaded, "polkitd did not load the rule", interval=0.1)
        results = await asyncio.gather(*(run_as(USERS["nobody"], *cmd) for cmd, _ in let_through))
        refusals = await asyncio.gather(*(run_as(USERS["nobody"], *cmd) for cmd in refused_still))
    finally:
        rules.unlink()
    for (cmd, error), r in zip(let_through, results):
        assert r.returncode != 0 and f"GDBus.Error:{error}: " in r.stderr, (cmd, r)
    for cmd, r in zip(refused_still, refusals):
        assert r.returncode != 0 and f"GDBus.Error:{ACCESS_DENIED}: " in r.stderr, (cmd, r)
    assert [p["State"] for p in [await client.properties(path) for path in two_containers.values()]] == [
        "running", "created"]


@pytest.mark.parametrize("who", ["nobody", "passwd-user"])
async def test_unprivileged_callers_see_nothing_of_what_others_own(
        client: Client, name: str, busybox_tar: Path, two_containers: dict[str, str], who: str) -> None:
    """Lists leave out what the caller may not see; a lookup of it is AccessDenied, by any alias, as is a lookup
    of what does not exist (names cannot be probed); no property of it is answered. Introspection and the
    Version stay public."""
    user = USERS[who]
    running = two_containers[f"{name}-run"]
    container_id = running.rsplit("/", 1)[1]
    network = await client.get_network("quilt")
    volume = await client.create_volume(f"{name}-vol")
    (image,) = {i.path for i in await client.list_images()}  # busybox, imported by the containers' create
    try:
        lists = await asyncio.gather(*(run_as(user, "busctl", "call", BUS_NAME, MANAGER_PATH, MANAGER, method,
                                              *args)
                                       for method, args in (("ListContainers", ()), ("ListContainerProperties", ("as", "0")),
                                                            ("ListImages", ()),
                                                            ("ListNetworks", ()), ("ListVolumes", ()),
                                                            ("ListEvents", ("a{sv}", "0")))))
        for r in lists:
            assert r.returncode == 0 and r.stdout.split()[1] == "0", r
        lookups = [("GetContainer", f"{name}-run"), ("GetContainerProperties", f"{name}-run"),
                   ("GetContainer", container_id), ("GetContainer", container_id[:12]),
                   ("GetContainer", f"{name}-no-such"), ("GetContainerProperties", f"{name}-no-such"), ("GetImage", image.rsplit("/", 1)[1]),
                   ("GetImage", image.rsplit("/", 1)[1][:12]), ("GetImage", f"sha256:{image.rsplit('/', 1)[1]}"),
                   ("GetNetwork", "quilt"), ("GetVolume", f"{name}-vol"), ("GetVolume", f"{name}-no-such")]
        found = await asyncio.gather(*(run_as(user, "busctl", "call", BUS_NAME, MANAGER_PATH, MANAGER, method, "s",
                                              arg) for method, arg in lookups))
        for (method, arg), r in zip(lookups, found):
            assert refused(r), (method, arg, r)
        objects = {CONTAINER: running, "org.quilt.Runtime.Image": image, NETWORK: network, VOLUME: volume}
        reads = [(objects[iface], iface, prop) for iface, prop in contract_properties() if iface in objects]
        assert len(reads) > 40 and {iface for _, iface, _ in reads} == set(objects)
        props = await asyncio.gather(*(run_as(user, "busctl", "get-property", BUS_NAME, path, iface, prop)
                                       for path, iface, prop in reads))
        for (path, iface, prop), r in zip(reads, props):
            assert r.returncode != 0 and r.stderr.strip().endswith(": Access denied"), (path, prop, r)
        everything = await run_as(user, "gdbus", "call", "--system", "--dest", BUS_NAME, "--object-path", running,
                                  "--method", "org.freedesktop.DBus.Properties.GetAll", CONTAINER)
        managed = await run_as(user, "gdbus", "call", "--system", "--dest", BUS_NAME, "--object-path", "/",
                               "--method", "org.freedesktop.DBus.ObjectManager.GetManagedObjects")
        for r in (everything, managed):
            assert r.returncode != 0 and "AccessDenied" in r.stderr and "s3cr3t" not in r.stdout + r.stderr, r
        version, introspected = await asyncio.gather(
            run_as(user, "busctl", "get-property", BUS_NAME, MANAGER_PATH, MANAGER, "Version"),
            run_as(user, "busctl", "call", BUS_NAME, running, "org.freedesktop.DBus.Introspectable", "Introspect"))
        assert version.returncode == 0 and re.fullmatch(r's "[^"]+"', version.stdout.strip()), version
        assert introspected.returncode == 0 and '"GetEnvironment\\"' in introspected.stdout, introspected
    finally:
        await client.remove_volume(f"{name}-vol")


async def test_root_callers_pass(client: Client, busybox_tar: Path, name: str) -> None:
    async def busctl(*args: str) -> str:
        r = await run_as(None, "busctl", *args)
        assert r.returncode == 0, (args, r)
        return r.stdout.strip()

    out = await busctl("call", "--", BUS_NAME, MANAGER_PATH, MANAGER, "CreateContainer", "ssasa{sv}", name,
                       str(busybox_tar), "3", "/bin/sh", "-c", "echo hello; exec sleep 300", "0")
    path = out.removeprefix('o "').removesuffix('"')
    await busctl("call", BUS_NAME, path, CONTAINER, "Start")
    assert "HOSTNAME=" in await busctl("call", BUS_NAME, path, CONTAINER, "GetEnvironment")
    await busctl("call", BUS_NAME, path, CONTAINER, "Kill", "i", "9")
    assert await busctl("call", BUS_NAME, path, CONTAINER, "Wait") == "i 137"
    assert '"hello"' in await busctl("call", BUS_NAME, path, CONTAINER, "GetLogs", "a{sv}", "0")
    await busctl("call", BUS_NAME, path, CONTAINER, "Stop", "u", "1")
    await busctl("call", BUS_NAME, path, CONTAINER, "Remove", "b", "false")
    assert await client.list_containers() == []


def policy_actions() -> dict[str, dict[str, str]]:
    out = {}
    for action in ET.parse(POLICY).getroot().findall("action"):
        defaults = action.find("defaults")
        assert defaults is not None
        out[action.get("id", "")] = {
            "description": (action.findtext("description") or "").strip(),
            "message": (action.findtext("message") or "").strip(),
            "implicit any": defaults.findtext("allow_any", ""),
            "implicit inactive": defaults.findtext("allow_inactive", ""),
            "implicit active": defaults.findtext("allow_active", ""),
        }
    return out


def test_the_policy_is_loaded_by_polkit_as_written() -> None:
    actions = policy_actions()
    assert set(actions) == {"org.quilt.runtime.read", "org.quilt.runtime.manage", "org.quilt.runtime.exec",
                            "org.quilt.runtime.host", "org.quilt.runtime.manage-privileged"}
    listed = subprocess.run(["pkaction"], capture_output=True, text=True, check=True, timeout=30).stdout.split()
    assert set(actions) <= set(listed)
    for action_id, expected in actions.items():
        out = subprocess.run(["pkaction", "--action-id", action_id, "--verbose"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        shown = dict(line.strip().split(":", 1) for line in out.splitlines()[1:] if ":" in line)
        assert {k: shown.get(k, "").strip() for k in expected} == expected, out
    # Managing is never granted without a password, even at the console; nor is seeing another's objects.
    assert actions["org.quilt.runtime.manage"]["implicit active"].startswith("auth_admin")
    assert actions["org.quilt.runtime.read"]["implicit active"].startswith("auth_admin")
    # Host paths opened as root for a caller, and options that hand the host to a container: an administrator
    # each time, never kept.
    assert actions["org.quilt.runtime.host"]["implicit active"] == "auth_admin"
    assert actions["org.quilt.runtime.manage-privileged"]["implicit active"] == "auth_admin"
