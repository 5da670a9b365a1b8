"""Whether a window can open: a display that answers, checked before any model work.

OpenCV's Qt build aborts the whole process (SIGABRT) when it cannot reach the display named in
``$DISPLAY``; a variable that is merely set is not enough, so the display's socket is dialled.
"""

from __future__ import annotations

import os
import socket
import sys

_DIAL_S = 1.0  # a local socket answers at once; a forwarded one (ssh -X) within a second


def _dials(family: int, address: str | tuple[str | int | bytes, ...]) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(_DIAL_S)
            s.connect(address)
        return True
    except OSError:
        return False


def _x_answers(display: str) -> bool:
    """Whether an X server listens where ``display`` (``[HOST]:N[.SCREEN]``) says."""
    host, colon, rest = display.rpartition(":")
    number = rest.split(".", 1)[0]
    if not colon or not number.isdigit():
        return False
    if host in ("", "unix"):
        # Xlib dials the abstract socket first on Linux, then the file in /tmp/.X11-unix.
        path = f"/tmp/.X11-unix/X{number}"
        return _dials(socket.AF_UNIX, "\0" + path) or _dials(socket.AF_UNIX, path)
    try:
        return any(
            _dials(family, addr[:2])
            for family, _, _, _, addr in socket.getaddrinfo(
                host.strip("[]"), 6000 + int(number), type=socket.SOCK_STREAM
            )
        )
    except OSError:  # an unknown host name
        return False


def _wayland_answers(name: str) -> bool:
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    path = name if os.path.isabs(name) else os.path.join(runtime, name)
    return bool(runtime or os.path.isabs(name)) and _dials(socket.AF_UNIX, path)


def display_problem() -> str | None:
    """Why no window can open here, in words for an error message; None when one can."""
    if not sys.platform.startswith("linux"):
        return None  # Windows and macOS always have a desktop for OpenCV's windows
    display = os.environ.get("DISPLAY", "")
    wayland = os.environ.get("WAYLAND_DISPLAY", "")
    if display and _x_answers(display):
        return None
    if wayland and _wayland_answers(wayland):
        return None
    if display:
        return f"no X server answers on DISPLAY={display}"
    if wayland:
        return f"no Wayland compositor answers on WAYLAND_DISPLAY={wayland}"
    return "DISPLAY is not set"


def has_display() -> bool:
    """Whether a window can be shown (an X11 or Wayland display that answers on Linux; always
    on Windows and macOS)."""
    return display_problem() is None
