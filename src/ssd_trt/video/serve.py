"""A small live-view HTTP server for annotated video: an MJPEG stream, the latest frame and stats.

Standard library only. Routes:

* ``/``             an HTML page showing the stream and a stats line (FPS, latency, frame index)
* ``/stream.mjpg``  ``multipart/x-mixed-replace`` MJPEG stream of every newly published frame
* ``/frame.jpg``    the latest frame (503 until the first one is published)
* ``/stats.json``   the latest stats as JSON (``{}`` until the first publish)

The page understands the stats keys ``fps``, ``latency_ms`` and ``frame``; any other keys are
shown as ``key=value``.

With a token, every route answers 401 unless the request carries ``Authorization: Bearer
TOKEN`` or ``?token=TOKEN``: a browser cannot put a header on an ``<img>`` stream, so the page,
opened as ``/?token=TOKEN``, passes the token on to its stream and stats requests in the URL.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, quote

from ..errors import SsdTrtError

log = logging.getLogger(__name__)

Stats = Mapping[str, float | int | str]

BOUNDARY = "ssdtrtframe"
# How often waiting stream handlers re-check the closed flag, and how often serve_forever() polls
# for shutdown: together they bound how long close() takes with clients connected.
_WAIT_S = 0.25
# A client that stops reading fills its socket buffer and blocks our write; give up on it then
# instead of holding a thread forever.
_CLIENT_TIMEOUT_S = 10.0
# How long close() waits, in all, for client handler threads to finish.
_JOIN_S = 1.0

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ssd-trt live</title>
<link rel="icon" href="data:,">
<style>
  body { margin: 0; background: #111; color: #ddd; font: 14px/1.4 monospace; }
  main { display: flex; flex-direction: column; align-items: center; padding: 12px; gap: 8px; }
  #stream { max-width: 100%; background: #000; }
  #stats { white-space: pre; }
</style>
</head>
<body>
<main>
  <img id="stream" src="/stream.mjpg" alt="live stream">
  <div id="stats">waiting for frames...</div>
</main>
<script>
"use strict";
// A token the page was opened with goes on to the stream and the stats: an <img> cannot send
// an Authorization header.
const token = new URLSearchParams(location.search).get("token");
const query = token ? "?token=" + encodeURIComponent(token) : "";
if (token) document.getElementById("stream").src = "/stream.mjpg" + query;
const statsEl = document.getElementById("stats");
function fmt(s) {
  const parts = [];
  if ("fps" in s) parts.push("FPS " + Number(s.fps).toFixed(1));
  if ("latency_ms" in s) parts.push("latency " + Number(s.latency_ms).toFixed(1) + " ms");
  if ("frame" in s) parts.push("frame " + s.frame);
  for (const [k, v] of Object.entries(s)) {
    if (!["fps", "latency_ms", "frame"].includes(k)) parts.push(k + "=" + v);
  }
  return parts.join("  |  ");
}
async function poll() {
  try {
    const r = await fetch("/stats.json" + query, {cache: "no-store"});
    const s = await r.json();
    if (Object.keys(s).length) statsEl.textContent = fmt(s);
  } catch (e) {
    statsEl.textContent = "disconnected";
  }
}
poll();
setInterval(poll, 500);
</script>
</body>
</html>
"""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_warning(host: str, token: str | None) -> str | None:
    """The one-line warning for a live view others can reach without a token; None if fine."""
    if is_loopback(host) or token:
        return None
    return (
        f"the live view on {host} is open to anyone who can reach it; pass --token (or set "
        "$SSD_TRT_TOKEN), or serve on 127.0.0.1"
    )


class _HttpServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its MjpegServer, so handlers need no global state."""

    daemon_threads = True  # a stuck client must never keep the process alive
    allow_reuse_port = False  # a second server on the same port must fail, not share it

    def __init__(self, address: tuple[str, int], owner: MjpegServer, family: int) -> None:
        self.address_family = family
        self.owner = owner
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    timeout = _CLIENT_TIMEOUT_S
    server_version = "ssd-trt"

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the client went away mid-response; nothing left to flush
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _authorized(self, query: str) -> bool:
        """No token set, or the request carries it (header, or ``?token=`` for the page)."""
        token = self.server.owner.token
        if token is None:
            return True
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        given = [value.strip()] if scheme.lower() == "bearer" else []
        given += parse_qs(query).get("token", [])
        return any(hmac.compare_digest(g.encode(), token.encode()) for g in given)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        owner = self.server.owner
        try:
            if not self._authorized(query):
                self._send(
                    HTTPStatus.UNAUTHORIZED,
                    "text/plain",
                    b"missing or wrong token: send 'Authorization: Bearer TOKEN' or open "
                    b"/?token=TOKEN\n",
                    {"WWW-Authenticate": "Bearer"},
                )
            elif path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", _PAGE.encode())
            elif path == "/stats.json":
                body = json.dumps(owner._snapshot()[2]).encode()
                self._send(HTTPStatus.OK, "application/json", body)
            elif path == "/frame.jpg":
                _, jpeg, _ = owner._snapshot()
                if jpeg is None:
                    self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
                else:
                    self._send(HTTPStatus.OK, "image/jpeg", jpeg)
            elif path == "/stream.mjpg":
                self._stream()
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
        except OSError as exc:
            # Clients disconnecting (or being cut off by close()) are routine, not errors.
            log.debug("client %s: %s", self.address_string(), exc)

    def _send(
        self, status: HTTPStatus, ctype: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        owner = self.server.owner
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        seen = 0
        while True:
            frame = owner._next_frame(seen)
            if frame is None:
                return  # server closing
            seen, jpeg = frame
            # Written outside the lock: a slow client only delays itself, and on its next turn
            # it gets the latest frame, skipping any it missed.
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
            self.wfile.write(head.encode() + b"\r\n" + jpeg + b"\r\n")
            self.wfile.flush()


class MjpegServer:
    """Serve the latest published JPEG frame and stats over HTTP, from a daemon thread.

    Binds to 127.0.0.1 by default so a live view is never exposed to the network by accident;
    pass another ``host`` (for example ``"0.0.0.0"``) explicitly to allow remote viewers, and a
    ``token`` so only those who know it can watch (without one, such a bind logs a warning).
    ``port=0`` picks a free port; read it back from :attr:`url` after :meth:`start`.

    Usage::

        with MjpegServer(port=8080) as server:
            print("live view at", server.url)
            for jpeg, stats in frames:
                server.publish(jpeg, stats)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, token: str | None = None) -> None:
        if token is not None and not token.strip():
            raise SsdTrtError("--token is empty; pass a secret string")
        self.host = host
        self.port = port
        self.token = token
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._stats: dict[str, float | int | str] = {}
        self._seq = 0  # bumped on every publish; stream handlers wait for it to change
        self._closed = False
        # Open client connections and the threads serving them, so close() can end and join them.
        self._clients: dict[socket.socket, threading.Thread] = {}
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> MjpegServer:
        """Bind and start serving in a daemon thread. Raises SsdTrtError if the port is taken."""
        if self._httpd is not None:
            return self
        if self._closed:
            raise SsdTrtError("this live-view server was closed; create a new one")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        where = f"{self.host}:{self.port}"
        try:
            httpd = _HttpServer((self.host, self.port), self, family)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SsdTrtError(
                    f"cannot listen on {where}: address in use; pass another --serve port"
                ) from exc
            reason = exc.strerror or type(exc).__name__
            raise SsdTrtError(
                f"cannot listen on {where}: {reason}; pass another --serve host or port"
            ) from exc
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _WAIT_S},
            name=f"ssd-trt-serve-{self.port}",
            daemon=True,
        )
        self._thread.start()
        warning = bind_warning(self.host, self.token)
        if warning:
            log.warning("%s", warning)
        log.info("live view at %s", self.page_url)
        return self

    def close(self) -> None:
        """Stop serving, end every client stream and join the server threads. Idempotent.

        Returns within about a second even with clients connected, stuck ones included.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()  # wake stream handlers so they see the flag and return
            clients = dict(self._clients)
        # A handler blocked writing to a client that stopped reading would not see the flag;
        # shutting its socket down makes that write fail at once.
        for conn in clients:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._httpd is not None:
            self._httpd.shutdown()  # returns once serve_forever() has stopped
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        # Handler threads are daemons (a stuck one must not keep the process alive), so the
        # server does not join them; do it here, bounded, so no stream outlives close().
        deadline = time.monotonic() + _JOIN_S
        for thread in clients.values():
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The page's address, e.g. ``http://127.0.0.1:8080/`` (the real port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def page_url(self) -> str:
        """The address to open in a browser: :attr:`url`, with ``?token=`` when there is one."""
        return self.url + (f"?token={quote(self.token, safe='')}" if self.token else "")

    # -------------------------------------------------------------------------------- frames

    def publish(self, jpeg: bytes, stats: Stats) -> None:
        """Make ``jpeg`` the latest frame and ``stats`` the latest stats; never blocks on clients.

        Keys the page shows: ``fps``, ``latency_ms`` and ``frame``; others appear as key=value.
        """
        with self._cond:
            self._jpeg = bytes(jpeg)
            self._stats = dict(stats)
            self._seq += 1
            self._cond.notify_all()

    def _snapshot(self) -> tuple[int, bytes | None, dict[str, float | int | str]]:
        with self._cond:
            return self._seq, self._jpeg, dict(self._stats)

    def _next_frame(self, seen: int) -> tuple[int, bytes] | None:
        """The latest frame once it is newer than ``seen``; None when the server is closing."""
        with self._cond:
            while not self._closed and (self._seq == seen or self._jpeg is None):
                self._cond.wait(_WAIT_S)
            if self._closed or self._jpeg is None:
                return None
            return self._seq, self._jpeg

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._clients[conn] = threading.current_thread()
            else:
                self._clients.pop(conn, None)
