"""fast.h2frames: the HTTP/2 frame reader and serializers, differential against hyperframe.

Frames built by hyperframe read the same with ours (in any cuts of the stream), frames
ours serializes read the same with hyperframe, and any frame header with any payload is
refused by both or by neither, except where RFC 9113 and hyperframe differ (listed in
``rfc_differs``)."""

import struct

import pytest
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fast import h2frames as F

FEW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sids = st.integers(1, 2**31 - 1)
payloads = st.binary(max_size=300)
pads = st.one_of(st.none(), st.integers(0, 255))


def padded(frame, pad):
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return frame


@st.composite
def ref_frames(draw):
    kind = draw(st.sampled_from(["data", "headers", "priority", "rst", "settings", "ping",
                                 "goaway", "window", "continuation"]))
    sid = draw(sids)
    if kind == "data":
        f = padded(DataFrame(sid, draw(payloads)), draw(pads))
        if draw(st.booleans()):
            f.flags.add("END_STREAM")
    elif kind == "headers":
        f = padded(HeadersFrame(sid, draw(payloads)), draw(pads))
        for flag in draw(st.lists(st.sampled_from(["END_STREAM", "END_HEADERS"]))):
            f.flags.add(flag)
        if draw(st.booleans()):
            f.flags.add("PRIORITY")
            f.depends_on, f.stream_weight, f.exclusive = draw(sids), draw(st.integers(0, 255)), draw(st.booleans())
    elif kind == "priority":
        f = PriorityFrame(sid, depends_on=draw(sids), stream_weight=draw(st.integers(0, 255)),
                          exclusive=draw(st.booleans()))
    elif kind == "rst":
        f = RstStreamFrame(sid, error_code=draw(st.integers(0, 2**32 - 1)))
    elif kind == "settings":
        if draw(st.booleans()):
            f = SettingsFrame(0, flags=["ACK"])
        else:
            f = SettingsFrame(0, settings=draw(st.dictionaries(
                st.sampled_from([1, 3, 6, 7, 9, 0x99]), st.integers(0, 2**32 - 1), max_size=6)))
            f.settings.update(draw(st.dictionaries(st.sampled_from([2, 8]), st.integers(0, 1))))
            f.settings.update(draw(st.dictionaries(st.just(4), st.integers(0, 2**31 - 1))))
            f.settings.update(draw(st.dictionaries(st.just(5), st.integers(2**14, 2**24 - 1))))
    elif kind == "ping":
        f = PingFrame(0, opaque_data=draw(st.binary(min_size=8, max_size=8)))
        if draw(st.booleans()):
            f.flags.add("ACK")
    elif kind == "goaway":
        f = GoAwayFrame(0, last_stream_id=draw(st.integers(0, 2**31 - 1)),
                        error_code=draw(st.integers(0, 2**32 - 1)), additional_data=draw(payloads))
    elif kind == "window":
        f = WindowUpdateFrame(draw(st.integers(0, 2**31 - 1)), window_increment=draw(sids))
    else:
        f = ContinuationFrame(sid, draw(payloads))
        if draw(st.booleans()):
            f.flags.add("END_HEADERS")
    if kind in ("data", "headers"):   # hyperframe would serialize a padding it refuses
        body = len(f.data) + (5 if "PRIORITY" in f.flags else 0)
        if "PADDED" in f.flags and f.pad_length and f.pad_length >= body + (1 if kind == "data" else 0):
            f.pad_length = 0
    return f


def same(ours: F.Frame, ref: Frame) -> None:
    """Our frame holds what hyperframe's does."""
    assert (ours.type, ours.stream_id) == (ref.type, ref.stream_id)
    flags = 0
    for name, bit in ref.defined_flags:
        if name in ref.flags:
            flags |= bit
    assert ours.flags == flags
    if isinstance(ref, (DataFrame, HeadersFrame, ContinuationFrame)):
        assert ours.data == ref.data
    if isinstance(ref, DataFrame):
        assert ours.length == ref.flow_controlled_length
    if isinstance(ref, (PriorityFrame, HeadersFrame)) and (isinstance(ref, PriorityFrame) or "PRIORITY" in ref.flags):
        assert (ours.depends_on, ours.weight, ours.exclusive) == (ref.depends_on, ref.stream_weight, ref.exclusive)
    if isinstance(ref, RstStreamFrame):
        assert ours.value == ref.error_code
    if isinstance(ref, SettingsFrame):
        assert dict(ours.settings) == ref.settings
    if isinstance(ref, PingFrame):
        assert ours.data == ref.opaque_data
    if isinstance(ref, GoAwayFrame):
        assert (ours.last_stream_id, ours.value, ours.data) == (ref.last_stream_id, ref.error_code, ref.additional_data)
    if isinstance(ref, WindowUpdateFrame):
        assert ours.value == ref.window_increment


@FEW
@given(frames=st.lists(ref_frames(), min_size=1, max_size=8), cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_frames_hyperframe_writes_read_the_same_with_ours(frames, cuts):
    stream = b"".join(f.serialize() for f in frames)
    reader = F.FrameReader(max_frame_size=2**24 - 1)
    got, at = [], 0
    for cut in sorted(cuts) + [len(stream)]:
        got += reader.feed(stream[at:max(at, cut)])
        at = max(at, cut)
    assert reader.buffered == 0 and len(got) == len(frames)
    for ours, ref in zip(got, frames, strict=True):
        same(ours, ref)


def hyperframe_reads(data: bytes) -> Frame:
    f, length = Frame.parse_frame_header(memoryview(data[:9]))
    assert length == len(data) - 9
    f.parse_body(memoryview(data[9:]))
    return f


def read_one(data: bytes, max_frame_size: int = 2**24 - 1):
    got = F.FrameReader(max_frame_size).feed(data)
    assert len(got) == 1
    return got[0]


@FEW
@given(sid=sids, data=payloads, end=st.booleans(), size=st.integers(16384, 20000),
       settings_=st.lists(st.tuples(st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1)), max_size=5),
       last=st.integers(0, 2**31 - 1), code=st.integers(0, 2**32 - 1), ping=st.binary(min_size=8, max_size=8))
def test_frames_ours_writes_read_the_same_with_hyperframe(sid, data, end, size, settings_, last, code, ping):
    f = hyperframe_reads(F.data_frame(sid, data, end))
    assert (type(f), f.stream_id, f.data, "END_STREAM" in f.flags) == (DataFrame, sid, data, end)
    f = hyperframe_reads(F.window_update_frame(sid, last or 1))
    assert (type(f), f.stream_id, f.window_increment) == (WindowUpdateFrame, sid, last or 1)
    f = hyperframe_reads(F.rst_stream_frame(sid, code))
    assert (type(f), f.stream_id, f.error_code) == (RstStreamFrame, sid, code)
    f = hyperframe_reads(F.settings_frame(settings_))
    assert (type(f), f.settings, "ACK" in f.flags) == (SettingsFrame, dict(settings_), False)
    assert "ACK" in hyperframe_reads(F.settings_frame(ack=True)).flags
    f = hyperframe_reads(F.ping_frame(ping, ack=end))
    assert (type(f), f.opaque_data, "ACK" in f.flags) == (PingFrame, ping, end)
    f = hyperframe_reads(F.goaway_frame(last, code, data))
    assert (type(f), f.last_stream_id, f.error_code, f.additional_data) == (GoAwayFrame, last, code, data)
    block = data * 200   # up to 60 KB: HEADERS + CONTINUATIONs at ``size``
    wire, frames = F.headers_frames(sid, block, end, size), []
    while wire:
        length = int.from_bytes(wire[:3], "big")
        frames.append(hyperframe_reads(wire[:9 + length]))
        wire = wire[9 + length:]
    assert type(frames[0]) is HeadersFrame and all(type(c) is ContinuationFrame for c in frames[1:])
    assert b"".join(f.data for f in frames) == block
    assert all(len(f.data) <= size for f in frames)
    assert ["END_HEADERS" in f.flags for f in frames] == [False] * (len(frames) - 1) + [True]
    assert ("END_STREAM" in frames[0].flags) == end


def rfc_differs(t: int, flags: int, sid: int, payload: bytes) -> bool:
    """Frames where RFC 9113 and hyperframe part (hyperframe refuses, RFC 9113 reads
    them; or the reverse, for the SETTINGS values hyperframe does not check, and for
    PUSH_PROMISE, which a server refuses whatever it holds, §8.4)."""
    if t == 5:
        return True
    if t == 8 and len(payload) == 4:   # §6.9: the reserved bit is ignored, hyperframe counts it
        return payload[0] & 0x80 and int.from_bytes(payload, "big") & 0x7FFFFFFF != 0
    if t == 1 and flags & 0x8 and payload:   # §6.2: padding may take all the fragment
        rest = len(payload) - 1 - (5 if flags & 0x20 else 0)
        return rest >= 0 and payload[0] >= rest and (payload[0] == rest or flags & 0x20)
    if t == 4 and not flags & 1 and len(payload) % 6 == 0:   # setting values
        for i in range(0, len(payload), 6):
            ident, value = struct.unpack("!HL", payload[i:i + 6])
            if (ident in (2, 8) and value > 1) or (ident == 4 and value > 2**31 - 1) \
                    or (ident == 5 and not 2**14 <= value <= 2**24 - 1):
                return True
    return False


@FEW
@given(t=st.sampled_from([*range(10), 0x20]), flags=st.integers(0, 255), sid=st.sampled_from([0, 1, 3, 2**31 - 1]),
       payload=st.one_of(st.binary(max_size=20), st.binary(min_size=4, max_size=4),
                         st.binary(min_size=8, max_size=8), st.binary(min_size=5, max_size=5)))
def test_any_frame_is_refused_by_both_or_neither(t, flags, sid, payload):
    data = len(payload).to_bytes(3, "big") + bytes([t, flags]) + sid.to_bytes(4, "big") + payload
    try:
        hyperframe_reads(data)
        ref_ok = True
    except HyperframeError:
        ref_ok = False
    ours = read_one(data)
    if rfc_differs(t, flags, sid, payload):
        return
    assert isinstance(ours, F.Frame) == ref_ok, ours


@pytest.mark.parametrize("data, code, on_stream", [
    (b"\x00\x00\x04\x02\x00\x00\x00\x00\x01" + b"\x00" * 4, F.FRAME_SIZE_ERROR, True),  # PRIORITY 4 bytes
    (b"\x00\x00\x04\x08\x00\x00\x00\x00\x03" + b"\x00" * 4, F.PROTOCOL_ERROR, True),    # WINDOW_UPDATE 0
    (b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00" * 4, F.PROTOCOL_ERROR, False),
    (b"\x00\x00\x03\x03\x00\x00\x00\x00\x01" + b"\x00" * 3, F.FRAME_SIZE_ERROR, False),
    (b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"\x00" * 7, F.FRAME_SIZE_ERROR, False),
    (b"\x00\x00\x06\x04\x01\x00\x00\x00\x00" + b"\x00" * 6, F.FRAME_SIZE_ERROR, False),  # ACK + payload
    (b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x80\x00\x00\x00", F.FLOW_CONTROL_ERROR, False),
    (b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x05\x00\x00\x10\x00", F.PROTOCOL_ERROR, False),
    (b"\x00\x00\x02\x00\x08\x00\x00\x00\x01\x02\x00", F.PROTOCOL_ERROR, False),           # DATA pad 2 of 2
    (b"\x00\x00\x00\x00\x00\x00\x00\x00\x00", F.PROTOCOL_ERROR, False),                   # DATA on 0
    (b"\x00\x00\x00\x06\x00\x00\x00\x00\x00", F.FRAME_SIZE_ERROR, False),   # PING 0 bytes
])
def test_error_codes(data, code, on_stream):
    e = read_one(data)
    assert isinstance(e, F.FrameError) and e.code == code
    assert (e.stream_id != 0) == on_stream


def test_a_stream_error_is_in_its_place_and_reading_goes_on_a_connection_error_ends_it():
    ok = F.ping_frame(b"12345678")
    bad_priority = b"\x00\x00\x01\x02\x00\x00\x00\x00\x01\x00"
    got = F.FrameReader().feed(ok + bad_priority + ok)
    assert [type(x) for x in got] == [F.Frame, F.FrameError, F.Frame]
    reader = F.FrameReader()
    got = reader.feed(ok + b"\x00\x00\x00\x00\x00\x00\x00\x00\x00" + ok)
    assert [type(x) for x in got] == [F.Frame, F.FrameError]
    assert reader.feed(ok) == []


def test_frame_over_the_maximum_is_refused_from_its_header():
    reader = F.FrameReader(max_frame_size=16384)
    got = reader.feed(b"\x00\x40\x01\x00\x00\x00\x00\x00\x01")   # 16385 bytes announced
    assert len(got) == 1 and got[0].code == F.FRAME_SIZE_ERROR and reader.buffered == 0
