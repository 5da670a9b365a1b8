"""One stream's decode rate, as fast as it goes: the denominator of issue 19's single-file target
(``detect`` on the 720p file with ``--decode nvdec`` at >= 90% of NVDEC's single-stream rate),
measured in the same run as ``detect``.

Paths (``--paths``, each over the whole file, after one untimed pass that warms the decoder):

* ``raw``: PyNvVideoCodec's own demuxer and ``Decode`` (frames in GPU memory), the rate NVDEC
  gives with the least Python around it;
* ``ours``: ``NvdecSource`` (PyAV demux, ``NvdecDecoder`` on its own stream, ``DeviceFrame``);
* ``ours-legacy``: the same on PyNvVideoCodec's default (legacy) stream;
* ``cpu``: ``NvdecSource`` with PyAV's CPU decoder (runs without a GPU; the tests use it).

    python benchmarks/nvdec_rate.py VIDEO [--paths raw,ours,ours-legacy] [--out rate.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ssd_trt.fsutil import atomic_write
from ssd_trt.quality.bench import machine_info

PATHS = ("raw", "ours", "ours-legacy", "cpu")


def _raw(video: str) -> Iterator[object]:
    import PyNvVideoCodec as nvc

    demuxer = nvc.CreateDemuxer(filename=video)
    decoder = nvc.CreateDecoder(gpuid=0, codec=demuxer.GetNvCodecId(), usedevicememory=True)
    for packet in demuxer:
        yield from decoder.Decode(packet)


def _ours(video: str, kind: str) -> Iterator[object]:
    from ssd_trt.video.nvdec import CpuDecoder, NvdecSource, nvdec_or_cpu

    make = CpuDecoder if kind == "cpu" else nvdec_or_cpu(own_stream=kind == "ours")
    with NvdecSource(video, decoder=make) as source:
        if kind != "cpu" and source.decoder_name != "nvdec":
            raise SystemExit(f"{video}: NVDEC cannot decode it here")
        yield from source


def frames_of(kind: str) -> Callable[[str], Iterator[object]]:
    return _raw if kind == "raw" else lambda video: _ours(video, kind)


def rate(video: str, kind: str) -> dict[str, object]:
    decode = frames_of(kind)
    for _ in decode(video):  # warm-up: decoder creation, first allocations
        pass
    t0, c0 = time.perf_counter(), time.process_time()
    frames = sum(1 for _ in decode(video))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "path": kind,
        "frames": frames,
        "fps": round(frames / wall, 1),
        "cpu_ms_per_frame": round(cpu * 1000 / max(1, frames), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video")
    parser.add_argument("--paths", default="raw,ours,ours-legacy")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    kinds = args.paths.split(",")
    if bad := [k for k in kinds if k not in PATHS]:
        parser.error(f"unknown path {bad[0]!r}; use {', '.join(PATHS)}")
    if not Path(args.video).is_file():
        parser.error(f"{args.video} is not a file")
    rows = []
    for kind in kinds:
        rows.append(rate(args.video, kind))
        print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "nvdec_rate", "video": Path(args.video).name, "runs": rows,
              "machine": machine_info()}  # fmt: skip
    if args.out:
        with atomic_write(args.out) as f:
            f.write((json.dumps(result, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
