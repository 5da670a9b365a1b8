"""NvdecDecoder's own bookkeeping around PyNvVideoCodec, run where PyNvVideoCodec cannot: a
stand-in module takes the calls the real decoder would get and records them, and the CUDA
seam's stream and context calls are replaced by counters. What is checked is this package's
logic, not NVDEC (tests/test_gpu_nvdec.py runs the real decoder on the GPU machine):

* only the decoding thread calls the decoder: pictures released on other threads are unlocked
  by it, before its next packet (PyNvVideoCodec's UnlockFrame races a decode otherwise);
* the decoder outlives its pictures and the stream outlives the decoder, across ``reset()``
  (a reconnect) and ``close()``;
* every picture names its decoder's stream (none on the legacy stream);
* the decoder capabilities are asked once per codec for all streams, also when the answer is no.
"""

from __future__ import annotations

import gc
import threading
import types
from fractions import Fraction
from typing import Any

import pytest

from ssd_trt.runtime import cuda
from ssd_trt.video import nvdec
from ssd_trt.video.demux import Packet, StreamInfo

pytestmark = pytest.mark.fast

INFO = StreamInfo("h264", 64, 48, 30.0, Fraction(1, 30), 0, None, "bt601", False, True)


class _Decoder:
    """PyNvVideoCodec's decoder as NvdecDecoder uses it: a picture per packet, buffers by
    pointer; every call logged with the calling thread."""

    def __init__(self, log: list, number: int, kwargs: dict[str, Any]) -> None:
        self.log, self.number, self.kwargs = log, number, kwargs
        self.next_ptr = 0x10000 * number

    def GetNumDecodedFrame(self, packet: Any) -> int:  # noqa: N802 - PyNvVideoCodec's name
        self.log.append(("decode", self.number, threading.get_ident()))
        return 1 if packet.bsl else 0

    def GetLockedFrame(self) -> int:  # noqa: N802
        self.next_ptr += 0x100
        return self.next_ptr

    def UnlockFrame(self, ptr: int) -> None:  # noqa: N802
        self.log.append(("unlock", self.number, ptr, threading.get_ident()))

    def __del__(self) -> None:
        self.log.append(("decoder gone", self.number))


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    log: list = []
    made: list[
        dict[str, Any]
    ] = []  # CreateDecoder's arguments (the decoders' own lifetime is tested)
    supported = {"H264": 1, "HEVC": 0}

    def create(**kwargs: Any) -> _Decoder:
        made.append(kwargs)
        return _Decoder(log, len(made), kwargs)

    def caps(gpuid: int, codec: str) -> dict[str, int]:
        log.append(("caps", codec))
        return {"supported": supported[codec], "width_max": 4096, "height_max": 4096}

    module = types.SimpleNamespace(
        cudaVideoCodec=types.SimpleNamespace(H264="H264", HEVC="HEVC"),
        DisplayDecodeLatencyType=types.SimpleNamespace(LOW=0, NATIVE=1),
        VideoPacketFlag=types.SimpleNamespace(ENDOFPICTURE=8),
        GetDecoderCaps=caps,
        CreateDecoder=create,
        PacketData=types.SimpleNamespace,
    )
    monkeypatch.setitem(__import__("sys").modules, "PyNvVideoCodec", module)
    handles = iter(range(1001, 2000))

    def new_stream(device_id: int) -> int:
        log.append(("stream", next_handle := next(handles)))
        return next_handle

    monkeypatch.setattr(cuda, "block_on_waits", lambda device_id: True)
    monkeypatch.setattr(cuda, "new_stream", new_stream)
    monkeypatch.setattr(
        cuda, "destroy_stream", lambda handle, device_id: log.append(("stream gone", handle))
    )
    return {"log": log, "made": made}


def _packet(pts: int) -> Packet:
    return Packet(b"\x00\x00\x01\x65" + bytes(16), pts, pts == 0, "h264", Fraction(1, 30))


def test_pictures_released_elsewhere_are_unlocked_by_the_decoding_thread(world) -> None:
    log = world["log"]
    decoder = nvdec.NvdecDecoder(INFO)
    held: list = []
    worker = threading.Thread(target=lambda: held.extend(decoder.decode(_packet(0))))
    worker.start()
    worker.join()
    ptr = held[0].device.planes[0][0]
    held.clear()  # the picture goes on this (the main) thread
    gc.collect()
    assert not [e for e in log if e[0] == "unlock"], "unlocked outside the decoding thread"
    decoder.decode(_packet(1))  # the decoding thread's next packet
    unlocks = [e for e in log if e[0] == "unlock"]
    assert unlocks == [("unlock", 1, ptr, threading.get_ident())]
    assert log.index(unlocks[0]) < len(log) - 1 and log[-1][0] == "decode"  # before decoding


def test_decoder_outlives_its_pictures_and_stream_outlives_decoder(world) -> None:
    log, made = world["log"], world["made"]
    decoder = nvdec.NvdecDecoder(INFO)
    old = decoder.decode(_packet(0))
    assert old[0].device.stream == 1001 == made[0]["cudastream"]
    decoder.reset()  # a reconnect: a new decoder and stream; the old picture stays valid
    new = decoder.decode(_packet(1))
    assert new[0].device.stream == 1002 == made[1]["cudastream"]
    decoder.close()
    gc.collect()
    assert ("decoder gone", 1) not in log and ("decoder gone", 2) not in log
    old_ptr = old[0].device.planes[0][0]
    del old
    gc.collect()
    tail = log[-3:]
    assert tail == [("unlock", 1, old_ptr, threading.get_ident()), ("decoder gone", 1),
                    ("stream gone", 1001)]  # fmt: skip
    del new
    gc.collect()
    assert log[-2:] == [("decoder gone", 2), ("stream gone", 1002)]


def test_legacy_stream_decoders_name_no_stream(world) -> None:
    decoder = nvdec.NvdecDecoder(INFO, own_stream=False)
    (picture,) = decoder.decode(_packet(0))
    assert picture.device.stream is None and world["made"][0]["cudastream"] == 0
    assert not [e for e in world["log"] if e[0] == "stream"]


def test_capabilities_are_asked_once_per_codec_also_when_the_answer_is_no(world) -> None:
    make = nvdec.nvdec_or_cpu()
    first, second = make(INFO), make(INFO)
    assert isinstance(first, nvdec.NvdecDecoder) and isinstance(second, nvdec.NvdecDecoder)
    hevc = StreamInfo("hevc", 64, 48, 30.0, Fraction(1, 30), 0, None, "bt601", False, True)
    pytest.importorskip("av", reason="the CPU fallback is PyAV (the [video] extra)")
    assert [type(make(hevc)) for _ in range(2)] == [nvdec.CpuDecoder] * 2
    assert [e for e in world["log"] if e[0] == "caps"] == [("caps", "H264"), ("caps", "HEVC")]
