"""The subset of Go's text/template that quiltctl's --format takes, as Podman's --format reads it.

Supported:

- ``{{.Field}}`` and nested ``{{.State.Status}}``; ``{{.}}`` is the whole item. A field an item does not have is an
  error (one line naming it, and why Quilt lacks it when Podman has it); a missing key of a map (``.Labels.x``)
  is ``<no value>``, as in Go.
- Functions: ``json`` (compact JSON), ``index MAP "key"`` (or ``index LIST N``), ``lower``, ``upper``,
  ``join LIST "sep"``, ``len``; called as ``{{upper .Names}}`` or in a pipe, ``{{.Names | upper}}``.
- ``{{range .X}}...{{end}}`` over a list or a map (its values, by key); ``{{range .}}...{{end}}`` around the whole
  template runs it once over the list of items instead of once per item.
- ``{{/* comments */}}`` and the trim markers ``{{-`` and ``-}}``.
- ``\\t`` and ``\\n`` written as two characters are a tab and a newline.
- A ``table`` prefix: a header row (each field's name upper-cased and split at its words, ``.RunningFor`` ->
  ``RUNNING FOR``; a command may name some otherwise, ``.ID`` is ``CONTAINER ID`` in ps), spaces and tabs
  between the actions as column breaks, and the columns aligned as Podman's tabwriter aligns them.
- Values print as Go prints them: lists ``[a b]``, maps ``map[k:v]``, ``true``/``false``.

Anything else (``if``, ``with``, variables, ``printf``, parentheses, ...) is refused with a TemplateError whose
one line names what is not supported. Pure: standard library only, no click.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Union


class TemplateError(ValueError):
    """A --format that cannot be parsed, or cannot be executed on an item; the message is one line."""


class FieldError(TemplateError):
    """A field an item does not have: the template cannot be right for any item of that kind."""


class _Missing:
    def __repr__(self) -> str:
        return "<no value>"


# A map's missing key: Go prints "<no value>" for it.
MISSING: Any = _Missing()


class Record(dict):  # type: ignore[type-arg]
    """An item a template reads like a Go struct: reading a field it does not have is an error, not "<no value>".

    `lacking` names fields Podman has that Quilt has no data for, with the reason, so the error says why."""

    def __init__(self, kind: str, fields: Mapping[str, Any], lacking: Mapping[str, str] | None = None) -> None:
        super().__init__(fields)
        self.kind = kind
        self.lacking = dict(lacking or {})
        self.lenient = False  # an example for check_fields: only the fields Quilt lacks are errors


# --- parsing ---------------------------------------------------------------------------------------------------

FUNCTIONS = ("index", "join", "json", "len", "lower", "upper")
_KEYWORDS = ("if", "else", "with", "define", "template", "block", "break", "continue", "nil")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FIELD = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
_NUMBER = re.compile(r"-?\d+\Z")


@dataclass(frozen=True)
class _Field:
    path: tuple[str, ...]  # () is the dot itself


@dataclass(frozen=True)
class _Literal:
    value: Any


_Operand = Union[_Field, _Literal]


@dataclass(frozen=True)
class _Command:
    function: str | None  # None: a lone operand
    args: tuple[_Operand, ...]


@dataclass(frozen=True)
class _Pipeline:
    commands: tuple[_Command, ...]


@dataclass
class _Range:
    over: _Pipeline
    body: list[_Node] = field(default_factory=list)


_Node = Union[str, _Pipeline, _Range]


@dataclass
class Template:
    """A parsed --format. `table`: it had the table prefix (header row, aligned columns). `over_list`: its
    top level is `{{range .}}...{{end}}`, run once over the list of items instead of once per item."""

    source: str
    table: bool
    nodes: list[_Node]
    over_list: bool


def is_json(text: str) -> bool:
    """`--format json` and `--format '{{json .}}'`: Podman prints its usual JSON for both, not a template's."""
    return re.fullmatch(r"\s*json\s*|\s*\{\{-?\s*json\s*\.?\s*-?\}\}\s*", text) is not None


def parse(text: str) -> Template:
    """Parse a --format; TemplateError names the first thing in it that is not supported or not well formed."""
    table = text.startswith("table ") or text.startswith("table\\t") or text.startswith("table\t")
    if table:
        text = text[len("table"):].lstrip(" \t")
        if text.startswith("\\t"):
            text = text[2:]
    body = text.replace("\\t", "\t").replace("\\n", "\n")
    if not body.endswith("\n"):
        body += "\n"  # as Podman: each item's output is a line
    pieces = _split(body)
    if table:
        # Podman's table: a space between the actions is a column break, as a tab is.
        pieces = [p.replace(" ", "\t") if isinstance(p, str) else p for p in pieces]
    nodes, end = _nodes(pieces, 0, top=True)
    assert end == len(pieces)
    content = [n for n in nodes if not (isinstance(n, str) and not n.strip())]
    over_list = (not table and len(content) == 1 and isinstance(content[0], _Range)
                 and content[0].over == _Pipeline((_Command(None, (_Field(()),)),)))
    return Template(text, table, nodes, over_list)


def _split(text: str) -> list[str | tuple[str]]:
    """Text and actions in order: text as str, an action's inside as a 1-tuple. Trim markers applied."""
    out: list[str | tuple[str]] = []
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            out.append(text[pos:])
            return out
        literal = text[pos:start]
        inner_start = start + 2
        if text.startswith("- ", inner_start) or text.startswith("-\t", inner_start) or text.startswith(
                "-\n", inner_start):
            literal = literal.rstrip(" \t\r\n")
            inner_start += 1
        end = _action_end(text, inner_start)
        inner = text[inner_start:end]
        close = end + 2
        if inner.endswith((" -", "\t-", "\n-")):
            inner = inner[:-1]
            while close < len(text) and text[close] in " \t\r\n":
                close += 1
        out.append(literal)
        out.append((inner,))
        pos = close


def _action_end(text: str, pos: int) -> int:
    """Where the action begun before pos ends (its "}}"), skipping "}}" inside string literals."""
    quote = ""
    i = pos
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"`":
            quote = c
        elif text.startswith("}}", i):
            return i
        i += 1
    raise TemplateError(f"unclosed action {text[pos - 2:pos + 30].rstrip()!r}: no '}}}}'")


def _nodes(pieces: list[str | tuple[str]], i: int, top: bool) -> tuple[list[_Node], int]:
    nodes: list[_Node] = []
    while i < len(pieces):
        piece = pieces[i]
        i += 1
        if isinstance(piece, str):
            if piece:
                nodes.append(piece)
            continue
        inner = piece[0].strip()
        if inner.startswith("/*"):
            if not inner.endswith("*/"):
                raise TemplateError("unclosed comment: '/*' without '*/'")
            continue
        word = inner.split(None, 1)[0] if inner else ""
        if word == "end":
            if inner != "end":
                raise TemplateError(f"'{{{{{inner}}}}}': end takes nothing")
            if top:
                raise TemplateError("'{{end}}' without a '{{range}}' to end")
            return nodes, i
        if word == "range":
            rest = inner[len("range"):].strip()
            if not rest:
                raise TemplateError("'{{range}}' needs something to range over, as in {{range .Names}}")
            if ":=" in rest or rest.startswith("$"):
                raise TemplateError(f"'{{{{{inner}}}}}': variables are not supported")
            rng = _Range(_pipeline(rest))
            rng.body, i = _nodes(pieces, i, top=False)
            nodes.append(rng)
            continue
        nodes.append(_pipeline(inner))
    if not top:
        raise TemplateError("'{{range}}' without its '{{end}}'")
    return nodes, i


def _pipeline(text: str) -> _Pipeline:
    if not text:
        raise TemplateError("empty action '{{}}'")
    commands = []
    for part in _split_pipes(text):
        tokens = _tokens(part)
        if not tokens:
            raise TemplateError(f"'{{{{{text}}}}}': empty command in a pipe")
        head = tokens[0]
        if isinstance(head, str):
            commands.append(_Command(head, tuple(_operand(t, text) for t in tokens[1:])))
        else:
            if len(tokens) > 1:
                raise TemplateError(f"'{{{{{text}}}}}': a value cannot take arguments; a function can, as in "
                                    "{{index .Labels \"key\"}}")
            commands.append(_Command(None, (head,)))
    for n, command in enumerate(commands):
        if command.function is None and n > 0:
            raise TemplateError(f"'{{{{{text}}}}}': only a function can follow '|'")
        if command.function is not None:
            _check_arity(command.function, len(command.args) + (1 if n > 0 else 0), text)
    return _Pipeline(tuple(commands))


_ARITY = {"json": (1, 1), "lower": (1, 1), "upper": (1, 1), "len": (1, 1), "join": (2, 2), "index": (2, 9)}


def _check_arity(name: str, count: int, text: str) -> None:
    low, high = _ARITY[name]
    if not low <= count <= high:
        wanted = f"{low}" if low == high else f"at least {low}"
        raise TemplateError(f"'{{{{{text}}}}}': {name} takes {wanted} argument{'s' if low > 1 else ''}, not {count}")


def _split_pipes(text: str) -> list[str]:
    parts, current, quote = [], "", ""
    for c in text:
        if quote:
            current += c
            if c == quote:
                quote = ""
        elif c in "\"`":
            quote = c
            current += c
        elif c == "|":
            parts.append(current)
            current = ""
        else:
            current += c
    parts.append(current)
    return [p.strip() for p in parts]


def _tokens(text: str) -> list[Any]:
    """An action's words: a str for a function's name, an _Operand for anything else."""
    out: list[Any] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if c == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                raise TemplateError(f"unterminated string in '{{{{{text}}}}}'")
            try:
                out.append(_Literal(json.loads(text[i:j + 1])))
            except ValueError:
                raise TemplateError(f"bad string {text[i:j + 1]} in '{{{{{text}}}}}'") from None
            i = j + 1
            continue
        if c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise TemplateError(f"unterminated raw string in '{{{{{text}}}}}'")
            out.append(_Literal(text[i + 1:j]))
            i = j + 1
            continue
        if c in "()":
            raise TemplateError(f"'{{{{{text}}}}}': parentheses are not supported")
        j = i
        while j < len(text) and not text[j].isspace() and text[j] not in "\"`()":
            j += 1
        word = text[i:j]
        i = j
        out.append(_word(word, text))
    return out


def _word(word: str, text: str) -> Any:
    if word == ".":
        return _Field(())
    if _FIELD.match(word):
        return _Field(tuple(word[1:].split(".")))
    if word.startswith("$"):
        raise TemplateError(f"'{{{{{text}}}}}': variables ({word}) are not supported")
    if _NUMBER.match(word):
        return _Literal(int(word))
    if word in ("true", "false"):
        return _Literal(word == "true")
    if word in _KEYWORDS:
        raise TemplateError(f"'{{{{{text}}}}}': '{word}' is not supported (supported: fields, range, "
                            f"{', '.join(FUNCTIONS)})")
    if _IDENT.match(word):
        if word not in FUNCTIONS:
            raise TemplateError(f"'{{{{{text}}}}}': function '{word}' is not supported (supported: "
                                f"{', '.join(FUNCTIONS)})")
        return word
    raise TemplateError(f"'{{{{{text}}}}}': '{word}' is not a field (.Name), a string or a function")


def _operand(token: Any, text: str) -> _Operand:
    if isinstance(token, str):
        raise TemplateError(f"'{{{{{text}}}}}': function '{token}' used as an argument; use a pipe, as in "
                            "{{.Names | upper}}")
    return token  # type: ignore[no-any-return]


# --- executing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    """The dot while the header row is rendered: each field is its column's name."""

    name: Callable[[str], str]


def render(template: Template, items: Sequence[Any], header_names: Mapping[str, str] | None = None,
           heading: bool = True) -> str:
    """The template run over items: once per item (or once over the list for a top-level {{range .}}), and with
    the table prefix a header row first (unless not heading) and the columns aligned. `header_names` names
    columns otherwise than by their field's name (Podman's `"ID": "CONTAINER ID"`)."""
    if template.over_list:
        return _execute(template.nodes, list(items))
    text = "".join(_execute(template.nodes, item) for item in items)
    if not template.table:
        return text
    names = dict(header_names or {})
    header = _execute(template.nodes, _Header(lambda f: names.get(f) or header_name(f))) if heading else ""
    return align(header + text)


def check_fields(template: Template, example: Record) -> None:
    """With no items to show, still refuse the fields Podman has and Quilt lacks (`{{.Size}}`), as with items:
    the template runs on an example item built from no properties, whose other missing fields are no error."""
    def lenient(value: Any) -> None:
        if isinstance(value, Record):
            value.lenient = True
        if isinstance(value, Mapping):
            for v in value.values():
                lenient(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                lenient(v)

    lenient(example)
    try:
        _execute(template.nodes, [example] if template.over_list else example)
    except FieldError:
        raise
    except TemplateError:
        pass  # the example's values are not real: an error of values may not happen with real ones


def header_name(field_name: str) -> str:
    """Podman's column header for a field: its words upper-cased ("RunningFor" -> "RUNNING FOR")."""
    return " ".join(camel_split(field_name)).upper()


def camel_split(word: str) -> list[str]:
    """A Go identifier split at its words as Podman's headers split them (fatih/camelcase): a run of capitals
    is one word ("ID", "ImageID" -> Image ID), but its last capital begins the next word ("IPAddress")."""
    def kind(c: str) -> int:
        return 1 if c.islower() else 2 if c.isupper() else 3 if c.isdigit() else 4

    runs: list[str] = []
    for c in word:
        if runs and kind(runs[-1][-1]) == kind(c):
            runs[-1] += c
        else:
            runs.append(c)
    for n in range(len(runs) - 1):
        if runs[n] and runs[n][0].isupper() and runs[n + 1][0].islower():
            runs[n + 1] = runs[n][-1] + runs[n + 1]
            runs[n] = runs[n][:-1]
    return [r for r in runs if r]


def _execute(nodes: Iterable[_Node], dot: Any) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Pipeline):
            out.append(go_text(_pipe(node, dot)))
        else:
            over = _pipe(node.over, dot)
            if isinstance(dot, _Header):
                out.append(_execute(node.body, dot))
                continue
            if isinstance(over, Mapping):
                elements: Iterable[Any] = [over[k] for k in sorted(over)]
            elif isinstance(over, (list, tuple)):
                elements = over
            elif over is None or over is MISSING:
                elements = []
            else:
                raise TemplateError(f"range can't iterate over {go_text(over)!r} (a {_type_name(over)})")
            out.extend(_execute(node.body, element) for element in elements)
    return "".join(out)


def _pipe(pipeline: _Pipeline, dot: Any) -> Any:
    value: Any = MISSING
    for n, command in enumerate(pipeline.commands):
        args = [_operand_value(a, dot) for a in command.args]
        if command.function is None:
            value = args[0]
            continue
        if n > 0:
            args.append(value)
        value = _call(command.function, args, dot)
    return value


def _operand_value(operand: _Operand, dot: Any) -> Any:
    if isinstance(operand, _Literal):
        return operand.value
    if isinstance(dot, _Header):
        return dot.name(operand.path[-1]) if operand.path else ""
    value = dot
    for n, name in enumerate(operand.path):
        value = _field(value, name, operand.path[:n])
    return value


def _field(value: Any, name: str, before: tuple[str, ...]) -> Any:
    where = "".join(f".{p}" for p in before)
    if isinstance(value, Record):
        if name in value:
            return value[name]
        if name in value.lacking:
            raise FieldError(f"no field {where}.{name} in a {value.kind}: {value.lacking[name]}")
        if value.lenient:
            return MISSING
        fields = ", ".join(f".{k}" for k in value)
        raise FieldError(f"no field {where}.{name} in a {value.kind} (its fields: {fields})")
    if isinstance(value, Mapping):
        return value.get(name, MISSING)
    raise TemplateError(f"can't read field .{name} of {where or '.'}: it is a {_type_name(value)}, not a record")


def _call(function: str, args: list[Any], dot: Any) -> Any:
    if isinstance(dot, _Header):
        # The header row runs the same template: functions see column names, not values.
        if function == "index":
            return " ".join(str(a) for a in args[1:]).upper()
        text = str(args[0])
        return text.lower() if function == "lower" else text
    if function == "json":
        return json.dumps(_plain(args[0]), separators=(",", ":"), ensure_ascii=False)
    if function in ("lower", "upper"):
        text = go_text(args[0])
        return text.lower() if function == "lower" else text.upper()
    if function == "len":
        if isinstance(args[0], (str, list, tuple, Mapping)):
            return len(args[0])
        raise TemplateError(f"len of a {_type_name(args[0])}")
    if function == "join":
        items, sep = args
        if not isinstance(items, (list, tuple)):
            raise TemplateError(f"join takes a list, not a {_type_name(items)}")
        return go_text(sep).join(go_text(i) for i in items)
    assert function == "index"
    value = args[0]
    for key in args[1:]:
        if isinstance(value, Mapping):
            value = value.get(key, MISSING) if not isinstance(value, Record) else _field(value, str(key), ())
        elif isinstance(value, (list, tuple)) and isinstance(key, int):
            if not 0 <= key < len(value):
                raise TemplateError(f"index {key} out of range: the list has {len(value)}")
            value = value[key]
        else:
            raise TemplateError(f"can't index a {_type_name(value)} with {go_text(key)!r}")
    return value


def _plain(value: Any) -> Any:
    if value is MISSING:
        return None
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _type_name(value: Any) -> str:
    if isinstance(value, Record):
        return value.kind
    return {str: "string", bool: "bool", int: "number", float: "number", list: "list", tuple: "list",
            dict: "map"}.get(type(value), type(value).__name__)


def go_text(value: Any) -> str:
    """A value as Go's fmt prints it with %v."""
    if isinstance(value, str):
        return value
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, Record):
        return "{" + " ".join(go_text(v) for v in value.values()) + "}"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{go_text(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_text(v) for v in value) + "]"
    return str(value)


# --- tables ----------------------------------------------------------------------------------------------------

MIN_WIDTH = 12  # Podman's tabwriter: each column at least 12 wide, 2 spaces after its widest cell
PADDING = 2


def align(text: str) -> str:
    """Tab-separated lines aligned as Go's text/tabwriter aligns them with Podman's settings: a column is a run of
    consecutive lines that have a tab-terminated cell there, as wide as its widest cell plus 2, at least 12; the
    text after a line's last tab is not padded."""
    lines = text.split("\n")
    cells = [line.split("\t") for line in lines]
    out: list[str] = []

    def write(widths: list[int], start: int, stop: int) -> None:
        for line in cells[start:stop]:
            out.append("".join(c.ljust(widths[j]) if j < len(line) - 1 else c for j, c in enumerate(line)))

    def block(widths: list[int], start: int, stop: int) -> None:
        column = len(widths)
        this = start
        while this < stop:
            if column >= len(cells[this]) - 1:
                this += 1
                continue
            write(widths, start, this)
            start = this
            width = MIN_WIDTH
            while this < stop and column < len(cells[this]) - 1:
                width = max(width, len(cells[this][column]) + PADDING)
                this += 1
            block(widths + [width], start, this)
            start = this
        write(widths, start, stop)

    block([], 0, len(cells))
    return "\n".join(out)
