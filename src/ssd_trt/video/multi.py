"""The old home of the many-source engine and its job; names kept for code that imports them.

The engine is video/engine.py (one source is one lane), the statistics video/stats.py, source
names ssd_trt/source_names.py, the grid view video/grid.py and the job video/app.py.
"""

from __future__ import annotations

from ..batching import GPU_MAX_BATCH
from ..batching import HOST_MAX_BATCH as DEFAULT_MAX_BATCH
from ..batching import LIVE_WAIT_MS as DEFAULT_MAX_WAIT_MS
from ..source_names import read_source_list, source_name, unique_names
from .app import MultiJob, StreamSettings, decode_threads_for, open_sources, run_multi
from .engine import Engine
from .grid import GridView
from .stats import MultiStats, SourceStats

MultiPipeline = Engine  # many sources, one detector: the engine

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_WAIT_MS",
    "GPU_MAX_BATCH",
    "GridView",
    "MultiJob",
    "MultiPipeline",
    "MultiStats",
    "SourceStats",
    "StreamSettings",
    "decode_threads_for",
    "open_sources",
    "read_source_list",
    "run_multi",
    "source_name",
    "unique_names",
]
