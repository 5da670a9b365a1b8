"""Names for sources: file-name-safe, unique per run, and the ``--sources`` list file.

Output files and summary lines of a many-source run are named after their source (a file's
stem, ``camera0``, a stream's ``host_port_path``), with ``-2``, ``-3`` ... on repeats.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .errors import SsdTrtError
from .sources import STREAM_PREFIXES


def source_name(spec: str | int) -> str:
    """A file-name-safe name for a source: a file's stem, a folder's name, ``camera0``, or a
    stream's ``host_port_path``."""
    text = str(spec)
    if isinstance(spec, int) or text.isdigit():
        raw = f"camera{int(text)}"
    elif text.lower().startswith(STREAM_PREFIXES):
        parts = urlsplit(text)
        host = (parts.hostname or "stream") + (f"_{parts.port}" if parts.port else "")
        raw = f"{host}{parts.path}"
    else:
        path = Path(text.rstrip("/\\"))
        raw = path.stem if path.suffix else path.name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._-")
    return safe or "source"


def unique_names(specs: Sequence[str | int]) -> list[str]:
    """:func:`source_name` of each, with ``-2``, ``-3`` ... appended to repeats, in order."""
    names: list[str] = []
    taken: set[str] = set()
    for spec in specs:
        base = name = source_name(spec)
        n = 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        names.append(name)
    return names


def read_source_list(path: Path) -> list[str]:
    """One source per line; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SsdTrtError(f"cannot read --sources {path}: {exc.strerror}") from None
    specs = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not specs:
        raise SsdTrtError(f"--sources {path} lists no source; write one path or URL per line")
    return specs
