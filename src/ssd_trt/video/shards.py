"""Many sources over several processes: each runs ``run_multi`` on its share of the sources
with a detector of its own, writing the same per-source outputs into the same folder.

Why: one Python process decodes at most ~4,700 NVDEC frames a second, whatever the GPU (H100,
Dec 2026, ``benchmarks/nvdec_threads.py --fps 0``: 128 decoders flat out; the decoder itself
gave 9,200): every frame's demux and hand-off needs the process's GIL. 128 cameras at 30 FPS
need 3,840, and the engine's batcher and emitters need the GIL too. Two processes decoded the
128 streams with every frame on time (p99 2 ms late, 1.3 cores), where one process delivered
92.8-98.9%. Each process has its own CUDA context; the GPU takes turns between them.

Processes are spawned (never forked: a parent may hold CUDA or threads) and ignore Ctrl-C; the
parent, on Ctrl-C or SIGTERM, sends each one SIGTERM once, so each finalizes its outputs as a
single-process run does.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .. import progress
from ..errors import SsdTrtError, first_line, stop_on_sigterm
from ..source_names import unique_names
from .app import MultiJob, decode_threads_for, run_multi
from .stats import RunStats, combined, stopped_by

if TYPE_CHECKING:
    from ..detector import Detector

log = logging.getLogger(__name__)

# How long a process may take to finalize its outputs after SIGTERM.
STOP_TIMEOUT_S = 60.0
# NVDEC streams one process serves with detection (48 sustained, 64 not: H100, Dec 2026).
NVDEC_PER_PROCESS = 48


def split(job: MultiJob, processes: int) -> list[MultiJob]:
    """The job's sources dealt out in turn over ``processes`` jobs (never more than one per
    source), each source keeping the name and decoder it has in the whole job, and FFmpeg's
    threads shared out over all sources, not each process's."""
    count = min(processes, len(job.sources))
    names = job.names or tuple(unique_names(job.sources))
    kinds = job.decode or ("cpu",) * len(job.sources)
    threads = job.decode_threads or decode_threads_for(len(job.sources))
    return [
        replace(
            job,
            sources=job.sources[i::count],
            names=names[i::count],
            decode=kinds[i::count],
            decode_threads=threads,
        )
        for i in range(count)
    ]


def _shard(
    slot: int, job: MultiJob, make_detector: Callable[[], Detector], level: int, results: Any
) -> None:
    """One process: its share of the sources, its stats (or its error) back to the parent."""
    progress.configure(level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent relays Ctrl-C as one SIGTERM
    stop_on_sigterm()
    try:
        results.put((slot, "ok", run_multi(job, make_detector)))
    except SsdTrtError as exc:
        results.put((slot, "error", str(exc)))
    except KeyboardInterrupt as exc:
        results.put((slot, "stopped", stopped_by(exc)))
    except Exception as exc:  # the parent turns it into one line
        results.put((slot, "error", f"unexpected {type(exc).__name__}: {first_line(exc)}"))


def run_sharded(
    job: MultiJob, make_detector: Callable[[], Detector], processes: int = 1
) -> RunStats:
    """``run_multi`` of ``job`` over ``processes`` processes (one: in this one); their stats as
    one. ``make_detector`` must pickle (``functools.partial(Detector, ...)``, not a lambda)."""
    if processes <= 1 or len(job.sources) <= 1:
        nvdec = sum(kind == "nvdec" for kind in job.decode)
        if nvdec > NVDEC_PER_PROCESS:
            log.warning(
                "%d streams decode on NVDEC in one process, which keeps up with about %d; "
                "spread them with --processes %d (32 a process: 128 cameras were sustained in 4 "
                "on an H100)",
                nvdec,
                NVDEC_PER_PROCESS,
                -(-nvdec // 32),
            )
        return run_multi(job, make_detector)
    if job.serve:
        raise SsdTrtError(
            "--serve shows one process's streams; drop --processes to serve them all on one page"
        )
    jobs = split(job, processes)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    level = logging.getLogger("ssd_trt").getEffectiveLevel()
    procs = [
        context.Process(
            target=_shard, args=(i, j, make_detector, level, results), name=f"ssd-trt-shard{i}"
        )
        for i, j in enumerate(jobs)
    ]
    log.info("%d sources over %d processes", len(job.sources), len(procs))
    try:
        for p in procs:
            p.start()
        done = _collect(procs, jobs, results)
    except BaseException:  # an error, Ctrl-C or SIGTERM: the others finalize and stop
        _stop(procs)
        raise
    for p in procs:
        p.join()
    parts = [value for kind, value in done if kind == "ok"]
    stopped = [value for kind, value in done if kind == "stopped"]
    stats = combined(parts)
    if stopped:
        stats.stopped_by = stopped[0]
    return stats


def _collect(procs: list[Any], jobs: list[MultiJob], results: Any) -> list[tuple[str, Any]]:
    """Every process's (kind, value), in order; the first error ends the run, and so does a
    process that ended without a result (killed, or crashed in native code)."""
    done: dict[int, tuple[str, Any]] = {}
    while len(done) < len(procs):
        try:
            slot, kind, value = results.get(timeout=0.5)
        except queue.Empty:
            dead = [i for i, p in enumerate(procs) if i not in done and p.exitcode is not None]
            if not dead:
                continue
            try:  # what it sent just before it ended may land now
                slot, kind, value = results.get(timeout=1.0)
            except queue.Empty:
                i = dead[0]
                raise SsdTrtError(
                    f"the process for {', '.join(jobs[i].names[:3])}"
                    f"{' ...' if len(jobs[i].names) > 3 else ''} ended with exit code "
                    f"{procs[i].exitcode} and no result; run with --verbose to see why"
                ) from None
        if kind == "error":
            raise SsdTrtError(value)
        done[slot] = (kind, value)
    return [done[i] for i in range(len(procs))]


def _stop(procs: list[Any]) -> None:
    """SIGTERM to each process still running, once; then wait for them to finalize."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        p.join(STOP_TIMEOUT_S)
        if p.is_alive():
            log.warning("%s did not stop in %.0f s; killing it", p.name, STOP_TIMEOUT_S)
            p.kill()
