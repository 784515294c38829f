"""The shape of quilt_agent's imports: no cycle, dbus-fast only where the bus is, and quiltctl kept light.

The graph is read from the source with `ast`, so an import inside a function counts as much as one at the top:
an import moved into a function to get past a cycle at start-up still shows the cycle here.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "quilt_agent"
SOURCE_ROOT = Path(__file__).resolve().parents[2]

# Outside quilt_agent/bus/ and quilt_agent/cli/, the modules that may import dbus_fast, and why.
DBUS_FAST_OUTSIDE_BUS = {
    "quilt_agent.scopes": "the systemd client: StartTransientUnit, StopUnit and JobRemoved are calls and signals on "
                          "the system bus, to systemd, not the agent's own API",
    "quilt_agent.machines": "the systemd-machined client: RegisterMachineWithNetwork and UnregisterMachine are "
                            "calls on the system bus, to machined, not the agent's own API",
    "quilt_agent.lifecycle": "the idle exit reads the bus itself: any incoming call counts as use (a message "
                             "handler) and dbus-daemon's match-rule table tells who follows the agent's signals",
    "quilt_agent.daemon": "the wiring: it connects to the system bus, exports the bus layer's objects and "
                          "requests the bus name",
    "quilt_agent.client": "quiltctl's and other programs' client of org.quilt.Runtime: a bus client by nature, "
                          "outside cli/ so that programs and tests use it without click",
}

# What quiltctl (quilt_agent/cli/) may reach outside cli/, directly or through other modules, and why: none of
# them pulls the agent's heavy dependencies (pyroute2, aiosqlite, systemd), so every quiltctl call starts fast.
CLI_REACHES = {
    "quilt_agent": "the package: __version__",
    "quilt_agent.client": "the asyncio bus client of the streaming verbs (logs -f, events, stats, attached run)",
    "quilt_agent.api": "the API's calls and option tables, shared by both of quiltctl's transports",
    "quilt_agent.replies": "the records the API's calls return (standard library only)",
    "quilt_agent.wire": "the blocking bus connection the one-shot verbs talk through (standard library only)",
    "quilt_agent.bus.names": "the bus name, object paths and interface names, defined once",
    "quilt_agent.bus.error_names": "the error names, defined once with the agent's errors they stand for",
    "quilt_agent.errors": "the agent's error classes, which bus.errors maps to names (standard library only)",
    "quilt_agent.config": "default paths, read by bus.errors (standard library only)",
    "quilt_agent.cgroups": "top: the processes of a container's cgroup, found from its init as the agent finds it "
                           "(standard library only)",
    "quilt_agent.filetree": "packing and unpacking `cp` archives with the caller's own rights (standard library "
                            "only)",
    **dict.fromkeys(("quilt_agent.unitfiles", "quilt_agent.model", "quilt_agent.health", "quilt_agent.setup",
                     "quilt_agent.volume_options", "quilt_agent.network.options", "quilt_agent.network.model",
                     "quilt_agent.capabilities"),
                    "container files: unit-check and unit-run check a file by the agent's own option rules, so "
                    "that a file that passes is one the agent takes (standard library only)"),
}
# The third-party packages quiltctl may import at all.
CLI_THIRD_PARTY = {"click", "dbus_fast", "rich"}


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under root, by dotted name (a package by its own name)."""
    modules: dict[str, Path] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The dotted names a module imports, anywhere in it (functions included), relative imports resolved;
    `from X import Y` names X.Y when that is a module, X otherwise."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return found


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> the package's modules it imports, module -> the top-level names of everything it imports)."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    tops: dict[str, set[str]] = {}
    for module, path in modules.items():
        names = imported_names(module, path, modules)
        graph[module] = {name for name in names if name in modules and name != module}
        tops[module] = {name.split(".")[0] for name in names}
    return graph, tops


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as the modules along it, the first repeated at the end; None if there is none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        trail: list[str] = [start]
        on_trail = {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                done.add(trail[-1])
                on_trail.discard(trail.pop())
            elif child in on_trail:
                return trail[trail.index(child):] + [child]
            elif child not in done:
                trail.append(child)
                on_trail.add(child)
                stack.append(iter(sorted(graph[child])))
    return None


def reachable(graph: dict[str, set[str]], starts: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


GRAPH, TOP_LEVEL = import_graph(SOURCE_ROOT, PACKAGE)


def test_quilt_agent_has_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_bus_layer_and_its_listed_clients_import_dbus_fast() -> None:
    importers = {module for module, tops in TOP_LEVEL.items() if "dbus_fast" in tops}
    outside = {m for m in importers if not m.startswith(("quilt_agent.bus.", "quilt_agent.cli."))}
    unexpected = outside - set(DBUS_FAST_OUTSIDE_BUS)
    assert not unexpected, f"dbus_fast imported outside bus/ and cli/: {sorted(unexpected)}"
    # An exception that no longer imports it is no longer an exception: the list says what is true.
    stale = set(DBUS_FAST_OUTSIDE_BUS) - importers
    assert not stale, f"listed but not importing dbus_fast: {sorted(stale)}"


def test_quiltctl_reaches_no_agent_core_module() -> None:
    cli = {module for module in GRAPH if module.startswith("quilt_agent.cli")}
    beyond = reachable(GRAPH, cli) - cli
    unexpected = beyond - set(CLI_REACHES)
    assert not unexpected, f"quilt_agent/cli/ reaches agent modules: {sorted(unexpected)}"


def test_quiltctl_imports_no_heavy_third_party_package() -> None:
    cli = {module for module in GRAPH if module.startswith("quilt_agent.cli")}
    imported = set().union(*(TOP_LEVEL[module] for module in reachable(GRAPH, cli)))
    third_party = imported - set(sys.stdlib_module_names) - {PACKAGE}
    assert third_party <= CLI_THIRD_PARTY, f"quiltctl imports {sorted(third_party - CLI_THIRD_PARTY)}"


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path, "pkg")[0]


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from pkg.a import thing\n",
    })
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_relative_imports_and_imported_submodules_are_resolved(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "__init__.py": "",
        "sub/__init__.py": "from . import x\n",
        "sub/x.py": "from .. import top\nfrom .y import name\n",
        "sub/y.py": "import pkg.top\n",
        "top.py": "from pkg.sub import y\n",
    })
    assert graph == {
        "pkg": set(),
        "pkg.sub": {"pkg.sub.x"},
        "pkg.sub.x": {"pkg.top", "pkg.sub.y"},
        "pkg.sub.y": {"pkg.top"},
        "pkg.top": {"pkg.sub.y"},
    }
    assert find_cycle(graph) == ["pkg.sub.y", "pkg.top", "pkg.sub.y"]


def test_a_tree_without_cycles_has_none(tmp_path: Path) -> None:
    graph = _package(tmp_path, {"__init__.py": "", "a.py": "from pkg import b\n", "b.py": "import os\n"})
    assert find_cycle(graph) is None
