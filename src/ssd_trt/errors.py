"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import importlib
import signal
import threading


class SsdTrtError(Exception):
    """A problem the user can act on. ``str()`` says what is wrong and what to do, on one line."""

    exit_code = 2


class MissingExtraError(SsdTrtError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed; install it with: pip install 'ssd-trt[{extra}]'"
        )


def require(module: str, extra: str):
    """Import an optional dependency, naming the pip extra when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra) from exc


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's first line, for a one-line message (its type where it says nothing)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (docker stop, systemd, kill), raised as a KeyboardInterrupt so everything that
    cleans up after Ctrl-C cleans up after it too, but told apart in what a run reports."""


def stop_on_sigterm() -> None:
    """SIGTERM (docker stop, systemd, kill) ends a run as Ctrl-C does: outputs are finalized
    and no temp file is left behind, instead of the process dying mid-write. Main thread only
    (where Python delivers signals); elsewhere it does nothing."""

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
