"""MongoDB wire protocol as a sans-IO codec: bytes in → events, replies → bytes.

Covers what drivers send: OP_MSG (document sequences, the checksum flag), OP_QUERY as
far as the legacy isMaster handshake goes, OP_COMPRESSED (zlib, zstd) around either.
It never touches a socket; server.py feeds it and writes what it returns.

A frame whose header is readable but whose content is bad (bad BSON, a bad section,
a wrong checksum) becomes a BadRequest: the adapter answers an error and the
connection goes on, since the next frame still starts at a known offset. A header
that cannot be trusted (length out of bounds, unknown opcode) becomes a Fatal: the
stream is desynchronised, so the adapter answers if it can and closes.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import bson
import google_crc32c
import zstandard
from bson.errors import BSONError

OP_REPLY, OP_QUERY, OP_COMPRESSED, OP_MSG = 1, 2004, 2012, 2013
CHECKSUM_PRESENT, MORE_TO_COME, EXHAUST_ALLOWED = 1 << 0, 1 << 1, 1 << 16
KNOWN_FLAGS = CHECKSUM_PRESENT | MORE_TO_COME | EXHAUST_ALLOWED
DEFAULT_MAX_MESSAGE_BYTES = 48_000_000
HEADER = struct.Struct("<iiii")
_I32 = struct.Struct("<i")
COMPRESSED_HEADER = struct.Struct("<iiB")
QUERY_REPLY_HEADER = struct.Struct("<iqii")
COMPRESSORS = {"zlib": 2, "zstd": 3}  # the ids OP_COMPRESSED carries (1 is snappy: no library here)
_COMPRESSOR_NAMES = {v: k for k, v in COMPRESSORS.items()}


@dataclass(slots=True)
class Request:
    """One command: OP_MSG (op_code 2013) or a legacy OP_QUERY (2004)."""
    request_id: int
    op_code: int
    body: dict
    sequences: dict[str, list] = field(default_factory=dict)
    more_to_come: bool = False      # the client expects no reply (w: 0 writes)
    compressor: str | None = None   # the reply goes back compressed the same way
    size: int = 0


@dataclass(slots=True)
class BadRequest:
    """A well-framed message with bad content: answer an error, keep the connection."""
    request_id: int
    op_code: int
    code: int
    code_name: str
    message: str


@dataclass(slots=True)
class Fatal:
    """The stream cannot be trusted any more: answer if request_id is known, then close."""
    request_id: int | None
    op_code: int
    code: int
    code_name: str
    message: str


class _Bad(Exception):
    def __init__(self, code: int, code_name: str, message: str) -> None:
        super().__init__(message)
        self.code, self.code_name, self.message = code, code_name, message


# ---- crc32c (Castagnoli), for the OP_MSG checksum ----
def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    # Compiled (google-crc32c, hardware CRC where the CPU has it): the pure-Python table
    # loop took 88 ms per MiB on the event loop, so one checksummed 48 MB frame stalled
    # every service of the node for seconds.
    return google_crc32c.extend(crc, bytes(data) if type(data) is memoryview else data)


def _decode(data, what: str) -> dict:
    try:
        return bson.decode(data)
    except (BSONError, ValueError, TypeError, OverflowError, IndexError) as e:
        raise _Bad(22, "InvalidBSON", f"invalid BSON in {what}: {e}") from None


def _decompress(compressor_id: int, payload: bytes, size: int) -> bytes:
    try:
        if compressor_id == 0:
            out = payload
        elif compressor_id == 2:
            d = zlib.decompressobj()
            out = d.decompress(payload, size + 1)
        elif compressor_id == 3:
            out = zstandard.ZstdDecompressor().decompress(payload, max_output_size=size + 1)
        else:
            raise _Bad(2, "BadValue", f"unsupported compressor id {compressor_id} (supported: zlib, zstd)")
    except (zlib.error, zstandard.ZstdError) as e:
        raise _Bad(2, "BadValue", f"cannot decompress OP_COMPRESSED body: {e}") from None
    if len(out) != size:
        raise _Bad(2, "BadValue", f"OP_COMPRESSED body is {len(out)} bytes, header says {size}")
    return out


def compress(name: str, data: bytes) -> bytes:
    if name == "zlib":
        return zlib.compress(data, 1)
    return zstandard.ZstdCompressor(level=1).compress(data)


def parse_op_msg(request_id: int, payload: memoryview, checksum_span: memoryview | None) -> Request:
    """payload: the OP_MSG body after the 16-byte header."""
    if len(payload) < 5:
        raise _Bad(40, "Location40", "OP_MSG too short for flags and a section")
    (flags,) = struct.unpack_from("<I", payload, 0)
    if flags & 0xFFFF & ~KNOWN_FLAGS:
        raise _Bad(40, "Location40", f"OP_MSG has unknown required flag bits {flags & 0xFFFF & ~KNOWN_FLAGS:#x}")
    end = len(payload)
    if flags & CHECKSUM_PRESENT:
        if end < 9:
            raise _Bad(40, "Location40", "OP_MSG checksum flag set but no room for the checksum")
        end -= 4
        (expected,) = struct.unpack_from("<I", payload, end)
        # Inside OP_COMPRESSED (checksum_span None) the sum is not over these bytes: skipped.
        if checksum_span is not None and crc32c(checksum_span[:-4]) != expected:
            raise _Bad(40, "Location40", "OP_MSG checksum mismatch")
    pos, body, sequences = 4, None, {}
    while pos < end:
        kind = payload[pos]
        pos += 1
        if kind == 0:
            if end - pos < 5:
                raise _Bad(40, "Location40", "truncated body section")
            (size,) = struct.unpack_from("<i", payload, pos)
            if size < 5 or pos + size > end:
                raise _Bad(40, "Location40", f"body section claims {size} bytes, {end - pos} left")
            if body is not None:
                raise _Bad(40, "Location40", "OP_MSG has more than one body section")
            body = _decode(payload[pos:pos + size], "the body section")
            pos += size
        elif kind == 1:
            if end - pos < 5:
                raise _Bad(40, "Location40", "truncated document sequence")
            (size,) = struct.unpack_from("<i", payload, pos)
            if size < 5 or pos + size > end:
                raise _Bad(40, "Location40", f"document sequence claims {size} bytes, {end - pos} left")
            stop = pos + size
            nul = bytes(payload[pos + 4:stop]).find(b"\0")
            if nul < 0:
                raise _Bad(40, "Location40", "document sequence identifier is not terminated")
            ident = bytes(payload[pos + 4:pos + 4 + nul]).decode("utf-8", "replace")
            p = pos + 4 + nul + 1
            docs = []
            while p < stop:
                if stop - p < 5:
                    raise _Bad(40, "Location40", f"truncated document in sequence {ident!r}")
                (dsize,) = struct.unpack_from("<i", payload, p)
                if dsize < 5 or p + dsize > stop:
                    raise _Bad(40, "Location40", f"document in sequence {ident!r} overruns it")
                docs.append(_decode(payload[p:p + dsize], f"document sequence {ident!r}"))
                p += dsize
            sequences.setdefault(ident, []).extend(docs)
            pos = stop
        else:
            raise _Bad(40, "Location40", f"unknown OP_MSG section kind {kind}")
    if body is None:
        raise _Bad(40, "Location40", "OP_MSG has no body section")
    return Request(request_id, OP_MSG, body, sequences, bool(flags & MORE_TO_COME))


def parse_op_query(request_id: int, payload: memoryview) -> Request:
    nul = bytes(payload[4:]).find(b"\0") if len(payload) > 4 else -1
    if nul < 0:
        raise _Bad(40, "Location40", "OP_QUERY collection name is not terminated")
    collection = bytes(payload[4:4 + nul]).decode("utf-8", "replace")
    pos = 4 + nul + 1 + 8
    if len(payload) < pos + 5:
        raise _Bad(40, "Location40", "OP_QUERY too short for its query document")
    (size,) = struct.unpack_from("<i", payload, pos)
    if size < 5 or pos + size > len(payload):
        raise _Bad(40, "Location40", "OP_QUERY query document overruns the message")
    query = _decode(payload[pos:pos + size], "the OP_QUERY query")
    if isinstance(query.get("$query"), dict):  # {$query: cmd, $readPreference: ...}
        query = {**query["$query"], **{k: v for k, v in query.items() if k != "$query"}}
    db = collection.split(".", 1)[0]
    if collection.endswith(".$cmd"):
        query.setdefault("$db", db)
    return Request(request_id, OP_QUERY, query, {}, False)


class WireCodec:
    """One connection's inbound framing; reply encoders are plain functions below."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self.closed = False

    @property
    def buffered(self) -> int:
        """Bytes of a message not complete yet."""
        return len(self._buf)

    def receive(self, data: bytes) -> list:
        if self.closed:
            return []
        buf = self._buf
        buf += data
        events: list = []
        pos, n = 0, len(buf)
        while n - pos >= 16:
            length, request_id, _, op_code = HEADER.unpack_from(buf, pos)
            if length < 16 or length > self.max_message_bytes:
                self.closed = True
                events.append(Fatal(request_id, op_code, 10334, "BSONObjectTooLarge",
                                    f"message length {length} is outside 16..{self.max_message_bytes}"))
                break
            if n - pos < length:
                break
            frame = memoryview(bytes(buf[pos:pos + length]))  # a copy: buf is resized below
            pos += length
            event = self._frame(frame, request_id, op_code, length)
            events.append(event)
            if isinstance(event, Fatal):
                self.closed = True
                break
        del buf[:pos]
        return events

    def _frame(self, frame: memoryview, request_id: int, op_code: int, length: int):
        compressor = None
        try:
            payload = frame[16:]
            if op_code == OP_COMPRESSED:
                if len(payload) < 9:
                    raise _Bad(40, "Location40", "OP_COMPRESSED too short")
                op_code, size, cid = COMPRESSED_HEADER.unpack_from(payload, 0)
                if op_code not in (OP_MSG, OP_QUERY):
                    return Fatal(request_id, op_code, 40, "Location40",
                                 f"OP_COMPRESSED wraps unsupported opcode {op_code}")
                if size < 0 or size + 16 > self.max_message_bytes:
                    raise _Bad(10334, "BSONObjectTooLarge", f"uncompressed size {size} over the limit")
                compressor = _COMPRESSOR_NAMES.get(cid)
                payload = memoryview(_decompress(cid, bytes(payload[9:]), size))
                frame = None  # the checksum covers the compressed frame; not re-checked
            if op_code == OP_MSG:
                req = parse_op_msg(request_id, payload, frame)
            elif op_code == OP_QUERY:
                req = parse_op_query(request_id, payload)
            else:
                return Fatal(request_id, op_code, 40, "Location40", f"unsupported opcode {op_code}")
        except _Bad as e:
            return BadRequest(request_id, op_code, e.code, e.code_name, e.message)
        req.compressor = compressor
        req.size = length
        return req


_request_ids = iter(range(1, 1 << 62))


def _frame_out(response_to: int, op_code: int, payload: bytes, compressor: str | None) -> bytes:
    if compressor:
        body = compress(compressor, payload)
        return HEADER.pack(16 + 9 + len(body), next(_request_ids), response_to, OP_COMPRESSED) + \
            COMPRESSED_HEADER.pack(op_code, len(payload), COMPRESSORS[compressor]) + body
    return HEADER.pack(16 + len(payload), next(_request_ids), response_to, op_code) + payload


def encode_msg(response_to: int, doc: dict, compressor: str | None = None, extra: bytes = b"") -> bytes:
    """An OP_MSG reply with one body section (``extra``: BSON elements it ends with)."""
    return _frame_out(response_to, OP_MSG, b"\0\0\0\0\0" + _encode(doc, extra), compressor)


def encode_reply(response_to: int, doc: dict, compressor: str | None = None, extra: bytes = b"") -> bytes:
    """An OP_REPLY with one document: the answer to a legacy OP_QUERY command."""
    return _frame_out(response_to, OP_REPLY, QUERY_REPLY_HEADER.pack(0, 0, 0, 1) + _encode(doc, extra),
                      compressor)


def encode_answer(request_op_code: int, response_to: int, doc: dict, compressor: str | None = None,
                  extra: bytes = b"") -> bytes:
    if request_op_code == OP_QUERY:
        return encode_reply(response_to, doc, compressor, extra)
    return encode_msg(response_to, doc, compressor, extra)


def _encode(doc: dict, extra: bytes) -> bytes:
    """doc as BSON, then the elements ``extra`` (made once, not encoded again each time)."""
    data = bson.encode(doc)
    if not extra:
        return data
    return _I32.pack(len(data) + len(extra)) + data[4:-1] + extra + b"\0"
