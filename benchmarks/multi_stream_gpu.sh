#!/usr/bin/env bash
# Issues 12 and 20 on the GPU machine, in one go (about 7-8 minutes): how many 720p H.264 streams
# at 30 FPS one GPU sustains through MultiPipeline with the GPU fast path, where host time goes,
# and whether tracking (--track, ByteTrack in each stream's emitter) lowers that count.
#
#   VIDEO_720P=path/vtest_720p30_high.mp4 MODEL_ONNX=path/ssdlite_mobilenet_v2_coco.nms-none.onnx \
#     bash benchmarks/multi_stream_gpu.sh OUTDIR
#
# VIDEO_720P: the test video (benchmarks/multi_stream.py --make-video makes it elsewhere).
# MODEL_ONNX: the --nms none export (ssd-trt export --nms none; in the cache as
#   onnx/ssdlite_mobilenet_v2_coco.nms-none.onnx); unset: the model name, from $SSD_TRT_CACHE.
# PYSPY_DIR: a folder with the py-spy wheel (default .devcarry-pyspy); without it, no profile.
# onnxruntime-gpu must be importable: /tmp/site (stage-wheel.sh) goes first on PYTHONPATH.
#
# Writes into OUTDIR (8 files): run.log; multi-stream.json (the sweep 16..48 streams with two
# batches in flight and shared-out decoder threads, then the pipeline as it was -- one batch in
# flight, FFmpeg's default threads -- at 16 and 32, and each change alone at 32; per run: drops,
# latency, mean batch, GPU busy share, the batcher's time split, CPU seconds per thread role, a
# GIL gauge); multi-stream-track.json (issue 20: each of TRACK_STREAMS without and with
# ByteTrack in one process, side by side: sustained, worst stream, p99, cores busy, track ms per
# frame; the most streams sustained each way); multi-stream-host.json (decode, copy, GIL and
# bookkeeping cost per 720p frame on this CPU); multi-stream-host-track.json (the host alone --
# decode, batching, emitters, tracking -- with the model's detections replayed at no model
# cost, the same counts without and with ByteTrack); with py-spy: pyspy-gil-32.txt (raw stacks
# of whoever held the GIL, 32 streams), pyspy-gil-32-summary.json (by thread role) and
# multi-stream-pyspy.json (that run's numbers). TRACK_STREAMS= (empty) skips the tracking runs.
set -uo pipefail
out=${1:?usage: multi_stream_gpu.sh OUTDIR}
video=${VIDEO_720P:?set VIDEO_720P to the 720p H.264 test video}
model=${MODEL_ONNX:-ssdlite_mobilenet_v2_coco}
pyspy_dir=${PYSPY_DIR:-.devcarry-pyspy}
py=${PYTHON:-python3}
# For a dry run elsewhere: BACKEND=cpu STREAMS=1,2 BEFORE=1 ONE=2 RUN_S=3 TRACK_STREAMS=1,2.
backend=${BACKEND:-cuda} streams=${STREAMS:-16,24,32,40,48} before=${BEFORE:-16,32}
one=${ONE:-32} run_s=${RUN_S:-10} track_streams=${TRACK_STREAMS-16,32,48}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
log=$out/run.log
start=$SECONDS
{ nvidia-smi -L; echo "cores: $(nproc)"; } >>"$log" 2>&1
bench=(--backend "$backend" --model "$model" --video "$video" --fps 30 --max-batch 32)

# 1. The sweep and the comparisons, one process (one warm-up): ~10 runs of ~11 s.
timeout 230 "$py" benchmarks/multi_stream.py "${bench[@]}" --seconds "$run_s" \
  --streams "$streams" --keep-going --label after --variant "before:$before:0:0" \
  --variant "overlap-only:$one:1:0" --variant "threads-only:$one:0:auto" \
  --out "$out/multi-stream.json" >>"$log" 2>&1
echo "sweep: rc $? at $((SECONDS - start)) s" >>"$log"

# 2. Tracking's cost (issue 20): each count without, then with ByteTrack, in one process (one
# warm-up); the sweep stops at the first count where neither is sustained. ~6 runs of ~11 s.
if [ -n "$track_streams" ]; then
  timeout 150 "$py" benchmarks/multi_stream.py "${bench[@]}" --seconds "$run_s" \
    --streams "$track_streams" --compare-track --label track \
    --out "$out/multi-stream-track.json" >>"$log" 2>&1
  echo "track sweep: rc $? at $((SECONDS - start)) s" >>"$log"
fi

# 3. Host cost per frame on this CPU (decode with 1 vs default threads, copy, GIL).
timeout 40 "$py" benchmarks/multi_stream_host.py --video "$video" --frames 300 \
  --out "$out/multi-stream-host.json" >>"$log" 2>&1
echo "host: rc $? at $((SECONDS - start)) s" >>"$log"

# 4. The host alone with and without tracking: replayed detections (recorded once by the model
# on the CPU), so only decode, batching, emitters and trackers cost. ~6 runs of ~9 s.
if [ -n "$track_streams" ]; then
  timeout 100 "$py" benchmarks/multi_stream_host.py --video "$video" --replay-model "$model" \
    --streams "$track_streams" --fps 30 --seconds 8 --compare-track \
    --out "$out/multi-stream-host-track.json" >>"$log" 2>&1
  echo "host track: rc $? at $((SECONDS - start)) s" >>"$log"
fi

# 5. Who holds the GIL at 32 streams (py-spy --gil samples only the GIL's holder).
wheel=$(ls "$pyspy_dir"/py_spy-*.whl 2>/dev/null | head -1)
if [ -n "$wheel" ] && [ $((SECONDS - start)) -lt 480 ]; then
  mkdir -p /tmp/pyspy && "$py" -m zipfile -e "$wheel" /tmp/pyspy >>"$log" 2>&1
  spy=$(find /tmp/pyspy -name py-spy -type f | head -1)
  chmod +x "$spy"
  timeout 70 "$spy" record --rate 100 --format raw --gil --nonblocking --threads \
    -o "$out/pyspy-gil-32.txt" -- "$py" benchmarks/multi_stream.py "${bench[@]}" \
    --seconds 12 --streams "$one" --label pyspy --out "$out/multi-stream-pyspy.json" >>"$log" 2>&1
  echo "py-spy: rc $? at $((SECONDS - start)) s" >>"$log"
  if [ -s "$out/pyspy-gil-32.txt" ]; then
    "$py" benchmarks/profile_summary.py "$out/pyspy-gil-32.txt" --rate 100 --seconds 12 \
      --out "$out/pyspy-gil-32-summary.json" >>"$log" 2>&1
  fi
else
  echo "py-spy: skipped (no wheel in $pyspy_dir, or out of time)" >>"$log"
fi
echo "done in $((SECONDS - start)) s" >>"$log"
grep -v '^{' "$log" | tail -40
