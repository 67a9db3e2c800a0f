"""fast.hpack: HPACK decoder and encoder, differential against the hpack library.

Header lists (several blocks on one context, so the dynamic tables carry over) encoded
by hpack decode identically with ours and ours-encoded decode identically with hpack;
bytes that are not HPACK are refused by both, with the same exception class."""

import pytest
from hpack import Decoder as RefDecoder
from hpack import Encoder as RefEncoder
from hpack import NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    HPACKError,
    InvalidTableIndex,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.table import HeaderTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fast.hpack import Decoder, Encoder

FEW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

STATIC = list(HeaderTable.STATIC_TABLE)
# Names and values that hit the static table, its names only, repeats, and anything.
names = st.one_of(st.sampled_from([n for n, _ in STATIC]),
                  st.sampled_from([b"x-a", b"x-b", b"cookie"]),
                  st.binary(min_size=1, max_size=40))
values = st.one_of(st.sampled_from([v for _, v in STATIC]),
                   st.sampled_from([b"1", b"abc", b"x" * 300]),
                   st.binary(max_size=60))
fields = st.tuples(names, values)
blocks = st.lists(st.lists(fields, max_size=12), min_size=1, max_size=6)


def plain(headers):
    return [(bytes(n), bytes(v)) for n, v in headers]


@FEW
@given(blocks=blocks, table=st.sampled_from([4096, 256, 0]))
def test_hpack_encoded_decodes_the_same_with_ours(blocks, table):
    ref, ours = RefEncoder(), Decoder()
    for i, headers in enumerate(blocks):
        if i == 1:   # a size change signalled by the encoder, within what we allow
            ref.header_table_size = table
        block = ref.encode(headers)
        assert ours.decode(block) == headers
        assert ours.list_size == sum(32 + len(n) + len(v) for n, v in headers)


@FEW
@given(blocks=blocks, table=st.sampled_from([None, 8192, 256, 0]), sensitive=st.booleans())
def test_ours_encoded_decodes_the_same_with_hpack(blocks, table, sensitive):
    ours, ref = Encoder(), RefDecoder(max_header_list_size=1 << 30)
    for i, headers in enumerate(blocks):
        if i == 1 and table is not None:   # the peer's SETTINGS_HEADER_TABLE_SIZE
            ours.header_table_size = table
            ref.max_allowed_table_size = table
        sent = [NeverIndexedHeaderTuple(n, v) if sensitive and j % 2 else (n, v)
                for j, (n, v) in enumerate(headers)]
        block = ours.encode(sent)
        got = ref.decode(block, raw=True)
        assert plain(got) == headers
        if sensitive:   # never-indexed stays never-indexed on the wire
            assert all(isinstance(h, NeverIndexedHeaderTuple) for h in got[1::2])
        assert ref.header_table.maxsize <= 4096   # our table never passes 4096


def outcome(decoder, block):
    try:
        return plain(decoder.decode(block, raw=True))
    except HPACKError as e:
        return type(e)


@FEW
@given(prefix=blocks, junk=st.binary(max_size=40), cut=st.integers(0, 200))
def test_malformed_blocks_are_refused_like_hpack(prefix, junk, cut):
    """Random bytes, valid blocks cut short, valid blocks with junk after them: the same
    answer from both, on contexts that decoded the same blocks before."""
    ref, ours, enc = RefDecoder(), Decoder(), RefEncoder()
    for headers in prefix[:-1]:
        block = enc.encode(headers)
        assert outcome(ours, block) == outcome(ref, block)
    last = enc.encode(prefix[-1])
    for block in (junk, last[:cut], last + junk, junk + last):
        want = outcome(ref, block)
        assert outcome(ours, block) == want
        if not isinstance(want, list):
            return   # after an error the connection is over: the contexts may differ


@pytest.mark.parametrize("block, error", [
    (b"\x80", InvalidTableIndex),                       # index 0
    (b"\xbe", InvalidTableIndex),                       # index 62, empty dynamic table
    (b"\xff\x80\x80\x80\x80\x80\x01", HPACKDecodingError),   # integer too long
    (b"\x00\x85abc", HPACKDecodingError),               # string cut short
    (b"\x00\x81\xff\x00", HPACKDecodingError),          # Huffman padding of 8 bits
    (b"\x00\x81\x00\x00", HPACKDecodingError),          # Huffman padding not ones
    (b"\x00\x84\xff\xff\xff\xff\x00", HPACKDecodingError),   # Huffman EOS
    (b"\x82\x20", HPACKDecodingError),                  # size update after a field
    (b"\x3f\xe2\x1f", InvalidTableSizeError),           # size update to 4097 > 4096
])
def test_refusals(block, error):
    for decoder in (Decoder(), RefDecoder()):
        with pytest.raises(error):
            decoder.decode(block, raw=True)


def test_header_list_limit_stops_an_hpack_bomb():
    """One 4000-byte field in the dynamic table, then the 1-byte index to it many times:
    the decoder stops when the list passes the limit, not after expanding all of it."""
    enc = RefEncoder()
    first = enc.encode([(b"x-bomb", b"b" * 4000)])
    ours = Decoder(max_header_list_size=16384)
    assert ours.decode(first) == [(b"x-bomb", b"b" * 4000)]
    with pytest.raises(OversizedHeaderListError):
        ours.decode(b"\xbe" * 100_000)


def test_table_size_limits():
    ours = Decoder()
    ours.max_allowed_table_size = 100
    # The encoder did not shrink its table to the acknowledged setting: refused.
    with pytest.raises(InvalidTableSizeError):
        ours.decode(b"\x82")
    ours = Decoder()
    ours.max_allowed_table_size = 100
    assert ours.decode(b"\x3f\x45\x82") == [(b":method", b"GET")]   # update to 100 first
    assert ours.header_table_size == 100


def test_encoder_signals_a_smaller_table_and_keeps_to_4096():
    ours = Encoder()
    ours.encode([(b"x-a", b"1")])
    ours.header_table_size = 0
    ours.header_table_size = 1 << 20   # the peer allows 1 MiB: we keep 4096
    assert ours.header_table_size == 4096
    block = ours.encode([(b"x-a", b"1")])
    assert block.startswith(b"\x20\x3f\xe1\x1f")   # update to 0, then to 4096
    ref = RefDecoder()
    ref.max_allowed_table_size = 1 << 20
    ref.decode(Encoder().encode([(b"x-a", b"1")]))
    assert ref.decode(block, raw=True) == [(b"x-a", b"1")]


def test_repeated_response_head_is_indexed():
    ours = Encoder()
    head = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"1024")]
    ours.encode(head)
    assert ours.encode(head) == b"\x88\xbf\xbe"
