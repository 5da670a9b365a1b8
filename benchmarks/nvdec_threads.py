"""How much host each NVDEC camera stream costs, before any inference: N streams of a video played
at 30 FPS like cameras, decoded on the GPU's decoder, with several ways of laying out the threads.

Why: at 64 NVDEC streams ``multi_stream.py`` showed the capture threads as the limit (1.1-1.8 ms of
CPU per frame, 13.7 ms of wall per read), while NVDEC itself was ~18% busy. This isolates the
decode side to find out what that time is:

* ``--sched``: the CUDA primary context's host-wait mode (``cuDevicePrimaryCtxSetFlags``), set
  before anything else touches the device. ``auto`` is CUDA's default (spin while there are fewer
  active contexts than cores), ``blocking`` sleeps on an OS primitive, ``yield`` spins yielding.
  A decode call that waits for the hardware by spinning burns a core for the whole decode.
* ``--group K``: K streams per decode thread (1: one thread per stream, as the engine does). A
  thread serves its streams in due order, each frame when its camera would have sent it.
* ``--path ours|ours-legacy|raw|cpu``: ours = ``NvdecSource`` (PyAV demux, the package's
  decoder wrapper and ``DeviceFrame``; each decoder copies pictures out on a stream of its own
  and never waits for them), ours-legacy = the same with PyNvVideoCodec's default stream (the
  legacy one, shared by every decoder and synchronised after every picture), raw =
  PyNvVideoCodec's own demuxer and ``Decode`` (its minimal Python, default stream), cpu =
  ``NvdecSource`` with PyAV's CPU decoder (with ``--sched none``: runs without a GPU).

* ``--slots K``: at most K decode calls run at once (stream i takes lock i % K): if decoders
  contending inside the driver burn CPU, fewer at once costs less.
* ``--processes P``: the streams split over P processes decoding side by side (their windows
  start together): if decode calls run one at a time per process (per CUDA context), P
  processes decode up to P times as many frames in time.
* ``--fps 0``: no schedule; every stream decodes flat out. What this many decoders can give at
  most, against what N cameras need (N x 30 FPS): whether the decoder itself is the limit.

Each configuration runs in its own process (the context flags are per process). The clock starts
after every stream's first picture (decoder set-up is paid once per camera, not per frame), and
frames due in the window count. Reported per run: frames decoded per second in total, how late
frames were against their camera's schedule (p50, p99, and the share later than one frame
interval: a live stream would drop those), CPU cores busy for the process, split into the
serving threads and the others (the driver's and FFmpeg's threads, the probe), CPU ms per
frame and the part of it inside the decoder calls (which hold no GIL: the decoder library's and
the driver's), context switches per frame (the probe's ~2,000 a second included), and how late a
1 ms sleep wakes up in a probe thread (a GIL gauge: the waker needs the GIL).

    python benchmarks/nvdec_threads.py VIDEO --streams 64,128 --sched auto,blocking --group 1,8
    python benchmarks/nvdec_threads.py VIDEO --streams 128 --sched auto --group 1 --processes 2
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from pathlib import Path

import numpy as np

SCHED_FLAGS = {"auto": 0, "spin": 1, "yield": 2, "blocking": 4}  # CU_CTX_SCHED_*


def set_sched(mode: str, device: int = 0) -> None:
    if mode == "none":  # no GPU work (--path cpu): leave CUDA alone
        return
    from cuda.bindings import driver

    (err,) = driver.cuInit(0)
    assert int(err) == 0, err
    (err,) = driver.cuDevicePrimaryCtxSetFlags(device, SCHED_FLAGS[mode])
    assert int(err) == 0, f"cuDevicePrimaryCtxSetFlags: {err}"
    # Retained now, so the package's own request for blocking waits finds it made and leaves
    # the mode under test in place.
    err, _ = driver.cuDevicePrimaryCtxRetain(device)
    assert int(err) == 0, f"cuDevicePrimaryCtxRetain: {err}"


class _Raw:
    """PyNvVideoCodec's own demuxer and decoder: frames as it hands them out."""

    def __init__(self, path: str) -> None:
        import PyNvVideoCodec as nvc

        self._dmx = nvc.CreateDemuxer(filename=path)
        self._dec = nvc.CreateDecoder(gpuid=0, codec=self._dmx.GetNvCodecId(),
                                      usedevicememory=True)  # fmt: skip
        self._ready: list = []
        self._packets = iter(self._dmx)

    def read(self) -> object | None:
        while not self._ready:
            packet = next(self._packets, None)
            if packet is None:
                return None
            self._ready.extend(self._dec.Decode(packet))
        return self._ready.pop(0)

    def close(self) -> None:
        self._dec = self._dmx = None


class _Tally:
    """CPU and wall seconds spent inside decoder calls, over all threads (the decode call
    holds no GIL, so thread CPU time there is the decoder library's and the driver's)."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0
        self.calls = 0
        self.on = False  # counted once the clock runs

    def add(self, cpu: float, wall: float) -> None:
        if self.on:  # float += from many threads may lose an update: a gauge, not a ledger
            self.cpu, self.wall, self.calls = self.cpu + cpu, self.wall + wall, self.calls + 1


class _TimedDecoder:
    """A package decoder whose ``decode`` calls are timed into a ``_Tally``; with a ``slot``
    lock, only one decoder of those sharing it decodes at a time (``--slots``)."""

    def __init__(self, inner: object, tally: _Tally, slot: threading.Lock | None) -> None:
        self.inner, self.tally, self.slot = inner, tally, slot

    def decode(self, packet: object) -> list:
        c, w = time.thread_time(), time.perf_counter()
        with self.slot or nullcontext():  # a C lock: blocking on it releases the GIL
            out = self.inner.decode(packet)  # type: ignore[attr-defined]
        self.tally.add(time.thread_time() - c, time.perf_counter() - w)
        return out

    def __getattr__(self, name: str) -> object:  # reset, close, info, name
        return getattr(self.inner, name)


def _opener(kind: str, tally: _Tally, slots: int) -> Callable[[str], object]:
    """Opens one stream of ``--path kind``; NVDEC streams share one decoder factory, as the
    package's sources do. ``slots`` > 0: at most that many decode calls run at once (stream i
    takes lock i % slots), to see whether decoders contending inside the driver cost CPU."""
    if kind == "raw":
        return _Raw
    from ssd_trt.video.nvdec import CpuDecoder, NvdecSource, nvdec_or_cpu

    make = CpuDecoder if kind == "cpu" else nvdec_or_cpu(own_stream=kind == "ours")
    locks = [threading.Lock() for _ in range(slots)]
    count = itertools.count()

    def timed(info: object) -> _TimedDecoder:
        slot = locks[next(count) % slots] if slots else None
        return _TimedDecoder(make(info), tally, slot)

    return lambda path: NvdecSource(path, decoder=timed)


def _switches() -> int:
    """The process's context switches so far, voluntary (sleeps, lock waits) and not."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def child(args: argparse.Namespace) -> dict:
    from multi_stream import thread_cpu_s  # schedstat's nanoseconds per thread

    set_sched(args.sched)
    # --fps 0: every stream decodes flat out, what NVDEC and the host give at this many decoders.
    interval = 1.0 / args.fps if args.fps else 0.0
    tally = _Tally()
    opener = _opener(args.path, tally, args.slots)
    sources = [opener(args.video) for _ in range(args.streams)]
    # Each stream's first picture before the clock starts: NVDEC makes a decoder on the first
    # sequence header, seconds of set-up for 128 streams that a camera pays once, not per frame.
    for s in sources:
        s.read()  # type: ignore[attr-defined]
    lag = 0.0
    if args.start_at:  # side by side with other processes: start when they all do
        lag = time.time() - args.start_at  # > 0: this one's set-up overran the agreed start
        time.sleep(max(0.0, -lag))
    print("measuring", file=sys.stderr, flush=True)  # for a profiler to attach now
    lateness: list[list[float]] = [[] for _ in range(args.streams)]
    stop = threading.Event()
    start = time.monotonic() + 0.5
    end = start + args.seconds
    # Streams start spread over one interval, as unsynchronised cameras do.
    due = [start + interval * i / args.streams for i in range(args.streams)]

    def serve(lanes: list[int]) -> None:
        heap = [(due[i], i) for i in lanes]
        heapq.heapify(heap)
        while heap and not stop.is_set():
            when, i = heapq.heappop(heap)
            now = time.monotonic()
            if when > now:
                time.sleep(when - now)
            t_read = time.monotonic()
            frame = sources[i].read()  # type: ignore[attr-defined]
            reads.append(time.monotonic() - t_read)
            if frame is None:
                ended.append(i)  # the file ran out: flat out (--fps 0), use fewer --seconds
                continue
            if when < end:  # frames due in the window only
                lateness[i].append(time.monotonic() - when)
            del frame  # the surface goes back to the decoder
            # A late stream does not catch up with a burst: a camera's frames would be dropped.
            heapq.heappush(heap, (max(when + interval, time.monotonic() - interval), i))

    wakes: list[float] = []
    reads: list[float] = []  # appended from every thread: list.append is atomic
    ended: list[int] = []

    def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            time.sleep(0.001)
            wakes.append((time.perf_counter() - t - 0.001) * 1000)

    groups = [list(range(g, min(g + args.group, args.streams)))
              for g in range(0, args.streams, args.group)]  # fmt: skip
    threads = [threading.Thread(target=serve, args=(g,), daemon=True) for g in groups]
    threads.append(threading.Thread(target=probe, daemon=True))
    tasks0 = {int(t): thread_cpu_s(int(t)) for t in os.listdir("/proc/self/task")}
    cpu0, t0 = time.process_time(), time.monotonic()
    switches0 = _switches()
    tally.on = True
    for t in threads:
        t.start()
    time.sleep(args.seconds + 0.5)
    # Where the CPU went: the serving threads (Python, demux, decoder calls) or the others
    # (the driver's and FFmpeg's threads; this one and the probe, which mostly sleep).
    serve_ids = {t.native_id for t in threads[:-1]}
    by_kind = {"serve": 0.0, "other": 0.0}
    for name in os.listdir("/proc/self/task"):
        with suppress(OSError):
            tid = int(name)
            used = thread_cpu_s(tid) - tasks0.get(tid, 0.0)
            by_kind["serve" if tid in serve_ids else "other"] += used
    tally.on = False
    stop.set()
    for t in threads:
        t.join(timeout=10)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    switches = _switches() - switches0
    for s in sources:
        s.close()  # type: ignore[attr-defined]
    late = np.concatenate([np.asarray(x) for x in lateness if x]) * 1000
    frames = int(late.size)
    expected = args.streams * args.fps * args.seconds
    return {
        "streams": args.streams,
        "sched": args.sched,
        "group": args.group,
        "threads": len(groups),
        "path": args.path,
        "frames": frames,
        "fps_total": round(frames / args.seconds, 1),
        "delivered_share": round(frames / expected, 4) if args.fps else None,
        "late_ms_p50": round(float(np.percentile(late, 50)), 2),
        "late_ms_p99": round(float(np.percentile(late, 99)), 2),
        "late_over_interval": round(float(np.mean(late > interval * 1000)), 4)
        if args.fps
        else None,
        "read_ms_mean": round(float(np.mean(reads)) * 1000, 3),
        "cores_busy": round(cpu / wall, 2),
        "cpu_ms_per_frame": round(cpu * 1000 / max(1, frames), 3),
        "slots": args.slots,
        "streams_ended": len(ended),
        "start_lag_s": round(max(0.0, lag), 2),
        "context_switches_per_frame": round(switches / max(1, frames), 1),
        "serve_threads_cores": round(by_kind["serve"] / wall, 2),
        "other_threads_cores": round(by_kind["other"] / wall, 2),
        "decode_call_cpu_ms_per_frame": round(tally.cpu * 1000 / max(1, frames), 3),
        "decode_call_wall_ms_mean": round(tally.wall * 1000 / max(1, tally.calls), 3),
        "decode_calls": tally.calls,
        "probe_wake_late_ms_p50": round(float(np.percentile(wakes, 50)), 2),
        "probe_wake_late_ms_p99": round(float(np.percentile(wakes, 99)), 2),
    }


def machine() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "host": platform.node()}
    try:
        smi = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        info["gpu"] = subprocess.run(smi, capture_output=True, text=True, timeout=20).stdout.strip()
    except OSError:
        pass
    try:
        import PyNvVideoCodec

        info["pynvvideocodec"] = getattr(PyNvVideoCodec, "__version__", "?")
    except ImportError:
        pass
    return info


def _run_config(
    args: argparse.Namespace, path: str, streams: int, sched: str, group: str
) -> dict | None:
    """One configuration: ``--processes`` children side by side, each with its share of the
    streams, their clocks started at one agreed time after everyone's set-up, so their windows
    overlap. One process: its row; several: the sums, and each child's row."""
    procs, share = args.processes, streams // args.processes
    # Side by side, the children start their clocks together, once every decoder is set up
    # (with room to spare); alone, one starts as soon as its own set-up is done.
    start_at = time.time() + 3.0 + 0.15 * share if procs > 1 else 0.0
    cmd = [sys.executable, __file__, args.video, "--child", "--streams", str(share),
           "--sched", sched, "--group", group, "--path", path, "--fps", str(args.fps),
           "--seconds", str(args.seconds), "--slots", str(args.slots),
           "--start-at", str(start_at)]  # fmt: skip
    children = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    rows = []
    for child_proc in children:
        out, err = child_proc.communicate(timeout=300)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if child_proc.returncode or not lines:
            tail = err.strip().splitlines()[-3:]
            print(f"{path} {streams} {sched} {group}: failed: {tail}", flush=True)
            return None
        rows.append(json.loads(lines[-1]))
    if procs == 1:
        return rows[0]
    frames = sum(r["frames"] for r in rows)
    return {
        "streams": share * procs,
        "processes": procs,
        "path": path,
        "sched": sched,
        "group": int(group),
        "frames": frames,
        "fps_total": round(frames / args.seconds, 1),
        "delivered_share": round(frames / (share * procs * args.fps * args.seconds), 4)
        if args.fps
        else None,
        "late_ms_p99_worst": max(r["late_ms_p99"] for r in rows),
        "cores_busy": round(sum(r["cores_busy"] for r in rows), 2),
        "start_lag_s_worst": max(r["start_lag_s"] for r in rows),
        "per_process": rows,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("video")
    p.add_argument("--streams", default="64,128")
    p.add_argument("--sched", default="auto,blocking")
    p.add_argument("--group", default="1,8")
    p.add_argument("--path", default="ours")
    p.add_argument("--fps", type=float, default=30.0, help="each camera's rate (0: flat out)")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--slots", type=int, default=0, help="decode calls at once (0: no limit)")
    p.add_argument("--processes", type=int, default=1, help="processes side by side")
    p.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.streams, args.group = int(args.streams), int(args.group)
        print(json.dumps(child(args)), flush=True)
        return 0
    rows = []
    for path in args.path.split(","):
        for streams in args.streams.split(","):
            for sched in args.sched.split(","):
                for group in args.group.split(","):
                    row = _run_config(args, path, int(streams), sched, group)
                    if row is not None:
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    result = {"benchmark": "nvdec_threads", "video": args.video, "fps": args.fps,
              "seconds": args.seconds, "runs": rows, "machine": machine()}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
