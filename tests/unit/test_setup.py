"""Setup entries: parsing, the argument vectors Quilt runs, the environment, the cache key (quilt_agent/setup.py)."""
from __future__ import annotations

import pytest

from quilt_agent import setup
from quilt_agent.errors import InvalidArgument


@pytest.mark.parametrize("entry, argvs", [
    ("pip: flask requests>=2", (("python3", "-m", "pip", "install", "flask", "requests>=2"),)),
    ("npm: typescript @types/node", (("npm", "install", "--global", "typescript", "@types/node"),)),
    ("gem: --source http://h:8808/ rake", (("gem", "install", "--no-document", "--source", "http://h:8808/", "rake"),)),
    ("apt: curl", (("apt-get", "update", "-q"), ("apt-get", "install", "-y", "-q", "--no-install-recommends", "curl"))),
    ("apk: curl", (("apk", "add", "--no-cache", "curl"),)),
    ("sh: make -C /src && make install", (("/bin/sh", "-c", "make -C /src && make install"),)),
    ("  pip :   'flask[async]'  ", (("python3", "-m", "pip", "install", "flask[async]"),)),
])
def test_each_manager_gets_its_own_argument_vectors(entry: str, argvs: tuple) -> None:
    assert setup.parse(entry).argvs == argvs


@pytest.mark.parametrize("entry", ["pip: x; touch /pwned", "npm: a|b", "gem: $(reboot)", "apt: `id`",
                                   "pip: a&&b", "apk: {a,b}"])
def test_shell_syntax_in_a_managers_arguments_is_refused(entry: str) -> None:
    with pytest.raises(InvalidArgument, match="never reach a shell"):
        setup.parse(entry)


def test_a_quoted_argument_stays_one_argument_and_is_never_split_again() -> None:
    step = setup.parse("pip: 'x y'")
    assert step.argvs == (("python3", "-m", "pip", "install", "x y"),)


@pytest.mark.parametrize("entry, message", [
    ("pip:", "nothing to install"), ("sh:   ", "nothing to run"), ("brew: wget", "MANAGER among"),
    ("pip flask", "MANAGER among"), ("pip: 'open", "No closing quotation"), ("sh: a\0b", "NUL"),
    ("apt: x\ntouch /pwned", "a line break"),
])
def test_bad_entries_name_what_is_wrong(entry: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        setup.parse(entry)


def test_the_option_must_be_a_list_of_strings() -> None:
    assert setup.parse_option("setup", ["sh: true", "pip: x"]) == ("sh: true", "pip: x")
    for bad in ("sh: true", [1], None):
        with pytest.raises(InvalidArgument, match="list of strings"):
            setup.parse_option("setup", bad)


def test_manager_environment_fills_gaps_and_the_containers_values_win() -> None:
    env = setup.parse("pip: x").environment({"PATH": "/bin", "PIP_NO_CACHE_DIR": "0"})
    assert env["PIP_BREAK_SYSTEM_PACKAGES"] == "1" and env["PIP_NO_CACHE_DIR"] == "0" and env["PATH"] == "/bin"
    assert setup.parse("apt: x").environment({})["DEBIAN_FRONTEND"] == "noninteractive"
    assert setup.parse("sh: x").environment({"A": "1"}) == {"A": "1"}


def test_cache_key_depends_on_image_user_steps_in_order_and_owner() -> None:
    key = setup.cache_key("img", "", ("sh: a", "sh: b"), 0)
    assert key == setup.cache_key("img", "", ("sh: a", "sh: b"), 0)
    others = {setup.cache_key("img2", "", ("sh: a", "sh: b"), 0), setup.cache_key("img", "1000", ("sh: a", "sh: b"), 0),
              setup.cache_key("img", "", ("sh: b", "sh: a"), 0), setup.cache_key("img", "", ("sh: a", "sh: b"), 1000)}
    assert key not in others and len(others) == 4


def test_setup_identifier_can_never_be_a_container_name() -> None:
    assert setup.identifier("web") == "web/setup"
