"""All streams of a many-source run as one grid on the live page (``--serve``)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import numpy as np

from ..errors import require
from .outputs import FrameResult
from .serve import MjpegServer


class GridView:
    """All streams as one grid on the live page: the latest frame of each source, tiled, with
    its name; composed at most ``fps`` times a second so many sources cost one encode."""

    def __init__(
        self,
        names: Sequence[str],
        host: str,
        port: int,
        tile: tuple[int, int] = (480, 270),
        token: str | None = None,
    ) -> None:
        self.cv2 = require("cv2", "video")
        self.names = list(names)
        self.cols = math.ceil(math.sqrt(len(self.names)))
        self.rows = math.ceil(len(self.names) / self.cols)
        self.tile = tile
        self.canvas = np.zeros((self.rows * tile[1], self.cols * tile[0], 3), np.uint8)
        self.frames = dict.fromkeys(self.names, 0)
        self.interval = 1.0 / 15
        self._last = 0.0
        self._lock = threading.Lock()
        self.server = MjpegServer(host, port, token=token).start()

    @property
    def url(self) -> str:
        return self.server.url

    def update(self, index: int, result: FrameResult, annotated: np.ndarray) -> None:
        cv2 = self.cv2
        tw, th = self.tile
        h, w = annotated.shape[:2]
        scale = min(tw / w, th / h)
        small = cv2.resize(annotated, (max(1, int(w * scale)), max(1, int(h * scale))))
        r, c = divmod(index, self.cols)
        y0, x0 = r * th, c * tw
        name = self.names[index]
        with self._lock:
            self.frames[name] = result.frame.index
            cell = self.canvas[y0 : y0 + th, x0 : x0 + tw]
            cell[:] = 0
            cell[: small.shape[0], : small.shape[1]] = small
            cv2.putText(cell, name, (6, th - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1)
            now = time.perf_counter()
            if now - self._last < self.interval:
                return
            self._last = now
            ok, jpeg = cv2.imencode(".jpg", self.canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
            stats = {f"{n} frame": f for n, f in self.frames.items()}
        if ok:
            self.server.publish(jpeg.tobytes(), stats)

    def close(self) -> None:
        self.server.close()
