"""Joining or starting Ray, and shipping a model to its workers. Ray is imported lazily so the
rest of the package works without the ``[ray]`` extra."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..contract import is_engine
from ..errors import SsdTrtError, first_line, require
from ..precision.engine import sidecar_path
from ..store import ArtifactStore

log = logging.getLogger(__name__)

# Ray swaps 127.0.0.1 for the machine's network address when it resolves a cluster address
# (services.resolve_ip_for_localhost) unless this is off; with it off, "127.0.0.1:port" stays on
# loopback. Read when ray is imported, so set before that (tests and --loopback).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def ray_module() -> ModuleType:
    return require("ray", "ray")


@dataclass
class RaySession:
    """A connection to Ray. ``started``: we started this Ray (close stops its processes);
    ``connected``: we called ray.init (close disconnects). A caller already connected keeps
    its connection."""

    address: str | None
    started: bool = False
    connected: bool = True

    def close(self) -> None:
        ray = ray_module()
        if self.connected and ray.is_initialized():
            ray.shutdown()


def connect(address: str | None = None, num_cpus: int | None = None) -> RaySession:
    """Join the cluster at ``address``, or start a local Ray on 127.0.0.1 (nothing listens on
    the network: every Ray process binds loopback)."""
    ray = ray_module()
    if ray.is_initialized():
        return RaySession(address, started=False, connected=False)
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
            return RaySession(address)
        ray.init(
            address="local",  # a new Ray of our own, never one found on this host
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
        return RaySession(None, started=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "a local Ray"
        raise SsdTrtError(f"cannot start or join {where}: {first_line(exc)}") from None


def has_gpus() -> bool:
    return ray_module().cluster_resources().get("GPU", 0) >= 1


@dataclass(frozen=True)
class ModelFiles:
    """A model's files by name (the ONNX, or an engine and its ``.json`` sidecar), so workers on
    other hosts need no shared file system and no TensorFlow to export."""

    files: dict[str, bytes]
    main: str

    @classmethod
    def resolve(cls, model: str | Path, cache_dir: str | Path | None = None) -> ModelFiles:
        path = Path(model)
        if is_engine(path):
            if not path.is_file():
                raise SsdTrtError(f"engine {path} does not exist")
            side = sidecar_path(path)
            files = {path.name: path.read_bytes(), side.name: side.read_bytes()}
            return cls(files, path.name)
        onnx = ArtifactStore(cache_dir).onnx(model)  # exports a registry name once, here
        return cls({onnx.name: onnx.read_bytes()}, onnx.name)

    def materialize(self) -> Path:
        """The main file's path in a folder of the temp dir named by the files' content.

        Every replica and actor on a host shares it, so restarts do not pile up one copy each
        (a Detector may read the file after it starts, so a copy cannot go when it has loaded).
        A folder of that name that is not ours and private, or holds other bytes, is not used.
        """
        digest = hashlib.sha256()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        root = Path(tempfile.gettempdir())
        folder = root / f"ssd-trt-model-{digest.hexdigest()[:24]}"
        if self._holds(folder):
            return folder / self.main
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
        keep = False  # this replica's own copy, when the shared folder cannot be used
        try:
            for name, data in self.files.items():
                (tmp / name).write_bytes(data)
            if folder.is_dir() and not folder.is_symlink() and _owned(folder):
                shutil.rmtree(folder, ignore_errors=True)  # ours but damaged: replace it
            try:
                os.rename(tmp, folder)
            except OSError:  # another replica was first, or a stranger's folder is there
                if not self._holds(folder):
                    log.warning("%s is not usable; this replica keeps a copy of its own", folder)
                    keep = True
                    return tmp / self.main
            return folder / self.main
        finally:
            if not keep:
                shutil.rmtree(tmp, ignore_errors=True)

    def _holds(self, folder: Path) -> bool:
        """Whether ``folder`` is a private folder of ours with exactly these files."""
        try:
            if folder.is_symlink() or not folder.is_dir() or not _owned(folder):
                return False
            names = {p.name for p in folder.iterdir()}
            return names == set(self.files) and all(
                (folder / n).read_bytes() == data for n, data in self.files.items()
            )
        except OSError:
            return False


def _owned(folder: Path) -> bool:
    """Ours and private (nobody else can swap the model in it)."""
    if os.name != "posix":
        return True  # the temp dir is per user there
    st = folder.lstat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def pid() -> int:
    return os.getpid()
