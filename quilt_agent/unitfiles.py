"""Quilt's container files, NAME.container, NAME.network and NAME.volume, and the services made of them.

The files are written in systemd's unit-file syntax (systemd.syntax(7)) with Podman Quadlet's key names where
Quadlet has the key (podman-systemd.unit(5)), and become Quilt's create options: a file that passes here is one
the agent accepts, since every option is checked by the agent's own rules (model.OPTION_PARSERS). Each file
becomes a service that `quiltctl unit-run PATH` runs (quilt_agent/generator.py writes them at boot and at each
daemon-reload); `quiltctl unit-check PATH` prints one, `quiltctl generate unit NAME` writes a .container file for
an existing container (container_file_text).

What differs from Quadlet: the container, network and volume are named after the file (NAME, not systemd-NAME);
values are taken as written (no %-specifiers, no $VARIABLES: quiltctl reads the file, not systemd); drop-in
directories and templates are not read.

The generator imports this module at every boot: no click, no bus, nothing imported that it does not use.
"""
from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from quilt_agent import health, model
from quilt_agent.errors import InvalidArgument
from quilt_agent.network.options import parse_network_options
from quilt_agent.network.model import CONTAINER_PREFIX, DEFAULT_NETWORK, validate_network_name
from quilt_agent.volume_options import validate_volume_name

# Where the files are, in precedence order: a file in an earlier directory masks one of the same name in a later
# one, as /etc/systemd/system masks /usr/lib/systemd/system. QUILT_UNIT_DIRS (colon-separated) replaces them.
SEARCH_DIRS = ("/etc/quilt/containers", "/run/quilt/containers", "/usr/lib/quilt/containers")
DIRS_VARIABLE = "QUILT_UNIT_DIRS"
KINDS = (".container", ".network", ".volume")
QUILTCTL = "/usr/bin/quiltctl"
DEFAULT_STOP_SIGNAL = "SIGTERM"

# A unit name as systemd takes it, less templates ('@'), which these files do not have.
UNIT_NAME_RE = re.compile(r"[a-zA-Z0-9:_.\\-]+")
MAX_UNIT_NAME = 255


class UnitFileError(Exception):
    """A file Quilt cannot make a service of: where, which key, and why, in one line."""

    def __init__(self, path: str, line: int, key: str, reason: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.reason = " ".join(reason.split("\n"))
        super().__init__(str(self))

    def where(self) -> str:
        """The line and key, without the path: 'line 4, Memory'."""
        parts = [f"line {self.line}"] if self.line else []
        parts += [self.key] if self.key else []
        return ", ".join(parts)

    def __str__(self) -> str:
        place = f"{self.path}:{self.line}" if self.line else self.path
        return f"{place}: {self.key}: {self.reason}" if self.key else f"{place}: {self.reason}"


# --- the syntax ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    line: int  # where the assignment begins


@dataclass(frozen=True)
class ParsedFile:
    """A file's sections in order, each with its assignments in order (a section given twice is one)."""

    path: str
    sections: dict[str, list[Entry]]
    section_lines: dict[str, int]  # where each section first begins

    @property
    def file_name(self) -> str:
        return os.path.basename(self.path)

    @property
    def stem(self) -> str:
        return os.path.splitext(self.file_name)[0]

    @property
    def kind(self) -> str:
        return os.path.splitext(self.file_name)[1]

    def entries(self, section: str) -> list[Entry]:
        return self.sections.get(section, [])


_COMMENTS = ("#", ";")
_SECTION_RE = re.compile(r"\[([^\[\]\x00-\x1f]+)\]")
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _continues(line: str) -> bool:
    """Whether a line ends in an unescaped backslash: '\\\\' at the end is a backslash, not a continuation."""
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def parse_text(path: str, text: str) -> ParsedFile:
    """systemd.syntax(7): [Section] headers; KEY=VALUE with the blanks around '=' dropped; '#' and ';' lines are
    comments, also between the lines of a continued one; a line ending in a backslash goes on, the backslash
    becoming a space. An assignment before any section, or a line that is neither, is an error."""
    if "\0" in text:
        raise UnitFileError(path, 0, "", "the file contains a NUL byte")
    sections: dict[str, list[Entry]] = {}
    section_lines: dict[str, int] = {}
    current: list[Entry] | None = None
    lines = text.removeprefix("\ufeff").splitlines()
    number = 0
    while number < len(lines):
        raw = lines[number]
        number += 1
        start = number
        stripped = raw.strip()
        if not stripped or stripped.startswith(_COMMENTS):
            continue
        while _continues(stripped) and number < len(lines):
            stripped = stripped[:-1] + " "
            while number < len(lines) and lines[number].strip().startswith(_COMMENTS):
                number += 1
            if number < len(lines):
                stripped += lines[number].strip()
                number += 1
        if _continues(stripped):  # the file ends in a continuation: the backslash goes, as systemd does
            stripped = stripped[:-1]
        stripped = stripped.strip()
        if stripped.startswith("["):
            match = _SECTION_RE.fullmatch(stripped)
            if match is None:
                raise UnitFileError(path, start, "", f"'{stripped}' is not a section header like [Container]")
            name = match.group(1)
            current = sections.setdefault(name, [])
            section_lines.setdefault(name, start)
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep:
            raise UnitFileError(path, start, "", f"'{stripped}' is neither KEY=VALUE nor a [Section] header")
        if not _KEY_RE.fullmatch(key):
            raise UnitFileError(path, start, "", f"'{key}' is not a key name")
        if current is None:
            raise UnitFileError(path, start, key, "an assignment before the first [Section] header")
        current.append(Entry(key, value.strip(), start))
    return ParsedFile(path, sections, section_lines)


def read_file(path: str) -> ParsedFile:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UnitFileError(path, 0, "", f"cannot read it: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UnitFileError(path, line, "", "not UTF-8 text") from None
    return parse_text(path, text)


# --- values: words, booleans, sizes, time spans ------------------------------------------------------------------

_WHITESPACE = " \t\n\r"
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
                   '"': '"', "'": "'", "s": " "}
_ESCAPE_LENGTHS = {"x": 2, "u": 4, "U": 8}
_HEX = frozenset("0123456789abcdefABCDEF")


def _unescape(text: str, i: int) -> tuple[str, int]:
    """The C escape whose letter is text[i] (after the backslash), and the index after it: systemd's table."""
    c = text[i]
    if c in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[c], i + 1
    if c in _ESCAPE_LENGTHS:
        digits = text[i + 1:i + 1 + _ESCAPE_LENGTHS[c]]
        if len(digits) != _ESCAPE_LENGTHS[c] or not set(digits) <= _HEX:
            raise ValueError(f"'\\{c}{digits}' needs {_ESCAPE_LENGTHS[c]} hexadecimal digits")
        code = int(digits, 16)
        end = i + 1 + len(digits)
    elif c in "01234567":
        digits = text[i:i + 3]
        if len(digits) != 3 or not set(digits) <= set("01234567"):
            raise ValueError(f"'\\{digits}' needs 3 octal digits")
        code = int(digits, 8)
        end = i + 3
    else:
        raise ValueError(f"unknown escape '\\{c}' (write '\\\\' for a backslash)")
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        raise ValueError(f"'\\{text[i:end]}' is not a character that can be given")
    return chr(code), end


def split_words(text: str) -> list[str]:
    """A value as systemd splits command lines and Environment= (extract_first_word with UNQUOTE, CUNESCAPE and
    UNESCAPE_SEPARATORS): words between blanks; single or double quotes, anywhere in a word, group blanks into
    it; C escapes (systemd.syntax(7)'s table) inside quotes and out; a backslash before a blank keeps the blank.

    Written by hand because shlex differs where it matters: it leaves '\\n', '\\x41' and '\\s' as they are, takes
    no escapes at all inside single quotes, and treats '#' as a comment. An unknown escape or an unclosed quote is
    an error (ValueError), where systemd would warn and drop the whole line."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WHITESPACE:
            i += 1
        if i >= n:
            return words
        word: list[str] = []
        quote = ""
        while i < n:
            c = text[i]
            if c == "\\":
                if i + 1 >= n:
                    raise ValueError("the value ends in a lone backslash")
                if not quote and text[i + 1] in _WHITESPACE:
                    word.append(text[i + 1])
                    i += 2
                    continue
                char, i = _unescape(text, i + 1)
                word.append(char)
                continue
            if quote:
                if c == quote:
                    quote = ""
                else:
                    word.append(c)
            elif c in "'\"":
                quote = c
            elif c in _WHITESPACE:
                break
            else:
                word.append(c)
            i += 1
        if quote:
            raise ValueError(f"a {quote} quote is not closed")
        words.append("".join(word))


_PLAIN_WORD_RE = re.compile(r"[^\s\"'\\\x00-\x1f\x7f]+")
_QUOTED_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def quote_word(word: str) -> str:
    """The inverse of split_words for one word: as it is when nothing in it is special, else double-quoted."""
    if _PLAIN_WORD_RE.fullmatch(word):
        return word
    out = []
    for c in word:
        if c in _QUOTED_ESCAPES:
            out.append(_QUOTED_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def quote_words(words: Iterable[str]) -> str:
    return " ".join(quote_word(w) for w in words)


_TRUE = ("1", "yes", "y", "true", "t", "on")
_FALSE = ("0", "no", "n", "false", "f", "off")


def parse_boolean(text: str) -> bool:
    """systemd's booleans: 1, yes, true, on and 0, no, false, off (any case)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"'{text}' is not a boolean (yes or no, true or false, on or off, 1 or 0)")


# systemd's time units (systemd.time(7)), which include Go's (h, m, s, ms, us, ns) but for months and years:
# 'M' is a month to systemd, and nothing here is that long.
_TIME_UNITS = {
    "ns": 1e-9, "nsec": 1e-9,
    "us": 1e-6, "usec": 1e-6, "µs": 1e-6, "μs": 1e-6,
    "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_TIME_PART_RE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zµμ]*)\s*")


def parse_timespan(text: str) -> float:
    """A time span in seconds: systemd's spellings ('1min 30s', '2 h') and Go's ('1m30s', '500ms'); a number
    alone is seconds. Written here, not taken from cli/parsing.py: that one takes Go's units only, and importing it
    imports click, which the generator does not need."""
    position, total, parts = 0, 0.0, 0
    while position < len(text):
        match = _TIME_PART_RE.match(text, position)
        if match is None or match.end() == position:
            break
        number, unit = match.groups()
        if unit and unit not in _TIME_UNITS:
            raise ValueError(f"'{text}' is not a time span: unknown unit '{unit}' (use ms, s, min, h, d)")
        total += float(number) * _TIME_UNITS[unit or "s"]
        position = match.end()
        parts += 1
    if not parts or position != len(text):
        raise ValueError(f"'{text}' is not a time span (like 30s, 1min 30s, 1m30s, 500ms; a number is seconds)")
    return total


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A size in bytes with systemd's binary suffixes K, M, G, T (MemoryMax=512M), in any case and with Podman's
    optional 'iB' or 'B' (Memory=20g, 512MiB)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"'{text}' is not a size (a number with an optional K, M, G or T: 512M, 2G)")
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_signal_name(text: str) -> str:
    """'TERM', 'sigterm', 'SIGTERM' or '15' -> 'SIGTERM', the spelling KillSignal= takes."""
    value = text.strip()
    try:
        if value.isdigit():
            return signal.Signals(int(value)).name
        name = value.upper()
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name].name
    except (KeyError, ValueError):
        raise ValueError(f"'{text}' is not a signal (like SIGTERM, INT or 15)") from None


# --- finding the files -----------------------------------------------------------------------------------------


def search_dirs(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    value = (os.environ if environ is None else environ).get(DIRS_VARIABLE, "")
    dirs = tuple(d for d in value.split(":") if d)
    return dirs or SEARCH_DIRS


def is_masked(path: str) -> bool:
    """An empty file, or a symlink to /dev/null, masks its name in every later directory, as in systemd."""
    try:
        if os.path.islink(path) and os.path.realpath(path) == "/dev/null":
            return True
        return os.stat(path).st_size == 0
    except OSError:
        return False


def find_units(dirs: Sequence[str]) -> dict[str, str | None]:
    """Each file name (web.container) and its path in the first directory that has it, or None when masked; in
    name order. Hidden files and names of other kinds are left out; a missing directory is no error."""
    found: dict[str, str | None] = {}
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            if name in found or name.startswith(".") or not name.endswith(KINDS):
                continue
            path = os.path.join(directory, name)
            if not os.path.isfile(path) and not os.path.islink(path):
                continue
            found[name] = None if is_masked(path) else path
    return dict(sorted(found.items()))


def service_name(file_name: str) -> str:
    """web.container -> web.service, db.network -> db-network.service, data.volume -> data-volume.service."""
    stem, kind = os.path.splitext(file_name)
    return f"{stem}.service" if kind == ".container" else f"{stem}-{kind[1:]}.service"


def valid_service_name(file_name: str) -> bool:
    service = service_name(file_name)
    return len(service) <= MAX_UNIT_NAME and UNIT_NAME_RE.fullmatch(os.path.splitext(file_name)[0]) is not None


_NAME_KEYS = {".container": ("Container", "ContainerName"), ".network": ("Network", "NetworkName"),
              ".volume": ("Volume", "VolumeName")}


def resource_name(parsed: ParsedFile) -> str:
    """The name of what the file makes: ContainerName=, NetworkName= or VolumeName=, else the file's stem."""
    section, key = _NAME_KEYS[parsed.kind]
    entry = _last(parsed.entries(section), key)
    return entry.value if entry is not None else parsed.stem


def resource_names(units: Mapping[str, str | None],
                   parsed: Mapping[str, ParsedFile] | None = None) -> dict[str, str]:
    """File name -> resource name for every unmasked file, so that Network=db.network finds the network's name.
    A file that cannot be read is named after its stem (it fails on its own)."""
    names: dict[str, str] = {}
    for file_name, path in units.items():
        if path is None:
            continue
        try:
            names[file_name] = resource_name(parsed[file_name] if parsed and file_name in parsed else read_file(path))
        except UnitFileError:
            names[file_name] = os.path.splitext(file_name)[0]
    return names


# --- the records -----------------------------------------------------------------------------------------------

Section = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ContainerFile:
    """A .container file: what `quiltctl unit-run` creates and starts, and what its service looks like."""

    path: str
    name: str  # the container's: ContainerName= or the file's stem
    service: str  # NAME.service, after the file's stem
    image: str
    command: tuple[str, ...] = ()  # () = the image's
    options: dict[str, Any] = field(default_factory=dict)  # CreateContainer's, in their wire types
    environment_files: tuple[str, ...] = ()  # EnvironmentFile=, absolute, read at each start ('-' = optional)
    stop_signal: str = DEFAULT_STOP_SIGNAL  # the service's KillSignal=
    stop_timeout: int = model.DEFAULT_STOP_TIMEOUT  # and TimeoutStopSec=
    requires: tuple[str, ...] = ()  # the services of the networks, volumes and containers it uses
    mounts_for: tuple[str, ...] = ()  # host paths it binds: RequiresMountsFor=
    unit_section: Section = ()
    service_section: Section = ()
    install_section: Section = ()


@dataclass(frozen=True)
class NetworkFile:
    path: str
    name: str
    service: str  # NAME-network.service
    options: dict[str, Any] = field(default_factory=dict)  # CreateNetwork's
    unit_section: Section = ()
    service_section: Section = ()
    install_section: Section = ()


@dataclass(frozen=True)
class VolumeFile:
    path: str
    name: str
    service: str  # NAME-volume.service
    options: dict[str, Any] = field(default_factory=dict)  # CreateVolume's: labels
    unit_section: Section = ()
    service_section: Section = ()
    install_section: Section = ()


UnitRecord = ContainerFile | NetworkFile | VolumeFile


# --- reading keys ----------------------------------------------------------------------------------------------


class _Bad(Exception):
    """A value's error, before the file and line are known."""


def _last(entries: Sequence[Entry], key: str) -> Entry | None:
    """A single-valued key: the last assignment wins; an empty one unsets it."""
    for entry in reversed(entries):
        if entry.key == key:
            return entry if entry.value else None
    return None


def _all(entries: Sequence[Entry], key: str) -> list[Entry]:
    """A list key: every assignment in order; an empty one drops those before it (systemd's and Quadlet's rule)."""
    out: list[Entry] = []
    for entry in entries:
        if entry.key == key:
            if entry.value:
                out.append(entry)
            else:
                out.clear()
    return out


def _key_values(entry: Entry, what: str) -> list[tuple[str, str]]:
    """Environment= and Label=: words of KEY=VALUE."""
    pairs = []
    for word in split_words(entry.value):
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise _Bad(f"'{word}' is not {what} (KEY=VALUE; quote it when the value has blanks: "
                       f"{entry.key}=\"KEY=a b\")")
        pairs.append((key, value))
    return pairs


def _words(entry: Entry) -> list[str]:
    try:
        return split_words(entry.value)
    except ValueError as e:
        raise _Bad(str(e)) from None


def _converting(func: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return func(text)
        except ValueError as e:
            raise _Bad(str(e)) from None
    return convert


_boolean = _converting(parse_boolean)
_timespan = _converting(parse_timespan)
_size = _converting(parse_size)
_signal = _converting(parse_signal_name)


def _whole_seconds(text: str) -> int:
    seconds = _timespan(text)
    if seconds != int(seconds):
        raise _Bad(f"'{text}' is not a whole number of seconds")
    return int(seconds)


def _count(text: str) -> int:
    if not text.strip().isdigit():
        raise _Bad(f"'{text}' is not a whole number")
    return int(text)


def _cpu_quota(text: str) -> float:
    """systemd's CPUQuota=: percent of one CPU, '%' included (150% is one and a half CPUs)."""
    value = text.strip()
    if not value.endswith("%"):
        raise _Bad(f"'{text}' is not a percentage of one CPU (like 50% or 150%, as systemd's CPUQuota=)")
    try:
        return float(value[:-1])
    except ValueError:
        raise _Bad(f"'{text}' is not a percentage of one CPU (like 50% or 150%)") from None


def _notify(text: str) -> str | None:
    """Quadlet's Notify=: true, the container's own READY=1; healthy, its first passing check; false, Quilt's
    default (ready once it runs)."""
    if text.strip().lower() == "healthy":
        return "healthy"
    return "container" if _boolean(text) else None


def _entrypoint(text: str) -> list[str]:
    """Quadlet's Entrypoint=, as podman's --entrypoint: a JSON array of strings, or one program."""
    if text.lstrip().startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise _Bad(f"'{text}' is not a JSON array of strings")
        return parsed
    return [text] if text else []


def _choice(choices: Sequence[str], what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise _Bad(f"'{text}' is not {what}: Quilt takes {', '.join(choices)}")
        return text
    return parse


# LogOpt='s keys, as Podman's --log-opt: the log file's rotation.
_LOG_OPTS = {"max-size": ("log_max_size", parse_size), "max-files": ("log_max_files", _count),
             "max-file": ("log_max_files", _count)}


def _log_opt(r: _Reader, entry: Entry) -> tuple[str, int]:
    key, sep, value = entry.value.partition("=")
    if not sep or key not in _LOG_OPTS:
        raise r.fail(entry, f"'{entry.value}' is not a log option: Quilt takes max-size=SIZE and max-files=N")
    option, convert = _LOG_OPTS[key]
    try:
        return option, convert(value)
    except (ValueError, _Bad) as e:
        raise r.fail(entry, str(e)) from None


# Podman's keys that Quilt has no equivalent of: named, so that a file written for Quadlet says what to change.
_QUADLET_ONLY = {
    "Container": frozenset({
        "AddDevice", "Annotation", "AutoUpdate", "CgroupsMode", "ContainersConfModule", "EnvironmentHost",
        "ExposeHostPort",
        "GIDMap", "GlobalArgs", "GroupAdd", "HealthLogDestination", "HealthMaxLogCount", "HealthMaxLogSize",
        "HealthStartupCmd", "HealthStartupInterval", "HealthStartupRetries", "HealthStartupSuccess",
        "HealthStartupTimeout", "IP6", "Mask", "Mount", "NoNewPrivileges", "Pod",
        "PodmanArgs", "Pull", "ReadOnlyTmpfs", "ReloadCmd", "ReloadSignal", "RemapGid", "RemapUid", "RemapUidSize",
        "RemapUsers", "Retry", "RetryDelay", "Rootfs", "Secret", "SecurityLabelDisable", "SecurityLabelFileType",
        "SecurityLabelLevel", "SecurityLabelNested", "SecurityLabelType", "ServiceName", "ShmSize", "StartWithPod",
        "SubGIDMap", "SubUIDMap", "Sysctl", "Timezone", "UIDMap", "Ulimit", "Unmask", "VolatileTmp",
    }),
    "Network": frozenset({
        "ContainersConfModule", "Driver", "GlobalArgs", "IPAMDriver", "IPRange", "IPv6", "InterfaceName", "Label",
        "NetworkDeleteOnStop", "Options", "PodmanArgs", "ServiceName",
    }),
    "Volume": frozenset({
        "ContainersConfModule", "Copy", "Device", "Driver", "GlobalArgs", "Group", "Image", "Options", "PodmanArgs",
        "ServiceName", "Type", "User",
    }),
}

_CONTAINER_KEYS = frozenset({
    "Image", "Exec", "ContainerName", "Environment", "EnvironmentFile", "PublishPort", "Volume", "Network",
    "NetworkAlias", "IP", "HostName", "User", "Group", "WorkingDir", "ReadOnly", "Tmpfs", "Label", "HealthCmd",
    "HealthInterval", "HealthTimeout", "HealthRetries", "HealthStartPeriod", "HealthOnFailure", "Notify", "RunInit",
    "UserNS", "StopTimeout", "StopSignal", "PidsLimit", "Memory", "CPUQuota", "Setup", "SeccompProfile",
    "AddHost", "DNS", "DNSSearch", "DNSOption", "AddCapability", "DropCapability", "Entrypoint", "LogDriver",
    "LogOpt",
})
_NETWORK_KEYS = frozenset({"NetworkName", "Subnet", "Gateway", "Internal", "DNS", "DisableDNS"})
_VOLUME_KEYS = frozenset({"VolumeName", "Label"})
_OWN_KEYS = {"Container": _CONTAINER_KEYS, "Network": _NETWORK_KEYS, "Volume": _VOLUME_KEYS}
_OWN_SECTION = {".container": "Container", ".network": "Network", ".volume": "Volume"}
_PASSED_SECTIONS = ("Unit", "Service", "Install")

# [Unit] keys whose unit names may name these files (After=db.container), as Quadlet translates them.
_DEPENDENCY_KEYS = frozenset({
    "After", "Before", "BindsTo", "Conflicts", "OnFailure", "OnSuccess", "PartOf", "PropagatesReloadTo",
    "PropagatesStopTo", "ReloadPropagatedFrom", "Requires", "Requisite", "StopPropagatedFrom", "Upholds", "Wants",
})


class _Reader:
    """One file's conversion: each error names the file, the line and the key."""

    def __init__(self, parsed: ParsedFile) -> None:
        self.parsed = parsed
        self.section = _OWN_SECTION[parsed.kind]
        self.entries = parsed.entries(self.section)

    def fail(self, entry: Entry | None, reason: str, key: str = "") -> UnitFileError:
        if entry is None:
            line = self.parsed.section_lines.get(self.section, 0)
            return UnitFileError(self.parsed.path, line, key or f"[{self.section}]", reason)
        return UnitFileError(self.parsed.path, entry.line, entry.key, reason)

    def check_layout(self) -> None:
        for name, line in self.parsed.section_lines.items():
            if name != self.section and name not in _PASSED_SECTIONS and not name.startswith("X-"):
                raise UnitFileError(self.parsed.path, line, f"[{name}]",
                                    f"unknown section in a {self.parsed.kind} file: its own is [{self.section}], "
                                    "and [Unit], [Service] and [Install] go to the service")
        if self.section not in self.parsed.sections:
            raise UnitFileError(self.parsed.path, 0, "", f"no [{self.section}] section")
        own = _OWN_KEYS[self.section]
        for entry in self.entries:
            if entry.key in own:
                continue
            if entry.key in _QUADLET_ONLY[self.section]:
                raise self.fail(entry, f"Quadlet's {entry.key}= has no equivalent in Quilt")
            raise self.fail(entry, f"unknown key in [{self.section}]")
        for entry in self.parsed.entries("Service"):
            if entry.key == "ExecStart":
                raise UnitFileError(self.parsed.path, entry.line, entry.key,
                                    "the generated service runs quiltctl unit-run; give the container's command as "
                                    "Exec= in [Container]" if self.section == "Container" else
                                    "the generated service runs quiltctl unit-run")
            if entry.key == "Type" and entry.value not in ("notify", "oneshot"):
                raise UnitFileError(self.parsed.path, entry.line, entry.key,
                                    f"'{entry.value}' does not work with quiltctl unit-run: notify or oneshot")
            if entry.key == "KillMode" and entry.value not in ("control-group", "mixed"):
                raise UnitFileError(self.parsed.path, entry.line, entry.key,
                                    f"'{entry.value}' would leave the container's processes behind at a stop: "
                                    "control-group or mixed")

    def last(self, key: str) -> Entry | None:
        return _last(self.entries, key)

    def all(self, key: str) -> list[Entry]:
        return _all(self.entries, key)

    def value(self, key: str, convert: Callable[[str], Any]) -> tuple[Any, Entry] | None:
        entry = self.last(key)
        if entry is None:
            return None
        try:
            return convert(entry.value), entry
        except _Bad as e:
            raise self.fail(entry, str(e)) from None

    def passed(self, section: str) -> Section:
        return tuple((e.key, e.value) for e in self.parsed.entries(section))

    def unit_section(self) -> Section:
        """[Unit], with unit names of these files turned into their services' (After=db.container -> db.service)."""
        out = []
        for key, value in self.passed("Unit"):
            if key in _DEPENDENCY_KEYS:
                value = " ".join(service_name(w) if w.endswith(KINDS) else w for w in value.split())
            out.append((key, value))
        return tuple(out)


def _check_option(reader: _Reader, key: str, value: Any, entry: Entry | None) -> None:
    """One option, by the agent's own rule for it (model.OPTION_PARSERS)."""
    try:
        model.OPTION_PARSERS[key][1](value)
    except InvalidArgument as e:
        raise reader.fail(entry, str(e)) from None


def _reference(reader: _Reader, entry: Entry, file_name: str, names: Mapping[str, str]) -> str:
    if file_name not in names:
        raise reader.fail(entry, f"no file {file_name} in the unit directories (or it is masked)")
    return names[file_name]


def _gather(r: _Reader, option: str, entries: list[tuple[Entry, str]], lines: dict[str, Entry],
            options: dict[str, Any]) -> None:
    """A list option from repeated keys: each value checked on its own line, then all of them together (what is
    wrong only together, such as a port published twice, is reported at the last line)."""
    for entry, value in entries:
        _check_option(r, option, [value], entry)
    if entries:
        lines[option] = entries[-1][0]
        options[option] = [value for _, value in entries]
        _check_option(r, option, options[option], lines[option])


def parse_container(parsed: ParsedFile, names: Mapping[str, str] | None = None) -> ContainerFile:
    """A .container file's record. `names` maps the other files' names (db.network) to what they make (the
    network's name): resource_names() gives it; a reference to a file it lacks is an error."""
    names = names or {}
    r = _Reader(parsed)
    r.check_layout()
    options: dict[str, Any] = {}
    lines: dict[str, Entry] = {}  # option -> the entry it came from, for errors found later
    requires: list[str] = []
    mounts_for: list[str] = []

    def put(option: str, value: Any, entry: Entry) -> None:
        options[option] = value
        lines[option] = entry

    image = r.last("Image")
    if image is None:
        raise r.fail(None, "no Image= (the image to run: a name like debian:12, an id, or an image file's path)",
                     key="Image")
    name_entry = r.last("ContainerName")
    name = name_entry.value if name_entry is not None else parsed.stem
    try:
        model.validate_name(name)
    except InvalidArgument as e:
        raise r.fail(name_entry, f"{e}{'' if name_entry else ' (the file name gives it: set ContainerName=)'}",
                     key="" if name_entry else "ContainerName") from None

    command: tuple[str, ...] = ()
    exec_entry = r.last("Exec")
    if exec_entry is not None:
        try:
            command = tuple(_words(exec_entry))
            model.validate_command(command)
        except (_Bad, InvalidArgument) as e:
            raise r.fail(exec_entry, str(e)) from None

    env: dict[str, str] = {}
    for entry in r.all("Environment"):
        try:
            pairs = _key_values(entry, "an environment variable")
        except (ValueError, _Bad) as e:
            raise r.fail(entry, str(e)) from None
        for key, value in pairs:
            env.pop(key, None)  # a later assignment wins, and comes last
            env[key] = value
            _check_option(r, "env", [f"{key}={value}"], entry)
            lines["env"] = entry
    if env:
        options["env"] = [f"{k}={v}" for k, v in env.items()]

    environment_files = []
    for entry in r.all("EnvironmentFile"):
        optional, path = ("-", entry.value[1:]) if entry.value.startswith("-") else ("", entry.value)
        if not path:
            raise r.fail(entry, "no path after '-'")
        # Relative to the file's directory, as Quadlet reads it: the runner's working directory is /.
        environment_files.append(optional + os.path.normpath(os.path.join(os.path.dirname(parsed.path), path)))

    labels: dict[str, str] = {}
    for entry in r.all("Label"):
        try:
            labels.update(_key_values(entry, "a label"))
        except (ValueError, _Bad) as e:
            raise r.fail(entry, str(e)) from None
        _check_option(r, "labels", labels, entry)
        lines["labels"] = entry
    if labels:
        options["labels"] = labels

    for entry in r.all("LogOpt"):
        option, value = _log_opt(r, entry)
        _check_option(r, option, value, entry)
        put(option, value, entry)

    _gather(r, "ports", [(entry, entry.value) for entry in r.all("PublishPort")], lines, options)

    networks: list[tuple[Entry, str]] = []
    for entry in r.all("Network"):
        value = entry.value
        target, _, extra = value.partition(":")
        if target.endswith(".network"):
            if extra:
                raise r.fail(entry, f"'{value}': Quilt takes no options after a network's name")
            value = _reference(r, entry, target, names)
            requires.append(service_name(target))
        elif target.endswith(".container"):
            if extra:
                raise r.fail(entry, f"'{value}': nothing may follow another container's file name")
            value = CONTAINER_PREFIX + _reference(r, entry, target, names)
            requires.append(service_name(target))
        networks.append((entry, value))
    _gather(r, "networks", networks, lines, options)
    _gather(r, "aliases", [(entry, entry.value) for entry in r.all("NetworkAlias")], lines, options)

    volumes: list[tuple[Entry, str]] = []
    for entry in r.all("Volume"):
        parts = entry.value.split(":")
        source = parts[0] if len(parts) > 1 else ""
        if source.endswith(".volume"):
            parts[0] = _reference(r, entry, source, names)
            requires.append(service_name(source))
        elif source.startswith("."):
            # Relative to the file's directory, as Quadlet reads it.
            parts[0] = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(parsed.path)), source))
        if parts[0].startswith("/") and len(parts) > 1:
            mounts_for.append(parts[0])
        volumes.append((entry, ":".join(parts)))
    _gather(r, "volumes", volumes, lines, options)
    _gather(r, "tmpfs", [(entry, entry.value) for entry in r.all("Tmpfs")], lines, options)
    _gather(r, "setup", [(entry, entry.value) for entry in r.all("Setup")], lines, options)
    # As Quadlet: one line each, but for capabilities, several to a line.
    for key, option in (("AddHost", "add_hosts"), ("DNS", "dns_servers"), ("DNSSearch", "dns_search"),
                        ("DNSOption", "dns_options")):
        _gather(r, option, [(entry, entry.value) for entry in r.all(key)], lines, options)
    for key, option in (("AddCapability", "cap_add"), ("DropCapability", "cap_drop")):
        _gather(r, option, [(entry, word) for entry in r.all(key) for word in entry.value.split()], lines, options)
    entrypoint = r.value("Entrypoint", _entrypoint)
    if entrypoint is not None:
        _check_option(r, "entrypoint", entrypoint[0], entrypoint[1])
        put("entrypoint", entrypoint[0], entrypoint[1])

    for key, option, convert in (
        ("IP", "ip", str),
        ("HostName", "hostname", str),
        ("WorkingDir", "workdir", str),
        ("ReadOnly", "read_only", _boolean),
        ("RunInit", "init", _boolean),
        ("UserNS", "userns", _choice(model.USERNS_MODES, "a user namespace mode")),
        ("SeccompProfile", "seccomp", _choice(model.SECCOMP_PROFILES, "a seccomp profile")),
        ("PidsLimit", "pids_max", _count),
        ("Memory", "memory_max", _size),
        ("CPUQuota", "cpu_quota", _cpu_quota),
        ("HealthCmd", "health_cmd", _converting(health.parse_command_line)),
        ("HealthInterval", "health_interval", _timespan),
        ("HealthTimeout", "health_timeout", _timespan),
        ("HealthStartPeriod", "health_start_period", _timespan),
        ("HealthRetries", "health_retries", _count),
        ("HealthOnFailure", "health_on_failure", str),
        ("LogDriver", "log_driver", _choice(model.LOG_DRIVERS, "a log driver")),
        ("StopTimeout", "stop_timeout", _whole_seconds),
    ):
        found = r.value(key, convert)
        if found is not None:
            value, entry = found
            _check_option(r, option, value, entry)
            put(option, value, entry)

    notify = r.value("Notify", _notify)
    if notify is not None and notify[0] is not None:
        put("sdnotify", notify[0], notify[1])

    user, group = r.last("User"), r.last("Group")
    if group is not None and user is None:
        raise r.fail(group, "Group= needs User= (the container's user is USER:GROUP)")
    if user is not None:
        value = f"{user.value}:{group.value}" if group is not None else user.value
        _check_option(r, "user", value, group or user)
        put("user", value, group or user)

    stop_signal = DEFAULT_STOP_SIGNAL
    found_signal = r.value("StopSignal", _signal)
    if found_signal is not None:
        stop_signal = found_signal[0]

    try:
        model.parse_options(dict(options))
    except InvalidArgument as e:
        # A rule between options (ip with two networks, a port with network none): the line of one of them.
        mentioned = [entry for option, entry in lines.items() if re.search(rf"\b{option}\b", str(e))]
        raise r.fail(mentioned[-1] if mentioned else None, str(e)) from None

    return ContainerFile(
        path=parsed.path, name=name, service=service_name(parsed.file_name), image=image.value, command=command,
        options=options, environment_files=tuple(environment_files), stop_signal=stop_signal,
        stop_timeout=options.get("stop_timeout", model.DEFAULT_STOP_TIMEOUT),
        requires=tuple(dict.fromkeys(requires)), mounts_for=tuple(dict.fromkeys(mounts_for)),
        unit_section=r.unit_section(), service_section=r.passed("Service"), install_section=r.passed("Install"),
    )


def parse_network(parsed: ParsedFile) -> NetworkFile:
    r = _Reader(parsed)
    r.check_layout()
    name_entry = r.last("NetworkName")
    name = name_entry.value if name_entry is not None else parsed.stem
    try:
        validate_network_name(name)
    except InvalidArgument as e:
        raise r.fail(name_entry, str(e), key="" if name_entry else "NetworkName") from None
    options: dict[str, Any] = {}
    for key, option in (("Subnet", "subnet"), ("Gateway", "gateway")):
        entry = r.last(key)
        if entry is not None:
            options[option] = entry.value
    found = r.value("Internal", _boolean)
    if found is not None:
        options["internal"] = found[0]
    dns = r.value("DNS", _converting(_network_dns))
    disable = r.value("DisableDNS", _boolean)
    if dns is not None and disable is not None:
        raise r.fail(disable[1], "DNS= and DisableDNS= both given: keep one")
    if dns is not None:
        options["dns"] = dns[0]
    elif disable is not None:
        options["dns"] = not disable[0]
    try:
        parse_network_options(dict(options))
    except InvalidArgument as e:
        culprit = next((r.last(k) for k, o in (("Gateway", "gateway"), ("Subnet", "subnet")) if o in str(e)
                        and r.last(k) is not None), None)
        raise r.fail(culprit, str(e)) from None
    return NetworkFile(path=parsed.path, name=name, service=service_name(parsed.file_name), options=options,
                       unit_section=r.unit_section(), service_section=r.passed("Service"),
                       install_section=r.passed("Install"))


def _network_dns(text: str) -> bool:
    """Quilt's DNS=: whether the network's gateway answers its containers' names. Quadlet's DNS= names resolvers,
    which Quilt's networks do not take."""
    try:
        return parse_boolean(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a boolean: Quilt's DNS= turns the network's name server on or off "
                         "(Quadlet's list of resolvers has no equivalent)") from None


def parse_volume(parsed: ParsedFile) -> VolumeFile:
    r = _Reader(parsed)
    r.check_layout()
    name_entry = r.last("VolumeName")
    name = name_entry.value if name_entry is not None else parsed.stem
    try:
        validate_volume_name(name)
    except InvalidArgument as e:
        raise r.fail(name_entry, str(e), key="" if name_entry else "VolumeName") from None
    labels: dict[str, str] = {}
    for entry in r.all("Label"):
        try:
            labels.update(_key_values(entry, "a label"))
        except (ValueError, _Bad) as e:
            raise r.fail(entry, str(e)) from None
    return VolumeFile(path=parsed.path, name=name, service=service_name(parsed.file_name),
                      options={"labels": labels} if labels else {}, unit_section=r.unit_section(),
                      service_section=r.passed("Service"), install_section=r.passed("Install"))


def convert(parsed: ParsedFile, names: Mapping[str, str] | None = None) -> UnitRecord:
    if parsed.kind == ".container":
        return parse_container(parsed, names)
    if parsed.kind == ".network":
        return parse_network(parsed)
    if parsed.kind == ".volume":
        return parse_volume(parsed)
    raise UnitFileError(parsed.path, 0, "", f"not a Quilt file: the name ends in none of {', '.join(KINDS)}")


def load(path: str | os.PathLike[str], dirs: Sequence[str] | None = None) -> UnitRecord:
    """One file's record, its references found as the generator finds them: in the unit directories (search_dirs()
    unless given), then beside the file."""
    path = os.path.abspath(path)  # the service's SourcePath= and ExecStart=, and the base of relative paths
    parsed = read_file(path)
    directories = [os.path.abspath(d) for d in (search_dirs() if dirs is None else dirs)]
    own = os.path.dirname(path)
    if own not in directories:
        directories.append(own)
    names = resource_names(find_units(directories), {parsed.file_name: parsed}) if parsed.kind == ".container" \
        else {}
    return convert(parsed, names)


# --- EnvironmentFile= ------------------------------------------------------------------------------------------

_SHELL_ESCAPED = "\"\\`$"


def parse_environment_file(path: str, text: str) -> list[str]:
    """An EnvironmentFile='s KEY=VALUE entries, read as systemd reads one (env-file.c): '#' and ';' lines are
    comments; blanks around the key and around an unquoted value go; single quotes keep everything, double quotes
    take \\\\, \\", \\`, \\$ and a backslash-newline; unquoted, a backslash keeps the next character and one at the
    end of a line goes on to the next. A line without '=' is ignored, as systemd does; a bad name is an error."""
    entries: list[str] = []
    lines = text.removeprefix("\ufeff").split("\n")
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        start = number
        stripped = line.lstrip(" \t\r")
        if not stripped or stripped.startswith(_COMMENTS):
            continue
        key, sep, rest = stripped.partition("=")
        key = key.strip(" \t\r")
        if not sep:
            continue
        if not model.ENV_NAME_RE.fullmatch(key):
            raise UnitFileError(path, start, key, "not an environment variable's name (letters, digits and '_')")
        value: list[str] = []
        keep = 0  # how much of value an unquoted trailing blank may not take (quoted or escaped text)
        quote = ""
        i, rest = 0, rest.lstrip(" \t")
        while True:
            if i >= len(rest):
                if quote:  # a quoted value goes on over lines
                    if number >= len(lines):
                        raise UnitFileError(path, start, key, f"a {quote} quote is not closed")
                    value.append("\n")
                    rest, i = lines[number], 0
                    number += 1
                    continue
                break
            c = rest[i]
            if quote == "'":
                if c == "'":
                    quote = ""
                    keep = len(value)
                else:
                    value.append(c)
            elif quote == '"':
                if c == "\\" and i + 1 < len(rest) and rest[i + 1] in _SHELL_ESCAPED:
                    value.append(rest[i + 1])
                    i += 1
                elif c == "\\" and i + 1 == len(rest) and number < len(lines):
                    rest, i = lines[number], 0  # backslash-newline: the line goes on
                    number += 1
                    continue
                elif c == '"':
                    quote = ""
                    keep = len(value)
                else:
                    value.append(c)
            elif c in "'\"":
                quote = c
            elif c == "\\":
                if i + 1 < len(rest):
                    value.append(rest[i + 1])
                    keep = len(value)
                    i += 1
                elif number < len(lines):
                    rest, i = lines[number], 0
                    number += 1
                    continue
            else:
                value.append(c)
            i += 1
        joined = "".join(value[:keep]) + "".join(value[keep:]).rstrip(" \t\r")
        entries.append(f"{key}={joined}")
    return entries


def read_environment_files(paths: Sequence[str]) -> list[str]:
    """The entries of a ContainerFile's environment_files, in order (a later file's win in the container, as a
    later Environment= does); a '-' before a path makes a missing file no error."""
    entries: list[str] = []
    for entry in paths:
        optional, path = entry.startswith("-"), entry.removeprefix("-")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            if optional:
                continue
            raise UnitFileError(path, 0, "", "the EnvironmentFile= does not exist (a '-' before its path makes it "
                                "optional)") from None
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise UnitFileError(path, 0, "", f"cannot read the EnvironmentFile=: {reason}") from None
        entries += parse_environment_file(path, text)
    return entries


# --- the services --------------------------------------------------------------------------------------------

KIND_WORDS = {".container": "container", ".network": "network", ".volume": "volume"}


def _specifiers_escaped(text: str) -> str:
    """systemd expands %-specifiers in Description=, SourcePath= and ExecStart=: a '%' of ours must stay one."""
    return text.replace("%", "%%")


def exec_argument(word: str) -> str:
    """One word of an ExecStart= line as systemd reads it: quoted when needed, '%' and '$' doubled."""
    return quote_word(word).replace("%", "%%").replace("$", "$$")


def _render(header: str, sections: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> str:
    out = [header]
    for title, entries in sections:
        if not entries:
            continue
        out.append(f"\n[{title}]")
        out.extend(f"{key}={value}" for key, value in entries)
    return "\n".join(out) + "\n"


def _header(path: str) -> str:
    return f"# Generated by quilt-generator from {path}"


def _unit_lines(record: UnitRecord, description: str) -> list[tuple[str, str]]:
    lines = []
    if not any(key == "Description" for key, _ in record.unit_section):
        lines.append(("Description", _specifiers_escaped(description)))
    lines += [("SourcePath", _specifiers_escaped(record.path)), ("After", "dbus.socket")]
    return lines


def container_service_text(record: ContainerFile) -> str:
    """The service that runs a .container file's container: `quiltctl unit-run` creates and starts it with the
    service's cgroup as its own (Delegate=yes), tells systemd it is ready (Type=notify), and ends with it. A
    stop's signal ends the container, so the exit status it gives (128 + the signal) is a success."""
    unit = _unit_lines(record, f"Quilt container {record.name}")
    for required in record.requires:
        unit += [("Requires", required), ("After", required)]
    unit += [("RequiresMountsFor", _specifiers_escaped(p)) for p in record.mounts_for]
    signum = int(signal.Signals[record.stop_signal])
    service = [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Delegate", "yes"),
        ("KillSignal", record.stop_signal),
        ("TimeoutStopSec", str(record.stop_timeout)),
        ("SuccessExitStatus", str(128 + signum)),
        ("SyslogIdentifier", "%N"),
        ("ExecStart", f"{QUILTCTL} unit-run {exec_argument(record.path)}"),
    ]
    return _render(_header(record.path), [("Unit", [*unit, *record.unit_section]),
                                          ("Service", [*service, *record.service_section]),
                                          ("Install", record.install_section)])


def resource_service_text(record: NetworkFile | VolumeFile) -> str:
    """The oneshot service that makes a .network or .volume file's network or volume (if missing) and stays
    active, for the containers' services to require."""
    kind = "network" if isinstance(record, NetworkFile) else "volume"
    unit = _unit_lines(record, f"Quilt {kind} {record.name}")
    service = [
        ("Type", "oneshot"),
        ("RemainAfterExit", "yes"),
        ("SyslogIdentifier", "%N"),
        ("ExecStart", f"{QUILTCTL} unit-run {exec_argument(record.path)}"),
    ]
    return _render(_header(record.path), [("Unit", [*unit, *record.unit_section]),
                                          ("Service", [*service, *record.service_section]),
                                          ("Install", record.install_section)])


def service_text(record: UnitRecord) -> str:
    if isinstance(record, ContainerFile):
        return container_service_text(record)
    return resource_service_text(record)


def failing_service_text(path: str, error: UnitFileError) -> str:
    """The service of a file that cannot be read: starting it runs `quiltctl unit-check`, which prints the error
    and fails, so `systemctl start` fails and the journal says why."""
    file_name = os.path.basename(path)
    stem, kind = os.path.splitext(file_name)
    reason = f"{error.where()}: {error.reason}" if error.where() else error.reason
    unit = [("Description", _specifiers_escaped(f"Quilt {KIND_WORDS.get(kind, 'unit')} {stem} (invalid: {reason})")),
            ("SourcePath", _specifiers_escaped(path))]
    service = [("Type", "oneshot"), ("ExecStart", f"{QUILTCTL} unit-check {exec_argument(path)}")]
    return _render(_header(path), [("Unit", unit), ("Service", service)])


# --- a .container file for an existing container ---------------------------------------------------------------

_DEFAULT_HEALTH = {"HealthInterval": 30.0, "HealthTimeout": 30.0, "HealthStartPeriod": 0.0}


def _size_text(size: int) -> str:
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _timespan_text(usec: int) -> str:
    if usec % 1_000_000 == 0:
        return f"{usec // 1_000_000}s"
    if usec % 1000 == 0:
        return f"{usec // 1000}ms"
    return f"{usec}us"


def _health_cmd_text(argv: Sequence[str]) -> str:
    if len(argv) == 3 and argv[0] == "/bin/sh" and argv[1] == "-c" and argv[2].strip() \
            and not argv[2].lstrip().startswith("[") and argv[2].strip().lower() != "none":
        return argv[2]
    return json.dumps(list(argv))


def container_file_text(props: Mapping[str, Any], environment: Sequence[str] = ()) -> str:
    """A .container file that makes a container like the one whose org.quilt.Runtime.Container properties these
    are (`quiltctl generate unit`), with `environment` (GetEnvironment's, given by the caller: it may hold
    secrets) as Environment= lines."""
    name = str(props["Name"])
    container: list[tuple[str, str]] = [("Image", str(props["Image"])), ("ContainerName", name)]
    command = list(props.get("Command") or [])
    if command:
        container.append(("Exec", quote_words(command)))
    container += [("Environment", quote_word(entry)) for entry in environment]
    workdir = props.get("WorkingDirectory") or "/"
    if workdir != "/":
        container.append(("WorkingDir", workdir))
    user = str(props.get("User") or "")
    if user and user != "0":
        uid, _, gid = user.partition(":")
        container.append(("User", uid))
        if gid:
            container.append(("Group", gid))
    namespaces = list(props.get("Namespaces") or model.NAMESPACES)
    hostname = str(props.get("Hostname") or "")
    if hostname and hostname != name and "uts" in namespaces:
        container.append(("HostName", hostname))
    if props.get("MemoryMax"):
        container.append(("Memory", _size_text(int(props["MemoryMax"]))))
    if props.get("CPUQuota"):
        container.append(("CPUQuota", f"{float(props['CPUQuota']):g}%"))
    if props.get("PidsMax"):
        container.append(("PidsLimit", str(int(props["PidsMax"]))))
    for key, value in dict(props.get("Labels") or {}).items():
        container.append(("Label", quote_word(f"{key}={value}")))
    if "net" not in namespaces:
        container.append(("Network", "host"))
    else:
        networks = [str(n) for n in props.get("Networks") or []] or list(dict.fromkeys(
            str(network) for network, _address in props.get("Addresses") or []))
        if networks and networks != [DEFAULT_NETWORK]:
            container += [("Network", network) for network in networks]
    container += [("NetworkAlias", str(alias)) for alias in props.get("NetworkAliases") or []]
    if props.get("IP"):
        container.append(("IP", str(props["IP"])))
    container += [("PublishPort", str(port)) for port in props.get("Ports") or []]
    anonymous = {str(v) for v in props.get("AnonymousVolumes") or []}
    for volume in props.get("Volumes") or []:
        source, _, rest = str(volume).partition(":")
        container.append(("Volume", rest if source in anonymous else str(volume)))  # -v DEST: a new one each time
    container += [("Tmpfs", str(entry)) for entry in props.get("Tmpfs") or []]
    if props.get("ReadOnly"):
        container.append(("ReadOnly", "true"))
    if props.get("Init"):
        container.append(("RunInit", "true"))
    if props.get("UserNamespace") == "host":
        container.append(("UserNS", "host"))
    if props.get("Seccomp") and props["Seccomp"] != "default":
        container.append(("SeccompProfile", str(props["Seccomp"])))
    for key, prop in (("AddCapability", "CapAdd"), ("DropCapability", "CapDrop")):
        if props.get(prop):
            container.append((key, " ".join(str(c) for c in props[prop])))
    for key, prop in (("AddHost", "AddHosts"), ("DNS", "DNSServers"), ("DNSSearch", "DNSSearch"),
                      ("DNSOption", "DNSOptions")):
        container += [(key, str(value)) for value in props.get(prop) or []]
    container += [("Setup", str(entry)) for entry in props.get("Setup") or []]
    health_command = list(props.get("HealthCommand") or [])
    if health_command:
        container.append(("HealthCmd", _health_cmd_text(health_command)))
        for key, default in _DEFAULT_HEALTH.items():
            usec = int(props.get(key) or 0)
            if usec != round(default * 1e6):
                container.append((key, _timespan_text(usec)))
        if props.get("HealthRetries") and int(props["HealthRetries"]) != 3:
            container.append(("HealthRetries", str(int(props["HealthRetries"]))))
        if props.get("HealthOnFailure") and props["HealthOnFailure"] != "none":
            container.append(("HealthOnFailure", str(props["HealthOnFailure"])))
    if props.get("LogDriver") and props["LogDriver"] != "journald":
        container.append(("LogDriver", str(props["LogDriver"])))
    if int(props.get("LogMaxSize") or 0):
        container.append(("LogOpt", f"max-size={_size_text(int(props['LogMaxSize']))}"))
    if int(props.get("LogMaxFiles") or 1) > 1:
        container.append(("LogOpt", f"max-files={int(props['LogMaxFiles'])}"))
    notify = {"container": "true", "healthy": "healthy"}.get(str(props.get("SdNotify") or ""))
    if notify:
        container.append(("Notify", notify))
    signum = int(props.get("StopSignal") or signal.SIGTERM)
    if signum != signal.SIGTERM:
        container.append(("StopSignal", signal.Signals(signum).name))
    stop_timeout = int(props.get("StopTimeout", model.DEFAULT_STOP_TIMEOUT))
    if stop_timeout != model.DEFAULT_STOP_TIMEOUT:
        container.append(("StopTimeout", str(stop_timeout)))

    # Quilt's restart policy becomes systemd's: the service restarts the container, not the agent.
    restart = {"always": "always", "unless-stopped": "always", "on-failure": "on-failure"}.get(
        str(props.get("RestartPolicy") or "no"))
    header = [f"# {name}.container: made by quiltctl generate unit from container {name}"
              + (f" ({props['Id']})" if props.get("Id") else "")]
    sections: list[tuple[str, Sequence[tuple[str, str]]]] = [
        ("Unit", [("Description", f"Quilt container {name}")]),
        ("Container", container),
        ("Service", [("Restart", restart)] if restart else []),
        ("Install", [("WantedBy", "multi-user.target")]),
    ]
    return _render("\n".join(header), sections)
