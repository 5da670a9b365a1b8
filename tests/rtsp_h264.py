"""A small RTSP server for tests, in Python, for machines without GStreamer (the GPU machine): it
serves one file's H.264 stream as a camera does, to any RTSP client that asks for RTP over the
RTSP connection (``rtsp_transport=tcp``, what the package's demuxer asks for).

* DESCRIBE answers an SDP with the stream's SPS and PPS (``sprop-parameter-sets``);
* PLAY sends the file's access units in decode order, in real time at the file's rate, each
  NAL unit in one RTP packet or split into FU-A fragments (RFC 6184, packetization mode 1),
  timestamps on RTP's 90 kHz clock from the presentation times (B-frames keep their order);
* it loops the file, like a camera that keeps sending, until the client goes or it is stopped.

PyAV demuxes the file and its ``h264_mp4toannexb`` filter gives the NAL units. The server is
the test's stand-in for a camera, not the thing under test.
"""

from __future__ import annotations

import base64
import re
import socket
import struct
import threading
import time
from pathlib import Path

MTU_PAYLOAD = 1400
PT = 96
START = re.compile(b"\x00\x00\x01")


def _nal_units(annexb: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit (start codes removed)."""
    starts = [m.end() for m in START.finditer(annexb)]
    units = []
    for i, s in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(annexb)
        unit = annexb[s:end].rstrip(b"\x00") if i + 1 < len(starts) else annexb[s:end]
        if unit:
            units.append(unit)
    return units


def _access_units(path: Path) -> tuple[list[tuple[int, list[bytes]]], float, bytes, bytes]:
    """(90 kHz pts, NAL units) per access unit in decode order; the frame rate; SPS; PPS."""
    import av

    units, sps, pps = [], b"", b""
    with av.open(str(path)) as box:
        stream = box.streams.video[0]
        rate = float(stream.average_rate or 25)
        scale = float(stream.time_base) * 90000
        bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
        for packet in box.demux(stream):
            for out in bsf.filter(packet) if packet.size else bsf.filter(None):
                nals = _nal_units(bytes(out))
                for nal in nals:
                    kind = nal[0] & 0x1F
                    sps = nal if kind == 7 and not sps else sps
                    pps = nal if kind == 8 and not pps else pps
                pts = out.pts if out.pts is not None else len(units)
                units.append((int(pts * scale), nals))
    return units, rate, sps, pps


def _rtp_packets(nal: bytes, marker: bool, seq: int, ts: int) -> list[bytes]:
    def header(m: bool, n: int) -> bytes:
        return struct.pack("!BBHII", 0x80, (0x80 if m else 0) | PT, n & 0xFFFF, ts & 0xFFFFFFFF, 1)

    if len(nal) <= MTU_PAYLOAD:
        return [header(marker, seq) + nal]
    indicator, kind = (nal[0] & 0xE0) | 28, nal[0] & 0x1F
    body = nal[1:]
    chunks = [body[i : i + MTU_PAYLOAD] for i in range(0, len(body), MTU_PAYLOAD)]
    packets = []
    for i, chunk in enumerate(chunks):
        first, last = i == 0, i == len(chunks) - 1
        fu = (0x80 if first else 0) | (0x40 if last else 0) | kind
        packets.append(header(marker and last, seq + i) + bytes([indicator, fu]) + chunk)
    return packets


class H264RtspServer:
    """``with H264RtspServer(path) as server:`` streams ``path`` at ``server.url``."""

    def __init__(self, path: Path) -> None:
        self.units, self.rate, sps, pps = _access_units(path)
        b64 = b",".join(base64.b64encode(x) for x in (sps, pps)).decode()
        self.sdp = (
            "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=ssd_trt test camera\r\nc=IN IP4 127.0.0.1\r\n"
            f"t=0 0\r\nm=video 0 RTP/AVP {PT}\r\na=rtpmap:{PT} H264/90000\r\n"
            f"a=fmtp:{PT} packetization-mode=1;profile-level-id={sps[1:4].hex()};"
            f"sprop-parameter-sets={b64}\r\na=control:track0\r\n"
        )
        self._listener: socket.socket | None = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"rtsp://127.0.0.1:{self.port}/live"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def start(self) -> None:
        """Listen (again, on the same port after ``kill``) and serve clients."""
        if self._listener is None:
            self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR
        self._stop = threading.Event()
        self._listener.settimeout(0.2)
        accept = threading.Thread(
            target=self._accept, args=(self._listener, self._stop), daemon=True
        )
        accept.start()
        self._threads = [accept]

    def kill(self) -> None:
        """A camera that dies: every connection cut at once, nothing listening."""
        self._stop.set()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=10)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._conns = []

    def __enter__(self) -> H264RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, stop), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            conn.settimeout(0.2)
            buffer = b""
            while not stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    request, buffer = buffer.split(b"\r\n\r\n", 1)
                    if self._answer(conn, request.decode("latin-1")):
                        self._play(conn, stop)
                        return

    def _answer(self, conn: socket.socket, request: str) -> bool:
        """Answer one request; True when it was PLAY."""
        method = request.split(" ", 1)[0]
        cseq = re.search(r"CSeq:\s*(\d+)", request, re.I)
        head = f"RTSP/1.0 200 OK\r\nCSeq: {cseq.group(1) if cseq else 0}\r\n"
        body = ""
        if method == "OPTIONS":
            head += "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"
        elif method == "DESCRIBE":
            body = self.sdp
            head += f"Content-Base: {self.url}/\r\nContent-Type: application/sdp\r\n"
        elif method == "SETUP":
            if "TCP" not in request:
                head = head.replace("200 OK", "461 Unsupported Transport")
            head += "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 1\r\n"
        elif method in ("PLAY", "TEARDOWN"):
            head += "Session: 1\r\nRange: npt=0.000-\r\n" if method == "PLAY" else ""
        else:
            head = head.replace("200 OK", "501 Not Implemented")
        conn.sendall((head + f"Content-Length: {len(body)}\r\n\r\n" + body).encode())
        return method == "PLAY"

    def _play(self, conn: socket.socket, stop: threading.Event) -> None:
        """Access units in decode order at the file's rate, looping, until the client goes."""
        seq, start, loop_ts, n = 0, time.monotonic(), 0, 0
        span = int(round(len(self.units) * 90000 / self.rate))  # one pass of the file
        conn.settimeout(5)
        while not stop.is_set():
            for pts, nals in self.units:
                delay = start + n / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                n += 1
                packets = []
                for i, nal in enumerate(nals):
                    new = _rtp_packets(nal, i == len(nals) - 1, seq, pts + loop_ts)
                    seq += len(new)
                    packets += new
                try:
                    conn.sendall(
                        b"".join(b"$\x00" + struct.pack("!H", len(p)) + p for p in packets)
                    )
                except OSError:
                    return
                if stop.is_set():
                    return
            loop_ts += span
