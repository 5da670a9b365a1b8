"""What every output shares: the frame result handed to outputs, the output interface, how
outputs are finalized, and the file output that writes through a temp file."""

from __future__ import annotations

import errno
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .. import fsutil
from ..detections import Detections
from ..errors import SsdTrtError
from ..fsutil import PartialFile
from ..sources import Frame

log = logging.getLogger(__name__)


class StopPipeline(Exception):
    """Raised by an output when the user asks to stop (q or Esc in the window)."""


@dataclass
class FrameResult:
    """Everything the output stage knows about one processed frame."""

    frame: Frame
    detections: Detections
    # This frame's share of its detector call (preprocess + engine + postprocess): the call's
    # time divided by ``batch``, the frames it detected together.
    inference_ms: float
    latency_ms: float  # capture -> output
    fps: float  # output rate: frames over the last seconds' elapsed time
    batch: int = 1


class Output(ABC):
    # Whether write() uses the annotated picture; when no output does, nothing is drawn.
    shows_image = True

    @abstractmethod
    def write(self, result: FrameResult, annotated: np.ndarray) -> None: ...

    def close(self) -> None:  # noqa: B027 - most outputs have nothing to finalize
        """Finalize: called once, also after Ctrl-C or an error."""

    def abort(self) -> None:
        """Called instead of close() when the run failed: drop partial files."""
        self.close()


def finalize(outputs: Iterable[Output], failed: bool) -> None:
    """Close every output (abort them after a failure, so no partial file is left); one that
    fails to close does not keep the others from finalizing."""
    for out in outputs:
        try:
            out.abort() if failed else out.close()
        except Exception as exc:
            log.warning("closing %s failed: %s", type(out).__name__, exc)


class OutputWriteError(SsdTrtError):
    """An output stopped being writable mid-run (disk full, quota, file size limit).

    The run stops; every output keeps what it wrote up to the last good frame and is closed
    (not discarded), and the CLI prints this one line.
    """


def _reason(exc: OSError) -> str:
    reason = fsutil.reason(exc)
    return "the file system became read-only" if exc.errno == errno.EROFS else reason


def write_failed(path: Path, frames: int, exc: OSError) -> OutputWriteError:
    return OutputWriteError(
        f"writing {path} stopped after {frames} frames: {_reason(exc)}; the outputs were "
        "closed with what was written before (a video up to its last whole 2 s fragment); "
        "free some space or write to another disk"
    )


class _AtomicFileOutput(Output):
    """Writes through ``fsutil.PartialFile``: a hidden temp file beside the target, renamed on
    close; a character device, FIFO or ``-`` (stdout) is written through instead.

    The temp file is created up front, so an unwritable place fails before any model work,
    with the real reason (permission, read-only, missing folder).
    """

    opens_file = True  # False: the writer opens ``tmp`` by name itself

    def __init__(self, path: Path) -> None:
        self.target = PartialFile(path)
        self.path = self.target.name
        self.tmp = self.target.path  # what a writer opens by name (None for stdout)
        self.frames = 0  # written so far
        self._file: BinaryIO | None = self.target.open() if self.opens_file else None

    def _finish(self) -> None:
        self.target.commit()

    def abort(self) -> None:
        self._release()
        self.target.discard()

    def close(self) -> None:
        self._release()
        self._finish()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
