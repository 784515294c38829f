"""Entry point of quilt-agent: what it needs checked, the fork server first, before any thread, then the daemon."""
import ctypes
import faulthandler
import importlib.util
import logging
import os
import shutil
import sys
from typing import TextIO

# What the agent needs of the machine, and the Debian package that has it. Checked first, so that a missing one
# is one line naming the package, not a traceback or a failure at the first container or network.
PROGRAMS = {"nft": "nftables"}  # network/firewall.py runs it (NFT)
LIBRARIES = {"libseccomp.so.2": "libseccomp2"}  # helper/seccomp.py loads it
# dbus_fast, aiosqlite and pyroute2 come with Quilt's own package (bookworm's are too old: packaging/README.md).
MODULES = {"dbus_fast": "quilt-runtime", "systemd": "python3-systemd", "aiosqlite": "quilt-runtime",
           "pyroute2": "quilt-runtime", "dnslib": "python3-dnslib"}
EXIT_NOT_INSTALLED = 5  # the LSB's "program is not installed"; the unit does not restart on it (daemon.py)
EXIT_NOT_CONFIGURED = 6  # the LSB's "program is not configured" (a bad QUILT_LOOP_CHECK); no restart on it either


def missing_dependencies() -> list[str]:
    """Each missing program, library or Python module, with its Debian package."""
    missing = [f"{name} (Debian package {package})" for name, package in PROGRAMS.items() if not shutil.which(name)]
    for name, package in LIBRARIES.items():
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(f"{name} (Debian package {package})")
    missing += [f"the Python module {name} (Debian package {package})" for name, package in MODULES.items()
                if importlib.util.find_spec(name) is None]
    return missing


def _to_journal(stream: TextIO) -> bool:
    """Whether the stream is systemd's connection to the journal (it says so in $JOURNAL_STREAM)."""
    try:
        device, inode = (int(n) for n in os.environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def fail(message: str) -> None:
    """One line on stderr: the journal's, at priority err, under systemd (the logging setup may be what failed)."""
    prefix = "<3>" if _to_journal(sys.stderr) else ""
    print(f"{prefix}quilt-agent cannot start: {message}", file=sys.stderr, flush=True)


def setup_logging() -> None:
    """Log to the journal with structured fields when run by systemd, else to stderr."""
    from systemd.journal import JournalHandler

    handler: logging.Handler
    if sys.stderr.isatty():
        handler = logging.StreamHandler()
    else:
        handler = JournalHandler(SYSLOG_IDENTIFIER="quilt-agent")
    handler.setFormatter(logging.Formatter("%(message)s" if isinstance(handler, JournalHandler) else "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def main() -> None:
    missing = missing_dependencies()
    if missing:
        fail("missing " + "; ".join(missing))
        sys.exit(EXIT_NOT_INSTALLED)
    from quilt_agent import loopcheck

    try:
        loop_check = loopcheck.threshold()
    except ValueError as e:
        fail(str(e))
        sys.exit(EXIT_NOT_CONFIGURED)
    try:
        # Import what the monitors run before forking, so each fork starts ready.
        from quilt_agent.helper import zygote

        server = zygote.start()
        # A watchdog abort (SIGABRT) or a crash leaves every thread's Python stack in the journal: where the
        # event loop was stuck. The fork server is forked before: its children keep the default handlers.
        faulthandler.enable()
        setup_logging()
        from quilt_agent import daemon
    except ModuleNotFoundError as e:  # installed but broken: find_spec saw the package, not all of it
        top = (e.name or "").partition(".")[0]
        fail(f"missing the Python module {e.name}" + (f" (Debian package {MODULES[top]})" if top in MODULES else ""))
        sys.exit(EXIT_NOT_INSTALLED)

    sys.exit(loopcheck.run(daemon.run(server), loop_check))


if __name__ == "__main__":
    main()
