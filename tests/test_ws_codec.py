"""fast.ws: WebSocket frame encoder and decoder, differential against wsproto's frame layer."""

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from fast.ws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    FrameDecoder,
    Message,
    Ping,
    Pong,
    ProtocolError,
    encode_binary,
    encode_close,
    encode_frame,
    encode_masked_frame,
    encode_ping,
    encode_pong,
    encode_text,
    is_valid_utf8,
)

FEW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BIG = 1 << 24  # limits that never trigger, for the differential tests

# ---------------------------------------------------------------------------------------
# A frame builder written from RFC 6455 §5.2 alone (independent of fast.ws), able to make
# every kind of invalid frame.


def raw_frame(opcode, payload=b"", fin=True, rsv=0, mask=b"\x37\xfa\x21\x3d", length_form=None):
    """``length_form``: None (minimal), 7, 16 or 64 bits, to force a length encoding."""
    n = len(payload)
    form = length_form or (7 if n <= 125 else 16 if n <= 0xFFFF else 64)
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if mask is not None else 0
    if form == 7:
        head += bytes([bit | n])
    elif form == 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# ---------------------------------------------------------------------------------------
# Feeding helpers


def pieces(data, points):
    cuts = sorted({p for p in points if 0 < p < len(data)})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def decode(chunks, **limits):
    """Events as comparable tuples, checking the event grammar on the way."""
    decoder = FrameDecoder(**limits)
    out = []
    for chunk in chunks:
        for ev in decoder.feed(chunk):
            assert not out or out[-1][0] not in ("error", "close"), "event after the last one"
            if type(ev) is Message:
                assert ev.opcode in (OP_TEXT, OP_BINARY)
                if ev.opcode == OP_TEXT:
                    ev.data.decode("utf-8")
                out.append(("msg", ev.opcode, ev.data))
            elif type(ev) is Ping:
                out.append(("ping", ev.payload))
            elif type(ev) is Pong:
                out.append(("pong", ev.payload))
            elif type(ev) is Close:
                out.append(("close", ev.code, ev.reason))
            else:
                assert type(ev) is ProtocolError and ev.reason
                assert ev.close_code in (1002, 1007, 1009)
                out.append(("error", ev.close_code))
    if out and out[-1][0] in ("error", "close"):
        assert decoder.feed(raw_frame(OP_PING)) == [], "decoder alive after the end"
    return out


def all_ways(data, points=(), bytewise=True, **limits):
    """Events for ``data`` fed whole, cut at ``points`` and one byte at a time: they must agree."""
    whole = decode([data], **limits)
    assert decode(pieces(data, points), **limits) == whole, "split feeding changed the result"
    if bytewise:
        assert decode([data[i : i + 1] for i in range(len(data))], **limits) == whole, (
            "byte-by-byte feeding changed the result"
        )
    return whole


def wsproto_events(data, client=False, chunks=None):
    """The same tuples from wsproto's frame layer (server side unless ``client``)."""
    proto = FrameProtocol(client=client, extensions=[])
    out = []
    parts = []
    for chunk in [data] if chunks is None else chunks:
        proto.receive_bytes(chunk)
        try:
            for frame in proto.received_frames():
                if frame.opcode is Opcode.PING:
                    out.append(("ping", frame.payload))
                elif frame.opcode is Opcode.PONG:
                    out.append(("pong", frame.payload))
                elif frame.opcode is Opcode.CLOSE:
                    code, reason = frame.payload
                    out.append(("close", int(code), reason))
                else:
                    payload = frame.payload
                    parts.append(payload.encode() if isinstance(payload, str) else payload)
                    if frame.message_finished:
                        op = OP_TEXT if frame.opcode is Opcode.TEXT else OP_BINARY
                        out.append(("msg", op, b"".join(parts)))
                        parts = []
        except ParseFailed as exc:
            out.append(("error", int(exc.code)))
            break
    return out


# ---------------------------------------------------------------------------------------
# Generated messages: every length class, text and binary, fragmented, with control frames


LENGTHS = st.one_of(
    st.integers(0, 300),
    st.sampled_from([0, 1, 124, 125, 126, 127, 65535]),
    st.sampled_from([65536, 70001]),
)
CHARS = "aZ0 é߿ࠀ€\uffff𐀀😀\U0010ffff"


def make_payload(kind, n, seed):
    """``n`` bytes: random binary, or UTF-8 text mixing 1- to 4-byte characters."""
    rnd = random.Random(seed)
    if kind == OP_BINARY:
        return rnd.randbytes(n)
    out = bytearray()
    while True:
        ch = rnd.choice(CHARS).encode()
        if len(out) + len(ch) > n:
            break
        out += ch
    return bytes(out) + b"x" * (n - len(out))


@st.composite
def messages(draw, large=True):
    """(opcode, payload, fragment sizes, control frames to put before each fragment)."""
    kind = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
    n = draw(LENGTHS if large else st.integers(0, 300))
    payload = make_payload(kind, n, draw(st.integers(0, 2**32)))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    controls = [
        draw(st.lists(st.tuples(st.sampled_from([OP_PING, OP_PONG]), st.binary(max_size=125)),
                      max_size=1))
        if i else []
        for i in range(len(sizes))
    ]
    return kind, payload, sizes, controls


def fragments(kind, payload, sizes):
    """(opcode, piece, fin) for each fragment of a message."""
    out, pos = [], 0
    for i, size in enumerate(sizes):
        out.append((kind if i == 0 else OP_CONT, payload[pos : pos + size], i == len(sizes) - 1))
        pos += size
    return out


def char_sizes(text, sizes):
    """Fragment sizes moved so that no fragment ends inside a UTF-8 character."""
    cuts, pos = [], 0
    for size in sizes[:-1]:
        pos += size
        cut = pos
        while cut < len(text) and text[cut] & 0xC0 == 0x80:
            cut -= 1
        cuts.append(max(cut, cuts[-1] if cuts else 0))
    return [b - a for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def expected(msgs, close=None):
    out = []
    for kind, payload, _sizes, controls in msgs:
        for ctl in controls:
            out.extend(("ping" if op == OP_PING else "pong", p) for op, p in ctl)
        out.append(("msg", kind, payload))
    if close is not None:
        out.append(("close", *close))
    return out


def client_stream(msgs, close, masks):
    """Masked client frames (fast.ws's client encoder) for ``msgs`` and an optional close."""
    data = b""
    for kind, payload, sizes, controls in msgs:
        for (op, piece, fin), ctl in zip(fragments(kind, payload, sizes), controls, strict=True):
            for cop, cpayload in ctl:
                data += encode_masked_frame(cop, cpayload, masks.randbytes(4))
            data += encode_masked_frame(op, piece, masks.randbytes(4), fin)
    if close is not None:
        code, reason = close
        payload = b"" if code == 1005 else struct.pack("!H", code) + reason.encode()
        data += encode_masked_frame(OP_CLOSE, payload, masks.randbytes(4))
    return data


closes = st.one_of(
    st.none(),
    st.just((1005, "")),
    st.tuples(st.sampled_from([1000, 1001, 1003, 1011, 3000, 4999]),
              st.text(max_size=20).filter(lambda t: len(t.encode()) <= 123)),
)


@FEW
@given(msgs=st.lists(messages(), min_size=1, max_size=3), close=closes,
       seed=st.integers(0, 2**32), cuts=st.lists(st.integers(0, 1 << 18), max_size=8))
def test_client_frames_match_wsproto(msgs, close, seed, cuts):
    data = client_stream(msgs, close, random.Random(seed))
    # byte by byte only for the smaller streams: Python-level feeding of 64 KiB+ is slow
    ours = all_ways(data, [c % (len(data) + 1) for c in cuts], bytewise=len(data) < 3000,
                    max_message_size=BIG)
    assert ours == expected(msgs, close)
    assert wsproto_events(data) == ours
    assert wsproto_events(data, chunks=pieces(data, cuts)) == ours


@FEW
@given(msgs=st.lists(messages(large=False), min_size=1, max_size=3), close=closes,
       seed=st.integers(0, 2**32))
def test_client_frames_byte_by_byte(msgs, close, seed):
    data = client_stream(msgs, close, random.Random(seed))
    assert all_ways(data, [len(data) // 3]) == expected(msgs, close)


@FEW
@given(msgs=st.lists(messages(), min_size=1, max_size=3), close=closes,
       cuts=st.lists(st.integers(0, 1 << 18), max_size=8))
def test_server_frames_parsed_by_wsproto_client(msgs, close, cuts):
    data = b""
    for kind, payload, sizes, controls in msgs:
        for (op, piece, fin), ctl in zip(fragments(kind, payload, sizes), controls, strict=True):
            for cop, cpayload in ctl:
                data += encode_ping(cpayload) if cop == OP_PING else encode_pong(cpayload)
            data += encode_frame(op, piece, fin)
    if close is not None:
        data += encode_close(close[0], close[1].encode())
    want = expected(msgs, close)
    assert wsproto_events(data, client=True) == want
    chunks = pieces(data, [c % (len(data) + 1) for c in cuts])
    assert wsproto_events(data, client=True, chunks=chunks) == want


@FEW
@given(msgs=st.lists(messages(), min_size=1, max_size=3), cuts=st.lists(st.integers(0, 1 << 18)))
def test_wsproto_client_frames_decoded(msgs, cuts):
    client = FrameProtocol(client=True, extensions=[])
    data = b""
    for kind, payload, sizes, controls in msgs:
        if kind == OP_TEXT:
            sizes = char_sizes(payload, sizes)
        for (_op, piece, fin), ctl in zip(fragments(kind, payload, sizes), controls, strict=True):
            for cop, cpayload in ctl:
                data += client.ping(cpayload) if cop == OP_PING else client.pong(cpayload)
            # wsproto sends text given as str, so text fragments end on character boundaries
            data += client.send_data(piece.decode() if kind == OP_TEXT else piece, fin)
    data += client.close(1000, "done")
    ours = all_ways(bytes(data), [c % (len(data) + 1) for c in cuts], bytewise=len(data) < 3000,
                    max_message_size=BIG)
    assert ours == expected(msgs, (1000, "done"))


def test_length_classes_exact():
    for n in (0, 1, 125, 126, 127, 65535, 65536, 100_000):
        payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
        frame = encode_frame(OP_BINARY, payload)
        head = 2 if n <= 125 else 4 if n <= 65535 else 10
        assert frame == raw_frame(OP_BINARY, payload, mask=None) and len(frame) == head + n
        assert encode_binary(payload) == frame
        masked = encode_masked_frame(OP_BINARY, payload, b"\x01\x80\xff\x00")
        assert masked == raw_frame(OP_BINARY, payload, mask=b"\x01\x80\xff\x00")
        assert decode([masked]) == [("msg", OP_BINARY, payload)]
        assert wsproto_events(frame, client=True) == [("msg", OP_BINARY, payload)]


# ---------------------------------------------------------------------------------------
# Structured random frames, valid or not: fast.ws and wsproto must reach the same events and
# the same close code.


INVALID_TEXT = [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]
# 1014 is left out: it is registered (IANA) and fast.ws accepts it, wsproto's CloseReason
# lacks it; test_valid_close_codes covers it.
CLOSE_CODES = [0, 999, 1000, 1001, 1003, 1004, 1005, 1006, 1011, 1012, 1013, 1015, 1016, 2999,
               3000, 4999, 5000]


@st.composite
def frame_streams(draw):
    """Mostly well-formed client frames, each one sometimes broken in one way or another."""

    rnd = random.Random(draw(st.integers(0, 2**32)))

    def rare():  # hypothesis favours boundary values: a seeded Random keeps this rare
        return rnd.random() < 0.02

    frames = []
    pending = []  # fragments of the current data message still to send
    for _ in range(draw(st.integers(1, 8))):
        if not draw(st.integers(0, 3)):
            opcode = draw(st.sampled_from([OP_PING, OP_PONG, OP_PING, OP_PONG, OP_CLOSE]))
            fin = not rare()
            if opcode == OP_CLOSE and draw(st.integers(0, 5)):
                code = draw(st.integers(0, 65535).filter(lambda c: c != 1014) if rare()
                            else st.sampled_from(CLOSE_CODES))
                payload = struct.pack("!H", code) + draw(
                    st.sampled_from([b"", b"bye", "✓".encode()]))
                if rare():
                    payload += draw(st.sampled_from(INVALID_TEXT))
            else:
                payload = draw(st.binary(max_size=130 if rare() else 125))
        else:
            if not pending:
                kind = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
                if kind == OP_TEXT:
                    data = draw(st.text(max_size=40)).encode()
                    if rare():
                        at = draw(st.integers(0, len(data)))
                        data = data[:at] + draw(st.sampled_from(INVALID_TEXT)) + data[at:]
                else:
                    data = draw(st.binary(max_size=draw(st.sampled_from([10, 200, 300]))))
                cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
                sizes = [b - a for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
                pending = fragments(kind, data, sizes)
            opcode, payload, fin = pending.pop(0)
        if rare():
            opcode = draw(st.integers(0, 15))
        if rare():
            fin = not fin
        rsv = draw(st.integers(1, 7)) if rare() else 0
        mask = None if rare() else draw(st.binary(min_size=4, max_size=4))
        form = draw(st.sampled_from([7, 16, 64])) if rare() else None
        if form == 7 and len(payload) > 125:
            form = None
        frames.append(raw_frame(opcode, payload, fin, rsv, mask, form))
    return frames


def tolerated(ours, theirs):
    """Whether ``ours`` and ``theirs`` agree, up to the known differences."""
    if ours == theirs:
        return True
    # fast.ws rejects a surrogate (ED A0..BF) at its second byte, wsproto at its third: a
    # control frame in between is reported by wsproto only
    if ours[-1:] == [("error", 1007)] and theirs[-1:] == [("error", 1007)]:
        extra = theirs[len(ours) - 1 : -1]
        return theirs[: len(ours) - 1] == ours[:-1] and all(e[0] != "msg" for e in extra)
    return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frame_streams(), cut=st.integers(0, 10_000))
def test_random_frames_match_wsproto(frames, cut):
    data = b"".join(frames)
    ours = all_ways(data, [cut % (len(data) + 1)], max_message_size=BIG)
    theirs = wsproto_events(data)
    assert tolerated(ours, theirs), (ours, theirs)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), cut=st.integers(0, 200), masked=st.booleans())
def test_random_bytes_never_crash(data, cut, masked):
    if masked and len(data) >= 2:  # set the mask bit, clear RSV: get past the first checks
        data = bytes([data[0] & 0x8F, data[1] | 0x80]) + data[2:]
    events = all_ways(data, [cut], max_message_size=64, max_frame_size=32)
    assert all(e[0] != "error" for e in events[:-1])


# ---------------------------------------------------------------------------------------
# Every error with its close code


def text_frames(*parts):
    """A text message sent as the given fragments."""
    return b"".join(
        raw_frame(OP_TEXT if i == 0 else OP_CONT, p, fin=i == len(parts) - 1)
        for i, p in enumerate(parts)
    )


ERRORS = {
    "unmasked": (raw_frame(OP_TEXT, b"hi", mask=None), 1002),
    "unmasked control": (raw_frame(OP_PING, b"", mask=None), 1002),
    "rsv1": (raw_frame(OP_TEXT, b"hi", rsv=4), 1002),
    "rsv2": (raw_frame(OP_BINARY, b"hi", rsv=2), 1002),
    "rsv3 control": (raw_frame(OP_PING, b"", rsv=1), 1002),
    "opcode 3": (raw_frame(3, b"x"), 1002),
    "opcode 7": (raw_frame(7, b""), 1002),
    "opcode 0xB": (raw_frame(0xB, b""), 1002),
    "opcode 0xF": (raw_frame(0xF, b"x"), 1002),
    "control too long": (raw_frame(OP_PING, b"x" * 126), 1002),
    "close too long": (raw_frame(OP_CLOSE, b"\x03\xe8" + b"x" * 124), 1002),
    "fragmented ping": (raw_frame(OP_PING, b"x", fin=False), 1002),
    "fragmented close": (raw_frame(OP_CLOSE, b"", fin=False), 1002),
    "continuation first": (raw_frame(OP_CONT, b"x"), 1002),
    "continuation after message": (raw_frame(OP_TEXT, b"a") + raw_frame(OP_CONT, b"b"), 1002),
    "text inside fragmented": (raw_frame(OP_TEXT, b"a", fin=False) + raw_frame(OP_TEXT, b"b"), 1002),
    "binary inside fragmented": (
        raw_frame(OP_BINARY, b"a", fin=False) + raw_frame(OP_PING) + raw_frame(OP_BINARY, b""),
        1002,
    ),
    "non-minimal 16-bit length": (raw_frame(OP_BINARY, b"x" * 125, length_form=16), 1002),
    "non-minimal 64-bit length": (raw_frame(OP_BINARY, b"x" * 200, length_form=64), 1002),
    "64-bit length top bit": (b"\x82\xff" + b"\x80" + b"\x00" * 7 + b"abcd", 1002),
    "close 1 byte": (raw_frame(OP_CLOSE, b"\x03"), 1002),
    "bad utf-8": (raw_frame(OP_TEXT, b"ab\xffcd"), 1007),
    "overlong": (raw_frame(OP_TEXT, b"\xc0\xaf"), 1007),
    "surrogate": (raw_frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    "above U+10FFFF": (raw_frame(OP_TEXT, b"\xf4\x90\x80\x80"), 1007),
    "truncated character": (raw_frame(OP_TEXT, b"ok\xe2\x82"), 1007),
    "bad utf-8 across fragments": (text_frames(b"ok\xe2", b"\x82", b"\xff"), 1007),
    "truncated across fragments": (text_frames(b"\xf0\x9f", b"\x98", b""), 1007),
    "surrogate across fragments": (text_frames(b"\xed", b"\xa0\x80"), 1007),
    "bad utf-8 in close reason": (raw_frame(OP_CLOSE, b"\x03\xe8\xff"), 1007),
}
for _code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
    ERRORS[f"close code {_code}"] = (raw_frame(OP_CLOSE, struct.pack("!H", _code)), 1002)


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors(name):
    data, code = ERRORS[name]
    events = all_ways(data, [1, 2, len(data) // 2])
    assert events[-1] == ("error", code), events
    assert all(e[0] in ("ping", "pong", "msg") for e in events[:-1])
    assert wsproto_events(data)[-1] == ("error", code)


def test_error_stops_everything():
    good = raw_frame(OP_BINARY, b"before")
    data = good + raw_frame(OP_TEXT, b"\xff") + good
    assert all_ways(data) == [("msg", OP_BINARY, b"before"), ("error", 1007)]
    decoder = FrameDecoder()
    [error] = decoder.feed(raw_frame(OP_TEXT, b"a", mask=None))
    assert error == ProtocolError(1002, "unmasked client frame")
    assert decoder.feed(good) == [] and decoder.feed(b"") == []


def test_invalid_utf8_fails_before_the_message_ends():
    decoder = FrameDecoder()
    assert decoder.feed(raw_frame(OP_TEXT, b"fine", fin=False)) == []
    # fail fast: the continuation frame is only partly received
    [error] = decoder.feed(raw_frame(OP_CONT, b"\xfe" + b"x" * 1000)[:20])
    assert error.close_code == 1007


def test_valid_close_codes():
    for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                 3000, 3999, 4000, 4999):
        payload = struct.pack("!H", code) + "bye ✓".encode()
        assert all_ways(raw_frame(OP_CLOSE, payload)) == [("close", code, "bye ✓")]
        assert encode_close(code, "bye ✓".encode()) == raw_frame(OP_CLOSE, payload, mask=None)
    assert all_ways(raw_frame(OP_CLOSE)) == [("close", 1005, "")]
    # after a close, nothing more is parsed, not even an error
    assert all_ways(raw_frame(OP_CLOSE) + b"\x00garbage") == [("close", 1005, "")]


def test_limits():
    # oversized frame: 1009 from the header alone, before the payload arrives
    decoder = FrameDecoder(max_message_size=1000, max_frame_size=100)
    [error] = decoder.feed(raw_frame(OP_BINARY, b"x" * 101)[:8])
    assert error.close_code == 1009
    assert all_ways(raw_frame(OP_BINARY, b"x" * 100), max_frame_size=100) == [
        ("msg", OP_BINARY, b"x" * 100)
    ]
    assert all_ways(raw_frame(OP_BINARY, b"x" * 101), max_frame_size=100)[-1] == ("error", 1009)
    # a 2^62-byte frame header is refused, not allocated
    huge = b"\x82\xff" + struct.pack("!Q", 1 << 62) + b"abcd"
    assert decode([huge]) == [("error", 1009)]
    # oversized reassembled message
    parts = [b"a" * 40, b"b" * 40, b"c" * 20]
    assert all_ways(text_frames(*parts), max_message_size=100) == [
        ("msg", OP_TEXT, b"".join(parts))
    ]
    events = all_ways(text_frames(*parts, b"d"), max_message_size=100)
    assert events == [("error", 1009)]
    # control frames do not count towards the message
    data = raw_frame(OP_BINARY, b"a" * 60, fin=False) + raw_frame(OP_PING, b"p" * 100)
    data += raw_frame(OP_CONT, b"b" * 40)
    assert all_ways(data, max_message_size=100) == [("ping", b"p" * 100),
                                                    ("msg", OP_BINARY, b"a" * 60 + b"b" * 40)]
    # the limit applies to each message afresh
    data = raw_frame(OP_BINARY, b"a" * 100) * 3 + text_frames(b"x" * 50, b"y" * 50)
    assert len(all_ways(data, max_message_size=100)) == 4
    # default limit: 1 MiB
    assert decode([encode_masked_frame(OP_BINARY, b"x" * (1 << 20), b"abcd")])[0][0] == "msg"
    too_big = encode_masked_frame(OP_BINARY, b"x" * ((1 << 20) + 1), b"abcd")
    assert decode([too_big]) == [("error", 1009)]
    with pytest.raises(ValueError):
        FrameDecoder(-1)


def test_large_frames_in_pieces():
    """Frames above the in-place threshold, fed in pieces, go through the growable buffer."""
    text = make_payload(OP_TEXT, 300_000, 7)
    data = raw_frame(OP_TEXT, text) + text_frames(text[:100_000], text[100_000:], b"")
    data += raw_frame(OP_BINARY, text)
    for step in (1000, 4096, 65537, len(data)):
        chunks = [data[i : i + step] for i in range(0, len(data), step)]
        assert decode(chunks) == [("msg", OP_TEXT, text)] * 2 + [("msg", OP_BINARY, text)]
    bad = raw_frame(OP_TEXT, text[:150_000] + b"\xff" + text[150_001:])
    assert decode([bad[i : i + 5000] for i in range(0, len(bad), 5000)]) == [("error", 1007)]


# ---------------------------------------------------------------------------------------
# Encoders


def test_encoders():
    assert encode_text("é".encode()) == b"\x81\x02\xc3\xa9"
    assert encode_frame(OP_TEXT, b"ab", fin=False) == b"\x01\x02ab"
    assert encode_frame(OP_CONT, b"", fin=True) == b"\x80\x00"
    assert encode_ping() == b"\x89\x00" and encode_pong(b"xy") == b"\x8a\x02xy"
    assert encode_close(1000) == b"\x88\x02\x03\xe8"
    assert encode_close(1005) == b"\x88\x00"
    assert encode_close(4999, b"r" * 123)[:4] == b"\x88\x7d\x13\x87"
    assert encode_masked_frame(OP_TEXT, b"Hello", b"\x37\xfa\x21\x3d") == (
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # RFC 6455 §5.7
    )
    # the same object for every subscriber: encoding is a pure function of the payload
    assert encode_text(b"event") == encode_text(b"event")


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_text(b"\xff"),
        lambda: encode_text(b"a\xe2\x82"),
        lambda: encode_frame(3, b""),
        lambda: encode_frame(0xB, b""),
        lambda: encode_frame(16, b""),
        lambda: encode_frame(-1, b""),
        lambda: encode_frame(OP_PING, b"x" * 126),
        lambda: encode_frame(OP_CLOSE, b"", fin=False),
        lambda: encode_ping(b"x" * 126),
        lambda: encode_pong(b"x" * 126),
        lambda: encode_close(1005, b"why"),
        lambda: encode_close(1006),
        lambda: encode_close(999),
        lambda: encode_close(5000),
        lambda: encode_close(1000, b"x" * 124),
        lambda: encode_close(1000, b"\xff"),
        lambda: encode_masked_frame(OP_TEXT, b"", b"abc"),
        lambda: encode_masked_frame(OP_PING, b"", b"abcd", fin=False),
    ],
)
def test_encoder_errors(call):
    with pytest.raises(ValueError):
        call()


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=300), mask=st.binary(min_size=4, max_size=4),
       opcode=st.sampled_from([OP_CONT, OP_BINARY, OP_PING, OP_PONG]), fin=st.booleans())
def test_masked_frame_matches_reference(payload, mask, opcode, fin):
    if opcode & 8:
        payload, fin = payload[:125], True
    assert encode_masked_frame(opcode, payload, mask, fin) == raw_frame(opcode, payload, fin,
                                                                       mask=mask)
    assert encode_frame(opcode, payload, fin) == raw_frame(opcode, payload, fin, mask=None)


# ---------------------------------------------------------------------------------------
# UTF-8 validator against Python's codec


def python_valid(data):
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_utf8_all_two_byte_sequences():
    for a in range(256):
        for b in range(256):
            s = bytes([a, b])
            assert is_valid_utf8(s) == python_valid(s), s
            assert is_valid_utf8(b"0123456789abcdef" + s) == python_valid(s), s


def test_utf8_boundaries():
    for cp in (0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x10FFFF):
        assert is_valid_utf8(chr(cp).encode())
    for lead in (0xE0, 0xED, 0xF0, 0xF4, 0xF5):
        for second in range(0x70, 0xD0):
            for tail in (b"\x80", b"\xbf", b"\x80\x80", b"\xbf\xbf", b"\x7f\x80"):
                s = bytes([lead, second]) + tail
                assert is_valid_utf8(s) == python_valid(s), s


def test_utf8_every_alignment():
    """The validator works on 8- and 32-byte blocks: put each case at every offset in them."""
    cases = [chr(cp).encode() for cp in (0x80, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF)]
    cases += [b"\xff", b"\xc0\x80", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
              b"\xe2\x82", b"\xf0\x9f\x98", b"\x80", b"\xc3", b"\xf8\x88\x80\x80\x80",
              # ASCII inside a character: the ASCII fast path must not skip it
              b"\xe2abcdefgh\x82\xac", b"\xf0" + b"x" * 40 + b"\x9f\x98\x80"]
    for case in cases:
        for before in range(40):
            for after in (0, 1, 7, 40):
                s = b"a" * before + case + b"b" * after
                assert is_valid_utf8(s) == python_valid(s), s


@settings(max_examples=300, deadline=None)
@given(text=st.text(), junk=st.binary(max_size=4), at=st.integers(0, 1000))
def test_utf8_matches_python(text, junk, at):
    data = text.encode()
    assert is_valid_utf8(data)
    at = at % (len(data) + 1)
    mutated = data[:at] + junk + data[at:]
    assert is_valid_utf8(mutated) == python_valid(mutated)
    assert is_valid_utf8(data[:at]) == python_valid(data[:at])
