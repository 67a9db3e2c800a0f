"""Where cached objects live: bodies as files under data_dir/cache/objects (sharded by
the first bytes of a hash of the key), metadata in LMDB (data_dir/cache/meta.lmdb).

A body is written to cache/tmp/ while it arrives, fsynced, then renamed into place, and
only then is its metadata committed: a crash at any moment leaves either a whole object
with its metadata, or a temp file (deleted on start) / an unreferenced file (swept on
start), never metadata pointing at a partial body.  Every version of an object gets its
own file name, so a replacement never changes a file a reader has open.

All LMDB writes and file deletions run in one worker thread, in the order they were
asked for (a delete never overtakes the put it follows).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lmdb
import msgpack

SEQ = struct.Struct(">Q")


class Entry:
    """One stored object (the metadata kept in memory for the hit path)."""

    __slots__ = ("key", "status", "headers", "size", "file", "response_time", "request_time",
                 "lifetime", "initial_age", "swr", "sie", "etag", "last_modified",
                 "fresh_until", "fixed", "fixed_until", "hit_headers", "hit_headers_until",
                 "body", "fd")

    def __init__(self, key: bytes, status: int, headers: list, size: int, file: str,
                 request_time: float, response_time: float, lifetime: float,
                 initial_age: float, swr: float, sie: float) -> None:
        self.key = key
        self.status = status
        self.headers = headers
        self.size = size
        self.file = file
        self.request_time = request_time
        self.response_time = response_time
        self.lifetime = lifetime
        self.initial_age = initial_age
        self.swr = swr
        self.sie = sie
        self.etag = self.last_modified = None
        for k, v in headers:
            if k == b"etag":
                self.etag = v
            elif k == b"last-modified":
                self.last_modified = v
        # Local clock time until which the object is fresh.
        self.fresh_until = response_time + lifetime - initial_age
        self.fixed = None        # the whole answer, ready (memory tier), and ...
        self.fixed_until = 0.0   # ... until when the Age it carries is right
        self.hit_headers: tuple | None = None  # a hit's headers (file tier), ready, and ...
        self.hit_headers_until = 0.0           # ... until when the Age they carry is right
        self.body: bytes | None = None
        self.fd = -1             # the file, kept open for hits (CDN.file_of)

    def pack(self) -> bytes:
        return msgpack.packb([self.status, [list(h) for h in self.headers], self.size, self.file,
                              self.request_time, self.response_time, self.lifetime,
                              self.initial_age, self.swr, self.sie])

    @classmethod
    def unpack(cls, key: bytes, data: bytes) -> Entry:
        (status, headers, size, file, request_time, response_time, lifetime, initial_age,
         swr, sie) = msgpack.unpackb(data)
        return cls(key, status, [tuple(h) for h in headers], size, file, request_time,
                   response_time, lifetime, initial_age, swr, sie)


class Store:
    def __init__(self, root: Path, map_size: int = 1 << 30) -> None:
        self.root = root
        self.objects = root / "objects"
        self.objects_prefix = str(self.objects) + "/"
        self.tmp = root / "tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)  # fills a crash interrupted
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.objects.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(root / "meta.lmdb"), map_size=map_size, max_dbs=4, subdir=True)
        self.meta = self.env.open_db(b"meta")
        self.seq = self.env.open_db(b"seq")
        self.vary = self.env.open_db(b"vary")
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="cdn-store")
        self.next_seq = 1

    # -- start -------------------------------------------------------------------------
    def load(self) -> tuple[list[Entry], dict[bytes, tuple[bytes, ...]]]:
        """Stored entries, least recently used first, whose files are whole; metadata
        without a whole file is dropped, files without metadata are deleted."""
        entries: list[tuple[int, Entry]] = []
        bad: list[bytes] = []
        with self.env.begin() as txn:
            seqs = {k: SEQ.unpack(v)[0] for k, v in txn.cursor(self.seq)}
            for key, data in txn.cursor(self.meta):
                try:
                    e = Entry.unpack(key, data)
                    ok = os.stat(self.objects / e.file).st_size == e.size
                except (OSError, ValueError, TypeError, msgpack.UnpackException):
                    ok = False
                if ok:
                    entries.append((seqs.get(key, 0), e))
                else:
                    bad.append(key)
            vary = {k: tuple(msgpack.unpackb(v)) for k, v in txn.cursor(self.vary)}
        if bad:
            with self.env.begin(write=True) as txn:
                for key in bad:
                    txn.delete(key, db=self.meta)
                    txn.delete(key, db=self.seq)
        entries.sort(key=lambda p: p[0])
        self.next_seq = (entries[-1][0] + 1) if entries else 1
        known = {e.file for _, e in entries}
        for shard in self.objects.iterdir():
            for path in shard.rglob("*"):
                if path.is_file() and str(path.relative_to(self.objects)) not in known:
                    path.unlink(missing_ok=True)
        return [e for _, e in entries], vary

    # -- files ---------------------------------------------------------------------------
    def temp_file(self) -> tuple[int, str]:
        path = str(self.tmp / secrets.token_hex(12))
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), path

    def new_name(self, key: bytes) -> str:
        h = hashlib.sha256(key).hexdigest()
        return f"{h[:2]}/{h[2:4]}/{h[4:32]}.{secrets.token_hex(4)}"

    def path(self, name: str) -> str:
        return self.objects_prefix + name

    def settle(self, fd: int, tmp: str, name: str) -> None:
        """Make the temp file the object's file (fsync + rename): blocking, for the
        ``worker`` thread (the caller keeps ``fd`` open until it has returned)."""
        os.fsync(fd)
        final = self.objects / name
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)

    # -- metadata --------------------------------------------------------------------------
    def _put(self, entry: Entry, packed: bytes, seq: int, vary: tuple[bytes, bytes] | None) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(entry.key, packed, db=self.meta)
            txn.put(entry.key, SEQ.pack(seq), db=self.seq)
            if vary is not None:
                txn.put(vary[0], vary[1], db=self.vary)

    def put(self, entry: Entry, vary_base: bytes | None = None,
            vary_names: tuple[bytes, ...] = ()) -> asyncio.Future:
        """Commit an entry's metadata (queued at once: a stop waits for it)."""
        seq = self.next_seq
        self.next_seq += 1
        vary = (vary_base, msgpack.packb(list(vary_names))) if vary_base is not None else None
        return asyncio.get_running_loop().run_in_executor(self.worker, self._put, entry,
                                                          entry.pack(), seq, vary)

    def _delete(self, keys: list[bytes], files: list[str]) -> None:
        with self.env.begin(write=True) as txn:
            for key in keys:
                txn.delete(key, db=self.meta)
                txn.delete(key, db=self.seq)
        for name in files:
            try:
                os.unlink(self.objects / name)
            except FileNotFoundError:
                pass

    def delete(self, keys: list[bytes], files: list[str]) -> asyncio.Future:
        """Forget these keys and delete these files (in the worker, in order)."""
        return asyncio.get_running_loop().run_in_executor(self.worker, self._delete, keys, files)

    def _touch(self, pairs: list[tuple[bytes, bytes]]) -> None:
        with self.env.begin(write=True) as txn:
            for key, seq in pairs:
                txn.put(key, seq, db=self.seq, overwrite=True)

    def touch(self, keys: list[bytes]) -> asyncio.Future:
        """Persist a recency order: ``keys`` (least recent first) become the most recent."""
        pairs = []
        for key in keys:
            pairs.append((key, SEQ.pack(self.next_seq)))
            self.next_seq += 1
        return asyncio.get_running_loop().run_in_executor(self.worker, self._touch, pairs)

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        self.env.close()
