"""Which send path the fanout uses: ``[pubsub] io_uring`` against what the kernel allows."""
from __future__ import annotations

import logging

try:
    from fast.uring import SendRing
except ImportError:          # built without liburing (see setup.py)
    SendRing = None

log = logging.getLogger("farts.pubsub")

RING_ENTRIES = 4096   # sends per submission; a bigger flush takes several


class IoUringUnavailable(RuntimeError):
    pass


def send_ring(mode: str, entries: int = RING_ENTRIES):
    """A SendRing, or None for the send() path.  ``mode`` "on" raises
    IoUringUnavailable where io_uring cannot be used, "auto" logs why and returns None."""
    if mode == "off":
        return None
    if SendRing is None:
        why = "fast.uring is not built (no liburing-dev when it was compiled)"
    else:
        try:
            return SendRing(entries)
        except OSError as e:   # kernel.io_uring_disabled, seccomp, an old kernel
            why = str(e)
    if mode == "on":
        raise IoUringUnavailable(f"[pubsub] io_uring = \"on\" but io_uring is unavailable: {why}")
    log.info("pub/sub fanout: io_uring unavailable (%s), one send() per subscriber", why)
    return None
