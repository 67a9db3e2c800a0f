"""The client side of bench/fanout.py: lean subscriber and publisher processes on uvloop.

    python bench/fanout_client.py subscribe --port P --connections N [--sample-every K] ...
    python bench/fanout_client.py publish --port P [--window W] [--rate R] ...

Both take commands, one a line, on standard input and answer with one JSON line on
standard output, so that bench/fanout.py can drive several of them in step.

subscribe: opens N WebSocket connections to `GET /live` (at most --concurrency
handshakes in flight), each sends `{"op":"subscribe","channel":C}` and waits for its
`subscribed` reply; then prints `{"ready": n, "failed": f, ...}`. Delivered frames are
counted, not decoded: a raw asyncio Protocol walks the frame headers of each read
(server frames are unmasked) and adds the number of complete data frames to one
counter per process. Every K-th connection also reads the publisher's timestamp out of
each event (`"t":<CLOCK_MONOTONIC ns>`, system-wide on Linux, so comparable across
processes) for the publish-to-delivery latency. Pings are answered with pongs.
  commands: `mark` (prints the frame count and the time; odd marks start a
  window of latency sampling, even ones end it and print the samples), `totals` (prints the frame
  count and the connections still live), `quit`.

publish: one publisher with --window keep-alive HTTP/1.1 connections, each with one
`POST /api/publish` in flight (closed loop), or at most --rate events/s in all.
Each event's data is a 100-byte JSON object `{"t":<ns>,"seq":<n>,"pad":"xxx…"}`.
  commands: `stop` (stops sending, waits for the answers in flight, prints
  `{"published": n, "errors": e, ...}`).

Every wait is bounded (--timeout); the process raises its RLIMIT_NOFILE soft limit to
min(20000, hard) so that one process can hold 10,000 connections.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
import time

import uvloop

SAMPLE_CAP = 200_000  # latency samples kept per process (every later one is dropped)
SAMPLES_SENT = 20_000  # of which at most this many are reported


def raise_nofile(want: int = 20000) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 5.3: clients must mask)."""
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")
              ).to_bytes(n, "big") if n else b""
    return head + key + masked


# ---------------------------------------------------------------- subscribers


class Counts:
    """Per-process counters: one add per read, not per frame."""

    def __init__(self) -> None:
        self.frames = 0
        self.sampling = False
        self.samples: list[int] = []  # publish-to-delivery, ns
        self.open = 0
        self.live = 0
        self.dropped = 0        # live connections the server closed or reset
        self.close_codes: dict[int, int] = {}
        self.unexpected = 0     # non-event frames after subscribing (errors, replies)


HANDSHAKE, SUBSCRIBING, LIVE, CLOSED = range(4)


class Subscriber(asyncio.Protocol):
    __slots__ = ("counts", "sample", "request", "subscribe", "ready", "state", "buf", "transport")

    def __init__(self, counts: Counts, sample: bool, request: bytes, subscribe: bytes,
                 ready: asyncio.Future) -> None:
        self.counts = counts
        self.sample = sample
        self.request = request
        self.subscribe = subscribe
        self.ready = ready
        self.state = HANDSHAKE
        self.buf = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.counts.open += 1
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        self.counts.open -= 1
        if self.state == LIVE:
            self.counts.live -= 1
            self.counts.dropped += 1
        self.state = CLOSED
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before subscribed: {exc}"))

    def fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if self.state == HANDSHAKE:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.fail("handshake answered " + data[:end].split(b"\r\n", 1)[0].decode("latin-1"))
                return
            self.state = SUBSCRIBING
            self.transport.write(self.subscribe)
            data = data[end + 4:]
        n = len(data)
        pos = 0
        frames = 0
        sample = self.sample and self.counts.sampling
        while pos + 2 <= n:
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if pos + 4 > n:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if pos + 10 > n:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = data[pos] & 0x0F
            if opcode == 1 or opcode == 2 or opcode == 0:
                if self.state == LIVE:
                    if data[pos] & 0x80:
                        frames += 1
                        if sample:
                            self._sample(data, start, end)
                else:
                    self._reply(data[start:end])
            elif opcode == 9:
                self.transport.write(client_frame(data[start:end], 10))
            elif opcode == 8:
                code = int.from_bytes(data[start:start + 2], "big") if length >= 2 else 1005
                self.counts.close_codes[code] = self.counts.close_codes.get(code, 0) + 1
                self.transport.write(client_frame(data[start:start + 2], 8))
                self.transport.close()
                return
            pos = end
        if pos < n:
            self.buf = data[pos:]
        if frames:
            self.counts.frames += frames

    def _reply(self, payload: bytes) -> None:
        """A text frame before the subscription is live: the `subscribed` reply or an error."""
        if b'"subscribed"' in payload:
            self.state = LIVE
            self.counts.live += 1
            if not self.ready.done():
                self.ready.set_result(None)
        else:
            self.fail("subscribe answered " + payload[:200].decode("utf-8", "replace"))

    def _sample(self, data: bytes, start: int, end: int) -> None:
        i = data.find(b'"t":', start, end)
        if i < 0:
            self.counts.unexpected += 1
            return
        j = i + 4
        k = j
        while k < end and 48 <= data[k] <= 57:
            k += 1
        if k > j and len(self.counts.samples) < SAMPLE_CAP:
            self.counts.samples.append(time.monotonic_ns() - int(data[j:k]))


async def open_subscribers(args, counts: Counts) -> tuple[int, list[str]]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.concurrency)
    subscribe = client_frame(json.dumps({"op": "subscribe", "channel": args.channel}).encode())
    errors: list[str] = []
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        key = base64.b64encode(os.urandom(16))
        request = (b"GET " + args.path.encode() + b" HTTP/1.1\r\nHost: " + args.host_header.encode()
                   + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
                   + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        async with gate:
            ready = loop.create_future()
            try:
                await asyncio.wait_for(loop.create_connection(
                    lambda: Subscriber(counts, i % args.sample_every == 0, request, subscribe, ready),
                    args.host, args.port), args.timeout)
                await asyncio.wait_for(ready, args.timeout)
                ok += 1
            except (TimeoutError, OSError) as e:
                if len(errors) < 5:
                    errors.append(f"{type(e).__name__}: {e}")

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(args.connections))),
                           args.timeout * (1 + args.connections / args.concurrency))
    return ok, errors


def percentiles(samples: list[int]) -> dict:
    if not samples:
        return {}
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] / 1e6  # noqa: E731
    return {"n": len(s), "p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99),
            "max_ms": s[-1] / 1e6}


async def subscribe_main(args) -> None:
    counts = Counts()
    try:
        ok, errors = await open_subscribers(args, counts)
    except TimeoutError:
        ok, errors = counts.live, ["timed out opening the connections"]
    emit({"ready": ok, "failed": args.connections - ok, "errors": errors, "pid": os.getpid()})
    marks = 0
    async for line in commands(args.timeout_total):
        if line == "mark":
            marks += 1
            counts.sampling = marks % 2 == 1  # marks come in pairs: one window each
            if counts.sampling:
                counts.samples = []
            emit({"frames": counts.frames, "t": time.monotonic(), "live": counts.live,
                  "dropped": counts.dropped})
            if not counts.sampling:
                # Raw samples (µs, at most SAMPLES_SENT, evenly strided): the caller merges
                # the processes' samples before taking percentiles.
                s = counts.samples
                step = max(1, len(s) // SAMPLES_SENT)
                emit({"latency_us": [v // 1000 for v in s[::step]], "sampled": len(s),
                      "samples_capped": len(s) >= SAMPLE_CAP, "unexpected": counts.unexpected})
        elif line == "totals":
            emit({"frames": counts.frames, "live": counts.live, "dropped": counts.dropped,
                  "close_codes": counts.close_codes, "open": counts.open})
        elif line == "quit":
            break


# ---------------------------------------------------------------- publisher


def event_data(seq: int, size: int) -> bytes:
    """A JSON object of exactly `size` bytes carrying the send time and a sequence number."""
    head = b'{"t":%d,"seq":%d,"pad":"' % (time.monotonic_ns(), seq)
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


class Publisher(asyncio.Protocol):
    """One keep-alive connection with one POST in flight (Content-Length answers only)."""

    def __init__(self, owner: PublishLoop) -> None:
        self.owner = owner
        self.buf = b""
        self.transport = None
        self.sent_at = 0
        self.busy = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.owner.next(self)

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        if self.busy:
            self.owner.error(f"connection lost with a request in flight: {exc}")
            self.busy = False

    def send(self, request: bytes) -> None:
        self.busy = True
        self.sent_at = time.monotonic_ns()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"\r\ncontent-length:")
            if i < 0:
                self.owner.error("answer without Content-Length: " + head[:200].decode("latin-1"))
                self.transport.close()
                return
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17:j if j > 0 else len(head)])
            if len(self.buf) < end + 4 + length:
                return
            status = int(self.buf[9:12])
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            self.busy = False
            if 200 <= status < 300:
                self.owner.done(self, time.monotonic_ns() - self.sent_at)
            else:
                self.owner.error(f"status {status}: {body[:200].decode('utf-8', 'replace')}")
                self.owner.next(self)


class PublishLoop:
    def __init__(self, args) -> None:
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.head = (b"POST " + args.path.encode() + b" HTTP/1.1\r\nHost: " + args.host_header.encode()
                     + b"\r\nContent-Type: application/json\r\n"
                     + (b"Authorization: Bearer " + args.api_key.encode() + b"\r\n" if args.api_key else b"")
                     + b"Content-Length: ")
        self.channel = json.dumps(args.channel).encode()
        self.seq = 0
        self.published = 0
        self.errors = 0
        self.first_errors: list[str] = []
        self.rtts: list[int] = []
        self.stopping = False
        self.t0 = time.monotonic()

    def request(self) -> bytes:
        self.seq += 1
        body = b'{"channel":' + self.channel + b',"data":' + event_data(self.seq, self.args.size) + b"}"
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body

    def next(self, conn: Publisher) -> None:
        if self.stopping or conn.transport.is_closing():
            return
        if self.args.rate > 0:
            due = self.t0 + self.seq / self.args.rate
            now = time.monotonic()
            if due > now:
                self.loop.call_later(due - now, self._send_due, conn)
                return
        conn.send(self.request())

    def _send_due(self, conn: Publisher) -> None:
        if not self.stopping and not conn.transport.is_closing():
            conn.send(self.request())

    def done(self, conn: Publisher, rtt_ns: int) -> None:
        self.published += 1
        if len(self.rtts) < SAMPLE_CAP:
            self.rtts.append(rtt_ns)
        self.next(conn)

    def error(self, why: str) -> None:
        self.errors += 1
        if len(self.first_errors) < 5:
            self.first_errors.append(why)


async def publish_main(args) -> None:
    loop = asyncio.get_running_loop()
    pub = PublishLoop(args)
    conns: list[Publisher] = []
    for _ in range(args.window):
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: Publisher(pub), args.host, args.port), args.timeout)
        conns.append(conn)
    emit({"started": len(conns)})
    async for line in commands(args.timeout_total):
        if line == "stop":
            break
    pub.stopping = True
    deadline = time.monotonic() + args.timeout
    while any(c.busy for c in conns) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - pub.t0
    emit({"published": pub.published, "sent": pub.seq, "errors": pub.errors,
          "first_errors": pub.first_errors, "seconds": elapsed,
          "answer_latency": percentiles(pub.rtts)})
    for c in conns:
        c.transport.close()


# ---------------------------------------------------------------- plumbing


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def commands(timeout: float):
    """Lines from standard input until EOF or `timeout` seconds in all."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            line = await asyncio.wait_for(reader.readline(), left)
        except TimeoutError:
            return
        if not line:
            return
        yield line.decode().strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("subscribe", "publish"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host-header", default="127.0.0.1", help="the Host header (the tenant)")
    p.add_argument("--path", help="default /live (subscribe) or /api/publish (publish)")
    p.add_argument("--channel", default="bench")
    p.add_argument("--timeout", type=float, default=30.0, help="bound on each wait, seconds")
    p.add_argument("--timeout-total", type=float, default=900.0, help="bound on the whole run")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    p.add_argument("--sample-every", type=int, default=50, help="every K-th connection samples latency")
    p.add_argument("--window", type=int, default=2, help="publish requests in flight")
    p.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = as fast as answered")
    p.add_argument("--size", type=int, default=100, help="bytes of event data")
    p.add_argument("--api-key", default="")
    args = p.parse_args()
    if args.path is None:
        args.path = "/live" if args.mode == "subscribe" else "/api/publish"
    raise_nofile()
    uvloop.run(subscribe_main(args) if args.mode == "subscribe" else publish_main(args))


if __name__ == "__main__":
    main()
