"""Child process of the fuzz tests (tests/test_first_hour.py): seeded mutations of one file.

    python fuzz_child.py KIND ORIGINAL WORKDIR CASES BUDGET_S

KIND is onnx (loaded by Detector and run once), sidecar (an engine's .json through
EngineMetadata.load and read_engine_bytes) or calib (CalibrationCache.load). Each case must give
a result or one SsdTrtError line; anything else prints CRASH and exits 3. A crash of the
process itself (a segfault) or a hang shows in the parent as the last "case N" line.
"""

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from ssd_trt.errors import SsdTrtError

kind, original, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
cases, budget = int(sys.argv[4]), float(sys.argv[5])
data = original.read_bytes()
rng = np.random.default_rng(20261123)


def mutate(b):
    b = bytearray(b)
    op = rng.integers(0, 5)
    if op == 0:  # flip a few bytes
        for i in rng.integers(0, len(b), rng.integers(1, 9)):
            b[i] ^= int(rng.integers(1, 256))
    elif op == 1:  # truncate
        b = b[: int(rng.integers(0, len(b)))]
    elif op == 2:  # insert random bytes
        i = int(rng.integers(0, len(b)))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif op == 3:  # zero a range
        i = int(rng.integers(0, len(b)))
        b[i : i + int(rng.integers(1, 256))] = bytes(min(len(b) - i, 256))
    else:  # duplicate a chunk
        i, j = sorted(int(x) for x in rng.integers(0, len(b), 2))
        b[j:j] = b[i : min(j, i + 512)]
    return bytes(b)


def check_onnx(path):
    from ssd_trt.detector import Detector

    with Detector(path, "cpu") as det:
        dets = det.detect(np.zeros((64, 64, 3), np.uint8))
        assert all(np.isfinite(d.score) for d in dets)


def check_sidecar(path):
    from ssd_trt.precision.engine import EngineMetadata, read_engine_bytes

    meta = EngineMetadata.load(path)
    read_engine_bytes(path, meta)


def check_calib(path):
    from ssd_trt.precision.quantize import CalibrationCache

    cache = CalibrationCache.load(path)
    if cache is None:  # refused: the caller calibrates again
        return "refused"
    # A cache it accepts must be usable: every range a finite, non-negative number.
    assert isinstance(cache.key, str) and isinstance(cache.amax, dict), cache
    for value in cache.amax.values():
        assert isinstance(value, (int, float)) and np.isfinite(value) and value >= 0, cache
    return None


check = {"onnx": check_onnx, "sidecar": check_sidecar, "calib": check_calib}[kind]
target = {"onnx": work / "m.onnx", "calib": work / "c.json"}.get(kind)
if kind == "sidecar":
    engine = work / "e.engine"
    engine.write_bytes(original.with_name(original.name[: -len(".json")]).read_bytes())
    target = work / "e.engine.json"
counts = {"ok": 0, "error": 0, "refused": 0}
start = time.monotonic()
for case in range(cases):
    if time.monotonic() - start > budget:
        break
    target.write_bytes(mutate(data))
    print(f"case {case}", flush=True)
    try:
        outcome = check(engine if kind == "sidecar" else target)
        counts[outcome or "ok"] += 1
    except SsdTrtError as exc:
        assert "\n" not in str(exc), repr(exc)
        counts["error"] += 1
    except Exception:
        print(f"CRASH case {case}: {traceback.format_exc()}", flush=True)
        sys.exit(3)
print("RESULT " + json.dumps(counts), flush=True)
