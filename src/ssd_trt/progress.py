"""The one progress channel: ``logging`` for steps, tqdm bars for long loops.

Library code never prints. Steps go to loggers under ``ssd_trt`` at INFO; bars show only when
that logger is enabled for INFO (the CLI's default; ``-q`` raises the level and hides both).
A library user who configures nothing sees warnings only, as with any library.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
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
    """Yield ``items`` under a bar; its total is ``total``, else the length of a sized iterable."""
    if total is None and isinstance(items, Sized):
        total = len(items)
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


@contextmanager
def native_stderr_hidden(what: str) -> Iterator[None]:
    """Hide what native code writes to fd 2 inside the block, unless debug logging is on.

    TensorFlow's C++ side logs (absl "before InitializeLog", oneDNN, CPU features) straight to
    fd 2 while it loads, ignoring TF_CPP_MIN_LOG_LEVEL, so only a redirect keeps -q quiet. What
    was hidden goes to the debug log, so -v still shows it.
    """
    logger = logging.getLogger(ROOT)
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                hidden = sink.read().decode(errors="replace").strip()
                if hidden:
                    logger.debug("%s wrote to stderr:\n%s", what, hidden)
    finally:
        os.close(saved)
