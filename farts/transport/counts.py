"""What an HTTP listener counts on every request and every read, compiled: a cclass its
connections hold and call in C (counts.pxd). The listener (listener.py) owns one and
keeps the rest of its metrics, the slow-request log and the access log; a Python method
call and three attribute reads per request on the listener were a twentieth of a
proxied request's instructions."""
from __future__ import annotations

from time import perf_counter

import cython


class Counts:
    def __init__(self, listener, slow_seconds: float, access_log) -> None:
        self.listener = listener
        # route label -> status -> the series record() counts into (Listener.series_for):
        # looked up by two keys whose hashes are ready, where a label tuple would be built.
        self.counted = {}
        self.slow_seconds = slow_seconds
        self.access_log = access_log   # (None: no access log, no call per request)
        self.bytes_in = 0    # bytes received from clients
        self.bytes_out = 0   # streamed response body bytes sent

    def record(self, route, status: cython.int, start: cython.double, head, client, timings=None):
        """Counts one answered request; ``start`` 0 means answered at once (not timed).
        ``timings``: what the handler measured of it (``Response.timings``), read only
        when the request was slow."""
        seconds = perf_counter() - start if start else 0.0
        label = route.prefix if route is not None else "-"
        by_status = self.counted.get(label)
        series = by_status.get(status) if by_status is not None else None
        if series is None:
            series = self.listener.series_for(label, status)
        series[0].inc()
        series[1].observe(seconds)
        if seconds > self.slow_seconds:
            self.listener.slow_request(label, status, start, seconds, head, client, timings)
        if self.access_log is not None:
            self.listener.log_access(head, status, seconds, client)
