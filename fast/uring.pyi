"""Type stub for fast.uring (many non-blocking sends in one io_uring submission; see fast/uring.pyx)."""

class SendRing:
    entries: int
    submissions: int   # io_uring_enter calls
    sends: int         # sends submitted
    def __init__(self, entries: int = 4096) -> None:
        """OSError where io_uring is unavailable (disabled, seccomp, old kernel)."""
    def close(self) -> None: ...
    def send_all(self, fds: list[int], buffers: list[bytes]) -> list[tuple[int, int | None]]:
        """The sends that did not send all: (index, bytes sent or -errno, or None where
        the ring failed, after which it is closed)."""
