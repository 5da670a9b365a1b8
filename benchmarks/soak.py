"""Soak: `ssd-trt detect --loop` on a real video for a long time, with --serve read by 4 clients.

Every ``--interval`` seconds it samples the detect process's RSS, open file descriptors and
threads (from /proc) and the frames written so far (FPS). At the end it stops the run with
SIGINT (as Ctrl-C would), checks the JSON lines for lost frames, and writes the figures as
JSON and a PNG plot.

Pass: RSS grows < 5% after the first minute; fds and threads stay flat (within 2, for a
stats request caught mid-flight); the jsonl holds every frame 0..N-1 the run reported.

    python benchmarks/soak.py --minutes 20 --out benchmarks/results/soak

Linux only (/proc). All traffic stays on 127.0.0.1. Not a CI test: it runs for minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RSS_GROWTH_LIMIT = 0.05
FLAT_TOLERANCE = 2
BOUNDARY = b"--ssdtrtframe\r\n"
EXIT_INTERRUPTED = 130  # the CLI's code for Ctrl-C, which is how the soak ends the run


@dataclass
class Reader:
    """One MJPEG client: reads /stream.mjpg and counts frames, reconnecting if cut off."""

    port: int
    frames: int = 0
    reconnects: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._read_stream()
            except OSError:
                pass
            if not self.stop.is_set():
                self.reconnects += 1
                time.sleep(0.5)

    def _read_stream(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            pending = b""
            while not self.stop.is_set():
                chunk = sock.recv(65536)
                if not chunk:
                    return
                pending += chunk
                # Count part boundaries; keep a short tail so one split across reads is seen.
                self.frames += pending.count(BOUNDARY)
                last = pending.rfind(BOUNDARY)
                if last >= 0:
                    pending = pending[last + len(BOUNDARY) :]
                pending = pending[-(len(BOUNDARY) - 1) :]


def proc_sample(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_mb": rss_kb / 1024, "threads": threads, "fds": fds}


def count_lines(folder: Path, name: str) -> int:
    """Lines written so far to the jsonl's partial file (renamed only when the run ends)."""
    for path in folder.glob(f".{Path(name).stem}.*.partial{Path(name).suffix}"):
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(port: int, proc: subprocess.Popen, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"detect exited early with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise SystemExit("the --serve page never came up")


def verdict(samples: list[dict], lines: list[dict], reported: int | None) -> dict:
    steady = [s for s in samples if s["t"] >= 60] or samples
    base = steady[0]
    growth = (max(s["rss_mb"] for s in steady) - base["rss_mb"]) / base["rss_mb"]
    spread = {k: max(s[k] for s in steady) - min(s[k] for s in steady) for k in ("fds", "threads")}
    indices = [r["frame"] for r in lines]
    contiguous = indices == list(range(len(indices)))
    checks = {
        "rss_growth_after_1min": round(growth, 4),
        "rss_ok": growth < RSS_GROWTH_LIMIT,
        "fds_spread": spread["fds"],
        "threads_spread": spread["threads"],
        "fds_threads_ok": max(spread.values()) <= FLAT_TOLERANCE,
        "jsonl_frames": len(indices),
        "reported_frames": reported,
        "jsonl_contiguous": contiguous,
        "no_frame_lost": contiguous and reported == len(indices),
    }
    checks["passed"] = checks["rss_ok"] and checks["fds_threads_ok"] and checks["no_frame_lost"]
    return checks


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    for ax, key, label in zip(
        axes,
        ("rss_mb", "fds", "threads", "fps"),
        ("RSS (MB)", "open fds", "threads", "FPS (interval)"),
        strict=True,
    ):
        ax.plot(t, [s[key] for s in samples], marker="o", markersize=3)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    axes[-1].set_xlabel("minutes")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--video", help="video to loop (default: the sample video)")
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--cpu", help="pin detect to these CPUs (taskset list, e.g. 1)")
    ap.add_argument("--out", default="benchmarks/results/soak", help="writes OUT.json, OUT.png")
    ap.add_argument("--work", default="/tmp/ssd-trt-soak", help="folder for the jsonl")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    jsonl = work / "detections.jsonl"
    jsonl.unlink(missing_ok=True)
    port = free_port()
    cmd = [sys.executable, "-m", "ssd_trt.cli", "detect", "--loop", "--no-show", "--backend"]
    cmd += ["cpu", "--serve", f"127.0.0.1:{port}", "--json", str(jsonl)]
    if args.video:
        cmd.insert(4, args.video)
    if args.cpu:
        cmd = ["taskset", "-c", args.cpu, *cmd]
    log = open(work / "detect.log", "w")  # noqa: SIM115 - open for the whole run
    # A background job (nohup ... &) starts with SIGINT ignored, and children inherit that:
    # give detect the default back, so the SIGINT that ends the run acts as Ctrl-C does.
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_server(port, proc, 600)
    readers = [Reader(port) for _ in range(args.readers)]
    threads = [threading.Thread(target=r.run, daemon=True) for r in readers]
    for t in threads:
        t.start()

    samples: list[dict] = []
    start = time.monotonic()
    last_lines, last_t = 0, 0.0
    end = start + args.minutes * 60
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
        t = time.monotonic() - start
        lines = count_lines(work, jsonl.name)
        sample = {"t": round(t, 1), **proc_sample(proc.pid), "frames": lines}
        sample["fps"] = round((lines - last_lines) / (t - last_t), 2) if t > last_t else 0.0
        sample["reader_frames"] = [r.frames for r in readers]
        samples.append(sample)
        last_lines, last_t = lines, t
        print(json.dumps(sample), flush=True)

    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit("detect did not stop within 120 s of SIGINT") from None
    for r in readers:
        r.stop.set()
    log.close()
    text = (work / "detect.log").read_text(errors="replace")
    found = re.findall(r"(\d+) frames in [\d.]+ s", text)
    reported = int(found[-1]) if found else None
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    checks = verdict(samples, records, reported)
    result = {
        "command": " ".join(cmd),
        "minutes": args.minutes,
        "interval_s": args.interval,
        "readers": args.readers,
        "reader_frames": [r.frames for r in readers],
        "reader_reconnects": [r.reconnects for r in readers],
        "exit_code": rc,
        "mean_fps": round(len(records) / samples[-1]["t"], 2) if samples else 0.0,
        "checks": checks,
        "samples": samples,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "log_tail": text.splitlines()[-3:],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    title = f"ssd-trt detect --loop --serve, {args.readers} readers: " + (
        "PASS" if checks["passed"] else "FAIL"
    )
    plot(samples, out.with_suffix(".png"), title)
    print(json.dumps(checks))
    return 0 if checks["passed"] and rc == EXIT_INTERRUPTED else 1


if __name__ == "__main__":
    sys.exit(main())
