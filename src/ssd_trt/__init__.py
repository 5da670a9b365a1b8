"""ssd_trt: TF Object Detection API SSDs -> ONNX with NMS -> ONNX Runtime / TensorRT, on video."""

from .annotate import annotate
from .detections import Detection, Detections
from .detector import Detector
from .errors import SsdTrtError
from .tracking import Tracker, TrackerConfig

__all__ = [
    "Detector",
    "Detections",
    "Detection",
    "SsdTrtError",
    "Tracker",
    "TrackerConfig",
    "annotate",
]
__version__ = "0.1.0"
