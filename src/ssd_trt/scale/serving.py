"""``ssd-trt serve``: a Ray Serve application around the normal ``Detector``.

HTTP (through Serve's proxy):

* ``POST /detect``  JPEG or PNG bytes -> the JSON of a jsonl line (frame, timestamp,
  inference_ms, detections); ``?name=`` is echoed as ``name``. 4xx with a one-line reason for an
  over-large body (413), a non-image (415), a truncated or corrupt image (400), a missing or
  wrong bearer token (401).
* ``GET /healthz``  ``{"ok": true, "backend": ..., "pid": ...}`` (no token needed: it tells
  nothing about images).

In-cluster callers use the handle: ``get_handle().detect.remote(jpeg_or_bgr_array).result()``.

Each replica loads the model once; requests are batched with ``@serve.batch`` (up to
``max_batch`` images, waiting at most ``batch_wait_s`` for more).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..detector import Detector
from ..errors import SsdTrtError
from ..video.serve import is_loopback
from .cluster import ModelFiles, RaySession, connect, has_gpus
from .images import DEFAULT_MAX_BYTES, BadImage, decode_image

log = logging.getLogger(__name__)

APP_NAME = "ssd-trt"
DEPLOYMENT = "SsdTrtDetector"


@dataclass(frozen=True)
class ServeConfig:
    model: str = "ssdlite_mobilenet_v2_coco"
    backend: str = "auto"
    score_threshold: float = 0.5
    cache_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    replicas: int = 1
    min_replicas: int | None = None  # with max_replicas: autoscale between them
    max_replicas: int | None = None
    max_batch: int = 8
    batch_wait_s: float = 0.01
    max_body_bytes: int = DEFAULT_MAX_BYTES
    cpus_per_replica: float = 1.0
    gpus_per_replica: float | None = None  # None: 1 where the cluster has GPUs, else 0
    max_replicas_per_node: int | None = None  # 1 spreads replicas over nodes
    address: str | None = None  # None: start a local Ray

    def check(self) -> None:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise SsdTrtError("autoscaling needs both --min-replicas and --max-replicas")
        if (
            self.min_replicas is not None
            and self.max_replicas is not None
            and not 0 <= self.min_replicas <= self.max_replicas
        ):
            raise SsdTrtError("--min-replicas must be between 0 and --max-replicas")
        if self.token is not None and not self.token.strip():
            raise SsdTrtError("--token is empty; pass a secret string")


def bind_warning(host: str, token: str | None) -> str | None:
    """The one-line warning for an endpoint others can reach without a token."""
    if is_loopback(host) or token:
        return None
    return f"serving on {host} without --token: anyone who can reach it can use it"


def record(detections: Any, inference_ms: float, name: str | None = None) -> dict[str, Any]:
    """The JSON of one image, as ``JsonLinesOutput`` writes one frame."""
    out: dict[str, Any] = {
        "frame": 0,
        "timestamp": 0.0,
        "inference_ms": round(inference_ms, 2),
        "detections": detections.to_dicts(),
    }
    if name:
        out["name"] = name
    return out


class DetectorReplica:
    """One Serve replica: a Detector loaded once, batched detection, the HTTP routes.

    A plain class; :func:`build_app` wraps it with ``serve.deployment`` (so this module imports
    without Ray until an app is built).
    """

    # One image in, its record out, through Ray Serve's @serve.batch: build_app's subclass
    # defines it, with the batch size and wait the config gives.
    _batched: Callable[[np.ndarray], Awaitable[dict[str, Any]]]

    def __init__(self, model: ModelFiles, config: ServeConfig) -> None:
        self.config = config
        threads = max(1, int(config.cpus_per_replica))
        self.detector = Detector(
            model.materialize(),
            config.backend,
            score_threshold=config.score_threshold,
            threads=threads,
            max_batch=config.max_batch,
        )
        self._token = config.token.encode() if config.token else None
        self._lock = threading.Lock()  # one batch at a time on the detector

    # ---------------------------------------------------------------------- the batch step

    async def _detect_batch(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        def run() -> tuple[list[Any], float]:
            with self._lock:
                t0 = time.perf_counter()
                dets = self.detector.detect(images)
                return dets, (time.perf_counter() - t0) * 1000

        dets, ms = await asyncio.to_thread(run)
        return [record(d, ms / len(images)) for d in dets]

    # ------------------------------------------------------------------- the handle API

    async def detect(self, data: bytes | np.ndarray, name: str | None = None) -> dict[str, Any]:
        """Image bytes (JPEG/PNG) or a BGR uint8 array -> the detections record.
        Raises BadImage for input the HTTP route answers with 4xx."""
        image = data if isinstance(data, np.ndarray) else decode_image(data, self._max_bytes)
        result = await self._batched(image)
        return {**result, "name": name} if name else result

    async def backend(self) -> dict[str, Any]:
        return {"ok": True, "backend": self.detector.backend_name, "pid": os.getpid()}

    @property
    def _max_bytes(self) -> int:
        return self.config.max_body_bytes

    # ------------------------------------------------------------------------- HTTP

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/")
        if path.endswith("/healthz") and request.method == "GET":
            return JSONResponse(await self.backend())
        if not path.endswith("/detect"):
            return _error(404, "not found; use POST /detect or GET /healthz")
        if request.method != "POST":
            return _error(405, "use POST with the image bytes as the body")
        if self._token is not None:
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), self._token):
                return _error(401, "missing or wrong bearer token", bearer=True)
        try:
            body = await self._read_body(request)
            result = await self.detect(body, request.query_params.get("name"))
        except BadImage as bad:
            return _error(bad.status, str(bad))
        return JSONResponse(result)

    async def _read_body(self, request: Any) -> bytes:
        """The body, or 413 for one over the limit. An over-large body is still drained (up to
        4x the limit, then the connection is dropped): a client still sending when the server
        answers sees a connection reset instead of the 413."""
        limit = self._max_bytes
        declared = request.headers.get("content-length")
        chunks: list[bytes] = []
        size = 0
        too_big = bool(declared and declared.isdigit() and int(declared) > limit)
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                too_big = True
                chunks.clear()
            if too_big:
                if size > 4 * limit:
                    break
                continue
            chunks.append(chunk)
        if too_big:
            got = declared if declared and declared.isdigit() else f"over {size}"
            raise BadImage(413, f"body of {got} bytes is over the {limit}-byte limit")
        return b"".join(chunks)


def _bind_replica_grpc_to_node_ip() -> None:
    """Ray Serve 2.60 replicas open their inter-deployment gRPC server on ``[::]:0``, every
    interface, whatever the node's IP. Bind it to the node's own IP instead (what the other
    replicas dial): on a loopback cluster nothing then listens on the network. This module is
    imported in each replica process when the deployment class is unpickled, before the
    replica starts that server."""
    try:
        from ray.serve._private import replica as replica_mod
    except ImportError:
        return
    original = getattr(replica_mod, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_ssd_trt", False):
        return

    def add_port(server: Any, address: str) -> int:
        if address == "[::]:0":
            import ray

            ip = ray.util.get_node_ip_address()
            address = f"[{ip}]:0" if ":" in ip else f"{ip}:0"
        return original(server, address)

    add_port._ssd_trt = True  # type: ignore[attr-defined]
    replica_mod.add_port_to_grpc_server = add_port


def _error(status: int, reason: str, bearer: bool = False) -> Any:
    from starlette.responses import PlainTextResponse

    headers = {"WWW-Authenticate": "Bearer"} if bearer else None
    return PlainTextResponse(reason + "\n", status_code=status, headers=headers)


def build_app(config: ServeConfig, model: ModelFiles) -> Any:
    """The Serve application: the replica class wrapped as a deployment, batching switched on."""
    from ray import serve

    config.check()
    gpus = config.gpus_per_replica
    if gpus is None:
        gpus = 1 if has_gpus() else 0
    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_cpus": config.cpus_per_replica, "num_gpus": gpus},
        "max_ongoing_requests": 4 * config.max_batch,
        "health_check_period_s": 2,
    }
    if config.max_replicas_per_node:
        options["max_replicas_per_node"] = config.max_replicas_per_node
    if config.min_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "target_ongoing_requests": 2 * config.max_batch,
        }
    else:
        options["num_replicas"] = config.replicas

    class Replica(DetectorReplica):
        def __init__(self, model: ModelFiles, config: ServeConfig) -> None:
            _bind_replica_grpc_to_node_ip()
            super().__init__(model, config)

        @serve.batch(max_batch_size=config.max_batch, batch_wait_timeout_s=config.batch_wait_s)
        async def _batched(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
            return await self._detect_batch(images)

    Replica.__name__ = Replica.__qualname__ = DEPLOYMENT
    return serve.deployment(**options)(Replica).bind(model, config)


@dataclass
class Server:
    """A running app: its URL, and stop() (Serve, then the Ray we started)."""

    url: str
    session: RaySession

    def stop(self) -> None:
        from ray import serve

        try:
            if self.session.started:
                serve.shutdown()
            else:  # a shared cluster: remove only our application
                serve.delete(APP_NAME)
        finally:
            self.session.close()


def start(config: ServeConfig) -> Server:
    """Start (or join) Ray, start Serve's HTTP proxy on ``host:port`` and deploy the app."""
    config.check()
    warning = bind_warning(config.host, config.token)
    if warning:
        log.warning("%s", warning)
    model = ModelFiles.resolve(config.model, config.cache_dir)
    session = connect(config.address)
    try:
        from ray import serve

        serve.start(
            proxy_location="HeadOnly",  # one proxy: a proxy per node collides on one host
            http_options={"host": config.host, "port": config.port},
        )
        serve.run(build_app(config, model), name=APP_NAME, route_prefix="/")
    except BaseException:
        session.close()
        raise
    host = f"[{config.host}]" if ":" in config.host else config.host
    return Server(f"http://{host}:{config.port}/", session)


def get_handle() -> Any:
    """The deployment handle for in-cluster callers (``ray.init`` into the cluster first)."""
    from ray import serve

    return serve.get_deployment_handle(DEPLOYMENT, app_name=APP_NAME)


def serve_until_interrupted(config: ServeConfig, ready: threading.Event | None = None) -> None:
    """``ssd-trt serve``: run until Ctrl-C (or SIGTERM), then stop cleanly."""
    stop = threading.Event()
    running = False

    def on_signal(signum: int, frame: Any) -> None:
        # Once serving, Ctrl-C and SIGTERM mean "stop cleanly": a flag, not an exception in the
        # middle of shutdown. During startup, interrupt it (start() stops what it began).
        if not running:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        server = start(config)
        running = True
        log.info("serving POST %sdetect and GET %shealthz; Ctrl-C stops", server.url, server.url)
        if ready is not None:
            ready.set()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            log.info("stopping")
            server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
