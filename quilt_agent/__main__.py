"""Entry point of quilt-agent: the fork server first, before any thread, then the daemon."""
import asyncio
import logging
import sys

from systemd.journal import JournalHandler


def setup_logging() -> None:
    """Log to the journal with structured fields when run by systemd, else to stderr."""
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = logging.StreamHandler()
    else:
        handler = JournalHandler(SYSLOG_IDENTIFIER="quilt-agent")
    handler.setFormatter(logging.Formatter("%(message)s" if isinstance(handler, JournalHandler) else "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def main() -> None:
    # Import what the monitors run before forking, so each fork starts ready.
    from quilt_agent.helper import zygote

    server = zygote.start()
    setup_logging()
    from quilt_agent import daemon

    sys.exit(asyncio.run(daemon.run(server)))


if __name__ == "__main__":
    main()
