"""An unknown command: Podman's commands quiltctl lacks say what to use instead; anything else gets no guess."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from quilt_agent.cli.context import CliState
from quilt_agent.cli.main import COMMANDS, PODMAN_EQUIVALENTS, cli

USAGE_ERROR = 2


def stderr_of(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), prog_name="quiltctl", obj=CliState(client_factory=None))
    return result.exit_code, result.stderr


@pytest.mark.parametrize("name", ["rmv", "stat", "imags", "pss", "rmii", "inspekt", "lgs", "builds"])
def test_a_typo_gets_no_guess_by_spelling(name: str) -> None:
    assert stderr_of(name) == (USAGE_ERROR, f"quiltctl: no such command '{name}' (see 'quiltctl --help')\n")


@pytest.mark.parametrize("name", sorted(PODMAN_EQUIVALENTS))
def test_a_podman_command_quiltctl_lacks_says_what_to_use_instead(name: str) -> None:
    code, stderr = stderr_of(name, "x")
    assert code == USAGE_ERROR and len(stderr.splitlines()) == 1
    assert stderr.startswith(f"quiltctl: no such command '{name}': {PODMAN_EQUIVALENTS[name]}")


def test_build_points_at_buildah_and_import() -> None:
    assert "buildah" in PODMAN_EQUIVALENTS["build"] and "quiltctl import" in PODMAN_EQUIVALENTS["build"]


def test_no_equivalent_shadows_a_command() -> None:
    assert not set(PODMAN_EQUIVALENTS) & set(COMMANDS)


def test_every_quiltctl_command_an_equivalent_names_exists() -> None:
    named = {word for text in PODMAN_EQUIVALENTS.values() for word in re.findall(r"`quiltctl ([a-z-]+)", text)}
    assert named and named <= set(COMMANDS), named - set(COMMANDS)
