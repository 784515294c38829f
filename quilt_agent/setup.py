"""Setup commands: `MANAGER: ARGS` entries run inside a container before its main command.

Quilt builds each manager's argument vectors itself and execs them without a shell, so a package name is only
ever an argument; `sh:` is the one way to ask for a shell. Pure functions: the create call validates with
them, the container's init (helper/monitor.py) builds the argument vectors with them, the manager keys the
setup cache with them.
"""
from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from typing import Any

from quilt_agent.errors import InvalidArgument

# Characters a shell would act on: refused in a manager's arguments, where they could only be a mistake
# (the user meant a shell), and would otherwise reach the manager as odd package names. Not < and >: pip's
# version specifiers use them.
SHELL_CHARACTERS = frozenset(";|&$`(){}\n")

# What each manager needs in a container, set only where the container's environment leaves them unset:
# pip: Debian and others mark the system Python as externally managed (PEP 668); older pips ignore the
# variable. npm and pip: no prompts, no update nags. apt: no debconf questions.
MANAGER_ENV: dict[str, dict[str, str]] = {
    "pip": {"PIP_BREAK_SYSTEM_PACKAGES": "1", "PIP_ROOT_USER_ACTION": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1", "PIP_NO_CACHE_DIR": "1"},
    "npm": {"npm_config_update_notifier": "false", "npm_config_fund": "false", "npm_config_audit": "false"},
    "gem": {},
    "apt": {"DEBIAN_FRONTEND": "noninteractive"},
    "apk": {},
    "sh": {},
}
MANAGERS = tuple(MANAGER_ENV)


@dataclass(frozen=True)
class SetupStep:
    """One entry, parsed: the manager and its arguments (for sh, the one command line)."""

    manager: str
    args: tuple[str, ...]

    @property
    def argvs(self) -> tuple[tuple[str, ...], ...]:
        """The commands to run for this step, in order; each must succeed."""
        a = self.args
        if self.manager == "pip":
            return (("python3", "-m", "pip", "install", *a),)
        if self.manager == "npm":
            return (("npm", "install", "--global", *a),)
        if self.manager == "gem":
            return (("gem", "install", "--no-document", *a),)
        if self.manager == "apt":
            return (("apt-get", "update", "-q"), ("apt-get", "install", "-y", "-q", "--no-install-recommends", *a))
        if self.manager == "apk":
            return (("apk", "add", "--no-cache", *a),)
        return (("/bin/sh", "-c", a[0]),)

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """The container's environment with what the manager needs added (the container's own values win)."""
        return {**MANAGER_ENV[self.manager], **env}


def _one_line(text: str) -> str:
    """An error message is one line (quiltctl prints it as one), whatever the caller sent."""
    return text.replace("\n", "\\n")


def parse(entry: str) -> SetupStep:
    """One `MANAGER: ARGS` entry; InvalidArgument naming what is wrong."""
    shown = _one_line(entry)
    if "\0" in entry:
        raise InvalidArgument(f"Invalid setup step {entry!r}: contains a NUL byte")
    manager, sep, rest = entry.partition(":")
    manager, rest = manager.strip(), rest.strip()
    if not sep or manager not in MANAGER_ENV:
        raise InvalidArgument(f"Invalid setup step '{shown}': expected 'MANAGER: ARGS' with MANAGER among "
                              f"{', '.join(MANAGERS)}")
    if not rest:
        raise InvalidArgument(f"Invalid setup step '{shown}': nothing to {'run' if manager == 'sh' else 'install'}")
    if manager == "sh":
        return SetupStep("sh", (rest,))
    if "\n" in rest:
        # shlex would take it for a space; whoever wrote it meant a second command line.
        raise InvalidArgument(f"Invalid setup step '{shown}': a line break in {manager}'s arguments (they never "
                              "reach a shell: use 'sh: ...' for command lines)")
    try:
        args = tuple(shlex.split(rest))
    except ValueError as e:
        raise InvalidArgument(f"Invalid setup step '{shown}': {e}") from None
    for arg in args:
        if SHELL_CHARACTERS & set(arg):
            raise InvalidArgument(f"Invalid setup step '{shown}': '{_one_line(arg)}' is not a package name; "
                                  f"{manager}'s arguments never reach a shell (use 'sh: ...' for a command line)")
    return SetupStep(manager, args)


def parse_option(key: str, value: Any) -> tuple[str, ...]:
    """The create option `setup`: a list of entries, each checked, kept as given (normalised spacing)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"Option '{key}' must be a list of strings, not {value!r}")
    for entry in value:
        parse(entry)
    return tuple(value)


def cache_key(image_id: str, user: str, steps: tuple[str, ...], owner_uid: int) -> str:
    """What a cached setup result is found by: the same image, user and steps give the same result, for the same
    owner only. A result is what its container's environment, volumes and callers made of the steps (a secret in
    the environment written to a file, a program copied in): one owner's never serves another's containers."""
    doc = json.dumps({"image": image_id, "user": user, "setup": list(steps), "owner": owner_uid}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def identifier(container_name: str) -> str:
    """The journal's SYSLOG_IDENTIFIER of setup output; the main command's is the container's name, and '/'
    can never be part of a name."""
    return f"{container_name}/setup"
