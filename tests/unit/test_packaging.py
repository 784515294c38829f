"""The Debian package (debian/, packaging/, man/) agrees with the code: versions, dependencies, man pages.

tests/host/test_package.py installs, upgrades and removes the built package; these catch, without building it, a
new import, program or library the package would lack, and a command the man page does not mention.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import click

import quilt_agent
from quilt_agent.cli.main import cli

PROJECT = Path(__file__).resolve().parents[2]
CONTROL = (PROJECT / "debian/control").read_text()

# What the code needs from outside Python's standard library, and the Debian package that gives it.
MODULE_PACKAGES = {"click": "python3-click", "rich": "python3-rich", "dnslib": "python3-dnslib",
                   "systemd": "python3-systemd"}
PROGRAM_PACKAGES = {"nft": "nftables", "zstd": "zstd", "journalctl": "systemd"}
LIBRARY_PACKAGES = {"libseccomp.so.2": "libseccomp2"}
# Run by the package's own scripts and needed of every host Quilt runs on (debian/control says why not others).
ALWAYS = {"systemd", "dbus", "polkitd", "python3"}


def depends() -> set[str]:
    field = re.search(r"^Depends:(.*?)^\S", CONTROL, re.M | re.S).group(1)
    return {re.sub(r"\(.*?\)", "", alt).strip() for dep in field.split(",") for alt in dep.split("|")} - {""}


def bundled() -> set[str]:
    """The import names of the libraries the package carries (packaging/bundled.txt)."""
    names = re.findall(r"^([A-Za-z0-9_.-]+)==", (PROJECT / "packaging/bundled.txt").read_text(), re.M)
    return {n.replace("-", "_").lower() for n in names}


def sources() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted((PROJECT / "quilt_agent").rglob("*.py"))]


def test_the_versions_agree() -> None:
    changelog = (PROJECT / "debian/changelog").read_text().splitlines()[0]
    version = re.match(r"quilt-runtime \((.+?)\)", changelog).group(1)
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
    assert version == project == quilt_agent.__version__


def test_every_third_party_import_is_bundled_or_a_dependency() -> None:
    found: dict[str, str] = {}
    for path, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != "quilt_agent":
                    found.setdefault(top, f"{path.relative_to(PROJECT)}:{node.lineno}")
    missing = {m: where for m, where in found.items()
               if m not in bundled() and MODULE_PACKAGES.get(m) not in depends()}
    assert not missing, f"imported, but neither bundled (packaging/bundled.txt) nor in debian/control's Depends " \
                        f"(through MODULE_PACKAGES): {missing}"


def _literal_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "text" constants (firewall.py's NFT = "nft")."""
    return {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            and isinstance(n.value.value, str) for t in n.targets if isinstance(t, ast.Name)}


def test_every_program_and_library_the_code_runs_is_a_dependency() -> None:
    programs: dict[str, str] = {}
    libraries: dict[str, str] = {}
    for path, tree in sources():
        constants = _literal_strings(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = ast.unparse(node.func)
            first = node.args[0]
            if func.endswith("to_thread") and len(node.args) > 1:  # asyncio.to_thread(subprocess.run, [...])
                func, first = ast.unparse(first), node.args[1]
            where = f"{path.relative_to(PROJECT)}:{node.lineno}"
            if func.endswith(("subprocess.run", "subprocess.Popen", "subprocess.check_output")):
                if isinstance(first, ast.List) and first.elts:
                    first = first.elts[0]
                else:
                    continue
            elif not func.endswith("create_subprocess_exec") and not func.endswith("CDLL"):
                continue
            value = first.value if isinstance(first, ast.Constant) else constants.get(getattr(first, "id", ""))
            if isinstance(value, str):
                (libraries if func.endswith("CDLL") else programs).setdefault(value, where)
    assert "nft" in programs and "libseccomp.so.2" in libraries, "the scan no longer finds what it must"
    unknown = {p: w for p, w in programs.items() if p not in PROGRAM_PACKAGES}
    unknown |= {lib: w for lib, w in libraries.items() if lib not in LIBRARY_PACKAGES}
    assert not unknown, f"add these to debian/control's Depends, and here with their Debian package: {unknown}"
    needed = {PROGRAM_PACKAGES[p] for p in programs} | {LIBRARY_PACKAGES[lib] for lib in libraries} | ALWAYS
    assert needed <= depends(), f"missing from debian/control's Depends: {needed - depends()}"


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    found = []
    ctx = click.Context(group)
    # Through get_command: quiltctl's groups import their commands only when asked (group.commands is empty).
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if command.hidden:
            continue
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
        else:
            found.append(prefix + name)
    return found


def test_the_man_page_mentions_every_quiltctl_command() -> None:
    text = (PROJECT / "man/quiltctl.1").read_text().replace("\\-", "-")
    # Every command is named in a macro line: `.BI "run " ...`, `.B version`, `.BR "image ls" ", " ...`.
    words = [quoted or bare for line in text.splitlines() if line.startswith(".B")
             for quoted, bare in re.findall(r'"([^"]*)"|(\S+)', line)]
    macro_text = " ".join(words)
    missing = [c for c in _commands(cli) if not re.search(rf"(^|\s){re.escape(c)}(\s|$)", macro_text)]
    assert not missing, f"man/quiltctl.1 does not mention: {missing}"
