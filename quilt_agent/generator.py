"""quilt-generator: the systemd generator (systemd.generator(7)) of Quilt's container files.

systemd runs it early at boot and at every daemon-reload as `quilt-generator NORMAL_DIR EARLY_DIR LATE_DIR`. It
reads the .container, .network and .volume files of the unit directories (unitfiles.search_dirs(): /etc, /run
and /usr/lib's quilt/containers, or QUILT_UNIT_DIRS) and writes one service for each to NORMAL_DIR, with the links
their [Install] sections ask for: a generated unit cannot be `systemctl enable`d, so the generator enables it, as
Quadlet's does. A file it cannot read becomes a service that fails when started, saying why, and a line in the
journal naming the file, the line and the key. The generator itself never fails the boot: it exits 0 whatever
it meets.

`quilt-generator --dryrun` prints the services instead, for a look at what a daemon-reload would make.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from quilt_agent import unitfiles
from quilt_agent.unitfiles import ParsedFile, UnitFileError

IDENTIFIER = "quilt-generator"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# What [Install] does at `systemctl enable`: TARGET.wants/SERVICE and the like, or another name for the service.
INSTALL_DIRECTORIES = {"WantedBy": ".wants", "RequiredBy": ".requires", "UpheldBy": ".upholds"}
LINKED_UNIT_RE = re.compile(r"[a-zA-Z0-9:_.\\@-]+\.[a-z]+")

# (message, fields for the journal: FILE_LINE and the like, without the QUILT_UNIT_ prefix)
Log = Callable[[str, Mapping[str, str]], None]
Write = Callable[[str, str], None]  # (service name, text)


@dataclass(frozen=True)
class Generated:
    file_name: str  # web.container
    service: str  # web.service
    error: UnitFileError | None = None  # when the service is the one that fails


def journal_log(message: str, fields: Mapping[str, str]) -> None:
    """To the journal when there is one to talk to (systemd.journal imported only then), else to stderr, which
    systemd sends to the kernel log for generators."""
    if os.path.exists(JOURNAL_SOCKET):
        try:
            from systemd import journal
            extra = {f"QUILT_UNIT_{key}": value for key, value in fields.items() if key != "SERVICE"}
            if "SERVICE" in fields:
                # Root's OBJECT_SYSTEMD_UNIT= puts the line in `journalctl -u SERVICE` too.
                extra["OBJECT_SYSTEMD_UNIT"] = fields["SERVICE"]
            journal.send(message, PRIORITY="3", SYSLOG_IDENTIFIER=IDENTIFIER, **extra)
            return
        except Exception:
            pass
    print(f"{IDENTIFIER}: {message}", file=sys.stderr, flush=True)


def _error_fields(error: UnitFileError, service: str) -> dict[str, str]:
    fields = {"FILE": error.path, "SERVICE": service}
    if error.line:
        fields["LINE"] = str(error.line)
    if error.key:
        fields["KEY"] = error.key
    return fields


def generate(dirs: Sequence[str], write: Write, link: Callable[[str, str, str], None], log: Log) -> list[Generated]:
    """Every unmasked file of dirs, as a service given to write; [Install]'s links given to link(directory
    suffix or "", name, service). Nothing raised: what goes wrong is logged."""
    units = unitfiles.find_units([os.path.abspath(d) for d in dirs])
    parsed: dict[str, ParsedFile] = {}
    errors: dict[str, UnitFileError] = {}
    for file_name, path in units.items():
        if path is None:
            continue
        if not unitfiles.valid_service_name(file_name):
            log(f"{path}: no service can be named after it (use letters, digits, ':', '_', '.' and '-'): "
                "left out", {"FILE": path})
            continue
        try:
            parsed[file_name] = unitfiles.read_file(path)
        except UnitFileError as e:
            errors[file_name] = e
    names = unitfiles.resource_names(units, parsed)
    done: list[Generated] = []
    for file_name in [*parsed, *errors]:
        path = units[file_name]
        assert path is not None
        service = unitfiles.service_name(file_name)
        error = errors.get(file_name)
        text = ""
        if error is None:
            try:
                text = unitfiles.service_text(unitfiles.convert(parsed[file_name], names))
            except UnitFileError as e:
                error = e
            except Exception as e:  # a fault of ours: the file still gets its failing service and its line
                error = UnitFileError(path, 0, "", f"quilt-generator failed on it: {type(e).__name__}: {e}")
        if error is not None:
            text = unitfiles.failing_service_text(path, error)
            log(f"{error}; {service} fails when started", _error_fields(error, service))
        try:
            write(service, text)
        except OSError as e:
            log(f"{path}: cannot write {service}: {e.strerror}", {"FILE": path, "SERVICE": service})
            continue
        if file_name in parsed:
            _install(parsed[file_name], service, link, log)
        done.append(Generated(file_name, service, error))
    return done


def _install(parsed: ParsedFile, service: str, link: Callable[[str, str, str], None], log: Log) -> None:
    """Alias=, WantedBy=, RequiredBy= and UpheldBy=, as `systemctl enable` reads them; a bad file's too, so that
    its failing service is started, and seen failing, where the good one would have been."""
    for entry in parsed.entries("Install"):
        if entry.key != "Alias" and entry.key not in INSTALL_DIRECTORIES:
            continue
        for name in entry.value.split():
            if not LINKED_UNIT_RE.fullmatch(name) or (entry.key == "Alias" and not name.endswith(".service")):
                log(f"{parsed.path}:{entry.line}: {entry.key}: '{name}' is not a unit name: left out",
                    {"FILE": parsed.path, "LINE": str(entry.line), "KEY": entry.key, "SERVICE": service})
                continue
            try:
                link(INSTALL_DIRECTORIES.get(entry.key, ""), name, service)
            except OSError as e:
                log(f"{parsed.path}:{entry.line}: {entry.key}: cannot link {name}: {e.strerror}",
                    {"FILE": parsed.path, "LINE": str(entry.line), "KEY": entry.key, "SERVICE": service})


def directory_writer(output_dir: str) -> tuple[Write, Callable[[str, str, str], None]]:
    def write(service: str, text: str) -> None:
        with open(os.path.join(output_dir, service), "w", encoding="utf-8") as f:
            f.write(text)

    def link(suffix: str, name: str, service: str) -> None:
        # TARGET.wants/SERVICE -> ../SERVICE, or ALIAS -> SERVICE: relative, as systemctl enable makes them.
        if suffix:
            directory = os.path.join(output_dir, name + suffix)
            os.makedirs(directory, exist_ok=True)
            where, target = os.path.join(directory, service), os.path.join("..", service)
        else:
            where, target = os.path.join(output_dir, name), service
        if os.path.lexists(where):
            os.unlink(where)
        os.symlink(target, where)

    return write, link


def _print_unit(service: str, text: str) -> None:
    print(f"---{service}---\n{text}", end="", flush=True)


def _print_link(suffix: str, name: str, service: str) -> None:
    print(f"# {name}{suffix}/{service}" if suffix else f"# {name} -> {service}")


def run(argv: Sequence[str], log: Log = journal_log) -> int:
    dirs = unitfiles.search_dirs()
    if list(argv) == ["--dryrun"]:
        generate(dirs, _print_unit, _print_link, lambda message, fields: print(f"{IDENTIFIER}: {message}",
                                                                               file=sys.stderr))
        return 0
    if len(argv) not in (1, 3) or argv[0].startswith("-"):
        print(f"usage: {IDENTIFIER} NORMAL_DIR [EARLY_DIR LATE_DIR] | --dryrun (systemd runs it: see "
              "systemd.generator(7))", file=sys.stderr)
        return 2
    write, link = directory_writer(argv[0])
    try:
        generate(dirs, write, link, log)
    except Exception as e:  # never the boot's failure: say it, and go on
        log(f"{type(e).__name__}: {e}", {})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
