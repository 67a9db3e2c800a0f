"""fast.ws against wsproto: encoding a pub/sub event, decoding masked client frames.

(a) encode a 100-byte text event as a server frame: fast.ws.encode_text against wsproto's
    frame layer (FrameProtocol.send_data) and its connection API (WSConnection.send);
(b) decode masked client frames of 100 bytes (text) and 64 KiB (binary and text): one frame
    per feed, as a socket read would deliver them, each contender handing a complete
    message to Python.  MB/s counts payload bytes (unmasking, plus UTF-8 validation for text).

    .venv/bin/python bench/ws_codec.py [--seconds 3]
"""

import argparse
import os
import random
import sys

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.frame_protocol import FrameProtocol

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from microbench import best_rates  # noqa: E402  (bench/ is the script's own folder)

from fast.ws import (  # noqa: E402
    OP_BINARY,
    OP_TEXT,
    FrameDecoder,
    Message,
    encode_masked_frame,
    encode_text,
    is_valid_utf8,
)

EVENT = (
    b'{"type":"comment","thread":"t-8812","id":91234,"user":"ana","text":"Nice post \xe2\x9c\x93"}'
)
EVENT = EVENT + b" " * (100 - len(EVENT))
assert len(EVENT) == 100
BIG = 64 * 1024
rnd = random.Random(1)




def _text(n):
    """``n`` bytes of UTF-8: mostly ASCII, with 2-, 3- and 4-byte characters mixed in."""
    out = bytearray()
    chars = ["a"] * 40 + ["é", "€", "😀", " "]
    while len(out) < n - 4:
        out += rnd.choice(chars).encode()
    return bytes(out + b"x" * (n - len(out)))


def _frames(opcode, payload, count):
    """``count`` client frames of ``payload``, each with its own random mask."""
    return [encode_masked_frame(opcode, payload, rnd.randbytes(4)) for _ in range(count)]


# ---- (a) encode


def fast_encode():
    def batch():
        for _ in range(100):
            encode_text(EVENT)

    return batch, 100


def wsproto_frame_encode():
    proto = FrameProtocol(client=False, extensions=[])
    text = EVENT.decode()  # wsproto sends text given as str

    def batch():
        for _ in range(100):
            proto.send_data(text)

    return batch, 100


def wsproto_conn_encode():
    conn = WSConnection(ConnectionType.SERVER)
    conn.receive_data(
        b"GET /live HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert isinstance(next(conn.events()), Request)
    conn.send(AcceptConnection())
    text = EVENT.decode()

    def batch():
        for _ in range(100):
            conn.send(TextMessage(data=text))

    return batch, 100


# ---- (b) decode


def fast_decode(frames):
    decoder = FrameDecoder()

    def batch():
        for frame in frames:
            [msg] = decoder.feed(frame)
        assert type(msg) is Message

    return batch, len(frames)


def wsproto_decode(frames):
    proto = FrameProtocol(client=False, extensions=[])

    def batch():
        for frame in frames:
            proto.receive_bytes(frame)
            [msg] = proto.received_frames()
        assert msg.message_finished

    return batch, len(frames)


def validate_fast(data):
    def batch():
        for _ in range(10):
            assert is_valid_utf8(data)

    return batch, 10


def validate_python(data):
    def batch():
        for _ in range(10):
            data.decode("utf-8")

    return batch, 10


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per contender")
    args = ap.parse_args()

    small = _frames(OP_TEXT, EVENT, 200)
    big_bin = _frames(OP_BINARY, rnd.randbytes(BIG), 16)
    big_text_payload = _text(BIG)
    big_text = _frames(OP_TEXT, big_text_payload, 16)
    # both contenders decode the same messages
    for frames in (small[:3], big_bin[:3], big_text[:3]):
        proto = FrameProtocol(client=False, extensions=[])
        for frame in frames:
            proto.receive_bytes(frame)
            [theirs] = proto.received_frames()
            [ours] = FrameDecoder().feed(frame)
            payload = theirs.payload
            assert ours.data == (payload.encode() if isinstance(payload, str) else payload)
    assert (
        encode_text(EVENT) == FrameProtocol(client=False, extensions=[]).send_data(EVENT.decode())
    )

    contenders = {
        "encode 100 B text  wsproto FrameProtocol": (wsproto_frame_encode(), 0),
        "encode 100 B text  wsproto WSConnection": (wsproto_conn_encode(), 0),
        "encode 100 B text  fast.ws": (fast_encode(), 0),
        "decode 100 B text  wsproto": (wsproto_decode(small), len(EVENT)),
        "decode 100 B text  fast.ws": (fast_decode(small), len(EVENT)),
        "decode 64 KiB binary  wsproto": (wsproto_decode(big_bin), BIG),
        "decode 64 KiB binary  fast.ws": (fast_decode(big_bin), BIG),
        "decode 64 KiB text  wsproto": (wsproto_decode(big_text), BIG),
        "decode 64 KiB text  fast.ws": (fast_decode(big_text), BIG),
        "UTF-8 check 64 KiB  bytes.decode": (validate_python(big_text_payload), BIG),
        "UTF-8 check 64 KiB  fast.ws": (validate_fast(big_text_payload), BIG),
    }
    reference = {
        "encode 100 B text  fast.ws": "encode 100 B text  wsproto FrameProtocol",
        "decode 100 B text  fast.ws": "decode 100 B text  wsproto",
        "decode 64 KiB binary  fast.ws": "decode 64 KiB binary  wsproto",
        "decode 64 KiB text  fast.ws": "decode 64 KiB text  wsproto",
        "UTF-8 check 64 KiB  fast.ws": "UTF-8 check 64 KiB  bytes.decode",
    }
    best = best_rates({label: run for label, (run, _size) in contenders.items()}, args.seconds)
    for label, rate in best.items():
        line = f"{label:42} {rate:12,.0f} ops/s"
        size = contenders[label][1]
        line += f" {rate * size / 1e6:9,.0f} MB/s" if size else " " * 15
        if label in reference:
            line += f"   {rate / best[reference[label]]:6.2f}x {reference[label].split('  ')[1]}"
        print(line)


if __name__ == "__main__":
    main()
