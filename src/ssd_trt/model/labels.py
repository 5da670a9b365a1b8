"""Label maps: the model's class ids (1-based, as in the TF Object Detection API) to names."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import SsdTrtError

# The TF Object Detection API's mscoco_label_map: 90 ids, 80 of them used.
COCO_LABELS: dict[int, str] = {
    1: "person",
    2: "bicycle",
    3: "car",
    4: "motorcycle",
    5: "airplane",
    6: "bus",
    7: "train",
    8: "truck",
    9: "boat",
    10: "traffic light",
    11: "fire hydrant",
    13: "stop sign",
    14: "parking meter",
    15: "bench",
    16: "bird",
    17: "cat",
    18: "dog",
    19: "horse",
    20: "sheep",
    21: "cow",
    22: "elephant",
    23: "bear",
    24: "zebra",
    25: "giraffe",
    27: "backpack",
    28: "umbrella",
    31: "handbag",
    32: "tie",
    33: "suitcase",
    34: "frisbee",
    35: "skis",
    36: "snowboard",
    37: "sports ball",
    38: "kite",
    39: "baseball bat",
    40: "baseball glove",
    41: "skateboard",
    42: "surfboard",
    43: "tennis racket",
    44: "bottle",
    46: "wine glass",
    47: "cup",
    48: "fork",
    49: "knife",
    50: "spoon",
    51: "bowl",
    52: "banana",
    53: "apple",
    54: "sandwich",
    55: "orange",
    56: "broccoli",
    57: "carrot",
    58: "hot dog",
    59: "pizza",
    60: "donut",
    61: "cake",
    62: "chair",
    63: "couch",
    64: "potted plant",
    65: "bed",
    67: "dining table",
    70: "toilet",
    72: "tv",
    73: "laptop",
    74: "mouse",
    75: "remote",
    76: "keyboard",
    77: "cell phone",
    78: "microwave",
    79: "oven",
    80: "toaster",
    81: "sink",
    82: "refrigerator",
    84: "book",
    85: "clock",
    86: "vase",
    87: "scissors",
    88: "teddy bear",
    89: "hair drier",
    90: "toothbrush",
}

PERSON_LABELS: dict[int, str] = {1: "person"}


def read_label_map_pbtxt(path: Path) -> dict[int, str]:
    """A TF OD API label_map.pbtxt: ``item { id: N  name: "..."  display_name: "..." }``."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SsdTrtError(f"cannot read label map {path}: {exc}") from None
    labels: dict[int, str] = {}
    for item in re.findall(r"item\s*{([^}]*)}", text):
        ident = re.search(r"\bid\s*:\s*(\d+)", item)
        name = re.search(r'display_name\s*:\s*"([^"]*)"', item) or re.search(
            r'\bname\s*:\s*"([^"]*)"', item
        )
        if ident and name:
            labels[int(ident.group(1))] = name.group(1)
    if not labels:
        raise SsdTrtError(
            f"{path} holds no 'item {{ id: ... name: ... }}' entries; not a label map"
        )
    return labels


def label_map(kind: str, num_classes: int) -> dict[int, str]:
    """Names for ids 1..num_classes; ids a map lacks get a generic name.

    ``kind`` is ``coco``, ``person``, ``auto`` (COCO for 90-class models) or a .pbtxt path.
    """
    if kind == "auto":
        kind = "coco" if num_classes == 90 else ""
    if kind in ("coco", "person", ""):
        known = {"coco": COCO_LABELS, "person": PERSON_LABELS}.get(kind, {})
    elif Path(kind).is_file():
        known = read_label_map_pbtxt(Path(kind))
    else:
        raise SsdTrtError(f"unknown label map {kind!r}; use coco, person or a label_map.pbtxt path")
    return {i: known.get(i, f"class_{i}") for i in range(1, num_classes + 1)}
