"""Container files (quilt_agent/unitfiles.py): systemd's syntax, every [Container], [Network] and [Volume] key and
the create options it becomes, each bad input with its line, the directories' precedence and masking, the services
rendered, and the .container text of an existing container's properties."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from quilt_agent import unitfiles
from quilt_agent.unitfiles import ContainerFile, NetworkFile, UnitFileError, VolumeFile

NAMES = {"db.network": "db", "data.volume": "data", "store.volume": "bucket", "proxy.container": "front"}


def parsed(text: str, file_name: str = "web.container", directory: str = "/etc/quilt/containers") \
        -> unitfiles.ParsedFile:
    return unitfiles.parse_text(os.path.join(directory, file_name), textwrap.dedent(text))


def container(body: str, head: str = "", file_name: str = "web.container") -> ContainerFile:
    """A .container file of [Container] Image=busybox plus body's lines."""
    return unitfiles.parse_container(parsed(f"{head}\n[Container]\nImage=busybox\n{textwrap.dedent(body)}",
                                            file_name), NAMES)


def error(text: str, file_name: str = "web.container") -> UnitFileError:
    with pytest.raises(UnitFileError) as caught:
        unitfiles.convert(parsed(text, file_name), NAMES)
    return caught.value


# --- the syntax ------------------------------------------------------------------------------------------------


def test_sections_keys_and_comments_are_read_as_systemd_reads_them() -> None:
    p = parsed("""\
        # a comment
        ; another
        [Unit]
        Description = a web server   
          After=x.service

        [Container]
        Image=busybox
        """)
    assert p.sections == {
        "Unit": [unitfiles.Entry("Description", "a web server", 4), unitfiles.Entry("After", "x.service", 5)],
        "Container": [unitfiles.Entry("Image", "busybox", 8)],
    }
    assert p.section_lines == {"Unit": 3, "Container": 7}


def test_a_trailing_backslash_continues_the_line_and_comments_inside_are_skipped() -> None:
    p = parsed("""\
        [Container]
        Exec=/bin/echo one \\
        # not part of it
          two \\
        three
        Image=x
        """)
    assert p.entries("Container") == [unitfiles.Entry("Exec", "/bin/echo one  two  three", 2),
                                      unitfiles.Entry("Image", "x", 6)]


def test_an_escaped_backslash_at_the_end_is_no_continuation() -> None:
    p = parsed("[Container]\nExec=echo a\\\\\nImage=x\n")
    assert [e.value for e in p.entries("Container")] == ["echo a\\\\", "x"]


def test_a_section_given_twice_is_one() -> None:
    p = parsed("[Container]\nImage=a\n[Service]\nRestart=always\n[Container]\nExec=true\n")
    assert [e.key for e in p.entries("Container")] == ["Image", "Exec"]


def test_a_byte_order_mark_is_skipped() -> None:
    assert parsed("\ufeff[Container]\nImage=x\n").entries("Container")[0].value == "x"


@pytest.mark.parametrize("text, line, reason", [
    ("Image=x\n", 1, "before the first [Section]"),
    ("[Container]\nImage x\n", 2, "neither KEY=VALUE nor a [Section]"),
    ("[Container]\n[Service\n", 2, "not a section header"),
    ("[Container]\n=x\n", 2, "not a key name"),
    ("[Container]\nIm age=x\n", 2, "not a key name"),
])
def test_a_line_that_is_not_the_syntax_is_an_error_on_its_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(UnitFileError) as caught:
        parsed(text)
    assert caught.value.line == line and reason in caught.value.reason


def test_a_file_that_is_not_utf8_is_an_error_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "web.container"
    path.write_bytes(b"[Container]\nImage=\xff\n")
    with pytest.raises(UnitFileError) as caught:
        unitfiles.read_file(str(path))
    assert (caught.value.line, caught.value.reason) == (2, "not UTF-8 text")


# --- words, quoting and the other value types ------------------------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ("a b\tc", ["a", "b", "c"]),
    ('"a b" \'c d\'', ["a b", "c d"]),
    ('FOO="bar baz" X=1', ["FOO=bar baz", "X=1"]),  # quotes inside a word, as systemd takes them
    (r'"a\"b" "c\\d"', ['a"b', "c\\d"]),
    (r"'single\ttab'", ["single\ttab"]),  # escapes work inside single quotes too (shlex would not)
    (r"\x41\101\u00e9\U0001F600", ["AAé\U0001F600"]),
    (r"a\sb a\ b", ["a b", "a b"]),
    (r"line\nbreak", ["line\nbreak"]),
    ('""', [""]),
    ("#not-a-comment ;nor-this", ["#not-a-comment", ";nor-this"]),
    ("   ", []),
])
def test_words_split_as_systemd_command_lines(text: str, words: list[str]) -> None:
    assert unitfiles.split_words(text) == words


@pytest.mark.parametrize("text, reason", [
    ('"open', "not closed"),
    ("'open", "not closed"),
    (r"\q", "unknown escape"),
    (r"\x4", "2 hexadecimal digits"),
    (r"\x00", "not a character"),
    ("end\\", "lone backslash"),
])
def test_bad_words_are_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        unitfiles.split_words(text)


@pytest.mark.parametrize("word", ["plain", "two words", 'quo"te', "back\\slash", "tab\tnew\nline", "", "it's",
                                  "\x01ctrl", "100%", "$HOME"])
def test_a_quoted_word_splits_back_to_itself(word: str) -> None:
    assert unitfiles.split_words(unitfiles.quote_word(word)) == [word]


def test_plain_words_are_not_quoted() -> None:
    assert unitfiles.quote_words(["/bin/sh", "-c", "echo hi"]) == '/bin/sh -c "echo hi"'


@pytest.mark.parametrize("text, seconds", [
    ("30", 30.0), ("30s", 30.0), ("1m30s", 90.0), ("1min 30s", 90.0), ("500ms", 0.5), ("1.5h", 5400.0),
    ("2 h", 7200.0), ("1d", 86400.0), ("250us", 0.00025), (".5s", 0.5), ("1w", 604800.0),
])
def test_time_spans_take_systemd_and_go_spellings(text: str, seconds: float) -> None:
    assert unitfiles.parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1M", "-1s", "1s 2q", "infinity"])
def test_bad_time_spans(text: str) -> None:
    with pytest.raises(ValueError):
        unitfiles.parse_timespan(text)


@pytest.mark.parametrize("text, size", [("512M", 512 << 20), ("20g", 20 << 30), ("1.5G", 3 << 29),
                                        ("512MiB", 512 << 20), ("100000", 100000), ("64k", 64 << 10)])
def test_sizes_take_binary_suffixes(text: str, size: int) -> None:
    assert unitfiles.parse_size(text) == size


@pytest.mark.parametrize("text, value", [("yes", True), ("On", True), ("1", True), ("t", True), ("no", False),
                                         ("FALSE", False), ("0", False), ("off", False)])
def test_booleans(text: str, value: bool) -> None:
    assert unitfiles.parse_boolean(text) is value


@pytest.mark.parametrize("text, name", [("TERM", "SIGTERM"), ("sigint", "SIGINT"), ("9", "SIGKILL"),
                                        ("SIGRTMIN", "SIGRTMIN")])
def test_signals(text: str, name: str) -> None:
    assert unitfiles.parse_signal_name(text) == name


# --- [Container]: every key ------------------------------------------------------------------------------------


def test_a_minimal_file_is_named_after_the_file() -> None:
    c = container("")
    assert (c.name, c.service, c.image, c.command, c.options) == ("web", "web.service", "busybox", (), {})
    assert (c.stop_signal, c.stop_timeout, c.requires, c.environment_files) == ("SIGTERM", 10, (), ())


def test_every_container_key_becomes_its_create_option() -> None:
    c = container("""\
        Exec=/bin/sh -c "echo hi; sleep 1"
        ContainerName=webby
        Environment=A=1 "B=two words"
        Environment=C=x\\ty
        PublishPort=8080:80
        PublishPort=127.0.0.1:53:53/udp
        Volume=data.volume:/data:ro
        Volume=/srv/www:/www
        Volume=/scratch
        Network=db.network
        NetworkAlias=www
        IP=10.89.0.9
        HostName=box
        User=1000
        Group=100
        WorkingDir=/srv
        ReadOnly=yes
        Tmpfs=/run:size=8m
        Label=app=web "team=a b"
        HealthCmd=wget -q -O- http://localhost/
        HealthInterval=1m30s
        HealthTimeout=5s
        HealthRetries=4
        HealthStartPeriod=500ms
        HealthOnFailure=kill
        Notify=true
        RunInit=true
        UserNS=host
        StopTimeout=20
        StopSignal=INT
        PidsLimit=100
        Memory=512M
        CPUQuota=150%
        Setup=pip: flask
        Setup=npm: typescript
        SeccompProfile=unconfined
        EnvironmentFile=web.env
        EnvironmentFile=-/etc/default/web
        """)
    assert c.name == "webby" and c.service == "web.service"
    assert c.command == ("/bin/sh", "-c", "echo hi; sleep 1")
    assert c.options == {
        "env": ["A=1", "B=two words", "C=x\ty"],
        "ports": ["8080:80", "127.0.0.1:53:53/udp"],
        "volumes": ["data:/data:ro", "/srv/www:/www", "/scratch"],
        "networks": ["db"],
        "aliases": ["www"],
        "ip": "10.89.0.9",
        "hostname": "box",
        "user": "1000:100",
        "workdir": "/srv",
        "read_only": True,
        "tmpfs": ["/run:size=8m"],
        "labels": {"app": "web", "team": "a b"},
        "health_cmd": ["/bin/sh", "-c", "wget -q -O- http://localhost/"],
        "health_interval": 90.0,
        "health_timeout": 5.0,
        "health_retries": 4,
        "health_start_period": 0.5,
        "health_on_failure": "kill",
        "sdnotify": "container",
        "init": True,
        "userns": "host",
        "stop_timeout": 20,
        "pids_max": 100,
        "memory_max": 512 << 20,
        "cpu_quota": 150.0,
        "setup": ["pip: flask", "npm: typescript"],
        "seccomp": "unconfined",
    }
    assert c.environment_files == ("/etc/quilt/containers/web.env", "-/etc/default/web")
    assert (c.stop_signal, c.stop_timeout) == ("SIGINT", 20)
    assert c.requires == ("db-network.service", "data-volume.service")
    assert c.mounts_for == ("/srv/www",)


def test_the_options_are_the_agents_own_keys_in_their_wire_types() -> None:
    from quilt_agent.client import CONTAINER_OPTION_SIGNATURES, wrap_options
    from quilt_agent.model import OPTION_PARSERS, parse_options
    c = container("Memory=64M\nCPUQuota=50%\nPidsLimit=9\nLabel=a=b\nPublishPort=80:80\nHealthCmd=true\n"
                  "HealthInterval=2s\nStopTimeout=3\nReadOnly=true\n")
    assert set(c.options) <= set(OPTION_PARSERS) & set(CONTAINER_OPTION_SIGNATURES)
    assert {k: v.value for k, v in wrap_options(c.options, CONTAINER_OPTION_SIGNATURES).items()} == c.options
    parse_options(dict(c.options))


@pytest.mark.parametrize("value, sdnotify", [("healthy", "healthy"), ("HEALTHY", "healthy"), ("yes", "container"),
                                             ("false", None)])
def test_notify(value: str, sdnotify: str | None) -> None:
    assert container(f"HealthCmd=true\nNotify={value}\n").options.get("sdnotify") == sdnotify


@pytest.mark.parametrize("value, networks, requires", [
    ("none", ["none"], ()),
    ("host", ["host"], ()),
    ("container:other", ["container:other"], ()),
    ("backend", ["backend"], ()),
    ("db.network", ["db"], ("db-network.service",)),
    ("proxy.container", ["container:front"], ("proxy.service",)),  # its ContainerName=, its service
])
def test_network_values(value: str, networks: list[str], requires: tuple[str, ...]) -> None:
    c = container(f"Network={value}\n")
    assert (c.options["networks"], c.requires) == (networks, requires)


def test_a_named_volumes_file_gives_its_volume_name() -> None:
    c = container("Volume=store.volume:/s\n")
    assert (c.options["volumes"], c.requires) == (["bucket:/s"], ("store-volume.service",))


def test_a_relative_host_path_is_the_files_directorys() -> None:
    c = container("Volume=./www:/www\n")
    assert c.options["volumes"] == ["/etc/quilt/containers/www:/www"]
    assert c.mounts_for == ("/etc/quilt/containers/www",)


def test_repeated_list_keys_accumulate_and_an_empty_one_starts_over() -> None:
    c = container("PublishPort=1:1\nPublishPort=2:2\nPublishPort=\nPublishPort=3:3\nEnvironment=A=1\n"
                  "Environment=A=2 B=3\n")
    assert c.options["ports"] == ["3:3"]
    assert c.options["env"] == ["A=2", "B=3"]  # a later assignment of a variable wins


def test_repeated_single_keys_keep_the_last_and_an_empty_one_unsets() -> None:
    c = container("Exec=first\nExec=second third\nMemory=64M\nMemory=\nImage=alpine\n")
    assert (c.command, c.image, "memory_max" in c.options) == (("second", "third"), "alpine", False)


def test_the_unit_service_and_install_sections_pass_through() -> None:
    c = container("", head="[Unit]\nDescription=Web\nAfter=db.container cache.service\nWants=data.volume\n"
                           "Requires=db.network\n[Service]\nRestart=always\nRestartSec=2\n"
                           "[Install]\nWantedBy=multi-user.target\n[X-Mine]\nAnything=goes")
    assert c.unit_section == (("Description", "Web"), ("After", "db.service cache.service"),
                              ("Wants", "data-volume.service"), ("Requires", "db-network.service"))
    assert c.service_section == (("Restart", "always"), ("RestartSec", "2"))
    assert c.install_section == (("WantedBy", "multi-user.target"),)


# --- [Container]: bad input, each on its line ------------------------------------------------------------------

BAD_CONTAINER_LINES = [
    ("Frobnicate=yes", "Frobnicate", "unknown key in [Container]"),
    ("AddDevice=/dev/fuse", "AddDevice", "Quadlet's AddDevice= has no equivalent in Quilt"),
    ("AddCapability=CAP_NET_ADMIN NOPE", "AddCapability", "'NOPE'"),
    ("AddHost=db", "AddHost", "HOST:IP"),
    ("DNS=resolver", "DNS", "not an IP address"),
    ("DNSSearch=bad domain", "DNSSearch", "not a DNS name"),
    ("DNSOption=ndots 2", "DNSOption", "resolv.conf option"),
    ("DropCapability=ALL\nAddCapability=ALL", "DropCapability", "cannot be both added and dropped"),
    ("Entrypoint=[1]", "Entrypoint", "JSON array of strings"),
    ("ContainerName=bad name", "ContainerName", "Invalid container name"),
    ('Exec="unclosed', "Exec", "not closed"),
    ("Exec=''", "Exec", "command is empty"),
    ("Environment=NOEQUALS", "Environment", "not an environment variable"),
    ("Environment=1BAD=x", "Environment", "Invalid environment entry"),
    ("Label=novalue", "Label", "not a label"),
    ("PublishPort=99999:80", "PublishPort", "not between 1 and 65535"),
    ("PublishPort=80:80\nPublishPort=80:81", "PublishPort", "publish the same host port"),
    ("Volume=/a:relative", "Volume", "must be an absolute path"),
    ("Volume=missing.volume:/x", "Volume", "no file missing.volume"),
    ("Volume=/a:/x\nVolume=/b:/x", "Volume", "the same destination"),
    ("Network=missing.network", "Network", "no file missing.network"),
    ("Network=db.network:ip=10.0.0.2", "Network", "no options after a network's name"),
    ("Network=none\nNetwork=db.network", "Network", "cannot be combined"),
    ("NetworkAlias=not_dns!", "NetworkAlias", "not a DNS name"),
    ("IP=10.0.0.300", "IP", "not an IPv4 address"),
    ("HostName=-bad", "HostName", "Invalid hostname"),
    ("Group=100", "Group", "needs User="),
    ("User=a b", "User", "Invalid user"),
    ("WorkingDir=relative", "WorkingDir", "absolute path"),
    ("ReadOnly=maybe", "ReadOnly", "not a boolean"),
    ("Tmpfs=/t:size=lots", "Tmpfs", "Invalid tmpfs size"),
    ("HealthCmd=[1,2]", "HealthCmd", "JSON array of strings"),
    ("HealthInterval=soon", "HealthInterval", "not a time span"),
    ("HealthInterval=1ms", "HealthInterval", "health_interval"),
    ("HealthTimeout=0", "HealthTimeout", "health_timeout"),
    ("HealthStartPeriod=later", "HealthStartPeriod", "not a time span"),
    ("HealthRetries=-1", "HealthRetries", "not a whole number"),
    ("HealthOnFailure=explode", "HealthOnFailure", "health_on_failure"),
    ("Notify=sometimes", "Notify", "not a boolean"),
    ("RunInit=2", "RunInit", "not a boolean"),
    ("UserNS=keep-id", "UserNS", "Quilt takes host, auto"),
    ("StopTimeout=1.5", "StopTimeout", "whole number of seconds"),
    ("StopTimeout=2d", "StopTimeout", "between 0 and 86400"),
    ("StopSignal=SIGNOPE", "StopSignal", "not a signal"),
    ("PidsLimit=lots", "PidsLimit", "not a whole number"),
    ("PidsLimit=0", "PidsLimit", "between 1"),
    ("Memory=12q", "Memory", "not a size"),
    ("Memory=1M", "Memory", "the least is"),
    ("CPUQuota=0.5", "CPUQuota", "percentage of one CPU"),
    ("CPUQuota=-5%", "CPUQuota", "must be above 0"),
    ("Setup=frobnicate: x", "Setup", "frobnicate"),
    ("SeccompProfile=/etc/profile.json", "SeccompProfile", "Quilt takes default, unconfined"),
    ("LogDriver=json-file", "LogDriver", "Quilt takes journald, k8s-file, journald+file, none"),
    ("LogDriver=k8s-file\nLogOpt=path=/var/log/x", "LogOpt", "Quilt takes max-size=SIZE and max-files=N"),
    ("LogDriver=k8s-file\nLogOpt=max-size=lots", "LogOpt", "not a size"),
    ("LogDriver=k8s-file\nLogOpt=max-files=two", "LogOpt", "not a whole number"),
    ("LogDriver=k8s-file\nLogOpt=max-size=1k", "LogOpt", "Invalid log_max_size 1024 bytes"),
    ("LogOpt=max-size=1m", "LogOpt", "needs log_driver k8s-file or journald+file"),
    ("EnvironmentFile=-", "EnvironmentFile", "no path"),
    ("Network=none\nPublishPort=80:80", "PublishPort", "needs a network"),
]


@pytest.mark.parametrize("lines, key, reason", BAD_CONTAINER_LINES)
def test_a_bad_container_value_names_its_line_and_key(lines: str, key: str, reason: str) -> None:
    text = "[Unit]\nDescription=x\n\n[Container]\nImage=busybox\n" + lines + "\n"
    e = error(text)
    expected_line = 6 + next(i for i, line in enumerate(lines.split("\n")) if line.startswith(key + "="))
    if lines.count(key + "=") > 1:
        expected_line = 6 + len(lines.split("\n")) - 1  # the later of the two that disagree
    assert (e.path, e.line, e.key) == ("/etc/quilt/containers/web.container", expected_line, key), str(e)
    assert reason in e.reason, e.reason
    assert "\n" not in str(e) and str(e).startswith(f"/etc/quilt/containers/web.container:{expected_line}: {key}: ")


def test_every_container_key_has_a_bad_value_test() -> None:
    tested = {key for _, key, _ in BAD_CONTAINER_LINES}
    assert unitfiles._CONTAINER_KEYS - tested == {"Image"}  # Image= takes any text; its absence is tested below


def test_no_image_is_an_error_at_the_section() -> None:
    e = error("[Unit]\nDescription=x\n[Container]\nExec=true\n")
    assert (e.line, e.key) == (3, "Image") and "no Image=" in e.reason


def test_a_file_name_that_is_no_container_name_says_to_set_one() -> None:
    e = error("[Container]\nImage=x\n", file_name="-web.container")
    assert e.key == "ContainerName" and "set ContainerName=" in e.reason


@pytest.mark.parametrize("text, line, key, reason", [
    ("[Container]\nImage=x\n[Containers]\nY=1\n", 3, "[Containers]", "unknown section"),
    ("[Unit]\nAfter=x\n", 0, "", "no [Container] section"),
    ("[Container]\nImage=x\n[Service]\nExecStart=/bin/true\n", 4, "ExecStart", "Exec= in [Container]"),
    ("[Container]\nImage=x\n[Service]\nType=forking\n", 4, "Type", "notify or oneshot"),
    ("[Container]\nImage=x\n[Service]\nKillMode=process\n", 4, "KillMode", "control-group or mixed"),
])
def test_sections_the_service_could_not_work_with_are_errors(text: str, line: int, key: str, reason: str) -> None:
    e = error(text)
    assert (e.line, e.key) == (line, key) and reason in e.reason


# --- [Network] and [Volume] ------------------------------------------------------------------------------------


def test_a_network_file() -> None:
    n = unitfiles.convert(parsed("[Network]\nSubnet=10.90.0.0/24\nGateway=10.90.0.254\nInternal=yes\nDNS=no\n"
                                 "[Install]\nWantedBy=multi-user.target\n", "db.network"))
    assert n == NetworkFile(path="/etc/quilt/containers/db.network", name="db", service="db-network.service",
                            options={"subnet": "10.90.0.0/24", "gateway": "10.90.0.254", "internal": True,
                                     "dns": False},
                            install_section=(("WantedBy", "multi-user.target"),))


def test_a_network_files_name_and_quadlets_disable_dns() -> None:
    n = unitfiles.convert(parsed("[Network]\nNetworkName=backend\nDisableDNS=true\n", "db.network"))
    assert isinstance(n, NetworkFile) and (n.name, n.service, n.options) == ("backend", "db-network.service",
                                                                            {"dns": False})


@pytest.mark.parametrize("lines, line, key, reason", [
    ("Subnet=10.90.0.0/33", 2, "Subnet", "subnet"),
    ("Gateway=10.90.0.1", 2, "Gateway", "needs a subnet"),
    ("DNS=1.1.1.1", 2, "DNS", "resolvers"),
    ("DNS=yes\nDisableDNS=yes", 3, "DisableDNS", "keep one"),
    ("Internal=perhaps", 2, "Internal", "not a boolean"),
    ("NetworkName=host", 2, "NetworkName", "network name"),
    ("IPv6=true", 2, "IPv6", "Quadlet's IPv6="),
    ("Label=a=b", 2, "Label", "Quadlet's Label="),
    ("Bogus=1", 2, "Bogus", "unknown key in [Network]"),
])
def test_bad_network_files(lines: str, line: int, key: str, reason: str) -> None:
    e = error(f"[Network]\n{lines}\n", "db.network")
    assert (e.line, e.key) == (line, key) and reason in e.reason, str(e)


def test_a_volume_file() -> None:
    v = unitfiles.convert(parsed('[Volume]\nLabel=a=1 "b=two words"\n', "data.volume"))
    assert v == VolumeFile(path="/etc/quilt/containers/data.volume", name="data", service="data-volume.service",
                           options={"labels": {"a": "1", "b": "two words"}})
    named = unitfiles.convert(parsed("[Volume]\nVolumeName=bucket\n", "store.volume"))
    assert (named.name, named.options) == ("bucket", {})


@pytest.mark.parametrize("lines, key, reason", [
    ("VolumeName=/abs", "VolumeName", "Invalid volume name"),
    ("Label=x", "Label", "not a label"),
    ("Device=/dev/sda1", "Device", "Quadlet's Device="),
    ("Size=1G", "Size", "unknown key in [Volume]"),
])
def test_bad_volume_files(lines: str, key: str, reason: str) -> None:
    e = error(f"[Volume]\n{lines}\n", "data.volume")
    assert (e.line, e.key) == (2, key) and reason in e.reason, str(e)


# --- directories: precedence and masking ------------------------------------------------------------------------


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def test_an_earlier_directory_masks_a_later_ones_file_of_the_same_name(tmp_path: Path) -> None:
    etc, run, usr = tmp_path / "etc", tmp_path / "run", tmp_path / "usr"
    write(usr, "web.container", "[Container]\nImage=usr\n")
    write(etc, "web.container", "[Container]\nImage=etc\n")
    write(run, "web.container", "[Container]\nImage=run\n")
    write(run, "db.network", "[Network]\n")
    write(usr, "data.volume", "[Volume]\n")
    write(usr, "notes.txt", "not a unit")
    write(usr, ".hidden.container", "[Container]\nImage=x\n")
    assert unitfiles.find_units([str(etc), str(run), str(usr), str(tmp_path / "missing")]) == {
        "data.volume": str(usr / "data.volume"),
        "db.network": str(run / "db.network"),
        "web.container": str(etc / "web.container"),
    }


def test_an_empty_file_or_a_link_to_dev_null_masks_the_name_entirely(tmp_path: Path) -> None:
    etc, usr = tmp_path / "etc", tmp_path / "usr"
    write(usr, "web.container", "[Container]\nImage=x\n")
    write(usr, "db.network", "[Network]\n")
    write(etc, "web.container", "")
    etc.joinpath("db.network").symlink_to("/dev/null")
    assert unitfiles.find_units([str(etc), str(usr)]) == {"db.network": None, "web.container": None}


def test_quilt_unit_dirs_replaces_the_search_directories() -> None:
    assert unitfiles.search_dirs({}) == ("/etc/quilt/containers", "/run/quilt/containers",
                                         "/usr/lib/quilt/containers")
    assert unitfiles.search_dirs({"QUILT_UNIT_DIRS": "/a:/b::"}) == ("/a", "/b")


def test_load_finds_references_in_the_directories_and_beside_the_file(tmp_path: Path) -> None:
    units, elsewhere = tmp_path / "units", tmp_path / "elsewhere"
    write(units, "db.network", "[Network]\nNetworkName=backend\n")
    write(elsewhere, "data.volume", "[Volume]\n")
    path = write(elsewhere, "web.container", "[Container]\nImage=x\nNetwork=db.network\nVolume=data.volume:/d\n")
    c = unitfiles.load(path, [str(units)])
    assert isinstance(c, ContainerFile)
    assert (c.path, c.options["networks"], c.options["volumes"]) == (str(path), ["backend"], ["data:/d"])


# --- the services ---------------------------------------------------------------------------------------------


def test_the_container_service_text() -> None:
    c = container("""\
        Network=db.network
        Volume=data.volume:/data
        Volume=/srv/www:/www
        StopSignal=SIGINT
        StopTimeout=30
        """, head="[Unit]\nAfter=cache.service\n[Service]\nRestart=on-failure\nTimeoutStopSec=40\n"
                  "[Install]\nWantedBy=multi-user.target")
    assert unitfiles.service_text(c) == textwrap.dedent("""\
        # Generated by quilt-generator from /etc/quilt/containers/web.container

        [Unit]
        Description=Quilt container web
        SourcePath=/etc/quilt/containers/web.container
        After=dbus.socket
        Requires=db-network.service
        After=db-network.service
        Requires=data-volume.service
        After=data-volume.service
        RequiresMountsFor=/srv/www
        After=cache.service

        [Service]
        Type=notify
        NotifyAccess=main
        Delegate=yes
        KillSignal=SIGINT
        TimeoutStopSec=30
        SuccessExitStatus=130
        SyslogIdentifier=%N
        ExecStart=/usr/bin/quiltctl unit-run /etc/quilt/containers/web.container
        Restart=on-failure
        TimeoutStopSec=40

        [Install]
        WantedBy=multi-user.target
        """)


def test_a_description_of_the_files_own_replaces_the_generated_one() -> None:
    text = unitfiles.service_text(container("", head="[Unit]\nDescription=The web"))
    assert "Description=The web\n" in text and "Description=Quilt container" not in text


def test_the_default_stop_is_sigterm_after_ten_seconds() -> None:
    text = unitfiles.service_text(container(""))
    assert "KillSignal=SIGTERM\nTimeoutStopSec=10\nSuccessExitStatus=143\n" in text
    assert "[Install]" not in text


def test_the_network_and_volume_services_are_oneshots_that_stay_active() -> None:
    n = unitfiles.convert(parsed("[Network]\n[Service]\nTimeoutStartSec=30\n", "db.network"))
    assert unitfiles.service_text(n) == textwrap.dedent("""\
        # Generated by quilt-generator from /etc/quilt/containers/db.network

        [Unit]
        Description=Quilt network db
        SourcePath=/etc/quilt/containers/db.network
        After=dbus.socket

        [Service]
        Type=oneshot
        RemainAfterExit=yes
        SyslogIdentifier=%N
        ExecStart=/usr/bin/quiltctl unit-run /etc/quilt/containers/db.network
        TimeoutStartSec=30
        """)
    v = unitfiles.convert(parsed("[Volume]\n", "data.volume"))
    assert "Description=Quilt volume data\n" in unitfiles.service_text(v)


def test_the_failing_service_of_a_bad_file() -> None:
    e = error("[Container]\nImage=x\nMemory=100%\n")
    assert unitfiles.failing_service_text(e.path, e) == textwrap.dedent("""\
        # Generated by quilt-generator from /etc/quilt/containers/web.container

        [Unit]
        Description=Quilt container web (invalid: line 3, Memory: '100%%' is not a size (a number with an optional K, M, G or T: 512M, 2G))
        SourcePath=/etc/quilt/containers/web.container

        [Service]
        Type=oneshot
        ExecStart=/usr/bin/quiltctl unit-check /etc/quilt/containers/web.container
        """)


def test_paths_are_written_as_systemd_reads_them() -> None:
    c = unitfiles.parse_container(parsed("[Container]\nImage=x\n", "web.container", "/srv/my units/100%"))
    text = unitfiles.service_text(c)
    assert 'ExecStart=/usr/bin/quiltctl unit-run "/srv/my units/100%%/web.container"\n' in text
    assert "SourcePath=/srv/my units/100%%/web.container\n" in text


# --- EnvironmentFile= ------------------------------------------------------------------------------------------


def test_environment_files_are_read_as_systemd_reads_them() -> None:
    text = textwrap.dedent("""\
        # comment
        ; comment
        PLAIN=value   
          SPACED = a b  
        SINGLE='keep \\n $this '
        DOUBLE="a \\"quoted\\" \\$x \\q"
        ESCAPED=one\\ two\\
        three
        MULTI="first
        second"
        EMPTY=
        NOEQUALS
        """)
    assert unitfiles.parse_environment_file("/e", text) == [
        "PLAIN=value", "SPACED=a b", "SINGLE=keep \\n $this ", 'DOUBLE=a "quoted" $x \\q', "ESCAPED=one twothree",
        "MULTI=first\nsecond", "EMPTY=",
    ]


def test_a_bad_environment_file_names_its_line() -> None:
    with pytest.raises(UnitFileError) as caught:
        unitfiles.parse_environment_file("/e", "A=1\n1B=2\n")
    assert (caught.value.line, caught.value.key) == (2, "1B")
    with pytest.raises(UnitFileError, match="not closed"):
        unitfiles.parse_environment_file("/e", "A='open\n")


def test_environment_files_in_order_and_an_optional_missing_one(tmp_path: Path) -> None:
    one = write(tmp_path, "one.env", "A=1\nB=1\n")
    two = write(tmp_path, "two.env", "B=2\n")
    assert unitfiles.read_environment_files([str(one), f"-{tmp_path}/missing", str(two)]) == ["A=1", "B=1", "B=2"]
    with pytest.raises(UnitFileError, match="does not exist"):
        unitfiles.read_environment_files([str(tmp_path / "missing")])


# --- a .container file from a container's properties ------------------------------------------------------------

PROPS: dict[str, Any] = {
    "Id": "ab" * 32, "Name": "web", "Image": "debian:12", "Command": ["/bin/sh", "-c", "echo hi; sleep 600"],
    "State": "running", "Hostname": "box", "WorkingDirectory": "/srv", "User": "1000:100",
    "Namespaces": ["pid", "mount", "uts", "ipc", "net", "cgroup"], "MemoryMax": 64 << 20, "PidsMax": 50,
    "CPUQuota": 50.0, "StopSignal": 2, "StopTimeout": 20, "RemoveOnExit": False,
    "Labels": {"app": "web", "team": "a b"}, "Addresses": [["backend", "10.89.1.2"], ["quilt", "10.89.0.2"]],
    "Ports": ["8080:80/tcp"], "Seccomp": "unconfined", "Setup": ["pip: flask"], "UserNamespace": "host",
    "Init": True, "RestartPolicy": "on-failure", "HealthCommand": ["/bin/sh", "-c", "test -e /up"],
    "HealthInterval": 2_000_000, "HealthTimeout": 30_000_000, "HealthStartPeriod": 500_000, "HealthRetries": 5,
    "HealthOnFailure": "kill", "SdNotify": "healthy", "Networks": ["backend", "quilt"], "NetworkAliases": ["www"],
    "IP": "", "Volumes": ["data:/data:ro", "/srv/www:/www", "c0ffee:/cache"], "AnonymousVolumes": ["c0ffee"],
    "Tmpfs": ["/run:size=1m,mode=755"], "ReadOnly": True,
}


def test_a_container_file_from_properties() -> None:
    text = unitfiles.container_file_text(PROPS, ["PATH=/usr/bin:/bin", "GREETING=hello world"])
    assert text == textwrap.dedent(f"""\
        # web.container: made by quiltctl generate unit from container web ({"ab" * 32})

        [Unit]
        Description=Quilt container web

        [Container]
        Image=debian:12
        ContainerName=web
        Exec=/bin/sh -c "echo hi; sleep 600"
        Environment=PATH=/usr/bin:/bin
        Environment="GREETING=hello world"
        WorkingDir=/srv
        User=1000
        Group=100
        HostName=box
        Memory=64M
        CPUQuota=50%
        PidsLimit=50
        Label=app=web
        Label="team=a b"
        Network=backend
        Network=quilt
        NetworkAlias=www
        PublishPort=8080:80/tcp
        Volume=data:/data:ro
        Volume=/srv/www:/www
        Volume=/cache
        Tmpfs=/run:size=1m,mode=755
        ReadOnly=true
        RunInit=true
        UserNS=host
        SeccompProfile=unconfined
        Setup=pip: flask
        HealthCmd=test -e /up
        HealthInterval=2s
        HealthStartPeriod=500ms
        HealthRetries=5
        HealthOnFailure=kill
        Notify=healthy
        StopSignal=SIGINT
        StopTimeout=20

        [Service]
        Restart=on-failure

        [Install]
        WantedBy=multi-user.target
        """)


def test_a_container_file_from_properties_reads_back_as_the_same_container() -> None:
    text = unitfiles.container_file_text(PROPS, ["GREETING=hello world", "Q=a\"b"])
    c = unitfiles.parse_container(unitfiles.parse_text("/x/web.container", text), {})
    assert c.name == "web" and c.image == "debian:12" and c.command == tuple(PROPS["Command"])
    assert c.options == {
        "env": ["GREETING=hello world", 'Q=a"b'], "labels": {"app": "web", "team": "a b"},
        "ports": ["8080:80/tcp"], "networks": ["backend", "quilt"], "setup": ["pip: flask"], "workdir": "/srv",
        "hostname": "box", "init": True, "userns": "host", "seccomp": "unconfined", "pids_max": 50,
        "memory_max": 64 << 20, "cpu_quota": 50.0, "health_cmd": ["/bin/sh", "-c", "test -e /up"],
        "health_interval": 2.0, "health_start_period": 0.5, "health_retries": 5, "health_on_failure": "kill",
        "stop_timeout": 20, "sdnotify": "healthy", "user": "1000:100", "aliases": ["www"], "read_only": True,
        "tmpfs": ["/run:size=1m,mode=755"], "volumes": ["data:/data:ro", "/srv/www:/www", "/cache"],
    }
    assert (c.stop_signal, c.service_section) == ("SIGINT", (("Restart", "on-failure"),))


def test_a_plain_stopped_container_gives_a_short_file() -> None:
    text = unitfiles.container_file_text({"Name": "job", "Image": "/srv/img.tar", "Command": [], "User": "0",
                                          "Hostname": "job", "Addresses": [], "StopSignal": 15, "StopTimeout": 10,
                                          "HealthCommand": [], "SdNotify": "conmon", "Seccomp": "default",
                                          "UserNamespace": "0:100000:65536", "RestartPolicy": "no"})
    body = text.split("[Container]\n")[1]
    assert body == "Image=/srv/img.tar\nContainerName=job\n\n[Install]\nWantedBy=multi-user.target\n"


def test_a_container_on_the_hosts_network_and_an_argv_health_check() -> None:
    props = {**PROPS, "Namespaces": ["pid", "mount", "uts", "ipc", "cgroup"], "Addresses": [], "Ports": [],
             "Networks": ["host"], "NetworkAliases": [],
             "HealthCommand": ["curl", "-f", "http://x/"], "Labels": {}}
    text = unitfiles.container_file_text(props)
    assert "Network=host\n" in text and "# Network=:" not in text
    assert 'HealthCmd=["curl", "-f", "http://x/"]\n' in text
    c = unitfiles.parse_container(unitfiles.parse_text("/x/web.container", text), {})
    assert c.options["health_cmd"] == ["curl", "-f", "http://x/"] and c.options["networks"] == ["host"]


def test_quadlets_run_flag_keys_become_their_create_options() -> None:
    c = container("""\
        AddHost=db:10.0.0.5
        AddHost=cache:10.0.0.6
        DNS=192.0.2.1
        DNSSearch=example.com
        DNSOption=ndots:2
        AddCapability=CAP_NET_RAW SYS_TIME
        DropCapability=MKNOD
        Entrypoint=["/bin/tini", "--"]
        PublishPort=80
        """)
    assert c.options == {
        "add_hosts": ["db:10.0.0.5", "cache:10.0.0.6"], "dns_servers": ["192.0.2.1"], "dns_search": ["example.com"],
        "dns_options": ["ndots:2"], "cap_add": ["CAP_NET_RAW", "SYS_TIME"], "cap_drop": ["MKNOD"],
        "entrypoint": ["/bin/tini", "--"], "ports": ["80"]}
    assert container("Entrypoint=/bin/sh\n").options == {"entrypoint": ["/bin/sh"]}


def test_log_opt_sets_the_log_files_rotation() -> None:
    c = container("LogDriver=k8s-file\nLogOpt=max-size=10M\nLogOpt=max-file=3\n")
    assert (c.options["log_driver"], c.options["log_max_size"], c.options["log_max_files"]) == ("k8s-file", 10 << 20, 3)


def test_a_container_file_keeps_the_log_driver_and_its_rotation() -> None:
    text = unitfiles.container_file_text({**PROPS, "LogDriver": "k8s-file", "LogMaxSize": 10 << 20, "LogMaxFiles": 3})
    assert "LogDriver=k8s-file\nLogOpt=max-size=10M\nLogOpt=max-files=3\n" in text
    c = unitfiles.parse_container(parsed(text), NAMES)
    assert (c.options["log_max_size"], c.options["log_max_files"]) == (10 << 20, 3)
    assert "LogOpt" not in unitfiles.container_file_text({**PROPS, "LogDriver": "k8s-file", "LogMaxSize": 0,
                                                          "LogMaxFiles": 1})
