"""Entry point of quilt-agent."""
import asyncio
import logging
import sys

from systemd.journal import JournalHandler


def setup_logging() -> None:
    """Log to the journal with structured fields when journald is there, else to stderr."""
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = logging.StreamHandler()
    else:
        handler = JournalHandler(SYSLOG_IDENTIFIER="quilt-agent")
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def main() -> None:
    setup_logging()
    from quilt_agent import daemon

    sys.exit(asyncio.run(daemon.run()))


if __name__ == "__main__":
    main()
