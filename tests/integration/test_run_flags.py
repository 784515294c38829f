"""create/run's Podman flags end to end: the option reaches the container (its /etc/hosts, /etc/resolv.conf,
capabilities, stop signal, command, published ports, environment), bad values are named errors that leave nothing
behind, and quiltctl exits as Podman's run does (125, 126, 127, or the container's own code)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent import capabilities
from quilt_agent.client import Client
from tests import imagetools
from tests.integration.bus import rules
from tests.integration.bus.rules import BUS_NAME, MANAGER, MANAGER_PATH, run_as
from tests.integration.bus.test_polkit import USERS
from tests.integration.cli.test_quiltctl import QUILT_ERROR, USAGE_ERROR, assert_one_error_line, ok, quiltctl
from tests.integration.test_bad_input import Check, nothing_left, refused  # noqa: F401 - nothing_left: a fixture
from tests.integration.waiting import log_line, until

NOBODY = USERS["nobody"]


async def output_of(client: Client, name: str, image: str, command: list[str], options: dict | None = None,
                    code: int = 0) -> list[str]:
    """Run a container to its end; its output lines."""
    path = await client.run_container(name, image, command, options or {})
    assert await asyncio.wait_for(client.wait(path), 20) == code
    return [line.text for line in await client.get_logs(path, {})]


def cap_eff(lines: list[str]) -> int:
    (line,) = [x for x in lines if x.startswith("CapEff:")]
    return int(line.split()[1], 16)


# --- /etc/hosts and /etc/resolv.conf ------------------------------------------------------------


async def test_add_hosts_come_first_in_etc_hosts(client: Client, busybox_tar: Path, name: str) -> None:
    lines = await output_of(client, name, str(busybox_tar), ["/bin/cat", "/etc/hosts"],
                            {"add_hosts": ["db:10.0.0.5", "db.example:fd00::5", "v6:[::1]"]})
    assert lines[:3] == ["10.0.0.5\tdb", "fd00::5\tdb.example", "::1\tv6"], lines
    assert any(line.startswith("127.0.0.1\tlocalhost") for line in lines), lines


async def test_dns_flags_replace_the_networks_servers_and_search_and_add_options(
        client: Client, busybox_tar: Path, name: str) -> None:
    lines = await output_of(client, name, str(busybox_tar), ["/bin/cat", "/etc/resolv.conf"],
                            {"dns_servers": ["192.0.2.53", "192.0.2.54"], "dns_search": ["a.example", "b.example"],
                             "dns_options": ["ndots:2", "edns0"]})
    assert lines == ["search a.example b.example", "nameserver 192.0.2.53", "nameserver 192.0.2.54",
                     "options ndots:2 edns0"], lines
    # Without them, the network's name server and domain, as before.
    default = await output_of(client, f"{name}-d", str(busybox_tar), ["/bin/cat", "/etc/resolv.conf"])
    assert default == ["search dns.quilt", "nameserver 10.89.0.1"], default
    # '.' alone: no search line; the network's server stays.
    none = await output_of(client, f"{name}-n", str(busybox_tar), ["/bin/cat", "/etc/resolv.conf"],
                           {"dns_search": ["."]})
    assert none == ["nameserver 10.89.0.1"], none


def test_quiltctl_add_host_and_dns_flags_reach_the_files(busybox_tar: Path, name: str) -> None:
    out = ok("run", "--rm", "--name", name, "--add-host", "db:10.0.0.5", "--dns", "192.0.2.1", "--dns-search",
             "example.com", "--dns-option", "ndots:3", str(busybox_tar), "/bin/cat", "/etc/hosts", "/etc/resolv.conf")
    lines = out.splitlines()
    assert lines[0] == "10.0.0.5\tdb", lines
    assert lines[-3:] == ["search example.com", "nameserver 192.0.2.1", "options ndots:3"], lines


# --- capabilities ---------------------------------------------------------------------------------


async def test_cap_add_and_cap_drop_make_the_containers_set(client: Client, busybox_tar: Path, name: str) -> None:
    status = ["/bin/cat", "/proc/self/status"]
    image = str(busybox_tar)
    assert cap_eff(await output_of(client, name, image, status)) == capabilities.DEFAULT_MASK
    added = cap_eff(await output_of(client, f"{name}-a", image, status,
                                    {"cap_add": ["cap_net_raw"], "cap_drop": ["CHOWN", "cap_kill"]}))
    assert added == (capabilities.DEFAULT_MASK | 1 << 13) & ~(1 << 0 | 1 << 5), hex(added)
    only = cap_eff(await output_of(client, f"{name}-o", image, status,
                                   {"cap_drop": ["ALL"], "cap_add": ["NET_BIND_SERVICE"]}))
    assert only == 1 << 10, hex(only)
    none = cap_eff(await output_of(client, f"{name}-z", image, status, {"cap_drop": ["all"]}))
    assert none == 0
    # A user other than root has none, whatever the set (as in Podman); it still starts with SETUID dropped.
    user = await output_of(client, f"{name}-u", image, status, {"user": "1000", "cap_drop": ["SETUID", "SETGID"]})
    assert cap_eff(user) == 0


async def test_an_exec_gets_the_containers_capability_set(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"],
                                      {"cap_drop": ["ALL"], "cap_add": ["KILL"]})
    result = await client.exec(path, ["/bin/cat", "/proc/self/status"])
    lines = result.stdout.decode().splitlines()
    assert cap_eff(lines) == 1 << 5
    (bounding,) = [x for x in lines if x.startswith("CapBnd:")]
    assert int(bounding.split()[1], 16) == 1 << 5


async def test_adding_a_capability_beyond_the_default_set_needs_the_privileged_action(
        client: Client, busybox_tar: Path, name: str) -> None:
    """nobody may manage (a rule says YES) but not manage-privileged (auth_admin, no agent to ask): a create that
    adds NET_RAW is refused; adding one of the default set, or dropping any, is not."""
    await client.import_image(str(busybox_tar), f"{name}-img:1")
    body = ("    if (subject.user != 'nobody' || action.id.indexOf('org.quilt.runtime.') != 0)\n"
            "        return polkit.Result.NOT_HANDLED;\n"
            "    if (action.id == 'org.quilt.runtime.manage-privileged' &&\n"
            "        action.lookup('privileged') == 'cap-add:SYS_TIME') return polkit.Result.YES;\n"
            "    if (action.id == 'org.quilt.runtime.manage-privileged' || action.id == 'org.quilt.runtime.host')\n"
            "        return polkit.Result.NOT_HANDLED;\n"
            "    return polkit.Result.YES;")

    def create(suffix: str, key: str, *caps: str) -> list[str]:
        return ["busctl", "call", BUS_NAME, MANAGER_PATH, MANAGER, "CreateContainer", "ssasa{sv}",
                f"{name}-{suffix}", f"{name}-img:1", "1", "/bin/true", "1", key, "as", str(len(caps)), *caps]

    try:
        async with rules.installed(name, body, NOBODY):
            refused_ = await run_as(NOBODY, *create("raw", "cap_add", "NET_RAW"))
            assert refused_.returncode != 0 and "Access denied" in refused_.stderr, refused_
            everything = await run_as(NOBODY, *create("all", "cap_add", "ALL"))
            assert everything.returncode != 0 and "Access denied" in everything.stderr, everything
            for suffix, key, caps in (("chown", "cap_add", ("CAP_CHOWN",)), ("drop", "cap_drop", ("ALL",)),
                                      ("time", "cap_add", ("SYS_TIME",))):  # the rule allows this one by name
                r = await run_as(NOBODY, *create(suffix, key, *caps))
                assert r.returncode == 0, (suffix, r)
        names = sorted(e.name for e in await client.list_containers())
        assert names == [f"{name}-chown", f"{name}-drop", f"{name}-time"], names
    finally:
        for entry in await client.list_containers():
            await client.remove(entry.path, force=True)
        await client.remove_image(f"{name}-img:1")


# --- stop signal ----------------------------------------------------------------------------------


async def test_stop_sends_the_stop_signal_given(client: Client, busybox_tar: Path, name: str) -> None:
    script = "trap 'echo got USR1; exit 0' USR1; echo ready; while :; do sleep 0.1; done"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script], {"stop_signal": "SIGUSR1"})
    assert (await client.properties(path))["StopSignal"] == 10
    await log_line(client, path, "ready")
    await client.stop(path, 10)
    props = await client.properties(path)
    assert (props["ExitCode"], props["ExitSignal"]) == (0, 0), props
    # (Every process of its scope gets it: the shell may also report its `sleep` ended by it.)
    lines = [line.text for line in await client.get_logs(path, {})]
    assert lines[0] == "ready" and "got USR1" in lines, lines


async def test_the_stop_signal_given_wins_over_the_images(client: Client, busybox_tar: Path, name: str) -> None:
    await client.import_image(str(busybox_tar), f"{name}-img:1", {"stop_signal": "SIGINT", "cmd": ["/bin/true"]})
    try:
        given = await client.create_container(name, f"{name}-img:1", [], {"stop_signal": "RTMIN+3"})
        assert (await client.properties(given))["StopSignal"] == signal.SIGRTMIN + 3
        image = await client.create_container(f"{name}-i", f"{name}-img:1", [], {})
        assert (await client.properties(image))["StopSignal"] == 2
    finally:
        for entry in await client.list_containers():
            await client.remove(entry.path, force=True)
        await client.remove_image(f"{name}-img:1")


# --- entrypoint -------------------------------------------------------------------------------------


async def test_an_entrypoint_replaces_the_images_and_drops_its_cmd(client: Client, busybox_tar: Path,
                                                                   name: str) -> None:
    await client.import_image(str(busybox_tar), f"{name}-img:1",
                              {"entrypoint": ["/bin/echo", "image-entrypoint"], "cmd": ["image-cmd"]})
    image = f"{name}-img:1"
    try:
        assert await output_of(client, f"{name}-0", image, []) == ["image-entrypoint image-cmd"]
        assert await output_of(client, f"{name}-1", image, ["given"]) == ["image-entrypoint given"]
        # Given: the image's Cmd is not used (as Podman's --entrypoint).
        assert await output_of(client, f"{name}-2", image, [], {"entrypoint": ["/bin/echo", "mine"]}) == ["mine"]
        assert await output_of(client, f"{name}-3", image, ["x"], {"entrypoint": ["/bin/echo"]}) == ["x"]
        # Cleared ('' on the command line): the command alone.
        assert await output_of(client, f"{name}-4", image, ["/bin/echo", "alone"], {"entrypoint": [""]}) == ["alone"]
        await refused(client.create_container(f"{name}-5", image, [], {"entrypoint": []}), "InvalidArgument",
                      "command is empty", "empty entrypoint")
    finally:
        for entry in await client.list_containers():
            await client.remove(entry.path, force=True)
        await client.remove_image(f"{name}-img:1")


def test_quiltctl_entrypoint_takes_a_string_or_a_json_array(busybox_tar: Path, name: str) -> None:
    image = str(busybox_tar)
    assert ok("run", "--rm", "--entrypoint", "/bin/echo", image, "a b") == "a b\n"
    assert ok("run", "--rm", "--entrypoint", '["/bin/echo", "-n", "x"]', image, "y") == "x y\n"  # a log line
    assert ok("run", "--rm", "--entrypoint", "", image, "/bin/echo", "z") == "z\n"
    assert_one_error_line(quiltctl("run", "--rm", "--entrypoint", '["/bin/echo", 1]', image), USAGE_ERROR,
                          "JSON array of strings")


# --- published ports -------------------------------------------------------------------------------


def _http_get(port: int) -> bytes:
    """What the server on the host's port answers GET /index.html, b"" while nothing does."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data
    except OSError:
        return b""


def _host_port(ports: list[str], container_port: str) -> int:
    (mapping,) = [p for p in ports if p.endswith(":" + container_port)]
    return int(mapping.rsplit(":", 2)[-2])


async def test_a_port_without_a_host_port_gets_a_free_one_held_until_removal(client: Client, busybox_tar: Path,
                                                                             name: str) -> None:
    web = ["/bin/sh", "-c", "mkdir -p /www; echo free > /www/index.html; exec httpd -f -p 80 -h /www"]
    path = await client.run_container(name, str(busybox_tar), web, {"ports": ["80", "127.0.0.1::81/udp"]})
    ports = (await client.properties(path))["Ports"]
    port = _host_port(ports, "80/tcp")
    udp = _host_port(ports, "81/udp")
    assert 1024 <= port <= 65535 and 1024 <= udp <= 65535, ports
    assert f"127.0.0.1:{udp}:81/udp" in ports, ports
    with socket.socket() as taken:  # held by the agent: a process of the host cannot take it
        with pytest.raises(OSError):
            taken.bind(("0.0.0.0", port))
    await until(lambda: _http_get(port).endswith(b"free\n"), f"nothing answers on 127.0.0.1:{port}")
    # The same port again after a stop and start: it is the container's until its removal.
    await client.stop(path, 1)
    await client.start(path)
    assert (await client.properties(path))["Ports"] == ports
    await client.remove(path, force=True)
    with socket.socket() as free:
        free.bind(("0.0.0.0", port))


async def test_publish_all_publishes_each_exposed_port_to_a_free_host_port(
        client: Client, busybox_tar: Path, name: str, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    imagetools.oci_layout(layout, "v1", [imagetools.busybox],
                          ["--config.cmd=/bin/true", "--config.exposedports=80/tcp",
                           "--config.exposedports=53/udp", "--config.exposedports=8080/tcp"])
    await client.import_image(str(layout), f"{name}-img:1", {"ref": "v1"})
    try:
        path = await client.create_container(name, f"{name}-img:1", [],
                                             {"publish_all": True, "ports": ["9999:8080"]})
        ports = (await client.properties(path))["Ports"]
        assert len(ports) == 3 and "9999:8080/tcp" in ports, ports
        assert _host_port(ports, "80/tcp") > 1023 and _host_port(ports, "53/udp") > 1023, ports
        await refused(client.create_container(f"{name}-n", f"{name}-img:1", [],
                                              {"publish_all": True, "networks": ["none"]}),
                      "InvalidArgument", "publish_all", "needs a network")
    finally:
        for entry in await client.list_containers():
            await client.remove(entry.path, force=True)
        await client.remove_image(f"{name}-img:1")


def test_quiltctl_publish_without_a_host_port_shows_the_chosen_one(busybox_tar: Path, name: str) -> None:
    ok("create", "--name", name, "-p", "80", str(busybox_tar), "/bin/true")
    try:
        (props,) = json.loads(ok("inspect", name))
        chosen = _host_port(props["Ports"], "80/tcp")
        assert chosen > 1023, props["Ports"]
        assert ok("port", name, "80") == f"0.0.0.0:{chosen}\n"
    finally:
        ok("rm", name)


# --- environment ----------------------------------------------------------------------------------------


def test_env_file_and_a_bare_env_name_pass_values(busybox_tar: Path, name: str, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("# a comment\n\nFROM_FILE=file value\n  INDENTED=yes\nOVERRIDDEN=file\nPASSED\n"
                        "UNSET_HERE\nEQUALS=a=b\n")
    environ = {**os.environ, "PASSED": "from shell", "SHELL_ONLY": "shell"}
    environ.pop("UNSET_HERE", None)
    environ.pop("ALSO_UNSET", None)
    result = quiltctl("run", "--rm", "--env-file", str(env_file), "-e", "OVERRIDDEN=flag", "-e", "SHELL_ONLY",
                      "-e", "ALSO_UNSET", str(busybox_tar), "/bin/env", env=environ)
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert {k: env.get(k) for k in ("FROM_FILE", "INDENTED", "OVERRIDDEN", "PASSED", "EQUALS", "SHELL_ONLY")} == {
        "FROM_FILE": "file value", "INDENTED": "yes", "OVERRIDDEN": "flag", "PASSED": "from shell",
        "EQUALS": "a=b", "SHELL_ONLY": "shell"}, env
    assert "UNSET_HERE" not in env and "ALSO_UNSET" not in env, env


def test_a_bad_env_file_is_one_usage_line_naming_it(busybox_tar: Path, tmp_path: Path) -> None:
    assert_one_error_line(quiltctl("run", "--env-file", str(tmp_path / "missing.env"), str(busybox_tar), "true"),
                          USAGE_ERROR, "missing.env")
    bad = tmp_path / "bad.env"
    bad.write_text("GOOD=1\nBAD KEY=2\n")
    assert_one_error_line(quiltctl("run", "--env-file", str(bad), str(busybox_tar), "true"), USAGE_ERROR,
                          "bad.env, line 2")


# --- exit codes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, code, error", [
    (["/no/such/program"], 127, "not found"),
    (["no-such-program"], 127, "not found"),
    (["/etc/passwd"], 126, "permission denied"),
    (["/etc"], 126, "permission denied"),
])
@pytest.mark.parametrize("mode", [["--rm"], [], ["-d"], ["--init"]], ids=["rm", "plain", "detached", "init"])
def test_run_exits_126_or_127_when_the_command_cannot_be_run(busybox_tar: Path, name: str, command: list[str],
                                                             code: int, error: str, mode: list[str]) -> None:
    result = quiltctl("run", *mode, "--name", name, str(busybox_tar), *command)
    try:
        assert_one_error_line(result, code, error, command[0])
        if mode == ["--rm"]:
            assert quiltctl("inspect", name).returncode == QUILT_ERROR  # removed all the same
    finally:
        quiltctl("rm", "-f", name)


def test_run_exits_with_the_containers_code_or_125_for_quilts_errors(busybox_tar: Path, name: str) -> None:
    assert quiltctl("run", "--rm", str(busybox_tar), "/bin/sh", "-c", "exit 7").returncode == 7
    assert quiltctl("run", "--rm", str(busybox_tar), "/bin/sh", "-c", "exit 126").returncode == 126
    assert_one_error_line(quiltctl("run", "--rm", "no-such-image:1", "/bin/true"), QUILT_ERROR, "no-such-image")
    assert_one_error_line(quiltctl("run", "--rm", "--cap-add", "NOT_A_CAP", str(busybox_tar), "/bin/true"),
                          QUILT_ERROR, "NOT_A_CAP")


def test_exec_exits_126_or_127_when_the_command_cannot_be_run(busybox_tar: Path, name: str) -> None:
    ok("run", "-d", "--name", name, str(busybox_tar), "/bin/sleep", "300")
    try:
        assert quiltctl("exec", name, "/etc/passwd").returncode == 126
        assert quiltctl("exec", name, "/no/such/program").returncode == 127
        assert quiltctl("exec", name, "/bin/sh", "-c", "exit 3").returncode == 3
    finally:
        ok("rm", "-f", name)


# --- rm -a, kill -a ---------------------------------------------------------------------------------------


def test_rm_all_removes_what_does_not_run_and_with_force_the_rest(client: Client, busybox_tar: Path,
                                                                  name: str) -> None:
    assert ok("ps", "-a", "-q") == ""  # every container there is is this test's
    ok("create", "--name", f"{name}-c", str(busybox_tar), "/bin/true")
    ok("run", "--name", f"{name}-e", str(busybox_tar), "/bin/true")
    ok("run", "-d", "--name", f"{name}-r", str(busybox_tar), "/bin/sleep", "300")
    try:
        assert sorted(ok("rm", "-a").split()) == [f"{name}-c", f"{name}-e"]
        assert ok("ps", "-a", "-q").split() != []
        assert ok("rm", "-a", "-f").split() == [f"{name}-r"]
        assert ok("ps", "-a", "-q") == ""
        assert ok("rm", "--all") == ""  # nothing left: nothing to do
    finally:
        quiltctl("rm", "-f", f"{name}-c", f"{name}-e", f"{name}-r")


def test_kill_all_signals_every_running_container(client: Client, busybox_tar: Path, name: str) -> None:
    assert ok("ps", "-q") == ""  # every running container is this test's
    ok("run", "-d", "--name", f"{name}-1", str(busybox_tar), "/bin/sleep", "300")
    ok("run", "-d", "--name", f"{name}-2", str(busybox_tar), "/bin/sleep", "300")
    try:
        assert sorted(ok("kill", "-a").split()) == [f"{name}-1", f"{name}-2"]
        assert ok("wait", f"{name}-1", f"{name}-2").split() == ["137", "137"]
    finally:
        quiltctl("rm", "-f", f"{name}-1", f"{name}-2")


@pytest.mark.parametrize("verb", ["rm", "kill"])
def test_all_and_names_together_are_a_usage_error(verb: str) -> None:
    assert_one_error_line(quiltctl(verb, "-a", "x"), USAGE_ERROR, "-a")
    assert_one_error_line(quiltctl(verb), USAGE_ERROR, "-a")


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value, needle", [
    ("cap_add", ["NET_RAWR"], "'NET_RAWR'"),
    ("cap_add", Variant("s", "NET_RAW"), "list of strings"),
    ("cap_drop", [""], "not a capability"),
    ("cap_add", ["ALL"], "contradict"),  # with cap_drop ALL below
    ("stop_signal", "SIGNOPE", "'SIGNOPE'"),
    ("stop_signal", "0", "not a signal"),
    ("stop_signal", "RTMIN+99", "not a signal"),
    ("add_hosts", ["db"], "HOST:IP"),
    ("add_hosts", ["db:10.0.0"], "'10.0.0' is not an IP address"),
    ("add_hosts", ["bad host:10.0.0.1"], "HOST:IP"),
    ("dns_servers", ["dns.example"], "not an IP address"),
    ("dns_search", ["bad domain"], "not a DNS name"),
    ("dns_search", [".", "a.example"], "cannot be combined"),
    ("dns_options", ["ndots 2"], "resolv.conf option"),
    ("entrypoint", ["", "x"], "its program is empty"),
    ("entrypoint", Variant("s", "/bin/sh"), "list of strings"),
    ("publish_all", Variant("s", "yes"), "a boolean"),
    ("ports", ["80:0"], "between 1 and 65535"),
])
async def test_bad_run_flag_options_are_invalid_argument_and_leave_nothing(
        client: Client, busybox_tar: Path, nothing_left: Check, key: str, value: object, needle: str) -> None:
    options = {key: value, **({"cap_drop": ["ALL"]} if value == ["ALL"] else {})}
    await refused(client.create_container("", str(busybox_tar), ["/bin/true"], options), "InvalidArgument", needle)
    await refused(client.run_container("", str(busybox_tar), ["/bin/true"], options), "InvalidArgument", needle)
    await nothing_left(busybox_tar)


async def test_a_capability_both_added_and_dropped_is_refused(client: Client, busybox_tar: Path) -> None:
    await refused(client.create_container("", str(busybox_tar), ["/bin/true"],
                                          {"cap_add": ["NET_RAW"], "cap_drop": ["cap_net_raw"]}),
                  "InvalidArgument", "capability 'NET_RAW' cannot be both added and dropped")


def test_quiltctl_shows_the_agents_word_on_a_bad_flag_value(busybox_tar: Path) -> None:
    for flags, needle in ((["--stop-signal", "NOPE"], "stop_signal"), (["--add-host", "x"], "HOST:IP"),
                          (["--dns", "x"], "not an IP address"), (["--cap-drop", "BOGUS"], "BOGUS")):
        assert_one_error_line(quiltctl("run", "--rm", *flags, str(busybox_tar), "/bin/true"), QUILT_ERROR, needle)
