"""Every program the suite runs on the machine comes from a Debian package that `make setup` installs.

`make test` on a fresh Debian 12 clone must pass with nothing installed by hand, so each program that a test, a
test helper, a script the tests call or the agent under test runs has to come from a package in the Makefile's
APT_PACKAGES, from one those depend on, or from one every Debian system has (Essential, or Priority: required).
A machine that kept a tool from earlier runs hides a missing one, so nothing here is skipped: PROGRAMS declares
the programs, a scan of the sources checks that the declaration is complete, and dpkg says which package each
declared program comes from.

The scan reads the sources' syntax trees: argv lists given to subprocess, asyncio, os.exec* and shutil.which,
directly or through the tests' own helper functions (a function that passes one of its parameters into such a
call), names bound to lists or strings, shell text given to `sh -c`, `script -c`, tmux and trap, the repository's
shell scripts the tests run, Python given to `python3 -c`, and the command that setpriv, nsenter, unshare,
setsid, systemd-run, `ip netns exec` and tests/testhost.py run. What a container runs comes from its image, not
from the machine, so the scan stops at quiltctl, at calls to the agent and at `nsenter --root`. A helper reached
only as a method of a class from another module is not followed.
"""
from __future__ import annotations

import ast
import itertools
import os
import re
import shutil
import subprocess
import textwrap
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]

# Every program outside the project the suite runs on the machine (or in the test host, which is the machine's
# root under an overlay), as the sources name it: a name looked up on PATH, or an absolute path.
PROGRAMS = (
    # systemd, the bus and polkit, in the test host
    "/lib/systemd/systemd", "systemctl", "systemd-run", "systemd-analyze", "systemd-cat", "journalctl", "busctl",
    "gdbus",
    "machinectl",
    "pkaction",
    # namespaces, users, mounts
    "unshare", "nsenter", "setpriv", "setsid", "mount", "umount", "findmnt", "hostname", "sysctl", "getent", "ps",
    # networking
    "ip", "ss", "nft", "ping", "ldd", "ldconfig", "busybox", "/bin/busybox",
    # images and archives
    "tar", "gzip", "xz", "bzip2", "zstd", "umoci", "skopeo", "podman", "docker-registry", "htpasswd", "openssl",
    # setup commands: the Debian image and the package indexes
    "mmdebstrap", "gem", "dpkg-deb", "dpkg-scanpackages",
    # the rest
    "/usr/bin/python3", "python3", "sh", "/bin/sh", "make", "tmux", "script", "date", "cat", "sleep", "mkdir",
    "rm", "mktemp", "chmod", "chown", "cp", "ln", "stat", "sed", "true", "dpkg", "dpkg-query", "apt-get",
)

SCANNED = ("tests", "quilt_agent")  # scripts/ are read when a test runs one
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the test host's, less the venv


# --- the scan ------------------------------------------------------------------------------------------------

MORE = object()  # an unknown number of unknown words
PY = "\0sys.executable"  # the venv's Python: the project's own
# An argv is a list of tokens: a word ("\0" where a part of it is unknown), None (an unknown word) or MORE.

# The calls that run a program, by how they take it.
ARGV_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
              "subprocess.check_output", "pty.spawn"}
VARARG_CALLS = {"asyncio.create_subprocess_exec", "os.execl", "os.execlp", "os.execle", "os.execlpe"}
EXEC_CALLS = {"os.execv", "os.execve", "os.execvp", "os.execvpe", "os.posix_spawn", "os.posix_spawnp"}
SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
               "asyncio.create_subprocess_shell"}
WHICH_CALLS = {"shutil.which"}
SINKS = ARGV_CALLS | VARARG_CALLS | EXEC_CALLS | SHELL_CALLS | WHICH_CALLS

# Shell words that are no program.
SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "time", "esac"}
SHELL_BUILTINS = {":", ".", "source", "alias", "bg", "break", "cd", "continue", "echo", "eval", "exit", "export",
                  "false", "fg", "getopts", "hash", "jobs", "kill", "local", "printf", "pwd", "read", "readonly",
                  "return", "set", "shift", "test", "[", "[[", "times", "trap", "true", "type", "ulimit", "umask",
                  "unalias", "unset", "wait", "let", "declare", "typeset"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")

# Options that take the next word as their value, for the programs that run another one.
VALUED = {
    "setpriv": {"--reuid", "--regid", "--ruid", "--rgid", "--euid", "--egid", "--groups", "--inh-caps",
                "--ambient-caps", "--bounding-set", "--securebits", "--pdeathsig", "--selinux-label",
                "--apparmor-profile", "--landlock-access", "--landlock-rule"},
    "nsenter": {"-t", "--target", "-S", "--setuid", "-G", "--setgid"},
    "unshare": {"--propagation", "--setgroups", "-S", "--setuid", "-G", "--setgid", "-R", "--root", "-w", "--wd",
                "--map-user", "--map-group", "--map-users", "--map-groups", "-l", "--load-interp"},
    "systemd-run": {"-u", "--unit", "--slice", "-p", "--property", "--description", "-E", "--setenv", "--uid",
                    "--gid", "-M", "--machine", "-H", "--host", "--working-directory", "--nice", "--service-type",
                    "--on-active", "--on-boot", "--on-startup", "--on-unit-active", "--on-unit-inactive",
                    "--on-calendar", "--timer-property", "--path-property", "--socket-property"},
    "setsid": set(),
    "nice": {"-n", "--adjustment"},
    "timeout": {"-s", "--signal", "-k", "--kill-after"},
    "env": {"-u", "--unset", "-C", "--chdir"},
    "tmux": {"-c", "-e", "-F", "-n", "-s", "-t", "-x", "-y", "-f", "-L", "-S", "-T"},
}
TMUX_SHELL = {"new-session", "new", "new-window", "neww", "split-window", "splitw", "respawn-pane", "respawnp",
              "respawn-window", "respawnw", "run-shell", "run"}


def own_programs() -> frozenset[str]:
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    return frozenset(scripts)


@dataclass
class Module:
    name: str
    rel: str
    tree: ast.Module
    imports: dict[str, str] = field(default_factory=dict)  # local name -> dotted name it stands for
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    methods: dict[str, list[ast.FunctionDef | ast.AsyncFunctionDef]] = field(default_factory=dict)
    assigned: dict[str, list[ast.expr]] = field(default_factory=dict)  # top-level name = value
    place: str | None = None  # where its uses are reported, for code a test gives to `python3 -c`


@dataclass
class Ctx:
    module: Module
    func: ast.FunctionDef | ast.AsyncFunctionDef | None
    bindings: dict[str, tuple[str, object, "Ctx"]]  # parameter -> ("expr", node, ctx) | ("args", [nodes], ctx)


Func = ast.FunctionDef | ast.AsyncFunctionDef


def _own_body(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function's (or module's) own body, not those of functions or classes in it."""
    todo = list(ast.iter_child_nodes(node))
    while todo:
        n = todo.pop()
        yield n
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(n))


class Scan:
    """The programs some sources run: program -> places ("file:line")."""

    MAX_ALTERNATIVES = 32
    MAX_DEPTH = 12  # helpers calling helpers, programs running programs
    MAX_VALUE_DEPTH = 40  # names bound to names, in expressions

    def __init__(self, sources: dict[str, str], root: Path = PROJECT, own: frozenset[str] = frozenset()) -> None:
        self.root = root
        self.own = own
        self.uses: dict[str, set[str]] = {}
        self.modules: dict[str, Module] = {}
        self.parent: dict[Func, Func | None] = {}
        self.module_of: dict[Func, Module] = {}
        self.calls_in: dict[Func, list[ast.Call]] = {}  # each function's own calls
        self.assigned_in: dict[Func, dict[str, list[ast.expr]]] = {}  # and its own name = value
        self.defined_in: dict[Func, dict[str, Func]] = {}  # and the functions it defines
        self.wrappers: dict[Func, list[ast.Call]] = {}  # function -> its calls that a parameter reaches
        self.shell_files_seen: set[Path] = set()
        self.python_seen: set[str] = set()
        for rel, text in sources.items():
            self._add_module(rel, text)
        self._find_wrappers()
        for module in list(self.modules.values()):
            self._scan_module(module)

    # -- modules

    @staticmethod
    def _module_name(rel: str) -> str:
        return rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")

    def _add_module(self, rel: str, text: str, place: str | None = None) -> Module:
        name = f"<python -c at {place}>" if place else self._module_name(rel)
        module = Module(name, rel, ast.parse(text, rel), place=place)
        self.modules[name] = module
        package = name.rsplit(".", 1)[0] if not rel.endswith("__init__.py") else name
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    module.imports[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                for a in node.names:
                    module.imports[a.asname or a.name] = f"{base}.{a.name}"
        for node in module.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                module.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        module.methods.setdefault(item.name, []).append(item)
        for node in _own_body(module.tree):
            for name_, value in self._assignments(node):
                module.assigned.setdefault(name_, []).append(value)
        self._note_parents(module.tree, None)
        for func in ast.walk(module.tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.module_of[func] = module
                body = list(_own_body(func))
                self.calls_in[func] = [n for n in body if isinstance(n, ast.Call)]
                assigned: dict[str, list[ast.expr]] = {}
                for n in body:
                    for name_, value in self._assignments(n):
                        assigned.setdefault(name_, []).append(value)
                self.assigned_in[func] = assigned
                self.defined_in[func] = {n.name: n for n in body if isinstance(n, (ast.FunctionDef,
                                                                                   ast.AsyncFunctionDef))}
        return module

    def _note_parents(self, node: ast.AST, func: Func | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.parent[child] = func
                self._note_parents(child, child)
            else:
                self._note_parents(child, func)

    @staticmethod
    def _assignments(node: ast.AST) -> Iterator[tuple[str, ast.expr]]:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    yield target.id, node.value
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and isinstance(node.target, ast.Name) and node.value:
            yield node.target.id, node.value

    # -- what a call is

    def _dotted(self, func: ast.expr, module: Module) -> str | None:
        if isinstance(func, ast.Name):
            return module.imports.get(func.id)
        if isinstance(func, ast.Attribute):
            inner = self._dotted(func.value, module)
            return f"{inner}.{func.attr}" if inner else None
        return None

    def _callee(self, call: ast.Call, ctx: Ctx) -> tuple[Func, bool] | None:
        """The function of the scanned sources a call runs, and whether it is a method (self not passed)."""
        f, module = call.func, ctx.module
        if isinstance(f, ast.Name):
            scope = ctx.func
            while scope is not None:
                if f.id in self.defined_in[scope]:
                    return self.defined_in[scope][f.id], False
                scope = self.parent.get(scope)
            if f.id in module.functions:
                return module.functions[f.id], False
            dotted = module.imports.get(f.id)
            if dotted and "." in dotted:
                source, name = dotted.rsplit(".", 1)
                if source in self.modules and name in self.modules[source].functions:
                    return self.modules[source].functions[name], False
            return None
        if isinstance(f, ast.Attribute):
            dotted = self._dotted(f.value, module)
            if dotted in self.modules:
                target = self.modules[dotted].functions.get(f.attr)
                return (target, False) if target else None
            if dotted is None and f.attr in module.methods:
                return module.methods[f.attr][0], True
        return None

    def _sink(self, call: ast.Call, module: Module) -> str | None:
        dotted = self._dotted(call.func, module)
        return dotted if dotted in SINKS else None

    @staticmethod
    def _params(func: Func, method: bool = False) -> list[str]:
        a = func.args
        names = [p.arg for p in a.posonlyargs + a.args]
        if method and names and names[0] in ("self", "cls"):
            names = names[1:]
        return names

    @classmethod
    def _all_params(cls, func: Func) -> set[str]:
        a = func.args
        names = {p.arg for p in a.posonlyargs + a.args + a.kwonlyargs}
        names |= {p.arg for p in (a.vararg, a.kwarg) if p}
        return names

    def _program_args(self, call: ast.Call, kind: str) -> list[ast.expr]:
        """The argument expressions that make up the program and its argv."""
        if kind in ARGV_CALLS or kind in SHELL_CALLS or kind in WHICH_CALLS:
            args = call.args[:1] + [k.value for k in call.keywords if k.arg in ("args", "cmd", "command")]
            return args
        if kind in EXEC_CALLS:
            return call.args[:2]
        return list(call.args)

    # -- wrappers: functions a parameter of which reaches a program's argv

    def _find_wrappers(self) -> None:
        changed = True
        while changed:
            changed = False
            for func, module in self.module_of.items():
                params = self._all_params(func)
                ctx = Ctx(module, func, {})
                reaching = []
                for node in self.calls_in[func]:
                    kind = self._sink(node, module)
                    if kind:
                        exprs = self._program_args(node, kind)
                    elif (callee := self._callee(node, ctx)) and callee[0] in self.wrappers:
                        exprs = list(node.args) + [k.value for k in node.keywords]
                    else:
                        continue
                    if self._names_in(exprs, func) & params:
                        reaching.append(node)
                if reaching and len(reaching) != len(self.wrappers.get(func, [])):
                    self.wrappers[func] = reaching
                    changed = True

    def _names_in(self, exprs: list[ast.expr], func: Func) -> set[str]:
        """The names expressions use, and those the function's own variables among them are made of."""
        seen: set[str] = set()
        todo = list(exprs)
        while todo:
            for n in ast.walk(todo.pop()):
                if isinstance(n, ast.Name) and n.id not in seen:
                    seen.add(n.id)
                    todo += self.assigned_in[func].get(n.id, [])
        return seen

    # -- walking the sources

    def _scan_module(self, module: Module) -> None:
        self._scan_calls(module.tree, Ctx(module, None, {}))

    def _scan_calls(self, node: ast.AST, ctx: Ctx) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._scan_calls(child, Ctx(ctx.module, child, {}))
                continue
            if isinstance(child, ast.Call):
                self._call(child, ctx, 0)
            self._scan_calls(child, ctx)

    def _where(self, node: ast.AST, ctx: Ctx) -> str:
        return ctx.module.place or f"{ctx.module.rel}:{getattr(node, 'lineno', 0)}"

    def _call(self, call: ast.Call, ctx: Ctx, depth: int, where: str | None = None) -> None:
        if depth > self.MAX_DEPTH:
            return
        where = where or self._where(call, ctx)
        kind = self._sink(call, ctx.module)
        if kind:
            self._run_sink(call, kind, ctx, where, depth)
            return
        callee = self._callee(call, ctx)
        if callee is None or callee[0] not in self.wrappers:
            return
        func, method = callee
        module = self.module_of[func]
        inner = Ctx(module, func, self._bind(func, method, call, ctx))
        for reaching in self.wrappers[func]:
            self._call(reaching, inner, depth + 1, where)

    def _bind(self, func: Func, method: bool, call: ast.Call, ctx: Ctx) -> dict[str, tuple[str, object, Ctx]]:
        params = self._params(func, method)
        bindings: dict[str, tuple[str, object, Ctx]] = {}
        args = list(call.args)
        starred_at = next((i for i, a in enumerate(args) if isinstance(a, ast.Starred)), len(args))
        for i, name in enumerate(params):
            if i < starred_at:
                if i < len(args):
                    bindings[name] = ("expr", args[i], ctx)
        if func.args.vararg and starred_at >= len(params):
            bindings[func.args.vararg.arg] = ("args", args[len(params):], ctx)
        for k in call.keywords:
            if k.arg:
                bindings[k.arg] = ("expr", k.value, ctx)
        return bindings

    # -- values

    def _resolve(self, name: str, ctx: Ctx) -> list[tuple[str, object, Ctx]] | None:
        """What a name may stand for; None if it is not known."""
        if name in ctx.bindings:
            return [ctx.bindings[name]]
        scope = ctx.func
        while scope is not None:
            values = self.assigned_in[scope].get(name)
            if values:
                return [("expr", v, Ctx(ctx.module, scope, ctx.bindings if scope is ctx.func else {}))
                        for v in values]
            if name in self._all_params(scope):
                return None
            scope = self.parent.get(scope)
        if name in ctx.module.assigned:
            return [("expr", v, Ctx(ctx.module, None, {})) for v in ctx.module.assigned[name]]
        dotted = ctx.module.imports.get(name)
        if dotted and "." in dotted:
            source, attr = dotted.rsplit(".", 1)
            if source in self.modules and attr in self.modules[source].assigned:
                return self._resolve(attr, Ctx(self.modules[source], None, {}))
        return None

    def words(self, e: ast.expr, ctx: Ctx, depth: int = 0) -> list[list[object]]:
        """The argv an expression may stand for: a list of alternatives, each a list of tokens."""
        if depth > self.MAX_VALUE_DEPTH:
            return [[MORE]]
        if isinstance(e, (ast.List, ast.Tuple)):
            return self._concat([self._element(x, ctx, depth) for x in e.elts])
        if isinstance(e, ast.Starred):
            return self.words(e.value, ctx, depth + 1)
        if isinstance(e, ast.Name):
            found = self._resolve(e.id, ctx)
            if found is None:
                return [[MORE]]
            out: list[list[object]] = []
            for kind, value, vctx in found:
                if kind == "args":
                    out += self._concat([self._element(x, vctx, depth + 1) for x in value])  # type: ignore[union-attr]
                else:
                    out += self.words(value, vctx, depth + 1)  # type: ignore[arg-type]
            return out[:self.MAX_ALTERNATIVES]
        if isinstance(e, ast.IfExp):
            return (self.words(e.body, ctx, depth + 1) + self.words(e.orelse, ctx, depth + 1))[:self.MAX_ALTERNATIVES]
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            return self._concat([self.words(e.left, ctx, depth + 1), self.words(e.right, ctx, depth + 1)])
        if isinstance(e, ast.Call):
            if isinstance(e.func, ast.Name) and e.func.id in ("list", "tuple") and len(e.args) == 1:
                return self.words(e.args[0], ctx, depth + 1)
            callee = self._callee(e, ctx)
            if callee:
                func, method = callee
                inner = Ctx(self.module_of[func], func, self._bind(func, method, e, ctx))
                returns = [n.value for n in _own_body(func) if isinstance(n, ast.Return) and n.value is not None]
                if returns:
                    return [w for r in returns for w in self.words(r, inner, depth + 1)][:self.MAX_ALTERNATIVES]
            return [[MORE]]
        if isinstance(e, (ast.Constant, ast.JoinedStr)):
            return [[t] for t in self.word(e, ctx, depth)]
        if isinstance(e, ast.Subscript):  # one of a dict's or a list's argvs, COMPRESSORS[kind]
            return [w for v in self._members(e.value, ctx, depth + 1) for w in self.words(v[0], v[1], depth + 1)]
        return [[MORE]]

    def _members(self, e: ast.expr, ctx: Ctx, depth: int) -> list[tuple[ast.expr, Ctx]]:
        if isinstance(e, ast.Dict):
            return [(v, ctx) for v in e.values]
        if isinstance(e, (ast.List, ast.Tuple)):
            return [(v, ctx) for v in e.elts]
        if isinstance(e, ast.Name) and depth <= self.MAX_VALUE_DEPTH:
            found = self._resolve(e.id, ctx) or []
            return [m for kind, value, vctx in found if kind == "expr"
                    for m in self._members(value, vctx, depth + 1)]  # type: ignore[arg-type]
        return []

    def _element(self, e: ast.expr, ctx: Ctx, depth: int) -> list[list[object]]:
        if isinstance(e, ast.Starred):
            return self.words(e.value, ctx, depth + 1)
        return [[t] for t in self.word(e, ctx, depth + 1)]

    def _concat(self, parts: list[list[list[object]]]) -> list[list[object]]:
        out = []
        for combo in itertools.islice(itertools.product(*parts), self.MAX_ALTERNATIVES):
            out.append([t for part in combo for t in part])
        return out or [[]]

    def word(self, e: ast.expr, ctx: Ctx, depth: int = 0) -> list[object]:
        """The strings an expression may stand for ("\\0" for an unknown part); [None] if unknown."""
        if depth > self.MAX_VALUE_DEPTH:
            return [None]
        if isinstance(e, ast.Constant):
            return [e.value] if isinstance(e.value, str) else [str(e.value)] if isinstance(e.value, int) else [None]
        if isinstance(e, ast.JoinedStr):
            parts = []
            for v in e.values:
                known = self.word(v, ctx, depth + 1) if isinstance(v, ast.Constant) else [None]
                parts.append(known[0] if len(known) == 1 and isinstance(known[0], str) else "\0")
            return ["".join(parts)]
        if isinstance(e, ast.Name):
            found = self._resolve(e.id, ctx)
            if found is None:
                return [None]
            out: list[object] = []
            for kind, value, vctx in found:
                out += self.word(value, vctx, depth + 1) if kind == "expr" else [None]  # type: ignore[arg-type]
            return out
        if isinstance(e, ast.Attribute):
            return [PY] if self._dotted(e, ctx.module) == "sys.executable" else [None]
        if isinstance(e, ast.Call):
            dotted = self._dotted(e.func, ctx.module)
            name = e.func.id if isinstance(e.func, ast.Name) else dotted
            if name in ("str", "os.fspath", "pathlib.Path", "shutil.which") and len(e.args) == 1:
                return self.word(e.args[0], ctx, depth + 1)
            return [None]
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Div):
            right = self.word(e.right, ctx, depth + 1)
            return [r if isinstance(r, str) and (self.root / r).exists() else None for r in right]
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            lefts, rights = self.word(e.left, ctx, depth + 1), self.word(e.right, ctx, depth + 1)
            return [a + b if isinstance(a, str) and isinstance(b, str) else None for a in lefts for b in rights]
        if isinstance(e, ast.BoolOp):
            return [w for v in e.values for w in self.word(v, ctx, depth + 1)]
        if isinstance(e, ast.IfExp):
            return self.word(e.body, ctx, depth + 1) + self.word(e.orelse, ctx, depth + 1)
        return [None]

    # -- programs

    def _run_sink(self, call: ast.Call, kind: str, ctx: Ctx, where: str, depth: int) -> None:
        if kind in WHICH_CALLS:
            for w in self.word(call.args[0], ctx) if call.args else []:
                if isinstance(w, str) and "\0" not in w:
                    self.argv([w], where, depth, run=False)
            return
        shell = kind in SHELL_CALLS or any(k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value
                                           for k in call.keywords)
        exprs = self._program_args(call, kind)
        if not exprs:
            return
        if shell:
            for text in self.word(exprs[0], ctx):
                if isinstance(text, str):
                    self.shell(text, where, depth)
            return
        if kind in EXEC_CALLS:
            programs = self.word(exprs[0], ctx)
            argvs = self.words(exprs[1], ctx) if len(exprs) > 1 else [[None]]
            for program in programs:
                for argv in argvs:
                    self.argv([program, *argv[1:]], where, depth)
            return
        argvs = self._concat([self._element(e, ctx, 0) for e in exprs]) if kind in VARARG_CALLS else \
            self.words(exprs[0], ctx)
        for argv in argvs:
            self.argv(argv, where, depth)

    def record(self, program: str, where: str) -> None:
        self.uses.setdefault(program, set()).add(where)

    def argv(self, tokens: list[object], where: str, depth: int, run: bool = True) -> None:
        """Note the program an argv runs and, for a program that runs another, that one."""
        if not tokens or depth > self.MAX_DEPTH:
            return
        head, rest = tokens[0], tokens[1:]
        if head == PY:
            self._python(rest, where, depth)
            return
        if not isinstance(head, str) or "\0" in head or not head or head.startswith("-"):
            return
        base = os.path.basename(head)
        if "/" in head and not head.startswith("/"):  # a path in the checkout
            if head.startswith((".venv/", "./.venv/")):
                if base.startswith("python"):
                    self._python(rest, where, depth)
                return
            path = self.root / head
            if path.is_file() and path.suffix == ".py":
                self._python_file(path, where, depth)
            elif path.is_file():
                self._shell_file(path, depth)
            else:
                self.record(head, where)
            return
        if base in self.own:
            return
        self.record(head, where)
        if not run:
            return
        if re.fullmatch(r"python3?(\.\d+)?", base):
            self._python(rest, where, depth)
        elif base in ("sh", "bash", "dash"):
            self._sh(rest, where, depth)
        elif base == "script":
            self._script(rest, where, depth)
        elif base == "tmux":
            self._tmux(rest, where, depth)
        elif base == "ip":
            if len(rest) > 2 and rest[0] == "netns" and rest[1] == "exec":
                self.argv(rest[3:], where, depth + 1)
        elif base == "nsenter":
            options = [t for t in itertools.takewhile(lambda t: t != "--", rest) if isinstance(t, str)]
            if any(t == "--root" or t.startswith("--root=") or re.fullmatch(r"-[a-zA-Z]*r\S*", t) for t in options):
                return  # in a container's root directory: the container's own programs
            self._wrapped(base, rest, where, depth)
        elif base == "timeout":
            command = self._after_options(rest, VALUED["timeout"])
            if command:
                self.argv(command[1:], where, depth + 1)
        elif base == "env":
            command = self._after_options(rest, VALUED["env"])
            while command and isinstance(command[0], str) and ASSIGNMENT.match(command[0]):
                command = command[1:]
            if command:
                self.argv(command, where, depth + 1)
        elif base in VALUED:
            self._wrapped(base, rest, where, depth)

    def _wrapped(self, base: str, rest: list[object], where: str, depth: int) -> None:
        command = self._after_options(rest, VALUED[base])
        if command:
            self.argv(command, where, depth + 1)

    @staticmethod
    def _after_options(rest: list[object], valued: set[str]) -> list[object] | None:
        i = 0
        while i < len(rest):
            t = rest[i]
            if not isinstance(t, str):
                return None
            if t == "--":
                return rest[i + 1:]
            if t.startswith("-") and t != "-":
                i += 2 if t in valued else 1
                continue
            return rest[i:]
        return None

    def _sh(self, rest: list[object], where: str, depth: int) -> None:
        command = False
        for i, t in enumerate(rest):
            if not isinstance(t, str):
                return
            if t.startswith("-") and t not in ("-", "--"):
                command = command or (not t.startswith("--") and "c" in t[1:])
                continue
            if t == "--":
                continue
            if command:
                self.shell(t, where, depth + 1)
            elif "\0" not in t:
                path = self.root / t
                if path.is_file():
                    self._shell_file(path, depth + 1)
            return

    def _script(self, rest: list[object], where: str, depth: int) -> None:
        for i, t in enumerate(rest[:-1]):
            if isinstance(t, str) and (t == "--command" or re.fullmatch(r"-[a-zA-Z]*c", t)):
                if isinstance(rest[i + 1], str):
                    self.shell(rest[i + 1], where, depth + 1)  # type: ignore[arg-type]
                return

    def _tmux(self, rest: list[object], where: str, depth: int) -> None:
        i = 0
        while i < len(rest) and isinstance(rest[i], str) and rest[i].startswith("-"):  # type: ignore[union-attr]
            i += 2 if rest[i] in VALUED["tmux"] else 1
        if i >= len(rest) or rest[i] not in TMUX_SHELL:
            return
        command = self._after_options(rest[i + 1:], VALUED["tmux"])
        if command and all(isinstance(t, str) for t in command):
            self.shell(" ".join(command), where, depth + 1)  # type: ignore[arg-type]

    def _python(self, rest: list[object], where: str, depth: int) -> None:
        for i, t in enumerate(rest):
            if not isinstance(t, str):
                return
            if t == "-c":
                if i + 1 < len(rest) and isinstance(rest[i + 1], str):
                    self._python_code(rest[i + 1], where, depth)  # type: ignore[arg-type]
                return
            if t == "-m" or t.startswith("-m"):
                return
            if t.startswith("-"):
                continue
            if t.endswith("testhost.py") and "--" in rest[i:]:  # `testhost.py run ... -- CMD` runs CMD in it
                self.argv(rest[rest.index("--", i) + 1:], where, depth + 1)
            path = self.root / t
            if "\0" not in t and path.is_file():
                self._python_file(path, where, depth)
            return

    def _python_code(self, code: str, where: str, depth: int) -> None:
        key = f"{where}:{code}"
        if key in self.python_seen:
            return
        self.python_seen.add(key)
        text = code.replace("\0", "_q")  # an f-string's values: a name is valid wherever one was
        try:
            ast.parse(text)
        except SyntaxError:
            return
        module = self._add_module("<python -c>", text, place=where)
        self._find_wrappers()
        self._scan_module(module)

    def _python_file(self, path: Path, where: str, depth: int) -> None:
        rel = str(path.relative_to(self.root))
        if self._module_name(rel) in self.modules:
            return
        module = self._add_module(rel, path.read_text())
        self._find_wrappers()
        self._scan_module(module)

    def _shell_file(self, path: Path, depth: int) -> None:
        if path in self.shell_files_seen:
            return
        self.shell_files_seen.add(path)
        rel = str(path.relative_to(self.root))
        self.shell(path.read_text(), rel, depth + 1, lines=True)

    def shell(self, text: str, where: str, depth: int, lines: bool = False) -> None:
        for line, words in ShellLexer(text).commands():
            place = f"{where}:{line}" if lines else where
            self._shell_command(words, place, depth)

    def _shell_command(self, words: list[str], where: str, depth: int) -> None:
        while words and words[0] in SHELL_KEYWORDS:
            words = words[1:]
        if not words or words[0] in ("for", "case", "select", "function"):
            return
        while words and ASSIGNMENT.match(words[0]):
            words = words[1:]
        while words and words[0] in ("exec", "command", "builtin", "time", "!"):
            words = words[1:]
            while words and words[0].startswith("-"):
                words = words[1:]
        if not words:
            return
        if words[0] in ("trap", "eval") and len(words) > 1:
            self.shell(words[1] if words[0] == "trap" else " ".join(words[1:]), where, depth + 1)
            return
        if words[0] in SHELL_BUILTINS:
            return
        self.argv([None if "\0" in w and w.index("\0") == 0 else w for w in words], where, depth + 1)


class ShellLexer:
    """Simple commands of a POSIX shell text (and of its command substitutions), each as its line and words
    after quote removal: "\\0" stands for what expands to an unknown value. Variables assigned a literal in the
    text expand to it; case patterns and arithmetic commands are not understood."""

    OPERATORS = ("&&", "||", ";;", "|&", ";", "&", "|", "(", ")", "\n")

    def __init__(self, text: str, variables: dict[str, str | None] | None = None) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.vars: dict[str, str | None] = variables if variables is not None else {}
        self.out: list[tuple[int, list[str]]] = []
        self.heredocs: list[str] = []

    def commands(self) -> list[tuple[int, list[str]]]:
        self._parse(stop=None)
        return self.out

    def _peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def _parse(self, stop: str | None) -> None:
        words: list[str] = []
        start = self.line
        depth = 0
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t":
                self.i += 1
                continue
            if c == "\\" and self._peek(2) == "\\\n":
                self.i += 2
                self.line += 1
                continue
            if c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
                continue
            op = next((o for o in self.OPERATORS if self.s.startswith(o, self.i)), None)
            if op:
                if op == ")" and depth == 0 and stop == ")":
                    self._command(start, words)
                    self.i += 1
                    return
                depth += 1 if op == "(" else -1 if op == ")" and depth else 0
                self.i += len(op)
                self._command(start, words)
                words = []
                if op == "\n":
                    self.line += 1
                    self._skip_heredocs()
                start = self.line
                continue
            if self._redirection():
                continue
            word = self._word()
            if word is not None:
                words.append(word)
        self._command(start, words)

    def _command(self, line: int, words: list[str]) -> None:
        if not words:
            return
        if all(ASSIGNMENT.match(w) for w in words):
            for w in words:
                name, value = w.split("=", 1)
                self.vars[name] = None if "\0" in value else value
            return
        self.out.append((line, list(words)))

    def _redirection(self) -> bool:
        m = re.compile(r"\d*(<<-?|<>|>>|>&|<&|>\||&>|<|>)").match(self.s, self.i)
        if not m:
            return False
        self.i = m.end()
        while self._peek() in (" ", "\t"):
            self.i += 1
        target = self._word() or ""
        if m.group(1).startswith("<<"):
            self.heredocs.append(target.replace("\0", ""))
        return True

    def _skip_heredocs(self) -> None:
        while self.heredocs:
            delimiter = self.heredocs.pop(0)
            while self.i < len(self.s):
                end = self.s.find("\n", self.i)
                end = len(self.s) if end < 0 else end
                line = self.s[self.i:end]
                self.i = min(end + 1, len(self.s))
                self.line += 1
                if line.strip() == delimiter:
                    break

    def _word(self) -> str | None:
        parts: list[str] = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\n;&|()<>":
                break
            if c == "\\":
                if self._peek(2) == "\\\n":
                    self.i += 2
                    self.line += 1
                    continue
                parts.append(self.s[self.i + 1:self.i + 2])
                self.i += 2
            elif c == "'":
                end = self.s.find("'", self.i + 1)
                end = len(self.s) if end < 0 else end
                parts.append(self.s[self.i + 1:end])
                self.line += self.s.count("\n", self.i, end)
                self.i = end + 1
            elif c == '"':
                self.i += 1
                while self.i < len(self.s) and self.s[self.i] != '"':
                    d = self.s[self.i]
                    if d == "\\" and self.i + 1 < len(self.s):
                        parts.append(self.s[self.i + 1])
                        self.i += 2
                    elif d in "$`":
                        parts.append(self._expansion())
                    else:
                        if d == "\n":
                            self.line += 1
                        parts.append(d)
                        self.i += 1
                self.i += 1
            elif c in "$`":
                parts.append(self._expansion())
            else:
                parts.append(c)
                self.i += 1
        return "".join(parts) if parts else None

    def _expansion(self) -> str:
        """At $ or `: the expansion's value, or "\\0"; a command substitution's commands are noted."""
        s = self.s
        if s.startswith("$((", self.i):
            self.i = self._matching(self.i + 1, "(", ")")
            return "\0"
        if s.startswith("$(", self.i):
            self.i += 2
            self._parse(stop=")")
            return "\0"
        if s[self.i] == "`":
            end = s.find("`", self.i + 1)
            end = len(s) if end < 0 else end
            inner = ShellLexer(s[self.i + 1:end], self.vars)
            inner.line = self.line
            self.out += inner.commands()
            self.i = end + 1
            return "\0"
        if s.startswith("${", self.i):
            end = self._matching(self.i + 1, "{", "}")
            name = s[self.i + 2:end - 1]
            self.i = end
            return self._value(name)
        if s.startswith("$'", self.i):
            end = s.find("'", self.i + 2)
            end = len(s) if end < 0 else end
            self.i = end + 1
            return "\0"
        m = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-])").match(s, self.i)
        if not m:
            self.i += 1
            return "$"
        self.i = m.end()
        return self._value(m.group(1))

    def _value(self, name: str) -> str:
        value = self.vars.get(name) if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else None
        return "\0" if value is None else value

    def _matching(self, at: int, open_: str, close: str) -> int:
        """The index after the bracket that closes the one at `at`."""
        depth = 0
        for j in range(at, len(self.s)):
            if self.s[j] == open_:
                depth += 1
            elif self.s[j] == close:
                depth -= 1
                if depth == 0:
                    return j + 1
        return len(self.s)


def scan_project() -> Scan:
    sources = {}
    for top in SCANNED:
        for path in sorted((PROJECT / top).rglob("*.py")):
            if ".venv" not in path.parts:
                sources[str(path.relative_to(PROJECT))] = path.read_text()
    return Scan(sources, PROJECT, own_programs())


@pytest.fixture(scope="module")
def scanned() -> dict[str, set[str]]:
    return scan_project().uses


# --- the packages ---------------------------------------------------------------------------------------------


def apt_packages() -> list[str]:
    """APT_PACKAGES as the Makefile writes it (continuation lines and all)."""
    text = (PROJECT / "Makefile").read_text()
    match = re.search(r"^APT_PACKAGES\s*:=((?:[^\n]*\\\n)*[^\n]*)$", text, re.M)
    assert match, "no APT_PACKAGES := ... in the Makefile"
    return match.group(1).replace("\\\n", " ").split()


def path_of(program: str) -> str | None:
    if program.startswith("/"):
        return program if os.path.exists(program) else None
    return shutil.which(program, path=PATH)


def candidates(path: str) -> list[str]:
    """The names dpkg may know a file by: /bin and /usr/bin are one directory on a merged-/usr system, but
    dpkg has each file under the name its package ships."""
    out = []
    for p in (path, os.path.realpath(path)):
        for q in (p, re.sub(r"^/usr/(s?bin|lib\w*)/", r"/\1/", p), re.sub(r"^/(s?bin|lib\w*)/", r"/usr/\1/", p)):
            if q not in out:
                out.append(q)
    return out


def owners(paths: Iterable[str]) -> dict[str, str]:
    """path -> the Debian package that ships it, for the paths some package ships."""
    paths = list(paths)
    if not paths:
        return {}
    result = subprocess.run(["dpkg-query", "-S", *paths], capture_output=True, text=True,
                            env={"LC_ALL": "C", "PATH": PATH})
    found = {}
    for line in result.stdout.splitlines():
        if line.startswith("diversion by") or ": " not in line:
            continue
        packages, path = line.split(": ", 1)
        found[path] = packages.split(",")[0].strip().split(":")[0]
    return found


@dataclass
class Installed:
    essential: bool
    required: bool
    depends: list[str]


def installed_packages() -> dict[str, Installed]:
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\t${Essential}\t"
                             "${Priority}\t${Pre-Depends}, ${Depends}\n"], capture_output=True, text=True,
                            check=True)
    out = {}
    for line in result.stdout.splitlines():
        name, status, essential, priority, depends = line.split("\t")
        if not status.startswith("ii"):
            continue
        hard = [d.split()[0].split(":")[0] for d in depends.split(",") if d.strip() and "|" not in d]
        out[name] = Installed(essential == "yes", priority == "required", hard)
    return out


def installed_by_setup(listed: list[str], packages: dict[str, Installed]) -> dict[str, str]:
    """Package -> why `make setup` leaves it installed: listed, or the listed package whose Depends bring it."""
    why = {p: "listed" for p in listed}
    todo = list(listed)
    while todo:
        p = todo.pop()
        for d in packages.get(p, Installed(False, False, [])).depends:
            if d not in why:
                why[d] = why[p] if why[p] != "listed" else f"a dependency of {p}"
                todo.append(d)
    return why


def interpreter(path: str) -> str | None:
    """The program a script's #! line runs it with (what `env` looks up, for `#!/usr/bin/env X`)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        rest = [w for w in words[1:] if not w.startswith("-")]
        return rest[0] if rest else None
    return words[0]


def package_problems(programs: Iterable[str], listed: list[str]) -> tuple[list[str], list[str]]:
    """One line per program whose package `make setup` does not install; and how each one is met."""
    packages = installed_packages()
    setup = installed_by_setup(listed, packages)
    problems, table = [], []
    todo = {p: "" for p in programs}  # program -> why it is needed ("": the tests run it)
    done: set[str] = set()
    while todo:  # the programs, then the interpreters of those that are scripts
        done |= set(todo)
        paths = {program: path_of(program) for program in todo}
        owned = owners(c for path in paths.values() if path for c in candidates(path))  # one dpkg-query: slow
        more = {}
        for program, needed_by in sorted(todo.items()):
            what = f"{program} ({needed_by})" if needed_by else program
            path = paths[program]
            if path is None:
                problems.append(f"{what} is run by the tests but is not on this machine (PATH={PATH}): "
                                f"`make setup` must install the Debian package that has it")
                continue
            package = next((owned[c] for c in candidates(path) if c in owned), None)
            if package is None:
                problems.append(f"{what} is run by the tests but {path} is in no Debian package: "
                                f"`make setup` cannot be what installs it")
                continue
            info = packages.get(package)
            if setup.get(package) == "listed":
                how = "listed"
            elif info and info.essential:
                how = "Essential"
            elif info and info.required:
                how = "Priority: required"
            elif package in setup:
                how = setup[package]
            else:
                problems.append(f"{what} (Debian package {package}) is run by the tests but `make setup` does "
                                f"not install {package}")
                continue
            table.append(f"{program:24} {path:28} {package:20} {how}")
            script = interpreter(os.path.realpath(path))
            if script and script not in done:
                more[script] = f"the interpreter of {path}"
        todo = more
    return problems, sorted(table)


# --- the tests ------------------------------------------------------------------------------------------------


def test_every_program_the_tests_run_is_declared(scanned: dict[str, set[str]]) -> None:
    undeclared = sorted(set(scanned) - set(PROGRAMS))
    assert not undeclared, "programs the suite runs that PROGRAMS does not declare (add each, and its package to " \
        "the Makefile's APT_PACKAGES unless every Debian has it):\n" + "\n".join(
            f"{p} (run at {', '.join(sorted(scanned[p])[:3])})" for p in undeclared)


def test_every_declared_program_is_still_run(scanned: dict[str, set[str]]) -> None:
    unused = sorted(set(PROGRAMS) - set(scanned))
    assert not unused, f"PROGRAMS declares programs nothing runs any more: {unused}"


def test_make_setup_installs_the_package_of_every_program_the_tests_run() -> None:
    problems, table = package_problems(PROGRAMS, apt_packages())
    print("\n".join(table))
    assert not problems, "\n".join(problems)


def test_programs_and_the_makefile_list_are_read_as_intended() -> None:
    listed = apt_packages()
    assert "podman" in listed and "busybox-static" in listed and "python3" in listed
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p) for p in listed), listed
    assert len(set(PROGRAMS)) == len(PROGRAMS)
    assert "/bin/ip" in candidates("/usr/bin/ip") and "/usr/sbin/ip" in candidates("/sbin/ip")


# --- the scan, on sources made up for it: what it must find, and what it must leave alone ----------------------


def scan(source: str, **files: str) -> dict[str, set[str]]:
    sources = {"tests/t.py": textwrap.dedent(source)}
    sources.update({f"tests/{k}.py": textwrap.dedent(v) for k, v in files.items()})
    return Scan(sources, PROJECT, frozenset({"quiltctl", "quilt-agent"})).uses


def test_scan_finds_a_new_program_in_any_subprocess_call() -> None:
    found = scan("""
        import asyncio, os, shutil, subprocess
        from subprocess import check_output as co
        subprocess.run(["newtool", "-x"], check=True)
        subprocess.Popen(("tool2",))
        co(["tool3"])
        subprocess.run(args=["tool4"])
        async def f():
            await asyncio.create_subprocess_exec("tool5", "a")
        os.execvp("tool6", ["tool6"])
        shutil.which("tool7")
        subprocess.run("tool8 --flag | tool9", shell=True)
        os.system("tool10 x")
        subprocess.run("/usr/sbin/tool11")
    """)
    assert set(found) == {f"tool{i}" for i in range(2, 11)} | {"newtool", "/usr/sbin/tool11"}
    assert found["newtool"] == {"tests/t.py:4"}


def test_scan_follows_names_helpers_and_prefixes() -> None:
    found = scan("""
        import subprocess, sys
        from tests.helpers import run_it
        TOOL = "alpha"
        PODMAN = ["beta", "--root", "/x"]
        def sh(*args, check=True):
            return subprocess.run(list(args), check=check)
        def as_user(uid, *cmd):
            prefix = [] if uid is None else ["setpriv", f"--reuid={uid}", "--clear-groups"]
            return subprocess.run([*prefix, *cmd])
        def argv_of(*args):
            return [sys.executable, "tests/testhost.py", *args]
        def in_host(*args):
            return subprocess.run(argv_of(*args))
        def via_local(*args):
            cmd = ["setsid", *args]
            subprocess.run(cmd)
        def test():
            subprocess.run([TOOL, "x"])
            subprocess.run([*PODMAN, "save"])
            sh("gamma", "-j")
            inside = ["ip", "netns", "exec", "ns1"]
            sh(*inside, "delta", "x")
            as_user(None, "epsilon")
            as_user(1000, "zeta", "call")
            subprocess.run(["nsenter", "-t", "1", "-a", "eta"])
            subprocess.run(["unshare", "-m", "--propagation", "private", "theta"])
            subprocess.run(["systemd-run", "--unit", "u", "--slice", "s.slice", "iota", "100"])
            in_host("run", "--name", "n", "--", "kappa", "-x")
            run_it("lambda")
            via_local("mu")
    """, helpers="""
        import subprocess
        def run_it(*cmd):
            subprocess.run(cmd, check=True)
    """)
    testhost = Scan({"tests/testhost.py": (PROJECT / "tests/testhost.py").read_text()}, PROJECT).uses
    expected = {"alpha", "beta", "gamma", "ip", "delta", "epsilon", "setpriv", "zeta", "nsenter", "eta", "unshare",
                "theta", "systemd-run", "iota", "kappa", "lambda", "setsid", "mu"}
    assert expected <= set(found) and set(found) - expected <= set(testhost)  # testhost.py: what in_host runs


def test_scan_reads_shell_and_python_given_to_the_machine() -> None:
    found = scan('''
        import subprocess, sys
        SCRIPT = r"""
        set -e
        x=$(alpha --list | beta)   # a comment: gamma
        for f in $(delta); do [ -e "$f" ] || epsilon "$f"; done
        echo "n=$(zeta 2>&1 >/dev/null)" > /tmp/out
        if eta; then :; fi
        cat <<EOF
        not-a-program here
        EOF
        tool=/usr/bin/theta
        "$tool" --version && exec iota
        LC_ALL=C kappa
        quiltctl run --rm img -- /bin/sh -c 'wget -O- x; lambda'
        nsenter -t 1 -m -r -- /bin/sh -c 'mu'
        i=$((i + 1)); trap 'nu' EXIT
        """
        subprocess.run(["sh", "-c", SCRIPT])
        subprocess.run(["bash", "-ec", f"xi {sys.argv[0]}; omicron"])
        subprocess.run(["script", "-qec", "pi arg", "/dev/null"])
        subprocess.run(["tmux", "-L", "s", "new-session", "-d", "-s", "t", "-x", "80", "rho; sleep 1"])
        subprocess.run([sys.executable, "-c", "import subprocess; subprocess.run(['sigma'])"])
        subprocess.run(["scripts/busybox-rootfs.sh", "/tmp/x.tar"])
    ''')
    expected = {"sh", "bash", "script", "tmux", "nsenter", "alpha", "beta", "delta", "epsilon", "zeta", "eta",
                "cat", "/usr/bin/theta", "iota", "kappa", "nu", "xi", "omicron", "pi", "rho", "sleep", "sigma"}
    script_programs = {"mktemp", "rm", "mkdir", "chmod", "cp", "/bin/busybox", "ln", "chown", "tar"}
    assert set(found) - script_programs == expected
    assert script_programs <= set(found)  # from scripts/busybox-rootfs.sh, which the test runs


def test_scan_leaves_what_containers_run_to_their_images() -> None:
    found = scan("""
        import subprocess
        QUILTCTL = "quiltctl"
        async def test(client):
            await client.run_container("n", "img", ["wget", "-q", "x"], {})
            subprocess.run([QUILTCTL, "exec", "n", "--", "wget", "x"])
            subprocess.run(["/usr/bin/quiltctl", "run", "img", "--", "sh", "-c", "ping x"])
            subprocess.run(["nsenter", "-t", "5", "-m", "-r", "-w", "--", "/bin/sh", "-c", "mknod x b 7 0"])
            subprocess.run(["ip", "-n", "ns", "addr"])
    """)
    assert set(found) == {"nsenter", "ip"}


def test_shell_lexer_words() -> None:
    commands = ShellLexer("a 'b c' \"d $(e f) g\" h\\ i >out 2>&1; j=1 k ${j}\nl | m && n\n").commands()
    assert [w for _, w in commands] == [["e", "f"], ["a", "b c", "d \0 g", "h i"], ["j=1", "k", "\0"],
                                        ["l"], ["m"], ["n"]]
    assert [line for line, _ in commands] == [1, 1, 1, 2, 2, 2]
