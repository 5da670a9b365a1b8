"""Ray Serve and Ray Data on a real 2-node Ray cluster on loopback (ray.cluster_utils.Cluster):
both nodes, the Serve proxy and every worker bind 127.0.0.1, and every test stops what it
started (through Ray's API or by PID, never `ray stop`)."""

from __future__ import annotations

import os

from ssd_trt.scale.cluster import LOOPBACK_ENV

os.environ.update(LOOPBACK_ENV)  # before ray is imported: keep 127.0.0.1 as 127.0.0.1

import ipaddress  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import optional, read_frames  # noqa: E402
from test_sources import _free_port  # noqa: E402

cv2 = optional("cv2", "video")
ray = pytest.importorskip("ray", reason="Ray is in the [ray] extra")
psutil = pytest.importorskip(
    "psutil", reason="psutil is in the [ray] extra (the loopback socket check)"
)
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from ssd_trt.detector import Detector  # noqa: E402
from ssd_trt.scale.batch import RayBatchJob, run_ray_batch  # noqa: E402
from ssd_trt.scale.serving import ServeConfig, bind_warning, get_handle, start  # noqa: E402

MODEL = "ssdlite_mobilenet_v2_coco"
TOKEN = "test-token-5e1f"
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster():
    """Head + one worker node, 3 logical CPUs each, all on 127.0.0.1; the driver connected."""
    loopback = {"node_ip_address": "127.0.0.1", "num_cpus": 3}
    c = Cluster(initialize_head=True, head_node_args={**loopback, "include_dashboard": False})
    try:
        c.add_node(**loopback)
        ray.init(address=c.address, log_to_driver=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield c
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            c.shutdown()


@pytest.fixture(scope="module")
def onnx(exported) -> Path:
    return exported(MODEL)


@pytest.fixture(scope="module")
def server(cluster, onnx):
    config = ServeConfig(
        model=str(onnx),
        backend="cpu",
        port=_free_port(),
        token=TOKEN,
        replicas=2,
        max_replicas_per_node=1,  # one replica per node
    )
    running = start(config)
    yield running, config
    serve.delete("ssd-trt")


@pytest.fixture(scope="module")
def jpegs(coco_mini, bikes_video) -> list[bytes]:
    photos = [p.read_bytes() for p in sorted((coco_mini / "images").glob("*.jpg"))]
    frames = [cv2.imencode(".jpg", f)[1].tobytes() for f in read_frames(bikes_video, every=25)]
    return photos + frames


@pytest.fixture(scope="module")
def expected(onnx, jpegs) -> list[list[dict]]:
    """The local Detector's answer for each image (the same decoded bytes)."""
    with Detector(onnx, "cpu") as det:
        return [
            det.detect(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)).to_dicts()
            for j in jpegs
        ]


def same(a: list[dict], b: list[dict]) -> bool:
    """Equal detections, allowing float noise from batching (boxes 0.5 px, scores 1e-3)."""
    return len(a) == len(b) and all(
        x["label"] == y["label"]
        and np.allclose(x["box"], y["box"], atol=0.5)
        and abs(x["score"] - y["score"]) <= 1e-3
        for x, y in zip(a, b, strict=True)
    )


def post(url: str, body: bytes, token: str | None = TOKEN, timeout: float = 30) -> tuple:
    headers = {"Content-Type": "application/octet-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + "detect", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def post_with_retry(url: str, body: bytes, attempts: int = 6) -> tuple:
    """A client that retries a failed request (a replica died under it), bounded."""
    for i in range(attempts):
        try:
            status, answer = post(url, body)
            if status < 500:
                return status, answer
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5 * (i + 1))
    return post(url, body)


def actor_pids(word: str) -> list[int]:
    """PIDs of this session's Ray actor processes whose title ("ray::ClassName...") has
    ``word`` (read with psutil: the state API needs the dashboard, which is off)."""
    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::") and word in title:
            pids.append(proc.pid)
    return pids


def replica_pids() -> list[int]:
    return actor_pids("SsdTrtDetector")


# ------------------------------------------------------------------------------ Ray Serve


def test_300_requests_from_8_clients_equal_the_local_detector(server, jpegs, expected):
    running, _ = server
    url = running.url
    with urllib.request.urlopen(url + "healthz", timeout=10) as resp:
        assert json.loads(resp.read())["ok"] is True
    truncated = jpegs[0][: len(jpegs[0]) // 2]
    bad = [  # interleaved with the good requests: each gets its 4xx, the others are unaffected
        ("wrong token", lambda: post(url, jpegs[0], token="nope"), 401),
        ("no token", lambda: post(url, jpegs[0], token=None), 401),
        ("garbage", lambda: post(url, b"not an image at all"), 415),
        ("truncated", lambda: post(url, truncated), 400),
        ("too big", lambda: post(url, b"\xff\xd8\xff" + b"0" * (21 * 1024 * 1024)), 413),
    ]

    def good(i: int) -> tuple:
        k = i % len(jpegs)
        status, answer = post(url, jpegs[k])
        return k, status, answer

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(good, i) for i in range(300)]
        bad_futures = [(name, pool.submit(call), code) for name, call, code in bad]
        results = [f.result(timeout=300) for f in futures]
    for name, fut, code in bad_futures:
        status, reason = fut.result(timeout=60)
        assert status == code, (name, status, reason)
        assert len(reason.strip().splitlines()) == 1, reason
    for k, status, answer in results:
        assert status == 200, answer
        assert same(answer["detections"], expected[k]), k
        assert set(answer) == {"frame", "timestamp", "inference_ms", "detections"}
    # The Python handle, for callers inside the cluster: the same answers.
    handle = get_handle()
    assert same(handle.detect.remote(jpegs[3]).result()["detections"], expected[3])


def test_two_replicas_against_one_in_one_run(server, jpegs, onnx, record_property):
    running, config = server
    url = running.url

    def rate(n: int = 64) -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            done = list(pool.map(lambda i: post(url, jpegs[i % len(jpegs)]), range(n)))
        assert all(s == 200 for s, _ in done)
        return n / (time.perf_counter() - t0)

    two = rate()
    from ssd_trt.scale.cluster import ModelFiles
    from ssd_trt.scale.serving import APP_NAME, build_app

    one_config = ServeConfig(**{**config.__dict__, "replicas": 1})
    serve.run(build_app(one_config, ModelFiles.resolve(onnx)), name=APP_NAME, route_prefix="/")
    one = rate()
    serve.run(build_app(config, ModelFiles.resolve(onnx)), name=APP_NAME, route_prefix="/")
    record_property("requests_per_s_2_replicas", round(two, 1))
    record_property("requests_per_s_1_replica", round(one, 1))
    # Both nodes share this machine's 2 cores, so 2 replicas need not be 2x; both must serve.
    print(f"2 replicas: {two:.1f} req/s; 1 replica: {one:.1f} req/s")
    assert two > 0 and one > 0


def test_killed_replica_every_request_still_answered(server, jpegs, expected):
    running, _ = server
    url = running.url
    deadline = time.monotonic() + 60
    while len(replica_pids()) < 2:  # after the previous test's redeploy
        assert time.monotonic() < deadline, "2 replicas did not come back"
        time.sleep(0.5)
    victim = replica_pids()[0]
    answered = []

    def one(i: int) -> tuple:
        k = i % len(jpegs)
        status, answer = post_with_retry(url, jpegs[k])
        answered.append(i)
        return k, status, answer

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(120)]
        while len(answered) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)  # a replica process this cluster started
        killed_at = len(answered)
        results = [f.result(timeout=300) for f in futures]
    assert killed_at < 120, "the replica was killed after the run"
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"
    for k, status, answer in results:
        assert status == 200, answer
        assert same(answer["detections"], expected[k])


def test_bind_warning():
    assert bind_warning("127.0.0.1", None) is None
    assert bind_warning("0.0.0.0", "t") is None
    warning = bind_warning("0.0.0.0", None)
    assert warning is not None and "\n" not in warning and "--token" in warning


# ------------------------------------------------------------------------------ Ray Data


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("fruits.jpg", "baboon.jpg", "lena.jpg", "home.jpg", "building.jpg", "messi5.jpg"):
        if (OPENCV_DATA / name).is_file():
            shutil.copy(OPENCV_DATA / name, folder / name)
    assert len(list(folder.iterdir())) >= 4
    return folder


def test_ray_data_six_inputs_complete_with_a_worker_killed(
    cluster, onnx, tmp_path, bikes_video, vtest_video, coco_mini, photo_folder
):
    inputs = (
        str(bikes_video),
        str(vtest_video),
        str(OPENCV_DATA / "Megamind.avi"),
        str(coco_mini / "images"),
        str(photo_folder),
        str(bikes_video),
    )
    limit = 40
    job = RayBatchJob(
        sources=inputs,
        output_dir=tmp_path / "out",
        json=True,
        model=str(onnx),
        backend="cpu",
        max_frames=limit,
        chunk_frames=10,
        actors=2,
    )
    killed: list[int] = []
    after_kill: list[int] = []

    def kill_one(name: str, frame: int) -> None:
        """At the first frame written, kill one of the actors: chunks are still pending."""
        if killed:
            after_kill.append(frame)
            return
        pids = actor_pids("ChunkDetector")
        assert pids
        os.kill(pids[0], signal.SIGKILL)  # an actor process this cluster started
        killed.append(pids[0])

    stats = run_ray_batch(job, on_frame=kill_one)
    assert killed and len(after_kill) > 150, "the worker was not killed mid-job"
    out = tmp_path / "out"
    names = ["bikes", "vtest", "Megamind", "images", photo_folder.name, "bikes-2"]
    counts = [limit, limit, limit, 16, len(list(photo_folder.iterdir())), limit]
    for name, count in zip(names, counts, strict=True):
        lines = [json.loads(x) for x in (out / f"{name}.jsonl").read_text().splitlines()]
        assert [r["frame"] for r in lines] == list(range(count)), name  # none lost or repeated
        assert stats.sources[name].frames == count
        cap = cv2.VideoCapture(str(out / f"{name}.mp4"))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == count, name
        cap.release()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left
    # The answers are the local Detector's, frame by frame (chunks seek correctly).
    ours = [json.loads(x) for x in (out / "vtest.jsonl").read_text().splitlines()]
    with Detector(onnx, "cpu") as det:
        for record, frame in zip(ours, read_frames(vtest_video, limit=limit), strict=True):
            assert same(record["detections"], det.detect(frame).to_dicts()), record["frame"]


# ------------------------------------------------------------------------- loopback only


def test_every_ray_socket_is_on_loopback(cluster, server):
    """All processes this test session started (both nodes, GCS, raylets, workers, the Serve
    proxy and replicas) listen and connect only on 127.0.0.0/8."""
    procs = psutil.Process().children(recursive=True)
    assert len(procs) >= 6
    outside = []
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in conns:
            for addr in (conn.laddr, conn.raddr):
                if not addr:
                    continue
                ip = ipaddress.ip_address(addr.ip.split("%")[0])
                if getattr(ip, "ipv4_mapped", None):
                    ip = ip.ipv4_mapped
                if not ip.is_loopback and not ip.is_unspecified:
                    outside.append((proc.name(), addr.ip, addr.port))
                if ip.is_unspecified and conn.status == "LISTEN":
                    outside.append((proc.name(), "listens on all interfaces", addr.port))
    assert outside == []


# ---------------------------------------------------------------------- the serve verb


def test_serve_verb_answers_and_stops_on_ctrl_c(onnx, jpegs, expected, tmp_path):
    """``ssd-trt serve`` with its own local Ray: one request, then Ctrl-C stops everything it
    started (checked by PID)."""
    port = _free_port()
    env = {**os.environ, **LOOPBACK_ENV, "SSD_TRT_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssd_trt.cli", "serve", "--model", str(onnx)]
        + ["--backend", "cpu", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("serving POST") for line in lines):  # the ready line
            assert proc.poll() is None, "".join(lines)[-2000:]
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        with urllib.request.urlopen(url + "healthz", timeout=10) as resp:
            assert json.loads(resp.read())["ok"] is True
        status, answer = post(url, jpegs[0])
        assert status == 200 and same(answer["detections"], expected[0])
        assert post(url, jpegs[0], token=None)[0] == 401
        started = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
        assert proc.returncode == 0, "".join(lines)[-2000:]
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], [p.pid for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=10)


# ------------------------------------------------------------------ no cluster needed


def test_image_bounds_and_serve_options(coco_mini):
    from ssd_trt.errors import SsdTrtError
    from ssd_trt.scale.images import BadImage, decode_image

    photo = sorted((coco_mini / "images").glob("*.jpg"))[0].read_bytes()
    assert decode_image(photo).ndim == 3
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert decode_image(png).shape == (8, 8, 3)
    # A PNG header claiming 60000x60000 pixels: refused before decoding.
    bomb = png[:16] + (60000).to_bytes(4, "big") * 2 + png[24:]
    cases = [
        (photo[:-200], 400),
        (png[:-20], 400),
        (bomb, 413),
        (b"GIF89a....", 415),
        (b"", 400),
        (photo, 413, 1000),
    ]
    for data, status, *limit in cases:
        with pytest.raises(BadImage) as bad:
            decode_image(data, *limit)
        assert bad.value.status == status and "\n" not in str(bad.value)
    with pytest.raises(SsdTrtError, match="both --min-replicas"):
        ServeConfig(min_replicas=1).check()
    with pytest.raises(SsdTrtError, match="between 0 and"):
        ServeConfig(min_replicas=3, max_replicas=2).check()
    ServeConfig(min_replicas=0, max_replicas=4).check()
