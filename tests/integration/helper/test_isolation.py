"""What a default container may not do, and what its options change, seen from inside through the real bus.

Each test runs a busybox shell script in a container and reads what it printed from the journal. The script
ends by printing END on stdout and on stderr, so the test knows when journald has every line of both streams.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.network.conftest import END, logs_until_end
from tests.integration.waiting import log_line, until

ERR = "org.quilt.Runtime.Error."
ALL_NAMESPACES = ["pid", "mount", "uts", "ipc", "net", "cgroup"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Podman's default capabilities (containers.conf default_capabilities), by number (linux/capability.h).
PODMAN_CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8,
    "NET_BIND_SERVICE": 10, "SYS_CHROOT": 18, "SETFCAP": 31,
}
PODMAN_MASK = sum(1 << bit for bit in PODMAN_CAPABILITIES.values())


@dataclass
class Output:
    exit_code: int
    stdout: list[str]
    stderr: list[str]

    def value(self, key: str) -> str:
        """The value of the stdout line `key=value`."""
        values = [line.split("=", 1)[1] for line in self.stdout if line.startswith(key + "=")]
        assert len(values) == 1, f"expected one line {key}=... in {self.stdout}"
        return values[0]


async def run_script(client: Client, name: str, image: Path, script: str, options: dict | None = None,
                     args: tuple[str, ...] = ()) -> Output:
    command = ["/bin/sh", "-c", f"{script}\necho {END}; echo {END} >&2", "sh", *args]
    path = await client.run_container(name, str(image), command, options or {})
    code = await client.wait(path)
    out, err = await logs_until_end(client, path)
    return Output(code, out, err)


# --- privileges ------------------------------------------------------------------------------------


async def test_default_container_has_podmans_capabilities_and_no_new_privs(client: Client, busybox_tar: Path,
                                                                          name: str) -> None:
    # PID 1 (the shell) and a process it starts (grep, after one more exec) both hold exactly the default set.
    script = ("grep -E '^(Cap|NoNewPrivs)' /proc/1/status | sed 's/^/init./';"
              " grep -E '^(Cap|NoNewPrivs)' /proc/self/status | sed 's/^/child./'")
    result = await run_script(client, name, busybox_tar, script)
    assert result.exit_code == 0, result
    for who in ("init", "child"):
        status = dict(line.split(".", 1)[1].split(":\t") for line in result.stdout if line.startswith(who + "."))
        assert int(status["CapBnd"], 16) == PODMAN_MASK, (who, status)
        assert int(status["CapEff"], 16) == PODMAN_MASK, (who, status)
        assert int(status["CapPrm"], 16) == PODMAN_MASK, (who, status)
        assert int(status["CapInh"], 16) == 0, (who, status)
        assert int(status["CapAmb"], 16) == 0, (who, status)
        assert status["NoNewPrivs"] == "1", (who, status)


async def test_non_root_user_has_no_effective_capabilities(client: Client, busybox_tar: Path, name: str) -> None:
    script = "grep -E '^(Cap|NoNewPrivs)' /proc/self/status"
    result = await run_script(client, name, busybox_tar, script, {"user": "1000:1000"})
    status = dict(line.split(":\t") for line in result.stdout)
    assert int(status["CapBnd"], 16) == PODMAN_MASK
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"] == "1"


async def test_mounting_a_filesystem_is_not_permitted(client: Client, busybox_tar: Path, name: str) -> None:
    script = "mkdir -p /mnt; mount -t tmpfs none /mnt; echo rc=$?; echo mounted=$(grep -c ' /mnt ' /proc/mounts)"
    result = await run_script(client, name, busybox_tar, script)
    assert result.value("rc") != "0"
    assert any("permission denied" in line.lower() or "not permitted" in line for line in result.stderr), result
    assert result.value("mounted") == "0"


async def test_setting_the_hostname_is_not_permitted(client: Client, busybox_tar: Path, name: str) -> None:
    result = await run_script(client, name, busybox_tar, "hostname other; echo rc=$?; echo host=$(hostname)")
    assert result.value("rc") != "0"
    assert result.value("host") == name
    assert any("not permitted" in line for line in result.stderr), result.stderr


async def test_no_file_descriptor_of_the_agent_leaks_in(client: Client, busybox_tar: Path, name: str) -> None:
    # PID 1's descriptors, listed by a child (ls) while the shell waits for it.
    result = await run_script(client, name, busybox_tar, "ls -l /proc/1/fd/")
    fds = {int(line.split()[-3]): line.split()[-1] for line in result.stdout if " -> " in line}
    assert sorted(fds) == [0, 1, 2], result.stdout
    assert fds[0] == "/dev/null"
    assert fds[1].startswith("socket:") and fds[2].startswith("socket:")  # journald streams


async def test_loading_a_kernel_module_fails(client: Client, busybox_tar: Path, name: str) -> None:
    # CAP_SYS_MODULE is not in the bounding set (checked above), so init_module is refused with EPERM; a kernel
    # built without module support, like this machine's, refuses it for everyone with ENOSYS.
    script = ("printf 'not a module' > /tmp/evil.ko; insmod /tmp/evil.ko; echo insmod=$?;"
              " echo /tmp/x > /proc/sys/kernel/modprobe; echo modprobe_path=$?")
    result = await run_script(client, name, busybox_tar, script)
    assert result.value("insmod") != "0"
    assert result.value("modprobe_path") != "0"
    insmod = [line for line in result.stderr if line.startswith("insmod:")]
    assert insmod and ("not permitted" in insmod[0] or "not support" in insmod[0]), result.stderr


async def test_writing_proc_sys_fails(client: Client, busybox_tar: Path, name: str) -> None:
    before = Path("/proc/sys/vm/drop_caches").exists()
    script = ("echo 1 > /proc/sys/kernel/ns_last_pid; echo ns_last_pid=$?;"
              " echo 3 > /proc/sys/vm/drop_caches; echo drop_caches=$?;"
              " echo hacked > /proc/sys/kernel/hostname; echo hostname=$?; hostname")
    result = await run_script(client, name, busybox_tar, script)
    assert before
    assert result.value("ns_last_pid") != "0"
    assert result.value("drop_caches") != "0"
    assert result.value("hostname") != "0"
    assert result.stdout[-1] == name
    assert sum("Read-only file system" in line for line in result.stderr) == 3, result.stderr


async def test_sysrq_trigger_is_read_only(client: Client, busybox_tar: Path, name: str) -> None:
    # Not every kernel has it (this machine's has none): then there is nothing to trigger.
    script = ("if [ -e /proc/sysrq-trigger ]; then echo h > /proc/sysrq-trigger; echo sysrq=$?;"
              " else echo sysrq=absent; fi")
    result = await run_script(client, name, busybox_tar, script)
    if Path("/proc/sysrq-trigger").exists():
        assert result.value("sysrq") not in ("0", "absent")
        assert any("Read-only file system" in line for line in result.stderr), result.stderr
    else:
        assert result.value("sysrq") == "absent"


async def test_sys_is_mounted_read_only(client: Client, busybox_tar: Path, name: str) -> None:
    script = ("echo add > /sys/class/net/lo/uevent; echo uevent=$?; mkdir /sys/kernel/quilt; echo mkdir=$?;"
              " grep ' /sys ' /proc/mounts")
    result = await run_script(client, name, busybox_tar, script)
    assert result.value("uevent") != "0" and result.value("mkdir") != "0"
    options = [line.split()[3].split(",") for line in result.stdout if " /sys sysfs " in line]
    assert len(options) == 1 and "ro" in options[0], result.stdout


async def test_host_processes_are_not_visible_and_pid_1_is_the_command(client: Client, busybox_tar: Path,
                                                                      name: str) -> None:
    script = ("set -- /proc/[0-9]*; echo \"pids=$*\"; echo \"cmdline=$(tr '\\0\\n' '|~' < /proc/1/cmdline)\";"
              " ps -o pid,comm")
    result = await run_script(client, name, busybox_tar, script)
    assert result.exit_code == 0, result
    # Seen from PID 1 itself (a glob is a shell builtin): nothing but itself.
    assert result.value("pids") == "/proc/1"
    command = ["/bin/sh", "-c", f"{script}\necho {END}; echo {END} >&2", "sh"]
    assert result.value("cmdline") == "".join(arg.replace("\n", "~") + "|" for arg in command)
    # ps sees the shell as PID 1 and itself, nothing of the test host (its systemd, the agent, this test).
    assert result.stdout[2].split() == ["PID", "COMMAND"], result.stdout
    rows = [line.split() for line in result.stdout[3:]]
    assert [row[1] for row in rows] == ["sh", "ps"], result.stdout
    assert rows[0][0] == "1"
    assert len([p for p in os.listdir("/proc") if p.isdigit()]) > 5  # the test host has many


async def test_proc_kcore_keys_and_other_kernel_files_are_masked(client: Client, busybox_tar: Path,
                                                                  name: str) -> None:
    files = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"]
    dirs = ["/proc/acpi", "/proc/scsi", "/sys/firmware"]
    assert Path("/proc/keys").read_text(), "the test host shows keys: an empty /proc/keys would prove nothing"
    script = "".join(f"if [ -e {f} ]; then echo {f}=$(cat {f} | wc -c); else echo {f}=absent; fi; " for f in files)
    script += "".join(f"if [ -e {d} ]; then echo {d}=$(ls -A {d} | wc -l); else echo {d}=absent; fi; " for d in dirs)
    result = await run_script(client, name, busybox_tar, script)
    assert result.value("/proc/keys") == "0"
    for path in files + dirs:
        # Whatever the test host shows must be there and empty (kcore does not exist on every kernel).
        expected = ("0",) if os.path.exists(path) else ("absent", "0")
        assert result.value(path) in expected, (path, result.value(path))


# --- identity and environment ----------------------------------------------------------------------


async def test_hostname_defaults_to_the_container_name(client: Client, busybox_tar: Path, name: str) -> None:
    result = await run_script(client, name, busybox_tar, "echo host=$(hostname); echo env=$HOSTNAME")
    assert result.value("host") == name
    assert result.value("env") == name


async def test_hostname_option_sets_the_hostname(client: Client, busybox_tar: Path, name: str) -> None:
    result = await run_script(client, name, busybox_tar, "echo host=$(hostname); echo env=$HOSTNAME",
                              {"hostname": "box.example"})
    assert result.value("host") == "box.example"
    assert result.value("env") == "box.example"


@pytest.mark.parametrize("user", ["1000:1000", "user", "1000", "user:user"])
async def test_user_option_runs_as_that_user_with_home_from_passwd(client: Client, busybox_tar: Path, name: str,
                                                                   user: str) -> None:
    script = ("echo uid=$(id -u); echo gid=$(id -g); echo groups=$(id -G); echo home=$HOME;"
              " echo pid1=$(stat -c %u:%g /proc/1)")
    result = await run_script(client, name, busybox_tar, script, {"user": user})
    assert result.value("uid") == "1000"
    assert result.value("gid") == "1000"
    assert result.value("groups") == "1000"
    assert result.value("home") == "/home/user"
    assert result.value("pid1") == "1000:1000"


async def test_default_user_is_root_with_home_root(client: Client, busybox_tar: Path, name: str) -> None:
    script = "echo uid=$(id -u); echo gid=$(id -g); echo home=$HOME; echo pwd=$(pwd)"
    result = await run_script(client, name, busybox_tar, script)
    assert (result.value("uid"), result.value("gid"), result.value("home")) == ("0", "0", "/root")
    assert result.value("pwd") == "/"


async def test_workdir_is_created_if_missing_and_is_the_working_directory(client: Client, busybox_tar: Path,
                                                                          name: str) -> None:
    result = await run_script(client, name, busybox_tar, "echo pwd=$(pwd); echo owner=$(stat -c %u:%g .); echo ok > f",
                              {"workdir": "/srv/app/data", "user": "1000:1000"})
    assert result.exit_code == 0, result
    assert result.value("pwd") == "/srv/app/data"
    assert result.value("owner") == "1000:1000"  # the user can write there


async def test_environment_is_exactly_the_defaults_and_the_given_entries(client: Client, busybox_tar: Path,
                                                                         name: str) -> None:
    agent_pid = subprocess.run(["systemctl", "show", "-P", "MainPID", "quilt-agent"], capture_output=True,
                               text=True, check=True).stdout.strip()
    agent_env = dict(e.split("=", 1) for e in Path(f"/proc/{agent_pid}/environ").read_text().split("\0") if e)
    assert "INVOCATION_ID" in agent_env  # the agent has variables of its own that must not leak
    given = ["GREETING=hello world", "EMPTY=", "QUOTED='a b' \"c\"", "DOLLAR=$HOME"]
    path = await client.run_container(name, str(busybox_tar), ["/bin/env"], {"env": given})
    assert await client.wait(path) == 0
    expected = {f"PATH={DEFAULT_PATH}", f"HOSTNAME={name}", "HOME=/root", "container=quilt", *given}
    lines: list[str] = []

    async def all_in() -> bool:
        lines[:] = [line.text for line in await client.get_logs(path, {})]
        return len(lines) >= len(expected)

    await until(all_in, lambda: str(lines))
    assert sorted(lines) == sorted(expected)
    names = {line.split("=", 1)[0] for line in lines}
    assert not (names & (set(agent_env) | set(os.environ))) - {"PATH", "HOME", "HOSTNAME"}


async def test_given_environment_overrides_the_defaults(client: Client, busybox_tar: Path, name: str) -> None:
    result = await run_script(client, name, busybox_tar, "echo path=$PATH; echo home=$HOME",
                              {"env": ["PATH=/bin", "HOME=/tmp"]})
    assert result.value("path") == "/bin"
    assert result.value("home") == "/tmp"


# --- the command -----------------------------------------------------------------------------------


async def test_shell_command_with_and_and_pipe_runs_as_in_a_shell(client: Client, busybox_tar: Path,
                                                                  name: str) -> None:
    path = await client.run_container(name, str(busybox_tar),
                                      ["/bin/sh", "-c", "echo one && echo two | tr a-z A-Z; false || echo three"], {})
    assert await client.wait(path) == 0
    assert await log_line(client, path, "three") == ["one", "TWO", "three"]


async def test_arguments_reach_argv_verbatim(client: Client, busybox_tar: Path, name: str) -> None:
    args = ("two words", "'single quoted'", '"double quoted"', "$HOME", "$(id)", "*", "a;b|c&&d", "back\\slash",
            "tab\there")
    result = await run_script(client, name, busybox_tar, "printf '%s\\n' \"$@\"", args=args)
    assert result.stdout == list(args)


# --- namespaces ------------------------------------------------------------------------------------


@pytest.fixture
def host_veth() -> Iterator[str]:
    """A veth pair in the test host's network namespace, for a container to see or not."""
    link = "qv" + secrets.token_hex(4)
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", link + "p"], check=True)
    yield link
    subprocess.run(["ip", "link", "del", link], check=False)


async def test_default_container_has_its_own_network_with_loopback_up(client: Client, busybox_tar: Path, name: str,
                                                                       host_veth: str) -> None:
    script = ("echo links=$(ls /sys/class/net); echo netns=$(readlink /proc/self/ns/net);"
              " echo flags=$(cat /sys/class/net/lo/flags)")
    result = await run_script(client, name, busybox_tar, script)
    assert result.value("links") == "eth0 lo"  # the default network's veth (tests/integration/network/)
    assert result.value("netns") != os.readlink("/proc/self/ns/net")
    assert int(result.value("flags"), 16) & 1  # IFF_UP


async def test_without_net_namespace_the_host_interfaces_are_visible(client: Client, busybox_tar: Path, name: str,
                                                                     host_veth: str) -> None:
    script = "echo links=$(ls /sys/class/net); echo netns=$(readlink /proc/self/ns/net)"
    options = {"namespaces": [n for n in ALL_NAMESPACES if n != "net"]}
    result = await run_script(client, name, busybox_tar, script, options)
    assert set(result.value("links").split()) == set(os.listdir("/sys/class/net"))
    assert host_veth in result.value("links").split()
    assert result.value("netns") == os.readlink("/proc/self/ns/net")


async def test_without_pid_namespace_the_host_processes_are_visible(client: Client, busybox_tar: Path,
                                                                    name: str) -> None:
    script = f"echo init=$(cat /proc/1/comm); echo me=$$; [ -d /proc/{os.getpid()} ]; echo test_visible=$?"
    options = {"namespaces": [n for n in ALL_NAMESPACES if n != "pid"]}
    result = await run_script(client, name, busybox_tar, script, options)
    assert result.value("init") == "systemd"
    assert result.value("me") != "1"
    assert result.value("test_visible") == "0"


async def test_without_uts_namespace_the_hostname_is_the_hosts(client: Client, busybox_tar: Path, name: str) -> None:
    options = {"namespaces": [n for n in ALL_NAMESPACES if n != "uts"]}
    result = await run_script(client, name, busybox_tar, "echo host=$(hostname); echo env=$HOSTNAME", options)
    assert result.value("host") == socket.gethostname()
    assert result.value("host") != name
    assert result.value("env") == socket.gethostname()


async def test_a_hostname_without_the_uts_namespace_is_invalid(client: Client, busybox_tar: Path, name: str) -> None:
    with pytest.raises(ClientError) as err:
        await client.create_container(name, str(busybox_tar), ["/bin/true"],
                                      {"hostname": "box", "namespaces": [n for n in ALL_NAMESPACES if n != "uts"]})
    assert err.value.name == ERR + "InvalidArgument"
    assert "uts" in err.value.message
    assert socket.gethostname() != "box"


async def test_the_mount_namespace_cannot_be_left_out(client: Client, busybox_tar: Path, name: str) -> None:
    with pytest.raises(ClientError) as err:
        await client.create_container(name, str(busybox_tar), ["/bin/true"],
                                      {"namespaces": [n for n in ALL_NAMESPACES if n != "mount"]})
    assert err.value.name == ERR + "InvalidArgument"
    assert "mount" in err.value.message
    assert await client.list_containers() == []


# --- /dev and the cgroup ---------------------------------------------------------------------------


async def test_dev_holds_only_the_minimal_devices(client: Client, busybox_tar: Path, name: str) -> None:
    devices = ["null", "zero", "full", "random", "urandom", "tty"]
    script = ("echo dev=$(ls -A /dev); echo pts=$(ls -A /dev/pts);"
              + "".join(f" [ -c /dev/{d} ] && echo {d}=char;" for d in devices)
              + " [ -d /dev/shm ] && echo x > /dev/shm/x && echo shm=writable;"
              " echo x > /dev/full; echo write_full=$?; echo read_zero=$(head -c 4 /dev/zero | wc -c)")
    result = await run_script(client, name, busybox_tar, script)
    entries = set(result.value("dev").split())
    assert {*devices, "pts", "shm"} <= entries
    # Besides those, only the usual links (fd, stdin, ptmx, ...) and mqueue: no disk, no memory, no kmsg.
    assert entries <= {*devices, "pts", "shm", "mqueue", "fd", "stdin", "stdout", "stderr", "ptmx", "core"}, entries
    assert set(result.value("pts").split()) <= {"ptmx"}
    for d in devices:
        assert result.value(d) == "char"
    assert result.value("shm") == "writable"
    assert result.value("write_full") != "0"
    assert result.value("read_zero") == "4"


async def test_the_container_sees_its_cgroup_as_the_root(client: Client, busybox_tar: Path, name: str) -> None:
    result = await run_script(client, name, busybox_tar, "cat /proc/self/cgroup")
    assert result.stdout, result
    for line in result.stdout:
        assert line.split(":", 2)[2] == "/", result.stdout
