"""Logging set-up for the node's processes (only entry points call it)."""

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pynetdicom logs every PDU at INFO/DEBUG, with patient attributes inside C-STORE and
    # C-FIND summaries: keep it to warnings whatever our own level is.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    # Alembic says "Context impl SQLiteImpl" at INFO on every command that opens the database.
    logging.getLogger("alembic").setLevel(logging.WARNING)
