"""Precision stage: FP16 and INT8 (explicit Q/DQ) versions of an exported ONNX.

TensorRT 11 builds strongly typed networks only, so precision lives in the ONNX itself:
- FP16: the network's tensors become float16; I/O, box decoding, NMS and TopK stay float32.
- INT8: symmetric QuantizeLinear/DequantizeLinear pairs on Conv/Gemm inputs only: per-channel
  weights (output-channel axis), per-tensor activations whose ranges come from entropy (KL)
  calibration on real images. Decoding and NMS nodes are never quantized.
ONNX Runtime runs both on the CPU, so their accuracy can be measured without a GPU.

INT8 comes in two forms made from one calibration (one cache): ``flavour="tensorrt"`` is the
form above, for TensorRT and ONNX Runtime's GPU providers; ``flavour="cpu"`` is the form ONNX
Runtime's CPU kernels run fast (see precision.cpu).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import progress
from ..contract import (
    INPUT_NAME,
    ModelInfo,
    check_precision,
    metadata_of,
    precision_of,
    set_precision,
)
from ..errors import SsdTrtError, require
from ..fsutil import atomic_write
from ..model.export import POST_PREFIX, canonicalize, write_onnx_atomic
from ..preprocess import PreprocessConfig, preprocess
from ..sources import open_source
from . import cpu

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "Gemm")
CALIBRATION_METHOD = "entropy"
Flavour = Literal["tensorrt", "cpu"]
FLAVOURS: tuple[Flavour, ...] = ("tensorrt", "cpu")


def _onnx():
    return require("onnx", "export")


def _require_fp32(model: Any, src: Path, action: str) -> None:
    if precision_of(model) != "fp32":
        raise SsdTrtError(f"{src} is already {precision_of(model)}; {action} an FP32 export")


# ------------------------------------------------------------------------------------------ FP16


def to_fp16(src: Path, dst: Path) -> Path:
    """Convert the network part of an exported ONNX to float16."""
    float16 = require("onnxruntime.transformers.float16", "ort")
    model = _onnx().load(str(src))
    _require_fp32(model, src, "convert")
    keep = [n.name for n in model.graph.node if n.name.startswith(POST_PREFIX)]
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, node_block_list=keep, disable_shape_infer=False
    )
    _drop_cast_round_trips(converted)
    # The converter appends casts out of order and reuses names; re-sort and rename.
    canonicalize(converted)
    set_precision(converted, "fp16")
    _onnx().checker.check_model(converted)
    write_onnx_atomic(converted, dst)
    return dst


def _drop_cast_round_trips(model: Any) -> None:
    """Remove the float32 -> float16 -> float32 Cast chains the converter puts after blocked nodes.

    They sit between decoding/NMS nodes that compute in float32 and only round values to
    float16 on the way, which would cost box and score precision for nothing.
    """
    onnx = _onnx()
    g = model.graph
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def cast_to(node: Any) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    drop: set[int] = set()
    rename: dict[str, str] = {}
    for first in g.node:
        source = producer.get(first.input[0]) if cast_to(first) == f16 else None
        if source is None or not source.name.startswith(POST_PREFIX):
            continue
        seconds = users.get(first.output[0], [])
        if not seconds or any(cast_to(n) != f32 for n in seconds):
            continue
        drop.add(id(first))
        for second in seconds:
            drop.add(id(second))
            rename[second.output[0]] = first.input[0]
    # A dropped cast that produced a graph output hands its name to the float32 tensor instead.
    outputs = {o.name for o in g.output}
    for old, new in list(rename.items()):
        if old in outputs:
            for n in g.node:
                n.output[:] = [old if o == new else o for o in n.output]
                n.input[:] = [old if i == new else i for i in n.input]
            rename = {k: (old if v == new else v) for k, v in rename.items() if k != old}
    kept = [n for n in g.node if id(n) not in drop]
    for n in kept:
        n.input[:] = [rename.get(i, i) for i in n.input]
    del g.node[:]
    g.node.extend(kept)


# ---------------------------------------------------------------------------------- calibration


CALIBRATION_SLOTS = 8  # calibrations one cache file keeps, the most recently used first


@dataclass
class CalibrationCache:
    """Activation ranges (amax per tensor) and what they were computed from: one slot of a
    calibration cache file.

    ``key`` names the model, preprocessing and method; ``image_set`` the calibration images
    themselves (which ones, how many), so new images or another count recalibrate. A file keeps
    up to CALIBRATION_SLOTS of them (``load_slots``), so verbs that calibrate one model on
    different images (``compare`` on frames, ``eval`` on photos) each find theirs.
    """

    key: str
    method: str
    images: int
    amax: dict[str, float]
    image_set: str = ""
    nonneg: list[str] = field(default_factory=list)  # tensors never negative in calibration

    @classmethod
    def from_json(cls, data: Any) -> CalibrationCache | None:
        """One slot from its JSON, or None when it is malformed (then it is not used)."""
        try:
            slot = cls(
                str(data["key"]),
                str(data["method"]),
                int(data["images"]),
                {str(k): float(v) for k, v in data["amax"].items()},
                str(data.get("image_set", "")),
                [str(n) for n in data.get("nonneg", [])],
            )
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            return None
        if not all(np.isfinite(v) and v >= 0 for v in slot.amax.values()):
            return None  # a range must be a finite magnitude
        return slot

    @classmethod
    def load(cls, path: Path) -> CalibrationCache | None:
        """The most recently used slot of the file at ``path`` (None: missing or unreadable)."""
        slots = load_slots(path)
        return slots[0] if slots else None

    def save(self, path: Path) -> None:
        """Put this slot first in ``path``, replacing the one of the same model, preprocessing
        and images, keeping the CALIBRATION_SLOTS most recently used. The file is read again
        just before, so a slot that another process saved meanwhile stays."""
        same = (self.key, self.image_set)
        others = [s for s in load_slots(path) if (s.key, s.image_set) != same]
        slots = [self, *others][:CALIBRATION_SLOTS]
        data = {"slots": [asdict(s) for s in slots]}
        with atomic_write(path) as f:
            f.write(json.dumps(data, indent=1, sort_keys=True).encode())


def load_slots(path: Path) -> list[CalibrationCache]:
    """Every well-formed slot of a calibration cache file, most recently used first; [] when
    the file is missing or unreadable. A file from before slots is one slot."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    entries = data.get("slots") if isinstance(data, dict) and "slots" in data else [data]
    if not isinstance(entries, list):
        return []
    return [slot for slot in map(CalibrationCache.from_json, entries) if slot is not None]


def calibration_key(model_bytes: bytes, config: PreprocessConfig) -> str:
    """Changes when the model or the preprocessing changes; then the cache is stale."""
    h = hashlib.sha256(model_bytes)
    # "ranges" 3: the CPU form's head outputs keep their observed peak (see to_int8).
    rules = {"pre": asdict(config), "method": CALIBRATION_METHOD, "ranges": 3}
    h.update(json.dumps(rules).encode())
    return h.hexdigest()


def image_set_digest(images: Sequence[np.ndarray]) -> str:
    """Identifies a calibration set by its pixels: other images, or another count, differ."""
    h = hashlib.sha256(str(len(images)).encode())
    for image in images:
        h.update(str(image.shape).encode())
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def check_calibration_source(spec: str) -> None:
    """Fail fast, before an export or a first pass, on calibration images that cannot even be
    opened (a missing path, a folder without images); reading them comes later."""
    try:
        with open_source(spec):
            pass
    except SsdTrtError as exc:
        raise SsdTrtError(f"calibration images: {exc}") from None


def calibration_images(spec: str, count: int) -> list[np.ndarray]:
    """Up to ``count`` images from a directory, glob, image or video, evenly spread."""
    with open_source(spec) as source:
        total = source.frame_count
        step = max(1, total // count) if total else 1
        images: list[np.ndarray] = []
        for i, frame in enumerate(source):
            if len(images) >= count:
                break  # also ends sources of unknown length (streams, cameras)
            if i % step == 0:
                images.append(frame.image)
    if not images:
        raise SsdTrtError(f"no calibration images in {spec}; pass a folder of real photos")
    return images[:count]


def calibrate(
    model_path: Path,
    images: Sequence[np.ndarray],
    config: PreprocessConfig,
    batch: int = 8,
    names: Sequence[str] | None = None,
    keep_peak: Collection[str] = (),
) -> tuple[dict[str, float], list[str]]:
    """Entropy (KL) calibration of ``names`` (default: every Conv/Gemm activation input of the
    network part); returns (amax per tensor, the tensors never seen negative).

    Two passes over the images through ONNX Runtime: the first finds each tensor's largest
    magnitude, the second fills a 2048-bin histogram of magnitudes; the threshold is the one
    whose 128-level quantization loses the least information (TensorRT's entropy calibration).
    ReLU6 outputs and ``keep_peak`` keep their observed peak instead. Each tensor's range
    depends on its own values only, so adding names changes no other range.
    """
    ort = require("onnxruntime", "ort")
    onnx = _onnx()
    model = onnx.load(str(model_path))
    names = list(names) if names is not None else _activation_inputs(model)
    known = {o.name for o in model.graph.output}
    for name in names:
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batches = [images[i : i + batch] for i in range(0, len(images), batch)]

    def activations(pass_name: str) -> Iterator[dict[str, np.ndarray]]:
        for chunk in progress.track(batches, f"calibration {pass_name}", unit="batch"):
            outs = session.run(names, {INPUT_NAME: preprocess(chunk, config)})
            yield dict(zip(names, outs, strict=True))

    peak = dict.fromkeys(names, 0.0)
    low = dict.fromkeys(names, 0.0)
    for acts in activations("pass 1/2"):
        for name, value in acts.items():
            peak[name] = max(peak[name], float(np.abs(value).max()))
            low[name] = min(low[name], float(value.min()))
    # ReLU6 outputs keep their whole observed range: their mass sits near 0, so KL would clip
    # them to a tenth of it and lose the saturated values (measured: COCO AP 0.19 -> 0.00).
    bounds = _clip_bounds(model)
    bounded = {n for n in names if n in bounds or n in keep_peak}
    hists = {name: np.zeros(HIST_BINS, np.int64) for name in names if name not in bounded}
    for acts in activations("pass 2/2"):
        for name in hists:
            if peak[name] > 0:
                hists[name] += np.histogram(np.abs(acts[name]), HIST_BINS, (0.0, peak[name]))[0]
    amax = {name: peak[name] for name in bounded}
    for name, hist in hists.items():
        amax[name] = entropy_threshold(hist, peak[name]) if peak[name] > 0 else 1e-8
    return amax, [name for name in names if low[name] >= 0.0]


HIST_BINS = 2048
QUANT_LEVELS = 128


def entropy_threshold(hist: np.ndarray, peak: float) -> float:
    """The clipping threshold minimizing KL(P || Q) between the clipped and quantized histograms."""
    width = peak / len(hist)
    hist = hist.astype(np.float64)
    total = hist.sum()
    tail = total - np.cumsum(hist)  # mass beyond bin i-1, for each i
    best_kl, best_i = np.inf, len(hist)
    for i in range(QUANT_LEVELS, len(hist) + 1):
        p = hist[:i].copy()
        p[-1] += tail[i - 1]  # outliers are clipped into the last bin
        nonzero = hist[:i] > 0
        # Merge the i bins into 128 levels, then spread each level evenly over its non-empty bins.
        starts = np.linspace(0, i, QUANT_LEVELS + 1).astype(int)[:-1]
        level_sum = np.add.reduceat(hist[:i], starts)
        level_count = np.add.reduceat(nonzero.astype(np.float64), starts)
        per_bin = np.divide(
            level_sum, level_count, out=np.zeros_like(level_sum), where=level_count > 0
        )
        q = np.repeat(per_bin, np.diff(np.append(starts, i))) * nonzero
        if not q.any():
            # All kept bins are empty and the mass is clipped into the last one: Q cannot
            # represent P at all. Without this check log(0) made the KL -inf, the "best".
            continue
        keep = p > 0
        kl = float(
            np.sum(p[keep] * np.log(p[keep] * q.sum() / (np.maximum(q[keep], 1e-12) * total)))
        )
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * width


def _clip_bounds(model: Any) -> dict[str, float]:
    """Upper bounds of tensors made by Clip with a constant max (tf2onnx's Relu6)."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    bounds = {}
    for node in model.graph.node:
        if node.op_type == "Clip" and len(node.input) > 2 and node.input[2] in consts:
            bounds[node.output[0]] = float(np.max(consts[node.input[2]]))
    return bounds


def _quantized_nodes(model: Any) -> list[tuple[int, Any]]:
    """(index, node) of the network's Conv/Gemm nodes; decoding/NMS nodes are never included."""
    return [
        (i, n)
        for i, n in enumerate(model.graph.node)
        if n.op_type in QUANTIZED_OPS and not n.name.startswith(POST_PREFIX)
    ]


def _activation_inputs(model: Any) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    names: list[str] = []
    for _, node in _quantized_nodes(model):
        if node.input[0] not in inits and node.input[0] not in names:
            names.append(node.input[0])
    return names


# ----------------------------------------------------------------------------------------- INT8


def to_int8(
    src: Path,
    dst: Path,
    calib_images: str | None,
    *,
    cache_path: Path | None = None,
    count: int = 64,
    batch: int = 8,
    flavour: Flavour = "tensorrt",
) -> tuple[Path, bool]:
    """Write an INT8 ONNX in ``flavour``'s form; returns (path, whether cached ranges were reused).

    Both forms come from one calibration of the union of the tensors they quantize, so one
    cache serves both and a tensor's range is the same in either form.
    """
    if flavour not in FLAVOURS:
        raise SsdTrtError(f"unknown INT8 flavour {flavour!r}; use one of {', '.join(FLAVOURS)}")
    onnx = _onnx()
    raw = src.read_bytes()
    model = onnx.load_from_string(raw)
    _require_fp32(model, src, "quantize")
    config = ModelInfo.from_metadata(metadata_of(model), str(src)).preprocess
    optimized = cpu.optimize(model)
    names = _activation_inputs(model)
    # The CPU form also quantizes Conv outputs (KL, like the rest). The heads' outputs are
    # logits and box codes decoded through sigmoid/exp: their extremes carry the detections,
    # so they keep the observed peak. KL clipped the person model's logits and, calibrated on
    # bikes.mp4, made ~1000 false persons at score >= 0.3 on vtest.avi.
    cpu_only = [n for n in cpu.range_tensors(optimized) if n not in names]
    heads = [n for n in cpu.head_outputs(optimized) if n in cpu_only]
    ranges, reused = calibration_ranges(
        src,
        calibration_key(raw, config),
        names + cpu_only,
        heads,
        config,
        calib_images,
        cache_path,
        count,
        batch,
    )
    if flavour == "cpu":
        quantized = cpu.quantize(optimized, ranges.amax, set(ranges.nonneg))
        log.info("INT8 for ONNX Runtime's CPU kernels: %s", cpu.describe(quantized))
    else:
        quantized = insert_qdq(model, ranges.amax)
    set_precision(quantized, "int8")
    write_onnx_atomic(quantized, dst)
    return dst, reused


def calibration_ranges(
    src: Path,
    key: str,
    names: Sequence[str],
    keep_peak: Collection[str],
    config: PreprocessConfig,
    calib_images: str | None,
    cache_path: Path | None,
    count: int,
    batch: int,
) -> tuple[CalibrationCache, bool]:
    """The ranges of ``names``: from the cache's slot made for this model from the same images
    (with no images: its most recently used slot for this model), else calibrated now and
    saved as a new slot; returns (ranges, reused).

    Given images are always read first, so an empty folder or a file that is no image or video
    is an error even when a cache exists.
    """
    images = calibration_images(calib_images, count) if calib_images else None
    image_set = image_set_digest(images) if images is not None else None
    slots = load_slots(cache_path) if cache_path is not None else []
    # With images: the slot made from them; without: the most recently used one of this model.
    cached = next((s for s in slots if _why_stale(s, key, names, image_set) is None), None)
    if cached is not None:
        if images is None:
            log.info(
                "reusing calibration cache %s (%d images); skipping calibration (pass "
                "--calib-images to recalibrate)",
                cache_path,
                cached.images,
            )
        else:
            log.info("calibration cache %s matches these images; skipping calibration", cache_path)
        if cached is not slots[0]:
            cached.save(cache_path)  # type: ignore[arg-type]  # most recently used first
        return cached, True
    stale = _why_no_slot(slots, key, names, image_set)
    if images is None:
        raise SsdTrtError(
            "INT8 needs calibration images: pass --calib-images DIR (real photos or a video)"
            + (f" (the calibration cache {cache_path} {stale})" if slots else "")
        )
    if slots:
        log.info("calibration cache %s %s; recalibrating", cache_path, stale)
    log.info("calibrating on %d images from %s", len(images), calib_images)
    amax, nonneg = calibrate(src, images, config, batch, names, keep_peak)
    ranges = CalibrationCache(key, CALIBRATION_METHOD, len(images), amax, image_set or "", nonneg)
    if cache_path is not None:
        ranges.save(cache_path)
    return ranges, False


def _why_no_slot(
    slots: Sequence[CalibrationCache], key: str, names: Sequence[str], image_set: str | None
) -> str | None:
    """Why none of ``slots`` serves (for the log): told by the closest one."""
    mine = [s for s in slots if s.key == key] or list(slots)
    closest = [s for s in mine if s.image_set == image_set] or mine
    return _why_stale(closest[0] if closest else None, key, names, image_set)


def _why_stale(
    cached: CalibrationCache | None, key: str, names: Sequence[str], image_set: str | None
) -> str | None:
    """None when ``cached`` can be used, else why not (for the log)."""
    if cached is None:
        return "is missing or unreadable"
    if cached.key != key:
        return "is stale (model or preprocessing changed)"
    if any(n not in cached.amax for n in names):
        return "lacks ranges this version needs"
    if image_set is not None and cached.image_set != image_set:
        return "was made from other calibration images (or another --calib-count)"
    return None


def insert_qdq(model: Any, amax: dict[str, float]) -> Any:
    """Symmetric Q/DQ: per-tensor on activations, per-output-channel on weights (int8, zp 0)."""
    onnx = _onnx()
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes: dict[int, list[Any]] = {}  # node index -> Q/DQ nodes to insert before it
    done: dict[str, str] = {}  # tensor -> its dequantized replacement (shared by consumers)

    def const(name: str, array: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(array, name))
        return name

    for index, node in _quantized_nodes(model):
        added: list[Any] = []
        x = node.input[0]
        if x not in done:
            if x not in amax:
                raise SsdTrtError(f"no calibration range for {x}; recalibrate (delete the cache)")
            scale = np.float32(max(amax[x], 1e-8) / 127.0)
            s = const(f"{x}/act_scale", np.array(scale, np.float32))
            z = const(f"{x}/act_zp", np.array(0, np.int8))
            added += [
                onnx.helper.make_node("QuantizeLinear", [x, s, z], [f"{x}/q"], name=f"{x}/Q"),
                onnx.helper.make_node(
                    "DequantizeLinear", [f"{x}/q", s, z], [f"{x}/dq"], name=f"{x}/DQ"
                ),
            ]
            done[x] = f"{x}/dq"
        node.input[0] = done[x]
        w_name = node.input[1]
        if w_name in inits and w_name not in done:
            w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
            axis = 0
            if node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                axis = 0 if trans_b else 1
            moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
            scales = np.maximum(np.abs(moved).max(axis=1), 1e-8) / 127.0
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.round(w / scales.reshape(shape)), -127, 127).astype(np.int8)
            qname = const(f"{w_name}/int8", q)
            s = const(f"{w_name}/w_scale", scales.astype(np.float32))
            z = const(f"{w_name}/w_zp", np.zeros(len(scales), np.int8))
            added.append(
                onnx.helper.make_node(
                    "DequantizeLinear",
                    [qname, s, z],
                    [f"{w_name}/dq"],
                    name=f"{w_name}/DQ",
                    axis=axis,
                )
            )
            done[w_name] = f"{w_name}/dq"
        node.input[1] = done.get(w_name, w_name)
        new_nodes[index] = added
    ordered = []
    for index, node in enumerate(g.node):
        ordered += new_nodes.get(index, [])
        ordered.append(node)
    del g.node[:]
    g.node.extend(ordered)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------- entry point


def prepare(
    onnx_path: Path,
    precision: str,
    out_dir: Path,
    *,
    calib_images: str | None = None,
    calib_cache: Path | None = None,
    calib_count: int = 64,
    calib_batch: int = 8,
    flavour: Flavour = "tensorrt",
) -> Path:
    """The ONNX to build or run for ``precision``: the FP32 export itself, or a converted copy.

    ``flavour`` picks the INT8 form: ``tensorrt`` (TensorRT, ONNX Runtime's CUDA and TensorRT
    providers) or ``cpu`` (ONNX Runtime's CPU kernels). Converted copies are named after the
    source's content hash, so a changed model never reuses a stale conversion; the INT8
    calibration cache defaults to the same folder and is shared by both forms.
    """
    if check_precision(precision) == "fp32":
        return onnx_path
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    form = "cpu." if precision == "int8" and flavour == "cpu" else ""
    target = out_dir / f"{onnx_path.stem}.{digest}.{form}{precision}.onnx"
    if precision == "fp16":
        return target if target.exists() else to_fp16(onnx_path, target)
    cache = calib_cache or out_dir / f"{onnx_path.stem}.{digest}.calib.json"
    # The cache checks inside to_int8 decide whether calibration reruns.
    path, _ = to_int8(
        onnx_path,
        target,
        calib_images,
        cache_path=cache,
        count=calib_count,
        batch=calib_batch,
        flavour=flavour,
    )
    return path
