"""What run and create's flags become: CreateContainer/RunContainer's name, image, command and options.

Free of click (a usage error is a RequestError, which the click commands turn into click's usage line), so that
`run` on cli/quick.py's path builds its request here as the click path does.
"""

from __future__ import annotations

import os

from quilt_agent.cli import runflags
from quilt_agent.cli.parsing import resolve_image

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MIB = 1 << 20


class RequestError(ValueError):
    """Flags that cannot go together, or a value no flag's parser checks: one usage line."""


class ContainerRequest:
    """The arguments of CreateContainer/RunContainer, as the flags describe them. (A plain class: a dataclass
    would import dataclasses, ~16 ms of a `run`'s start-up.)"""

    __slots__ = ("name", "image", "command", "options")

    def __init__(self, name: str, image: str, command: list[str], options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.image = image
        self.command = command
        self.options: dict[str, Any] = {} if options is None else options


def _only_one(podman: tuple[str, Any], original: tuple[str, Any]) -> Any:
    """The value of whichever of two spellings of one limit was given; both at once is a usage error."""
    (podman_flag, podman_value), (original_flag, original_value) = podman, original
    if podman_value is not None and original_value is not None:
        raise RequestError(f"{podman_flag} and {original_flag} set the same limit: give one of them")
    return podman_value if podman_value is not None else original_value


def build_request(params: dict[str, Any], cwd: str) -> ContainerRequest:
    """Turn create/run's parsed flags into the D-Bus call's arguments."""
    args: list[str] = list(params["args"])
    image: str | None = params["image_path"]
    if image is None:
        if not args:
            raise RequestError("an IMAGE is required (an image name or id, or a path to an image file)")
        image = args.pop(0)
    # With option parsing stopped at IMAGE (so `run IMG ls -l` works), a `--` after IMAGE reaches us literally.
    if args[:1] == ["--"]:
        args = args[1:]

    options: dict[str, Any] = {}
    env = runflags.environment(params)  # --env-file's, then -e's; a KEY alone: this shell's value, if set
    if env:
        options["env"] = env
    for key, option in (("workdir", "workdir"), ("user", "user"), ("hostname", "hostname")):
        if params[key] is not None:
            options[option] = params[key]

    memory_mib = params["memory_limit"]
    memory_from_mib = None if memory_mib is None else memory_mib * MIB
    memory = _only_one(("--memory", params["memory"]), ("--memory-limit", memory_from_mib))
    if memory is not None:
        options["memory_max"] = memory
    cpu = _only_one(("--cpus", params["cpus"]), ("--cpu-limit", params["cpu_limit"]))
    if cpu is not None:
        options["cpu_quota"] = cpu
    if params["pids_limit"] is not None:
        options["pids_max"] = params["pids_limit"]

    if params["namespaces"] is not None and params["enable_all_namespaces"]:
        raise RequestError("--namespaces and --enable-all-namespaces contradict each other: give one")
    # --enable-all-namespaces asks for the default set, which is what the agent applies when the key is absent;
    # spelling the set out here would let the client and the agent disagree about what "default" means.
    if params["namespaces"] is not None:
        options["namespaces"] = params["namespaces"]

    if params["rm"]:
        options["remove_on_exit"] = True
    if params["stop_timeout"] is not None:
        options["stop_timeout"] = params["stop_timeout"]
    if params["label"]:
        options["labels"] = dict(params["label"])
    # Networks (podman run's spellings); .get: callers that build params by hand may leave them out.
    networks = [n for value in params.get("network") or () for n in value.split(",") if n]
    if networks:
        options["networks"] = networks
    if params.get("network_alias"):
        options["aliases"] = list(params["network_alias"])
    if params.get("ip") is not None:
        options["ip"] = params["ip"]
    if params.get("publish"):
        options["ports"] = list(params["publish"])
    options.update(volume_options(params, cwd))  # -v/--volume, --tmpfs, --read-only
    options.update(runflags.options(params))  # --entrypoint, --add-host, --dns*, --cap-*, --stop-signal, -P
    # Setup steps go as given, in order: the agent parses and checks them (an unknown manager, or a shell's
    # `;` in a package list, is its InvalidArgument, one line and 125 here), so quiltctl and the bus agree.
    if params.get("setup"):
        options["setup"] = list(params["setup"])
    if params.get("no_setup_cache"):
        options["setup_cache"] = False
    for opt in params.get("security_opt") or ():
        key, sep, value = opt.partition("=")
        if key != "seccomp" or not sep:
            raise RequestError(f"--security-opt '{opt}': only seccomp=default and seccomp=unconfined are known")
        options["seccomp"] = value  # the agent checks the profile's name
    if params.get("userns") is not None:
        options["userns"] = params["userns"]  # the agent checks the mode's name
    if params.get("init"):
        options["init"] = True
    if params.get("restart"):
        policy, sep, count = params["restart"].partition(":")
        options["restart_policy"] = policy  # the agent checks the policy's name
        if sep:
            if policy != "on-failure" or not count.isdigit():
                raise RequestError(f"--restart '{params['restart']}': only on-failure takes a count of "
                                       "restarts (on-failure:N)")
            options["restart_max"] = int(count)
    options.update(_health_options(params))
    if params.get("sdnotify") is not None:
        options["sdnotify"] = params["sdnotify"]  # the agent checks the mode's name
    if params.get("log_driver") is not None:
        options["log_driver"] = params["log_driver"]  # and the driver's

    return ContainerRequest(name=params["name"] or "", image=resolve_image(image, cwd), command=args, options=options)


def _health_options(params: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if params.get("no_healthcheck"):
        if params.get("health_cmd") is not None:
            raise RequestError("--no-healthcheck and --health-cmd contradict each other: give one")
        options["health_cmd"] = []
    elif params.get("health_cmd") is not None:
        options["health_cmd"] = params["health_cmd"]
    for flag in ("interval", "timeout", "start_period", "retries", "on_failure"):
        if params.get(f"health_{flag}") is not None:
            options[f"health_{flag}"] = params[f"health_{flag}"]  # the agent checks the values
    return options


def volume_options(params: dict[str, Any], cwd: str) -> dict[str, Any]:
    """run/create's mount flags -> the create options volumes, tmpfs, read_only. A host path given relative
    (./data, ../x) is made absolute here, as quiltctl does for an image path; the agent takes only absolute ones."""
    options: dict[str, Any] = {}
    volumes = []
    for spec in params.get("volume") or ():
        source, sep, rest = spec.partition(":")
        if source == "." or source.startswith(("./", "../")) or source == "..":
            source = os.path.normpath(os.path.join(cwd, source))
        volumes.append(f"{source}{sep}{rest}")
    if volumes:
        options["volumes"] = volumes
    if params.get("tmpfs"):
        options["tmpfs"] = list(params["tmpfs"])
    if params.get("read_only"):
        options["read_only"] = True
    return options
