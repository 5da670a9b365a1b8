"""Where outputs may be written and how: the one place every writer asks.

- A regular file (or a new name) is written to a temp file beside it and renamed over it only
  once complete, so it either appears whole or not at all.
- ``-`` is standard output; a character device (``/dev/null``) or a FIFO is written straight
  through. Renaming over them would replace the device or pipe with a regular file.
- A symlink is followed: its target is replaced, the link stays.
- A folder, a block device or a socket is refused with one line.

Temp names carry the writer's process id, and a long write holds a lock on its file, so the
next writer of the same output can tell what an interrupted run left (its process is gone and
nothing holds the lock) from what a concurrent run is still writing, and removes only the
former.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from .errors import SsdTrtError

try:
    import fcntl
except ImportError:  # Windows: the process-id check alone decides what is stale
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

STDOUT = "-"

_WRITE_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
    errno.EROFS: "the file system is read-only",
}
_DENIED = (errno.EACCES, errno.EPERM)


def reason(exc: OSError) -> str:
    """A short human reason for a failed write."""
    if exc.errno in _DENIED:
        return "permission denied"
    return _WRITE_REASONS.get(exc.errno or 0) or exc.strerror or str(exc) or type(exc).__name__


def is_disk_error(exc: BaseException) -> bool:
    """A write failed because the place cannot take more (full, quota, size limit, read-only)."""
    return isinstance(exc, OSError) and exc.errno in _WRITE_REASONS


def cannot_write(path: Path | str, exc: OSError, hint: str = "") -> SsdTrtError:
    """The one-line error for an output that cannot be created or written."""
    where = Path(path).parent if str(path) != STDOUT else "standard output"
    if not hint:
        hint = (
            "choose a folder you can write to"
            if exc.errno in (*_DENIED, errno.EROFS)
            else "free some space or write to another disk"
            if is_disk_error(exc)
            else "check the path"
        )
    detail = f"permission denied in {where}" if exc.errno in _DENIED else reason(exc)
    return SsdTrtError(f"cannot write {path}: {detail}; {hint}")


# ------------------------------------------------------------------------ where a path goes


@dataclass(frozen=True)
class Destination:
    """Where an output named ``name`` really goes.

    ``kind``: ``file`` (temp file and rename at ``path``), ``stream`` (a character device or
    FIFO, written through) or ``stdout``. ``path`` is the symlink's target for a link.
    """

    name: Path
    path: Path
    kind: str

    @property
    def streams(self) -> bool:
        return self.kind != "file"

    def open_stream(self) -> BinaryIO:
        """The device, FIFO or standard output, opened for writing (a FIFO waits for a reader).
        Closing it leaves standard output open."""
        if self.kind == "stdout":
            sys.stdout.flush()
            return os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        if stat.S_ISFIFO(os.stat(self.path).st_mode):
            log.info("waiting for a reader of the FIFO %s", self.name)
        try:
            return open(self.path, "wb", buffering=0)  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise cannot_write(self.name, exc) from None


def destination(path: str | os.PathLike[str]) -> Destination:
    """Classify an output path (see the module docstring); refuses what must not be written."""
    if str(path) == STDOUT:
        return Destination(Path(STDOUT), Path(STDOUT), "stdout")
    name = Path(path)
    try:
        mode = os.stat(name).st_mode  # follows links: a link to /dev/null is a device
    except FileNotFoundError:
        # New, or a dangling link: the file is made where the link points.
        target = Path(os.path.realpath(name)) if name.is_symlink() else name
        return Destination(name, target, "file")
    except NotADirectoryError:
        blocker = _file_in_the_way(name)
        raise SsdTrtError(f"cannot write {name}: {blocker} is a file, not a folder") from None
    except OSError as exc:
        raise cannot_write(name, exc) from None
    if stat.S_ISREG(mode):
        target = Path(os.path.realpath(name)) if name.is_symlink() else name
        return Destination(name, target, "file")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return Destination(name, name, "stream")
    if stat.S_ISDIR(mode):
        raise SsdTrtError(f"output {name} is a directory; pass a file name")
    what = "block device" if stat.S_ISBLK(mode) else "socket" if stat.S_ISSOCK(mode) else "special"
    raise SsdTrtError(
        f"refusing to write {name}: it is a {what} file; pass a regular file, a character "
        "device, a FIFO or - for standard output"
    )


def _file_in_the_way(path: Path) -> Path:
    """The first ancestor of ``path`` that exists and is not a folder."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return path.parent


def writable_folder(folder: Path, what: str = "folder", hint: str = "") -> Path:
    """Make ``folder`` (and its parents) and check a file can be created in it, so a long step
    fails at once, in one line, instead of when it finally writes its result."""
    folder = Path(folder)
    hint = hint or "choose a folder you can write to"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".ssd-trt-probe-"):
            pass
    except (FileExistsError, NotADirectoryError):
        blocker = folder if folder.exists() and not folder.is_dir() else _file_in_the_way(folder)
        raise SsdTrtError(f"{what} {folder} cannot be used: {blocker} is a file; {hint}") from None
    except OSError as exc:
        detail = "permission denied" if exc.errno in _DENIED else reason(exc)
        raise SsdTrtError(f"cannot write in {what} {folder}: {detail}; {hint}") from None
    return folder


def check_writable(path: str | os.PathLike[str]) -> Destination:
    """Check, before any long work, that an output can be written at ``path`` (its folder is
    made as the write would make it)."""
    where = destination(path)
    if where.streams:
        if where.kind == "stream" and not os.access(where.path, os.W_OK):
            raise SsdTrtError(f"cannot write {where.name}: permission denied")
        return where
    writable_folder(where.path.parent, hint=f"choose another place for {where.name}")
    return where


# ------------------------------------------------------------------- one-shot atomic writes


@contextmanager
def atomic_write(dest: Path | str, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Yield a binary file for ``dest``; for a regular file, a temp file beside it that is
    renamed over ``dest`` only if the block succeeds.

    Any exception, Ctrl-C included, removes the temp file and leaves ``dest`` untouched. A
    device, FIFO or ``-`` is written through. A full disk (or quota, size limit, read-only
    file system) becomes one SsdTrtError line.
    """
    where = destination(dest)
    if where.streams:
        try:
            with where.open_stream() as f:
                yield f
        except OSError as exc:
            if is_disk_error(exc):
                raise cannot_write(where.name, exc) from None
            raise
        return
    path = where.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SsdTrtError(
            f"cannot write {dest}: {_file_in_the_way(path)} is a file, not a folder"
        ) from None
    except OSError as exc:
        raise cannot_write(dest, exc) from None
    prefix = f".{path.name}.{os.getpid()}."
    remove_stale(path.parent, re.escape(f".{path.name}.") + r"(\d+)\.\w+" + re.escape(suffix))
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise cannot_write(dest, exc) from None
    tmp = Path(name)
    _hold(fd)  # a concurrent writer of the same file on another host leaves it be
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file 0600; give it the permissions a plain open() would.
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            yield f
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_error(exc):
            raise cannot_write(dest, exc) from None
        raise
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


# ------------------------------------------------------------- outputs written over a run


class PartialFile:
    """An output written over a whole run (a video, JSON lines).

    For a regular file: a hidden ``.STEM.PID.partial.SUFFIX`` beside it, created (and locked)
    up front so an unwritable place fails before any model work; ``commit`` renames it over
    the output, ``discard`` removes it. Partial files of the same output left by runs that
    were killed are removed first. For a device, FIFO or ``-``: written through; ``commit`` and
    ``discard`` leave it be. ``path`` is what a writer opens by name (None for ``-``).
    """

    def __init__(self, dest: str | os.PathLike[str]) -> None:
        self.where = destination(dest)
        self.name = self.where.name
        self._lock: int | None = None
        if self.where.streams:
            self.path: Path | None = None if self.where.kind == "stdout" else self.where.path
            if self.path is not None and not os.access(self.path, os.W_OK):
                raise SsdTrtError(f"cannot write {self.name}: permission denied")
            return
        target = self.where.path
        if not target.parent.is_dir():
            raise SsdTrtError(f"folder {target.parent} does not exist; create it first")
        stem, suffix = target.stem, target.suffix
        pattern = re.escape(f".{stem}.") + r"(\d+)" + re.escape(f".partial{suffix}")
        remove_stale(target.parent, pattern)
        # Keep the real suffix last (writers pick the container from it); the pid keeps two
        # runs writing the same file from clobbering each other's temp file.
        self.path = target.with_name(f".{stem}.{os.getpid()}.partial{suffix}")
        try:
            self._lock = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        except OSError as exc:
            raise cannot_write(self.name, exc) from None
        _hold(self._lock)

    @property
    def streams(self) -> bool:
        return self.where.streams

    def open(self) -> BinaryIO:
        """The file to write, unbuffered (the temp file, the device or FIFO, or stdout)."""
        if self.where.streams:
            return self.where.open_stream()
        assert self.path is not None
        try:
            return open(self.path, "wb", buffering=0)  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            raise cannot_write(self.name, exc) from None

    def commit(self) -> None:
        """Put the written file in place (a no-op for streams and after ``discard``)."""
        if self._lock is None:
            return
        try:
            assert self.path is not None
            if self.path.exists():
                os.replace(self.path, self.where.path)
        finally:
            self._unlock()

    def discard(self) -> None:
        """Remove the temp file (a no-op for streams: a device is never removed)."""
        if self._lock is None:
            return
        try:
            assert self.path is not None
            self.path.unlink(missing_ok=True)
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


# --------------------------------------------------------------- what interrupted runs left


def _hold(fd: int) -> None:
    """Lock an open temp file for as long as it is open: the sign that its writer is alive."""
    if fcntl is not None:
        with suppress(OSError):  # a file system without locks: the pid check remains
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def hold_lock(path: Path) -> int:
    """Create and lock ``path``; close the returned descriptor to release it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    _hold(fd)
    return fd


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _locked(path: Path) -> bool:
    """Whether a live writer (on any host sharing the file system) holds ``path``'s lock."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no locks here: the pid check decided
    finally:
        os.close(fd)
    return False


def is_stale(path: Path, pid: int, lock: Path | None = None) -> bool:
    """Left by an interrupted run: its writer ``pid`` is gone from this host and nothing holds
    ``lock`` (default: ``path`` itself), which a writer on another host would."""
    return not _alive(pid) and not _locked(lock if lock is not None else path)


def remove_stale(folder: Path, pattern: str, lock_name: str | None = None) -> list[Path]:
    """Remove entries of ``folder`` whose whole name matches ``pattern`` (its first group: the
    writer's pid) and that are stale (``is_stale``; a folder's lock is its ``lock_name``)."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    regex = re.compile(pattern)
    for entry in entries:
        match = regex.fullmatch(entry.name)
        if match is None:
            continue
        path = Path(entry.path)
        is_dir = entry.is_dir(follow_symlinks=False)
        lock = path / lock_name if is_dir and lock_name else path
        if not is_stale(path, int(match.group(1)), lock):
            continue
        try:
            shutil.rmtree(path) if is_dir else path.unlink()
        except OSError as exc:
            log.debug("cannot remove %s: %s", path, exc)
            continue
        log.info("removed %s, left by an interrupted run", path)
        removed.append(path)
    return removed
