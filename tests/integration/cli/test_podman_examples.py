"""Podman's own documented examples, from the EXAMPLES of podman-ps(1) and podman-run(1), run against quiltctl
(`podman` replaced by `quiltctl`, the image by the busybox test image) and the real agent.

An interactive example (`-i -t ... /bin/bash`) runs its command instead of a shell: the tests have no terminal.
The examples that need what Quilt lacks are listed in NOT_SUPPORTED with the reason, and each is checked to be
refused with one line naming what quiltctl does not take, not to do something else.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.integration.cli.test_quiltctl import QUILTCTL, QUILT_ERROR, USAGE_ERROR, ok
from tests.integration.cli.test_quiltctl import clean  # noqa: F401 - the autouse fixture: agent up, nothing left

# The images the examples name, all played by the busybox test image.
IMAGES = ("fedora/httpd", "fedora", "busybox", "alpine", "ubuntu", "centos", "someimage", "ubi8-micro", "shm",
          "mytzimage", "mariadb", "IMAGE", "redis:alpine", "rhel7", "ubi8")


@pytest.fixture
def image(busybox_tar: Path) -> str:
    return str(busybox_tar)


def example(text: str, image_path: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run one documented example: `podman` becomes quiltctl, an image name the test image."""
    words = shlex.split(text)
    assert words[0] == "podman", text
    args = [QUILTCTL] + [image_path if w in IMAGES else w for w in words[1:]]
    return subprocess.run(args, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, env=env)


def succeeds(text: str, image_path: str, **kwargs: object) -> str:
    result = example(text, image_path, **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, (text, result.returncode, result.stderr)
    assert result.stderr == "", (text, result.stderr)
    return result.stdout


def container_id(container: str) -> str:
    (props,) = json.loads(ok("inspect", container))
    return str(props["Id"])


@pytest.fixture
def three(image: str, name: str) -> tuple[str, str, str]:
    """An exited container with a label and a mount, then two running ones (foo, then bar), created in turn."""
    exited, foo, bar = f"{name}-exited", f"{name}-foo", f"{name}-bar"
    ok("run", "--name", exited, "-l", "tier=backend", "-v", "/data", image, "true")
    ok("run", "-d", "--name", foo, "-l", "batch=no", "-l", "type=small", image, "sleep", "600")
    ok("run", "-d", "--name", bar, image, "sleep", "600")
    return exited, foo, bar


# --- podman-ps(1) ---


def test_ps_a_lists_every_container(three: tuple[str, str, str], image: str) -> None:
    out = succeeds("podman ps -a", image)
    assert all(any(n in line for line in out.splitlines()[1:]) for n in three), out


def test_ps_lists_the_running_ones(three: tuple[str, str, str], image: str) -> None:
    exited, foo, bar = three
    out = succeeds("podman ps", image)
    assert foo in out and bar in out and exited not in out


def test_ps_format_with_id_image_labels_and_mounts(three: tuple[str, str, str], image: str) -> None:
    exited, foo, bar = three
    out = succeeds('podman ps -a --format "{{.ID}}  {{.Image}}  {{.Labels}}  {{.Mounts}}"', image)
    lines = out.splitlines()
    assert len(lines) == 3, out
    # In the order of creation: the exited one first, with its label and its anonymous volume's destination.
    assert re.fullmatch(rf"{container_id(exited)[:12]}  \S+  map\[tier:backend\]  \[/data\]", lines[0]), lines[0]
    assert re.fullmatch(rf"{container_id(foo)[:12]}  \S+  map\[batch:no type:small\]  \[\]", lines[1]), lines[1]
    assert lines[2].endswith("  map[]  []"), lines[2]


def test_ps_filter_name(three: tuple[str, str, str], image: str) -> None:
    exited, foo, bar = three
    assert succeeds("podman ps --filter name=foo --format {{.Names}}", image) == f"{foo}\n"
    assert succeeds("podman ps -a --filter name=foo --filter name=exited -q", image).split() == [
        container_id(exited)[:12], container_id(foo)[:12]]


def test_ps_format_table(three: tuple[str, str, str], image: str) -> None:
    exited, foo, bar = three
    lines = succeeds('podman ps -a --format "table {{.ID}} {{.Names}}"', image).splitlines()
    assert lines[0].split() == ["CONTAINER", "ID", "NAMES"] and lines[0].index("NAMES") == 14
    assert [line.split() for line in lines[1:]] == [[container_id(n)[:12], n] for n in three]


def test_ps_last_and_latest(three: tuple[str, str, str], image: str) -> None:
    exited, foo, bar = three
    assert succeeds("podman ps --last 2 --format {{.Names}}", image) == f"{foo}\n{bar}\n"
    assert succeeds("podman ps -l --format {{.Names}}", image) == f"{bar}\n"
    assert succeeds("podman ps -n 3 --format {{.Names}}", image) == f"{exited}\n{foo}\n{bar}\n"


def test_ps_status_and_created_are_worded_as_podman_words_them(three: tuple[str, str, str], image: str) -> None:
    exited, foo, bar = three
    rows = succeeds("podman ps -a --format {{.Names}}|{{.Status}}|{{.RunningFor}}", image).splitlines()
    status = {row.split("|")[0]: row.split("|")[1:] for row in rows}
    assert re.fullmatch(r"Exited \(0\) (Less than a second|\d+ seconds?) ago", status[exited][0]), status
    assert re.fullmatch(r"Up (Less than a second|\d+ seconds?)", status[foo][0]), status
    assert re.fullmatch(r"(Less than a second|\d+ seconds?) ago", status[bar][1]), status


def test_inspect_format_state(three: tuple[str, str, str], image: str) -> None:
    exited, foo, bar = three
    out = succeeds(f"podman inspect --format '{{{{.State.Status}}}} {{{{.State.Running}}}}' {exited} {foo}", image)
    assert out == "exited false\nrunning true\n"


# --- podman-run(1) ---


def test_run_exit_status_is_the_commands(image: str) -> None:
    # podman run busybox /bin/sh -c 'exit 3'; echo $?  ->  3
    assert example("podman run --rm busybox /bin/sh -c 'exit 3'", image).returncode == 3


def test_run_a_command_that_cannot_be_invoked_is_126(image: str) -> None:
    assert example("podman run --rm busybox /etc", image).returncode == 126


def test_run_a_command_that_cannot_be_found_is_127(image: str) -> None:
    assert example("podman run --rm busybox foo", image).returncode == 127


def test_run_passes_a_variable_of_the_callers_environment(image: str) -> None:
    # podman run -e FOO --rm IMAGE printenv FOO (busybox has env, not printenv)
    env = {**os.environ, "FOO": "from the caller"}
    assert "FOO=from the caller" in succeeds("podman run -e FOO --rm IMAGE env", image, env=env).splitlines()


def test_run_with_input_from_a_pipe(image: str) -> None:
    # echo "asdf" | podman run --rm -i --entrypoint /bin/cat someimage
    assert succeeds("podman run --rm -i --entrypoint /bin/cat someimage", image, stdin="asdf\n") == "asdf\n"


def test_run_read_only(image: str) -> None:
    # podman run --read-only -i -t fedora /bin/bash, its shell writing to the image
    result = example("podman run --rm --read-only fedora touch /x", image)
    assert result.returncode == 1 and "Read-only file system" in result.stderr, result.stderr


def test_run_with_a_host_directory(image: str, tmp_path: Path) -> None:
    # podman run -v /var/db:/data1 -i -t fedora bash
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "hello").write_text("hi\n")
    assert succeeds(f"podman run --rm -v {tmp_path}/db:/data1 fedora cat /data1/hello", image) == "hi\n"


def test_run_with_a_named_volume(image: str, name: str) -> None:
    # podman run -v data:/data2 -i -t fedora bash
    volume = f"{name}-data"
    succeeds(f"podman run --rm -v {volume}:/data2 fedora sh -c 'echo kept > /data2/f'", image)
    assert succeeds(f"podman run --rm -v {volume}:/data2 fedora cat /data2/f", image) == "kept\n"
    ok("volume", "rm", volume)


def test_run_with_a_tmpfs(image: str) -> None:
    # podman run --read-only ... --tmpfs /run -i -t fedora /bin/bash
    assert succeeds("podman run --rm --read-only --tmpfs /run fedora sh -c 'touch /run/x && echo ok'",
                    image) == "ok\n"


def test_run_publishing_a_port(image: str, name: str) -> None:
    # podman run -p 8080:80 -d -i -t fedora/httpd
    succeeds(f"podman run -p 8080:80 -d --name {name} fedora/httpd httpd -f -p 80", image)
    assert succeeds(f"podman ps --filter name={name} --format {{{{.Ports}}}}", image) == "0.0.0.0:8080->80/tcp\n"


def test_run_with_the_environment_of_the_examples_tz(image: str) -> None:
    # podman run -ti --rm -e TZ=EST mytzimage
    assert "TZ=EST" in succeeds("podman run --rm -e TZ=EST mytzimage env", image).splitlines()


# --- the examples quiltctl does not take ---

# Each: the example, what its one-line refusal names, and why Quilt does not do it.
NOT_SUPPORTED = [
    ("podman ps -a -s", "-s", "Quilt does not measure containers' sizes"),
    ("podman ps --ns -a", "--ns", "ps shows no namespace ids; inspect lists a container's namespaces"),
    ("podman ps -a --size --sort names", "--size", "no sizes, and ps lists in the order of creation only"),
    ("podman ps --external -a", "--external", "Quilt has no containers of other tools in its storage"),
    ("podman ps -a --format '{{.ID}} {{.Size}}'", ".Size", "Quilt does not measure containers' sizes"),
    ("podman run --read-only --read-only-tmpfs=false --tmpfs /run -i -t fedora /bin/bash", "--read-only-tmpfs",
     "a read-only container always gets a writable /tmp and /run"),
    ("podman run -a stdin -a stdout -i -t fedora /bin/bash", "-a",
     "run attaches all of stdin, stdout and stderr (with -i) or none (-d)"),
    ("podman run -it --ipc=host shm ipcs -m", "--ipc", "namespaces are chosen with --namespaces"),
    ("podman run -it --ipc=container:ed735b2264ac shm ipcs -m", "--ipc", "no namespace is shared but the network's"),
    ("podman run -p 8080:80 -d -i -t fedora/httpd", "-d cannot be combined with -i or -t",
     "quiltctl attaches a terminal only to a container it runs in the foreground"),
    ("podman run -v /var/cache/dnf:/var/cache/dnf:O -ti fedora dnf -y update", "O",
     "Quilt has no overlay volumes"),
    ("podman run -d -e MYSQL_ROOT_PASSWORD=root --user mysql --userns=keep-id -v /tmp:/var/lib/mysql:z,U mariadb",
     "'z'", "no SELinux relabelling or chown of volumes; Quilt's user namespaces are auto or host, not keep-id"),
    ("podman run --mount type=bind,src=/var/db,target=/data1 busybox sh", "--mount", "mounts are given with -v"),
    ("podman run --security-opt label=level:s0:c100,c200 -i -t fedora bash", "label",
     "Quilt sets no SELinux labels"),
    ("podman run --security-opt mask=/foo/bar:/second/path fedora bash", "mask", "Quilt masks no extra paths"),
    ("podman run --security-opt unmask=ALL fedora bash", "unmask", "Quilt's masked paths are fixed"),
    ("podman run -it --blkio-weight-device /dev/sda:200 ubuntu", "--blkio-weight-device",
     "Quilt sets no block I/O weights"),
    ("podman run --userns=auto:size=65536 ubi8-micro cat /proc/self/uid_map", "auto:size=65536",
     "--userns auto always maps 65536 ids"),
    ("podman run --sysctl net.ipv4.ip_forward=1 someimage", "--sysctl", "Quilt sets no sysctls"),
    ("podman run --uidmap 0:30000:7000 --gidmap 0:30000:7000 fedora echo hello", "--uidmap",
     "Quilt chooses the id map itself (--userns auto)"),
    ("podman --log-level=debug --storage-driver overlay --storage-opt overlay.mount_program=/usr/bin/fuse-overlayfs "
     "run busybox /bin/sh", "--log-level", "quiltctl has no global options; the agent owns the storage"),
    ("podman run --tz=local alpine date", "--tz", "set TZ with -e TZ=..."),
    ("podman run --name container2 --requires container1 -t -i fedora bash", "--requires",
     "Quilt starts no containers for another; systemd units order them"),
    ("podman run -v /var/lib/design:/var/lib/design --group-add keep-groups ubi8", "--group-add",
     "Quilt adds no supplementary groups"),
    ("podman run --name container1 --personality=LINUX32 fedora bash", "--personality",
     "Quilt sets no execution domain"),
    ("podman run --name container1 --rootfs /path/to/rootfs:O bash", "--rootfs",
     "Quilt runs images; a root directory is imported as a tarball first"),
    ("podman run --network net1:ip=10.89.1.5 --network net2:ip=10.89.10.10 alpine ip addr", "net1:ip=10.89.1.5",
     "one fixed address is given with --ip, not in --network"),
    ("podman run --foo busybox", "--foo", "quiltctl exits 2, not Podman's 125, for a command line it cannot take"),
]


@pytest.mark.parametrize(("text", "named", "why"), NOT_SUPPORTED, ids=[t for t, _, _ in NOT_SUPPORTED])
def test_an_example_quilt_cannot_do_is_refused_in_one_line_naming_it(text: str, named: str, why: str,
                                                                      image: str) -> None:
    result = example(text, image)
    lines = result.stderr.splitlines()
    assert result.returncode in (USAGE_ERROR, QUILT_ERROR), (text, result.returncode, result.stderr, why)
    assert len(lines) == 1 and lines[0].startswith("quiltctl: ") and "Traceback" not in result.stderr, (
        text, result.stderr)
    assert named in lines[0], (text, lines[0], why)
    assert json.loads(ok("ps", "-a", "--format", "json")) == []  # nothing was made
