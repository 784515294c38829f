"""A package name can never run a command: entries with a shell's metacharacters are refused at create (only `sh:`
takes a command line), and what passes is handed to the manager as a word, never to a shell (< and > pass, for
pip's version specifiers: a shell would redirect, the manager gets them as they are)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests import packageindex as pkg
from tests.integration.setup.conftest import ERR, SetupImage, headers, no_path, run

REFUSED = [
    "pip: x; touch /pwned",
    "pip: 'x; touch /pwned'",  # quoted: still one word with a ';' in it
    "npm: x && touch /pwned",
    "npm: x | touch /pwned",
    "gem: $(touch /pwned)",
    "gem: `touch /pwned`",
    "apt: 'x\ntouch /pwned'",  # a newline inside a quoted word
    "apk: x & touch /pwned",
    "apk: {x,y}",
    "pip: x;",
    "pip: ${IFS}",
]


@pytest.mark.parametrize("entry", REFUSED)
async def test_shell_syntax_in_a_managers_arguments_is_refused_at_create(sclient: Client, name: str,
                                                                         busybox: str, entry: str) -> None:
    for call in (sclient.create_container, sclient.run_container):
        with pytest.raises(ClientError) as info:
            await call(name, busybox, ["touch", "/main-ran"],
                       {"setup": Variant("as", ["sh: true", entry])})
        assert info.value.name == ERR + "InvalidArgument", info.value
        assert "sh:" in info.value.message and "\n" not in info.value.message, info.value.message
        assert await sclient.list_containers() == []
        with pytest.raises(ClientError) as gone:
            await sclient.get_container(name)
        assert gone.value.name == ERR + "NoSuchContainer"
    assert not os.path.exists("/pwned")


@pytest.mark.parametrize("entry, manager", [
    ("pip: 'x touch /pwned'", "pip"),
    ('npm: "x touch /pwned"', "npm"),
    ("gem: 'x touch /pwned' --clear-sources", "gem"),
    ("pip: quilt-hell?", "pip"),  # a shell would glob it; pip gets the word as it is
    ("pip: x > /pwned", "pip"),  # a shell would redirect; pip gets '>' and '/pwned' as requirements
])
async def test_what_passes_is_a_word_for_the_manager_never_a_command(
        sclient: Client, name: str, setup_image: SetupImage, packages: pkg.PackageServer, tmp_path: Path,
        entry: str, manager: str) -> None:
    out = await run(sclient, name, setup_image.name, "touch /main-ran", [entry], {"env": packages.env()},
                    expect_main=False)
    assert out.props["State"] == "failed", out
    assert out.props["FailureReason"].startswith(f"setup step 1 ({entry}) exited with code "), out.props
    assert out.exit_code != 0
    assert headers(out.setup) == [f"quilt: setup step 1/1: {entry}"]
    await no_path(sclient, out.path, "/pwned", tmp_path)
    await no_path(sclient, out.path, "/main-ran", tmp_path)
    assert not os.path.exists("/pwned")
    if entry == "pip: quilt-hell?":
        assert any("quilt-hell?" in line for line in out.setup), out.setup  # pip saw the word unexpanded


async def test_a_version_specifier_reaches_pip_unredirected(sclient: Client, name: str, setup_image: SetupImage,
                                                            packages: pkg.PackageServer, tmp_path: Path) -> None:
    """`quilt-hello>=1.0,<2` through a shell would write pip's output to a file '=1.0,' and read '2'; as one word
    it is a requirement pip satisfies."""
    entry = f"pip: {pkg.PIP_NAME}>=1.0,<2"
    out = await run(sclient, name, setup_image.name, f"python3 -c 'import {pkg.PIP_MODULE}' && echo imported",
                    [entry], {"env": packages.env(), "workdir": "/"})
    assert out.exit_code == 0, out
    assert out.stdout[-1] == "imported"
    assert any(f"Successfully installed {pkg.PIP_NAME}-{pkg.PIP_VERSION}" in line for line in out.setup), out.setup
    await no_path(sclient, out.path, "/=1.0,", tmp_path)
