"""Which decoder reads a source: ``--decode auto|cpu|nvdec``.

``cpu`` is OpenCV/FFmpeg on the CPU (sources.py). ``nvdec`` is the GPU's hardware decoder
through PyNvVideoCodec, handing NV12 surfaces to the fast path's ``preprocess_nv12`` kernel;
it needs the GPU fast path (backend ``cuda`` or ``tensorrt`` with cuda.core) and a video file
or RTSP stream (a camera or images decode on the CPU). ``auto`` picks ``nvdec`` where all of
that holds, else ``cpu``, and says why.

The NVDEC source is video/nvdec.py (``NvdecSource``), opened by video/app.py's
``open_decoded`` where the choice is ``nvdec``; a stream NVDEC cannot decode (codec, size) falls
back to the CPU there with a one-line warning.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import SsdTrtError, first_line
from ..runtime.registry import candidates, has_module
from ..sources import IMAGE_SUFFIXES

if TYPE_CHECKING:  # the NVDEC module loads where a source decodes there
    from .nvdec import DecoderFactory

log = logging.getLogger(__name__)

DECODERS = ("auto", "cpu", "nvdec")
GPU_BACKENDS = ("cuda", "tensorrt")  # the backends that run on the GPU fast path
NVDEC_MODULE = "PyNvVideoCodec"  # PyPI: pynvvideocodec, in the [gpu] extra
INSTALL = "pip install 'ssd-trt[gpu]'"
NVDEC_STREAMS = ("rtsp://", "rtsps://")
NVDEC_STREAM_ENV = "SSD_TRT_NVDEC_STREAM"  # own (default) | legacy: see shared_decoders


@dataclass(frozen=True)
class DecodeChoice:
    kind: Literal["cpu", "nvdec"]
    reason: str


def backend_on_gpu(backend: str) -> bool:
    """Whether ``backend`` (or ``auto``'s first choice) runs on the GPU fast path here. Cheap:
    no model is loaded; a backend that cannot run here is not on the GPU."""
    try:
        first = candidates(backend)[0]
    except SsdTrtError:
        return False
    return first in GPU_BACKENDS and has_module("cuda.core")


def nvdec_missing() -> str | None:
    """Why PyNvVideoCodec cannot be used here, or None. Imported for real: a wheel without its
    driver libraries fails here, not at the first frame."""
    if not has_module(NVDEC_MODULE):
        return f"{NVDEC_MODULE} is not installed"
    try:
        importlib.import_module(NVDEC_MODULE)
    except Exception as exc:  # ImportError, or OSError from missing NVIDIA libraries
        return f"{NVDEC_MODULE} does not load ({first_line(exc)})"
    return None


def source_not_nvdec(spec: str | int | None) -> str | None:
    """Why NVDEC cannot read ``spec``, or None for a video file or RTSP URL (None: the sample
    video, a file)."""
    if spec is None:
        return None
    text = str(spec)
    if isinstance(spec, int) or (text.isascii() and text.isdigit()):
        return f"camera {text} is read through OpenCV on the CPU"
    if text.lower().startswith(NVDEC_STREAMS):
        return None
    if "://" in text:
        return f"{text.split('://')[0]} streams are decoded on the CPU (NVDEC takes RTSP)"
    path = Path(text).expanduser()
    if path.is_dir() or any(c in text for c in "*?[") or path.suffix.lower() in IMAGE_SUFFIXES:
        return f"{text} holds images, decoded on the CPU"
    return None


def choose_decode(
    asked: str, on_gpu: bool | Callable[[], bool], spec: str | int | None
) -> DecodeChoice:
    """The decoder for one source. ``on_gpu``: whether the backend runs on the GPU fast path
    (a callable is asked only when needed: resolving ``auto``'s backend imports TensorRT).
    ``--decode nvdec`` where it cannot run raises a one-line SsdTrtError."""
    if asked not in DECODERS:
        raise SsdTrtError(f"unknown decoder {asked!r}; use one of {', '.join(DECODERS)}")
    if asked == "cpu":
        return DecodeChoice("cpu", "asked for (--decode cpu)")
    why = source_not_nvdec(spec)
    if why is None:  # the package before the backend: finding a module is the cheaper check
        why = nvdec_missing()
        why = None if why is None else f"{why} ({INSTALL})"
    if why is None and not (on_gpu() if callable(on_gpu) else on_gpu):
        why = "the backend does not run on the GPU fast path (backend cuda or tensorrt)"
    if why is None:
        return DecodeChoice("nvdec", "the backend runs on the GPU and NVDEC can take the source")
    if asked == "nvdec":
        raise SsdTrtError(_refusal(why, spec))
    return DecodeChoice("cpu", why)


def _refusal(why: str, spec: str | int | None) -> str:
    if source_not_nvdec(spec) is not None:
        return f"--decode nvdec reads video files and RTSP streams: {why}; use --decode cpu"
    if why.startswith(NVDEC_MODULE):
        return f"--decode nvdec needs PyNvVideoCodec: {why}"
    return (
        "--decode nvdec needs the GPU fast path (--backend cuda or tensorrt on an NVIDIA GPU) "
        f"and PyNvVideoCodec: {INSTALL}"
    )


def choose_for_sources(
    asked: str, backend: str, specs: Sequence[str | int | None]
) -> list[DecodeChoice]:
    """``choose_decode`` for each source, each choice logged with its reason; checked before
    any model work, so a refused ``--decode nvdec`` fails in a second."""
    on_gpu: bool | None = None

    def gpu() -> bool:
        nonlocal on_gpu
        if on_gpu is None:
            on_gpu = backend_on_gpu(backend)
        return on_gpu

    choices = []
    for spec in specs:
        choice = choose_decode(asked, gpu, spec)
        name = "the sample video" if spec is None else str(spec)
        # Where the NVDEC package is not even installed, auto's CPU choice is the only one
        # there is: said with -v, so errors and results are not preceded by a line per source.
        quiet = asked == "auto" and choice.kind == "cpu" and not has_module(NVDEC_MODULE)
        level = logging.DEBUG if quiet else logging.INFO
        log.log(level, "decode %s: %s (%s)", name, choice.kind, choice.reason)
        choices.append(choice)
    return choices


def shared_decoders(kinds: Sequence[str]) -> DecoderFactory | None:
    """One NVDEC decoder factory for every source that decodes there (it asks the GPU's decoder
    capabilities once per codec, not once per stream); None where none does.
    ``SSD_TRT_NVDEC_STREAM=legacy`` makes decoders copy on CUDA's legacy default stream and wait
    for each picture, as PyNvVideoCodec does by default (``NvdecDecoder``'s ``own_stream``)."""
    if "nvdec" not in kinds:
        return None
    from .nvdec import nvdec_or_cpu

    mode = os.environ.get(NVDEC_STREAM_ENV, "own")
    if mode not in ("own", "legacy"):
        raise SsdTrtError(f"{NVDEC_STREAM_ENV}={mode!r}: use own (the default) or legacy")
    return nvdec_or_cpu(own_stream=mode == "own")
