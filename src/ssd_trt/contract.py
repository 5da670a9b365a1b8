"""The exported model's contract: tensor names, precisions, file kinds and ``ssd_trt.*`` metadata.

Export writes the metadata with :func:`model_metadata`; everything else reads it back with
:meth:`ModelInfo.from_metadata` (or :func:`read_onnx_metadata` for a file). Nothing else spells
a metadata key, a tensor name or the list of precisions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .detection_batch import DetectionBatch
from .errors import SsdTrtError, require
from .nms import NmsSettings
from .preprocess import PreprocessConfig

INPUT_NAME = "images"  # float32 [N, 3, H, W], RGB, pixel * scale + offset
DETECTION_OUTPUTS = DetectionBatch.NAMES  # the graph's outputs with NMS inside
RAW_OUTPUTS = ("boxes", "scores")  # --nms none: [N, A, 4] decoded boxes, [N, A, C] scores

PRECISIONS = ("fp32", "fp16", "int8")
NMS_MODES = ("onnx", "efficient", "none")
ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

META_PREFIX = "ssd_trt."
_MODEL = "ssd_trt.model"
_INPUT_SIZE = "ssd_trt.input_size"
_INPUT_SCALE = "ssd_trt.input_scale"
_INPUT_OFFSET = "ssd_trt.input_offset"
_NMS = "ssd_trt.nms"
_NMS_SETTINGS = "ssd_trt.nms_settings"
_LABELS = "ssd_trt.labels"
_PRECISION = "ssd_trt.precision"
_EXPORT_FORMAT = "ssd_trt.export_format"
# Raised when an export's graph changes for the same options (2: the candidate cap before NMS),
# so that cached exports made by an older ssd_trt are made again.
EXPORT_FORMAT = "2"


def is_engine(path: Path) -> bool:
    return path.suffix in ENGINE_SUFFIXES


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise SsdTrtError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


@dataclass(frozen=True)
class ModelInfo:
    """What an exported model's ``ssd_trt.*`` metadata says about it."""

    preprocess: PreprocessConfig
    labels: dict[int, str]
    nms: str  # how the graph ends: onnx / efficient NMS, or "none" (raw boxes and scores)
    nms_settings: NmsSettings
    name: str = ""
    precision: str = "fp32"

    @property
    def raw_outputs(self) -> bool:
        """The graph ends at boxes and scores; NMS runs after it."""
        return self.nms == "none"

    def to_metadata(self) -> dict[str, str]:
        return model_metadata(self)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str) -> ModelInfo:
        try:
            height, width = json.loads(meta[_INPUT_SIZE])
            return cls(
                preprocess=PreprocessConfig(
                    height=int(height),
                    width=int(width),
                    scale=float(meta[_INPUT_SCALE]),
                    offset=float(meta[_INPUT_OFFSET]),
                ),
                labels={int(k): v for k, v in json.loads(meta[_LABELS]).items()},
                nms=meta.get(_NMS, "onnx"),
                nms_settings=NmsSettings(**json.loads(meta[_NMS_SETTINGS])),
                name=meta.get(_MODEL, ""),
                precision=meta.get(_PRECISION, "fp32"),
            )
        except (KeyError, ValueError, TypeError):
            raise SsdTrtError(
                f"{where} has no ssd_trt metadata; export it with 'ssd-trt export' first"
            ) from None

    @classmethod
    def from_onnx(cls, path: Path) -> ModelInfo:
        return cls.from_metadata(read_onnx_metadata(path), str(path))


def model_metadata(info: ModelInfo) -> dict[str, str]:
    """The ``ssd_trt.*`` metadata_props that describe ``info`` (sorted keys, stable values)."""
    pre = info.preprocess
    return {
        _MODEL: info.name,
        _INPUT_SIZE: json.dumps([pre.height, pre.width]),
        _INPUT_SCALE: repr(pre.scale),
        _INPUT_OFFSET: repr(pre.offset),
        _NMS: info.nms,
        _NMS_SETTINGS: json.dumps(asdict(info.nms_settings)),
        _LABELS: json.dumps({str(k): v for k, v in info.labels.items()}),
        _PRECISION: info.precision,
        _EXPORT_FORMAT: EXPORT_FORMAT,
    }


def is_current_export(meta: dict[str, str]) -> bool:
    """Whether metadata comes from an export by this ssd_trt's export format."""
    return meta.get(_EXPORT_FORMAT) == EXPORT_FORMAT


def metadata_of(model: Any) -> dict[str, str]:
    """The ``ssd_trt.*`` entries of a loaded onnx.ModelProto."""
    return {p.key: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def read_onnx_metadata(path: Path) -> dict[str, str]:
    onnx = require("onnx", "export")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise SsdTrtError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    return metadata_of(model)


def set_precision(model: Any, precision: str) -> None:
    """Record a converted model's precision in its metadata."""
    for prop in model.metadata_props:
        if prop.key == _PRECISION:
            prop.value = precision
            return
    model.metadata_props.add(key=_PRECISION, value=precision)


def parse_precisions(text: str) -> list[str]:
    """``"fp16,int8"`` -> ``["fp32", "fp16", "int8"]``: known precisions, FP32 (the reference)
    always first."""
    items = [p.strip().lower() for p in text.split(",") if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        raise SsdTrtError(
            f"unknown precision {unknown[0] if unknown else text!r}; use a comma-separated "
            f"subset of {','.join(PRECISIONS)}"
        )
    return ["fp32"] + [p for p in dict.fromkeys(items) if p != "fp32"]


def precision_of(model: Any) -> str:
    return metadata_of(model).get(_PRECISION, "fp32")
