"""CUDA C++ kernels of the GPU fast path, compiled at run time with NVRTC.

Kernels, instantiated for the tensor dtypes a network may have:

- ``preprocess_<out>``: bilinear resize of packed uint8 HWC frames of any size (sampling as
  cv2.resize INTER_LINEAR does, with its 11-bit fixed-point weights), BGR->RGB, scale/offset,
  NCHW float32 or float16 out. One thread per output pixel; grid.y is the image.
- ``preprocess_nv12_<out>``: the same from NV12 decoder surfaces named by device pointers in a
  header (``NV12_META`` int64 per image), YUV->RGB with ``ssd_trt.colour``'s coefficient table
  (one home for the numbers) in the same pass. Not launched by the fast path yet.
- NMS in five kernels: ``nms_hist_<scores>`` and ``nms_compact_<scores>`` (several blocks per
  image: coarse score histogram, list of candidates at or above the cut bucket);
  ``select_nms_<boxes>_<scores>`` (one 1024-thread block per image: exact radix cut of the top
  ``cap`` (anchor, class) candidates by score descending, ties by lower flat index, sort, class
  grouping, candidate records to global memory); ``nms_rows`` (one warp per candidate: its
  same-class IoU suppression row); ``nms_walk`` (one warp per image: walks the candidates in
  order exactly as ``ssd_trt.nms.nms_image`` does and writes the top-K rows).

The CUDA source lives in ``cuda/*.cu`` (package data); the sizes that both Python (launch shapes,
buffer sizes) and the kernels use are defined here only and reach the source as ``-D`` macros
(``MACROS``). ``compile_ptx`` needs only NVRTC (no driver, no GPU), so CI can check that every
kernel compiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ssd_trt.colour import CHROMA_OFFSET, COEFFICIENT_FIELDS
from ssd_trt.errors import SsdTrtError, first_line, require

BLOCK_NMS = 1024  # threads per NMS block; also the largest candidate cap (one bit per lane word)
MAX_CANDIDATES = 1024
NBINS = 2048  # bins of the NMS score histogram (twice BLOCK_NMS: the class scan reads two a thread)
MAX_CLASSES = NBINS  # class counters reuse the radix histogram
BLOCK_PREPROCESS = 256
ROW_WARPS = 8  # warps (candidates) per block of the NMS row kernel
CAND_WORDS = 4 + 9 * MAX_CANDIDATES + 12  # int32 words of one image's candidate record
NV12_META = 8  # int64 per image of the NV12 header (see cuda/preprocess.cu)

# Tensor element types the kernels read or write, by their name in kernel names.
DTYPES = {"f32": "float", "f16": "unsigned short"}  # f16 travels as raw bits, see h2f/f2h

SOURCE_FILES = ("common.cuh", "preprocess.cu", "nms.cu")  # compiled as one program, in order

# The kernels' compile-time sizes, by their macro names in cuda/*.cu.
MACROS = {
    "NT": BLOCK_NMS,
    "MAXCAND": MAX_CANDIDATES,
    "NBINS": NBINS,
    "ROW_WARPS": ROW_WARPS,
    "CAND_WORDS": CAND_WORDS,
    "NV12_META": NV12_META,
    "COEF_FIELDS": COEFFICIENT_FIELDS,
    "CHROMA_OFFSET": CHROMA_OFFSET,
}


@cache
def source() -> str:
    """The fast path's CUDA source: the files of ``cuda/`` joined in order."""
    folder = resources.files(__package__) / "cuda"
    return "\n".join(f"// ---- {name}\n" + (folder / name).read_text() for name in SOURCE_FILES)


KERNEL_NAMES = tuple(
    [f"preprocess_{o}" for o in DTYPES]
    + [f"preprocess_nv12_{o}" for o in DTYPES]
    + [f"nms_{stage}_{s}" for stage in ("hist", "compact") for s in DTYPES]
    + [f"select_nms_{b}_{s}" for b in DTYPES for s in DTYPES]
    + ["nms_rows", "nms_walk"]
)


def arch_of(arch: str | int) -> str:
    """'90', 90, 'sm_90' or 'compute_90' -> '90'."""
    text = str(arch).removeprefix("sm_").removeprefix("compute_")
    if not text.rstrip("a").isdigit():
        raise SsdTrtError(f"bad CUDA architecture {arch!r}; expected a number such as 90")
    return text


def _program(arch: str | int) -> Any:
    core = require("cuda.core", "cuda")
    options = core.ProgramOptions(
        arch=f"sm_{arch_of(arch)}",
        std="c++17",
        name="ssd_trt_fastpath",
        define_macro=[(k, str(v)) for k, v in MACROS.items()],
    )
    return core.Program(source(), code_type="c++", options=options)


def compile_cubin(arch: str | int) -> Any:
    """Compile every kernel for ``arch`` with NVRTC through cuda.core -> ObjectCode (cubin).

    Needs no GPU: NVRTC alone builds the cubin. Load kernels with ``.get_kernel(name)``.
    """
    try:
        return _program(arch).compile("cubin")
    except SsdTrtError:
        raise
    except Exception as exc:
        raise SsdTrtError(f"NVRTC failed on the fast-path kernels: {first_line(exc)}") from exc


def compile_ptx(arch: str | int) -> str:
    """PTX of every kernel for ``arch``, with NVRTC alone (no driver, no GPU).

    cuda.core's ``Program.compile('ptx')`` asks the driver whether it can load the PTX, which
    fails where no driver is installed; this calls NVRTC through cuda.bindings instead, with the
    same source and options.
    """
    nvrtc = require("cuda.bindings.nvrtc", "cuda")
    src = source().encode()
    err, prog = nvrtc.nvrtcCreateProgram(src, b"ssd_trt_fastpath.cu", 0, [], [])
    _check_nvrtc(nvrtc, err, "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture=compute_{arch_of(arch)}".encode(), b"--std=c++17"]
        opts += [f"-D{k}={v}".encode() for k, v in MACROS.items()]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise SsdTrtError(f"NVRTC failed on the fast-path kernels: {log.decode()[:500]}")
        err, size = nvrtc.nvrtcGetPTXSize(prog)
        _check_nvrtc(nvrtc, err, "nvrtcGetPTXSize")
        ptx = b" " * size
        (err,) = nvrtc.nvrtcGetPTX(prog, ptx)
        _check_nvrtc(nvrtc, err, "nvrtcGetPTX")
        return ptx.rstrip(b"\x00").decode()
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _check_nvrtc(nvrtc: object, err: object, what: str) -> None:
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:  # type: ignore[attr-defined]
        raise SsdTrtError(f"{what} failed: {err}")


@dataclass(frozen=True)
class Kernels:
    """The loaded kernels for one device."""

    preprocess: dict[str, Any]  # by output dtype name: "f32", "f16"
    preprocess_nv12: dict[str, Any]  # from NV12 surfaces, by output dtype name
    nms_hist: dict[str, object]  # NMS stage 1, by scores dtype
    nms_compact: dict[str, object]  # NMS stage 2, by scores dtype
    select_nms: dict[tuple[str, str], object]  # NMS stage 3, by (boxes dtype, scores dtype)
    nms_rows: object  # NMS stage 4: suppression rows, one warp per candidate
    nms_walk: object  # NMS stage 5: the walk, one warp per image

    @classmethod
    def load(cls, arch: str | int) -> Kernels:
        code = compile_cubin(arch)
        return cls(
            preprocess={d: code.get_kernel(f"preprocess_{d}") for d in DTYPES},
            preprocess_nv12={d: code.get_kernel(f"preprocess_nv12_{d}") for d in DTYPES},
            nms_hist={d: code.get_kernel(f"nms_hist_{d}") for d in DTYPES},
            nms_compact={d: code.get_kernel(f"nms_compact_{d}") for d in DTYPES},
            select_nms={
                (b, s): code.get_kernel(f"select_nms_{b}_{s}") for b in DTYPES for s in DTYPES
            },
            nms_rows=code.get_kernel("nms_rows"),
            nms_walk=code.get_kernel("nms_walk"),
        )
