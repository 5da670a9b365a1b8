"""Atomic file writes: a file either appears complete or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(dest: Path, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Yield a binary file next to ``dest``; rename it over ``dest`` only if the block succeeds.

    Any exception, Ctrl-C included, removes the temp file and leaves ``dest`` untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file 0600; give it the permissions a plain open() would.
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            yield f
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask both sets and
    returns it, which other threads could observe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
