"""Many sources over several processes: each runs ``run_multi`` on its share of the sources
with a detector of its own, writing the same per-source outputs into the same folder.

Why: one Python process decodes at most ~4,700 NVDEC frames a second, whatever the GPU (H100,
Dec 2026, ``benchmarks/nvdec_threads.py --fps 0``: 128 decoders flat out; the decoder itself
gave 9,200): every frame's demux and hand-off needs the process's GIL. 128 cameras at 30 FPS
need 3,840, and the engine's batcher and emitters need the GIL too. Two processes decoded the
128 streams with every frame on time (p99 2 ms late, 1.3 cores), where one process delivered
92.8-98.9%. Each process has its own CUDA context; the GPU takes turns between them.

Processes are spawned (never forked: a parent may hold CUDA or threads). The first runs alone
until its detector is made, so the model is fetched, exported or built once, into the cache the
others read. They ignore Ctrl-C; the parent, on Ctrl-C, SIGTERM or an error, sends each one
SIGTERM once, so each finalizes its outputs as a single-process run does, and a process stopped
on its own stops the run. Each reports through a pipe of its own: its stats, its error (one
line), or nothing if it died, which the parent sees as the pipe's end.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from multiprocessing import connection
from typing import TYPE_CHECKING, Any

from .. import progress
from ..errors import SsdTrtError, Terminated, first_line, stop_on_sigterm
from ..source_names import unique_names
from .app import MultiJob, decode_threads_for, run_multi
from .stats import RunStats, combined, stopped_by

if TYPE_CHECKING:
    from ..detector import Detector

log = logging.getLogger(__name__)

# How long a process may take to finalize its outputs after SIGTERM.
STOP_TIMEOUT_S = 60.0
# NVDEC streams one process serves with detection (48 sustained, 64 not; 129 and 144 held in
# 3 processes, 128 in 4 only at times: H100, Dec 2026; fewer, larger batches use the GPU better).
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


class _ReadyWhenMade:
    """The detector factory, telling the parent once the detector exists: the model is then
    fetched, exported and built in the cache, where the other processes find it instead of
    each doing that work at once (an export, a TensorRT build, an INT8 calibration)."""

    def __init__(self, make: Callable[[], Detector], out: Any) -> None:
        self.make, self.out = make, out

    def __call__(self) -> Detector:
        detector = self.make()
        self.out.send(("ready", None))
        return detector


def _shard(job: MultiJob, make_detector: Callable[[], Detector], level: int, out: Any) -> None:
    """One process: its share of the sources; its stats, its error or how it was stopped go
    back to the parent through ``out`` (its end of a pipe)."""
    progress.configure(level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent relays Ctrl-C as one SIGTERM
    stop_on_sigterm()
    try:
        outcome: tuple[str, Any] = ("ok", run_multi(job, _ReadyWhenMade(make_detector, out)))
    except SsdTrtError as exc:
        outcome = ("error", str(exc))
    except KeyboardInterrupt as exc:
        outcome = ("stopped", stopped_by(exc))
    except Exception as exc:  # the parent reports it in one line; -v shows the traceback
        log.debug("%s failed", multiprocessing.current_process().name, exc_info=True)
        outcome = ("crash", f"{type(exc).__name__} in {_which(job)}: {first_line(exc)}")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # done: a late relay must not break the exit
    out.send(outcome)
    out.close()


def _which(job: MultiJob) -> str:
    """``the process for a, b, c ...``: which sources a process had, for messages."""
    more = " ..." if len(job.names) > 3 else ""
    return f"the process for {', '.join(job.names[:3])}{more}"


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
                "spread them with --processes %d (128-144 cameras were sustained in 3 on an "
                "H100)",
                nvdec,
                NVDEC_PER_PROCESS,
                -(-nvdec // NVDEC_PER_PROCESS),
            )
        return run_multi(job, make_detector)
    if job.serve:
        raise SsdTrtError(
            "--serve shows one process's streams; drop --processes to serve them all on one page"
        )
    jobs = split(job, processes)
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in jobs]
    level = logging.getLogger("ssd_trt").getEffectiveLevel()
    procs = [
        context.Process(
            target=_shard, args=(j, make_detector, level, send), name=f"ssd-trt-shard{i}"
        )
        for i, (j, (_, send)) in enumerate(zip(jobs, pipes, strict=True))
    ]
    log.info("%d sources over %d processes", len(job.sources), len(procs))
    receive = [recv for recv, _ in pipes]
    try:
        # The first alone until its detector is made (the model ready in the cache), then the rest.
        _start(procs[:1])
        pipes[0][1].close()  # the child holds its end: its death gives EOF
        _collect(procs[:1], jobs[:1], receive[:1], until_ready=True)
        _start(procs[1:])
        for _, send in pipes[1:]:
            send.close()
        parts = _collect(procs, jobs, receive)
    except BaseException:  # an error, Ctrl-C or SIGTERM: the others finalize and stop
        _stop(procs)
        raise
    for p in procs:
        p.join()
    return combined(parts)


def _start(procs: list[Any]) -> None:
    """Start the processes with Ctrl-C ignored: they inherit that (a spawned Python keeps an
    ignored SIGINT), so a Ctrl-C while they import reaches only the parent, which relays it."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for p in procs:
            p.start()
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise SsdTrtError(
            f"the detector factory must pickle to reach the processes ({first_line(exc)}): "
            "use functools.partial(Detector, ...), not a lambda"
        ) from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _collect(
    procs: list[Any], jobs: list[MultiJob], pipes: list[Any], until_ready: bool = False
) -> list[RunStats]:
    """Every process's stats, in order (``until_ready``: only until each has made its
    detector)."""
    pending = dict(enumerate(pipes))
    done: dict[int, RunStats] = {}
    while pending:
        ready = connection.wait(list(pending.values()))
        for i in [i for i, conn in pending.items() if conn in ready]:
            kind, value = _receive(procs[i], jobs[i], pending[i])
            if kind == "ready" and not until_ready:
                continue
            del pending[i]
            done[i] = value
    return [done[i] for i in sorted(done)]


def _receive(proc: Any, job: MultiJob, conn: Any) -> tuple[str, Any]:
    """A process's next word. The first error ends the run (one line; an unexpected one as
    such), and so does a process that ended without a word (killed, or crashed in native
    code) or was stopped on its own: the whole run stops as it would in one process."""
    try:
        kind, value = conn.recv()
    except EOFError:
        proc.join(5.0)
        raise SsdTrtError(
            f"{_which(job)} ended with exit code {proc.exitcode} and no result; run with "
            "--verbose to see why"
        ) from None
    if kind == "error":
        raise SsdTrtError(value)
    if kind == "crash":
        raise RuntimeError(value)
    if kind == "stopped":
        raise Terminated if value == "SIGTERM" else KeyboardInterrupt
    return kind, value


def _stop(procs: list[Any]) -> None:
    """SIGTERM to each process still running, once; then wait for them to finalize."""
    started = [p for p in procs if p.pid is not None]  # start() may have failed part way
    for p in started:
        if p.is_alive():
            p.terminate()
    for p in started:
        p.join(STOP_TIMEOUT_S)
        if p.is_alive():
            log.warning("%s did not stop in %.0f s; killing it", p.name, STOP_TIMEOUT_S)
            p.kill()
