"""``ssd-trt detect INPUTS... --ray --output-dir DIR``: many videos and image folders over a Ray
cluster with Ray Data, written as the same per-source outputs as one host (video/multi.py).

The driver splits every input into chunks of ``chunk_frames`` frames (a video by frame range, a
folder by image list) and hands them to a Ray Data actor pool; each actor loads the model once
(``ModelFiles``: no shared file system or TensorFlow on the workers), seeks to its chunk, and
returns one row per frame: the JSON record and, for the video, the annotated frame as a JPEG.
Ray Data retries a chunk whose actor died, and the block of a failed task is never emitted, so
no frame is lost or repeated. Rows come back in chunk order (``preserve_order``), so the driver
streams them into DIR/NAME.mp4 and DIR/NAME.jsonl, each written to a temp file and renamed at
the end.

Inputs must be readable at the same path on every node (a shared mount, or one host).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import progress
from ..detector import Detector
from ..errors import SsdTrtError, require
from ..source_names import unique_names
from ..sources import Frame, ImageSource, open_source
from ..video.outputs import (
    FrameResult,
    JsonLinesOutput,
    Output,
    OutputWriteError,
    VideoOutput,
    finalize,
    frame_record,
)
from ..video.overlay import draw_detections
from ..video.stats import SourceStats
from .cluster import ModelFiles, connect

log = logging.getLogger(__name__)

DEFAULT_CHUNK_FRAMES = 64  # a few seconds of video: small enough to spread, big enough to batch


@dataclass(frozen=True)
class RayBatchJob:
    sources: tuple[str, ...]
    output_dir: Path
    json: bool = False
    video: bool = True
    address: str | None = None
    model: str = "ssdlite_mobilenet_v2_coco"
    backend: str = "auto"
    score_threshold: float = 0.5
    cache_dir: str | None = None
    max_frames: int | None = None
    max_batch: int = 8
    chunk_frames: int = DEFAULT_CHUNK_FRAMES
    actors: int | None = None  # None: one per CPU (or GPU) in the cluster, up to the chunks
    cpus_per_actor: float = 1.0


@dataclass
class BatchStats:
    sources: dict[str, SourceStats] = field(default_factory=dict)
    chunks: int = 0
    seconds: float = 0.0

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.sources.values())

    def summary(self) -> str:
        head = (
            f"{len(self.sources)} inputs, {self.frames} frames in {self.chunks} chunks, "
            f"{self.seconds:.1f} s on Ray"
        )
        return "\n".join([head, *(s.summary() for s in self.sources.values())])


# ------------------------------------------------------------------------------- planning


def plan(job: RayBatchJob, names: list[str]) -> list[dict[str, Any]]:
    """The chunks of every input, in output order: ``{"source", "kind", "start", ...}``."""
    tasks: list[dict[str, Any]] = []
    for index, (spec, name) in enumerate(zip(job.sources, names, strict=True)):
        with open_source(spec) as source:
            if source.live:
                raise SsdTrtError(
                    f"{spec}: --ray takes files and image folders; run live streams with "
                    "'ssd-trt detect' on one host"
                )
            total = source.frame_count
            paths = [str(p) for p in source.paths] if isinstance(source, ImageSource) else []
            fps = source.fps
        if isinstance(source, ImageSource):
            total = len(paths)
        if not total:
            raise SsdTrtError(f"{spec}: its frame count is unknown, so it cannot be split")
        if job.max_frames is not None:
            total = min(total, job.max_frames)
        for start in range(0, total, job.chunk_frames):
            stop = min(start + job.chunk_frames, total)
            task: dict[str, Any] = {"source": index, "name": name, "start": start, "stop": stop}
            if isinstance(source, ImageSource):
                task.update(kind="images", paths=paths[start:stop])
            else:
                task.update(kind="video", path=str(spec), fps=fps)
            tasks.append(task)
    return tasks


# ---------------------------------------------------------------------------- the workers


def read_chunk(task: dict[str, Any]) -> Iterator[Frame]:
    """The frames of one chunk; frame indexes are positions in the whole input."""
    cv2 = require("cv2", "video")
    if task["kind"] == "images":
        for i, path in enumerate(task["paths"]):
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                log.warning("cannot decode %s as an image; skipping it", path)
                continue
            yield Frame(task["start"] + i, float(task["start"] + i), image, Path(path).name)
        return
    cap = cv2.VideoCapture(task["path"], cv2.CAP_FFMPEG)
    try:
        start = task["start"]
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
            if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != start:  # a container that cannot seek
                cap.release()
                cap = cv2.VideoCapture(task["path"], cv2.CAP_FFMPEG)
                for _ in range(start):
                    cap.grab()
        for index in range(start, task["stop"]):
            ok, image = cap.read()
            if not ok:
                raise SsdTrtError(f"{task['path']}: frame {index} cannot be decoded")
            msec = cap.get(cv2.CAP_PROP_POS_MSEC)
            fps = task.get("fps") or 25.0
            yield Frame(index, msec / 1000 if msec > 0 or index == 0 else index / fps, image)
    finally:
        cap.release()


class ChunkDetector:
    """A Ray Data actor: loads the model once, then turns chunks into per-frame rows."""

    def __init__(self, model: ModelFiles, job: RayBatchJob) -> None:
        self.job = job
        self.detector = Detector(
            model.materialize(),
            job.backend,
            score_threshold=job.score_threshold,
            threads=max(1, int(job.cpus_per_actor)),
            max_batch=job.max_batch,
        )
        self.cv2 = require("cv2", "video")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"source": [], "frame": [], "record": [], "jpeg": []}
        for text in batch["task"]:
            task = json.loads(text)
            frames = list(read_chunk(task))
            for i in range(0, len(frames), self.job.max_batch):
                part = frames[i : i + self.job.max_batch]
                t0 = time.perf_counter()
                dets = self.detector.detect([f.image for f in part])
                ms = (time.perf_counter() - t0) * 1000 / len(part)
                for frame, d in zip(part, dets, strict=True):
                    record = frame_record(frame, d, ms, len(part))
                    jpeg = b""
                    if self.job.video:
                        drawn = frame.image.copy()
                        draw_detections(drawn, d)
                        ok, buf = self.cv2.imencode(
                            ".jpg", drawn, [self.cv2.IMWRITE_JPEG_QUALITY, 92]
                        )
                        jpeg = buf.tobytes() if ok else b""
                    out["source"].append(task["source"])
                    out["frame"].append(frame.index)
                    out["record"].append(json.dumps(record))
                    out["jpeg"].append(jpeg)
        return out


# ------------------------------------------------------------------------------ the driver


class _SourceWriter:
    """DIR/NAME.mp4 and DIR/NAME.jsonl of one input, written by the same outputs as one host
    (temp file renamed at the end, cut back to the last good frame when the disk fills);
    checks frames arrive once, in order."""

    def __init__(self, job: RayBatchJob, name: str, fps: float | None) -> None:
        self.name = name
        self.video: VideoOutput | None = None
        self.jsonl: JsonLinesOutput | None = None
        try:
            if job.video:
                self.video = VideoOutput(job.output_dir / f"{name}.mp4", fps)
            if job.json:
                self.jsonl = JsonLinesOutput(job.output_dir / f"{name}.jsonl")
        except BaseException:
            self.close(ok=False)
            raise
        self.cv2 = require("cv2", "video")
        self.last = -1

    def write(self, frame: int, record: str, jpeg: bytes) -> None:
        if frame <= self.last:
            raise SsdTrtError(f"{self.name}: frame {frame} arrived twice or out of order")
        self.last = frame
        if self.jsonl is not None:
            self.jsonl.write_line(record)
        if self.video is not None:
            image = self.cv2.imdecode(np.frombuffer(jpeg, np.uint8), self.cv2.IMREAD_COLOR)
            self.video.write(FrameResult(Frame(frame, 0.0, image), None, 0, 0, 0), image)  # type: ignore[arg-type]

    def close(self, ok: bool) -> None:
        outputs: list[Output] = [o for o in (self.jsonl, self.video) if o is not None]
        finalize(outputs, failed=not ok)


def detection_rows(ds: Any, model: ModelFiles, job: RayBatchJob, actors: int) -> Any:
    """The (lazy) Ray Data stage: a fixed pool of ``actors`` ChunkDetectors, one chunk a call.

    Only named arguments, no ``ray_remote_args`` (deprecated since Ray 2.60) and no
    ``concurrency`` (deprecated for ``compute``). A dead actor is restarted and its chunk
    retried: Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1.
    """
    import ray

    return ds.map_batches(
        ChunkDetector,
        fn_constructor_args=(model, job),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=job.cpus_per_actor,
    )


def run_ray_batch(
    job: RayBatchJob, on_frame: Callable[[str, int], None] | None = None
) -> BatchStats:
    """Plan, run the actor pool, stream rows into per-source files; stop what we started.
    ``on_frame(name, frame)`` is called after each frame is written."""
    if not job.sources:
        raise SsdTrtError("no inputs given; pass video files or image folders")
    job = RayBatchJob(**{**job.__dict__, "output_dir": Path(job.output_dir)})
    names = unique_names(job.sources)
    tasks = plan(job, names)
    model = ModelFiles.resolve(job.model, job.cache_dir)
    stats = BatchStats({n: SourceStats(n, s) for n, s in zip(names, job.sources, strict=True)})
    stats.chunks = len(tasks)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    session = connect(job.address)
    writers: list[_SourceWriter] = []
    ok = False
    start = time.perf_counter()
    total = sum(t["stop"] - t["start"] for t in tasks)
    bar = progress.bar(total, "detect on Ray", "frame", leave=False)
    try:
        import ray

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows in chunk order -> streamed writes
        ctx.enable_progress_bars = False
        fps = {t["source"]: t.get("fps") for t in tasks}
        writers = [_SourceWriter(job, n, fps.get(i)) for i, n in enumerate(names)]
        actors = job.actors or max(
            1, int(ray.cluster_resources().get("CPU", 1) // job.cpus_per_actor)
        )
        actors = max(1, min(actors, len(tasks)))
        ds = ray.data.from_items(
            [{"task": json.dumps(t)} for t in tasks], override_num_blocks=len(tasks)
        )
        rows = detection_rows(ds, model, job, actors)
        for batch in rows.iter_batches(batch_size=None, batch_format="numpy"):
            for src, frame, record, jpeg in zip(
                batch["source"], batch["frame"], batch["record"], batch["jpeg"], strict=True
            ):
                writers[int(src)].write(int(frame), str(record), bytes(jpeg))
                stats.sources[names[int(src)]].frames += 1
                bar.update(1)
                if on_frame is not None:
                    on_frame(names[int(src)], int(frame))
        ok = True
    except OutputWriteError:
        ok = True  # disk full: keep what was written up to the last good frame, as on one host
        raise
    finally:
        bar.close()
        for w in writers:
            with contextlib.suppress(Exception):
                w.close(ok)
        stats.seconds = time.perf_counter() - start
        session.close()
    return stats
