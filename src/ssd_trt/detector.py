"""``ssd_trt.Detector``: images in, Detections out, on any backend."""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from .backends import Backend, select_backend
from .detections import Detections
from .errors import SsdTrtError
from .postprocess import to_detections
from .preprocess import preprocess

log = logging.getLogger(__name__)


def resolve_onnx(
    model: str | Path, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """An .onnx path as is; a registry name is fetched and exported into the cache once."""
    path = Path(model).expanduser()
    if path.suffix in (".onnx", ".engine", ".plan", ".trt"):
        if not path.is_file():
            raise SsdTrtError(f"{path} does not exist; export a model with 'ssd-trt export'")
        return path
    from .export import ExportOptions, export
    from .fetch import default_cache_dir, fetch_model
    from .models import MODELS, get_model

    if path.exists() and str(model) not in MODELS:
        raise SsdTrtError(
            f"{path} is not an .onnx file; export it first with 'ssd-trt export {path}'"
        )
    spec = get_model(str(model))
    cache = default_cache_dir(cache_dir)
    onnx_path = cache / "onnx" / f"{spec.name}.onnx"
    if not onnx_path.exists():
        graph = fetch_model(spec, cache, progress=progress)
        if progress:
            print(f"exporting {spec.name} to {onnx_path} (once)", file=sys.stderr)
        export(
            graph,
            onnx_path,
            ExportOptions(labels=spec.labels, model_name=spec.name),
            progress=progress,
        )
    return onnx_path


class Detector:
    """Detect objects in BGR (or RGB) uint8 images.

    ``model`` is a registry name (fetched and exported on first use), an exported .onnx or a
    TensorRT engine from ``ssd-trt build``. ``backend`` is ``auto`` (the fastest available,
    logged), ``cpu``, ``cuda``, ``onnxruntime-tensorrt`` or ``tensorrt`` (builds an engine once
    and reuses it from the cache). ``precision`` (fp32, fp16, int8) converts the ONNX first; INT8
    calibrates on ``calib_images`` (a folder, glob or video of real images).
    """

    def __init__(
        self,
        model: str | Path = "ssdlite_mobilenet_v2_coco",
        backend: str = "auto",
        *,
        score_threshold: float = 0.5,
        classes: Collection[int | str] | None = None,
        rgb: bool = False,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
        precision: str = "fp32",
        calib_images: str | None = None,
        progress: bool = True,
    ) -> None:
        from .fetch import default_cache_dir
        from .quantize import prepare

        cache = default_cache_dir(cache_dir)
        self.model_path = resolve_onnx(model, cache_dir, progress)
        if self.model_path.suffix == ".onnx":
            # FP16/INT8 variants are ONNX files too, so every backend can run them.
            self.model_path = prepare(
                self.model_path,
                precision,
                cache / "prepared",
                calib_images=calib_images,
                progress=progress,
            )
        self.precision = precision
        self.backend: Backend = select_backend(
            self.model_path,
            backend,
            threads,
            precision=precision,
            cache_dir=cache,
            progress=progress,
        )
        self.info = self.backend.info
        self.score_threshold = score_threshold
        self.rgb = rgb
        self.class_ids = self._class_ids(classes)

    def _class_ids(self, classes: Collection[int | str] | None) -> set[int] | None:
        if classes is None:
            return None
        by_name = {name: i for i, name in self.info.labels.items()}
        ids = set()
        for c in classes:
            if isinstance(c, str) and not c.isdigit():
                if c not in by_name:
                    raise SsdTrtError(
                        f"unknown class {c!r}; this model knows e.g. {', '.join(list(by_name)[:5])}"
                    )
                ids.add(by_name[c])
            else:
                ids.add(int(c))
        return ids

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @overload
    def detect(self, images: np.ndarray) -> Detections: ...
    @overload
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]: ...

    def detect(self, images: np.ndarray | Sequence[np.ndarray]) -> Detections | list[Detections]:
        """One image -> Detections; a list of images -> a list, run as one batch."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        batch = [images] if single else list(images)
        if not batch:
            return []
        result = self.postprocess(
            self.infer(self.preprocess(batch)), [im.shape[:2] for im in batch]
        )
        return result[0] if single else result

    # The three stages, separately, for pipelines that time or overlap them.

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return preprocess(images, self.info.preprocess, bgr=not self.rgb)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.backend.infer(batch)

    def postprocess(
        self, outputs: dict[str, np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        return to_detections(
            outputs, sizes, self.info.labels, min_score=self.score_threshold, classes=self.class_ids
        )

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
