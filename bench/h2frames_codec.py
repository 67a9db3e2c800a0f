"""fast.h2frames against hyperframe: cutting a read into frames, serializing an answer.

(a) one read of 10 HEADERS frames (h2load's -m10 requests after the first, 16-byte
    header blocks) cut into parsed frames: fast.h2frames.FrameReader.feed against
    hyperframe's header parse + body parse per frame (what h2's FrameBuffer does);
(b) a response's frames: HEADERS (a 3-byte block) and a 1 KiB DATA with END_STREAM.

    .venv/bin/python bench/h2frames_codec.py [--seconds 3]
"""

import argparse
import os
import sys

from hyperframe.frame import DataFrame, Frame, HeadersFrame

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from microbench import best_rates  # noqa: E402  (bench/ is the script's own folder)

from fast import h2frames  # noqa: E402

BLOCK, HEAD, BODY = b"\x82\x84\x87\xbe\xbf" + b"x" * 11, b"\x88\xbf\xbe", b"x" * 1024
READ = b"".join(h2frames.headers_frames(sid, BLOCK, True, 16384) for sid in range(1, 21, 2))
BATCH = 1000


def hyperframe_feed(data: bytes) -> list:
    view, out, at = memoryview(data), [], 0
    while at < len(data):
        f, length = Frame.parse_frame_header(view[at:at + 9])
        f.parse_body(view[at + 9:at + 9 + length])
        out.append(f)
        at += 9 + length
    return out


def hyperframe_answer(sid: int) -> bytes:
    h = HeadersFrame(sid, HEAD, flags=["END_HEADERS"])
    d = DataFrame(sid, BODY, flags=["END_STREAM"])
    return h.serialize() + d.serialize()


def fast_answer(sid: int) -> bytes:
    return h2frames.headers_frames(sid, HEAD, False, 16384) + h2frames.data_frame(sid, BODY, True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3)
    a = p.parse_args()
    reader = h2frames.FrameReader()
    assert len(reader.feed(READ)) == len(hyperframe_feed(READ)) == 10
    assert fast_answer(1) == hyperframe_answer(1)
    rates = best_rates({
        "read 10 HEADERS, hyperframe": (lambda: [hyperframe_feed(READ) for _ in range(BATCH)], BATCH),
        "read 10 HEADERS, fast": (lambda: [reader.feed(READ) for _ in range(BATCH)], BATCH),
        "answer frames, hyperframe": (lambda: [hyperframe_answer(1) for _ in range(BATCH)], BATCH),
        "answer frames, fast": (lambda: [fast_answer(1) for _ in range(BATCH)], BATCH),
    }, a.seconds)
    for label, rate in rates.items():
        print(f"{label:30} {rate / 1e6:7.3f} M/s  {1e6 / rate:6.2f} us each")


if __name__ == "__main__":
    main()
