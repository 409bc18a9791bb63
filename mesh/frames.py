"""Link frames: length-prefixed, checksummed msgpack around one message (:mod:`mesh.wire`).

Every byte between agents is one of these frames: ``u32 length, u32 CRC32 of
the body, body``, the body ``[1, sent_at, extra_s, message]``.  The checksum
lets a receiver detect (emulated or real) corruption and drop the frame
instead of acting on it.  ``encode_frame`` turns a message into bytes and
``FrameDecoder`` is a sans-I/O parser (feed bytes, get frames) in the manner of
h11.  A malformed or oversized frame becomes a :class:`WireError` item in the
decoder's output and the stream carries on: one bad frame never loses the
frames behind it.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import msgpack

from mesh.wire import ChecksumError, Message, WireError, _decode_msg, _encode_msg, _expect, _unpack

_HEADER = struct.Struct(">II")  # body length, CRC32 of the body


@dataclass(frozen=True)
class LinkFrame:
    """A message as it crosses one link, stamped with the sender's wall time."""

    sent_at: float
    msg: Message
    extra_s: float = 0.0      # sender's emulated delay beyond propagation (serialization, jitter, faults)
    wire_size: int = field(default=0, compare=False)  # bytes on the wire, set by the decoder


def encode_frame(frame: LinkFrame, max_frame_bytes: int) -> bytes:
    body = msgpack.packb([1, float(frame.sent_at), float(frame.extra_s), _encode_msg(frame.msg)], use_bin_type=True)
    if len(body) > max_frame_bytes:
        raise WireError(f"frame of {len(body)} bytes exceeds the {max_frame_bytes}-byte limit")
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


_FLOAT = struct.Struct(">d")


def frame_from_message(sent_at: float, extra_s: float, message: bytes, max_frame_bytes: int) -> bytes:
    """``encode_frame`` for a pre-encoded message (same bytes, no re-encoding)."""
    body = b"\x94\x01\xcb" + _FLOAT.pack(sent_at) + b"\xcb" + _FLOAT.pack(extra_s) + message
    if len(body) > max_frame_bytes:
        raise WireError(f"frame of {len(body)} bytes exceeds the {max_frame_bytes}-byte limit")
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def frame_size(message: bytes) -> int:
    return _HEADER.size + 20 + len(message)


def corrupt_frame(frame: bytes, position: int) -> bytes:
    """Flip one bit of an encoded frame's body (emulated corruption; the CRC catches it)."""
    body_len = len(frame) - _HEADER.size
    i = _HEADER.size + position % max(body_len, 1)
    return frame[:i] + bytes([frame[i] ^ 0x01]) + frame[i + 1:]


def decode_body(body: bytes) -> LinkFrame:
    raw = _unpack(body)
    if not isinstance(raw, list) or len(raw) != 4 or raw[0] != 1:
        raise WireError("frame: expected [version 1, sent_at, extra_s, message]")
    sent_at = float(_expect(raw[1], (int, float), "sent_at"))
    extra = float(_expect(raw[2], (int, float), "extra_s"))
    if not (math.isfinite(sent_at) and math.isfinite(extra)) or extra < 0:
        raise WireError("frame: sent_at and extra_s must be finite, extra_s ≥ 0")
    return LinkFrame(sent_at, _decode_msg(raw[3]), extra, wire_size=len(body) + _HEADER.size)


class FrameDecoder:
    """Splits a byte stream into frames; memory is bounded by ``max_frame_bytes``.

    An oversized frame is skipped (its length is known) and reported, as is a
    body that does not decode; the frames after it are still delivered.
    """

    def __init__(self, max_frame_bytes: int):
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._skip = 0

    def feed(self, data: bytes) -> list[LinkFrame | WireError]:
        out: list[LinkFrame | WireError] = []
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buf += data
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buf))
                del self._buf[:dropped]
                self._skip -= dropped
                if self._skip:
                    break
            if len(self._buf) < _HEADER.size:
                break
            n, crc = _HEADER.unpack_from(self._buf)
            if n > self.max_frame_bytes:
                out.append(WireError(f"frame of {n} bytes exceeds the {self.max_frame_bytes}-byte limit; skipped"))
                del self._buf[:_HEADER.size]
                self._skip = n
                continue
            if len(self._buf) < _HEADER.size + n:
                break
            body = bytes(self._buf[_HEADER.size:_HEADER.size + n])
            del self._buf[:_HEADER.size + n]
            if zlib.crc32(body) != crc:
                out.append(ChecksumError("checksum mismatch: frame corrupted in transit; dropped"))
                continue
            try:
                out.append(decode_body(body))
            except WireError as exc:
                out.append(exc)
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
