"""The one progress channel: ``logging`` for steps, tqdm bars for long loops.

Library code never prints. Steps go to loggers under ``ssd_trt`` at INFO; bars show only when
that logger is enabled for INFO (the CLI's default; ``-q`` raises the level and hides both).
A library user who configures nothing sees warnings only, as with any library.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

ROOT = "ssd_trt"
T = TypeVar("T")


def showing() -> bool:
    return logging.getLogger(ROOT).isEnabledFor(logging.INFO)


def bar(total: float | None = None, desc: str = "", unit: str = "it", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, disabled unless progress is shown."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not showing(), **kwargs)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    with bar(total, desc, unit, leave=False) as b:
        for item in items:
            yield item
            b.update(1)


class _Plain(logging.Formatter):
    """INFO lines as they are; warnings and errors prefixed like the CLI's own messages."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"ssd-trt: {record.levelname.lower()}: {message}"
        if record.levelno < logging.INFO:
            return f"{record.name}: {message}"
        return message


def configure(level: int) -> None:
    """Route ``ssd_trt`` logs to stderr at ``level`` (the CLI's -q / -v)."""
    logger = logging.getLogger(ROOT)
    logger.handlers[:] = [_handler()]
    logger.setLevel(level)
    logger.propagate = False


def _handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Plain())
    return handler
