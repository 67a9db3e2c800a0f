"""Builds a fast.geo.GeoIndex from a MaxMind database file, and keeps it current.

The trie is flattened in C (fast.geo.walk_tree, GIL released); each distinct record is
decoded once with the maxminddb reader. Building happens in a worker thread; the new
index replaces the old one in a single assignment on the event loop, so a query sees
either the old or the new index, never a half-built one.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass

import maxminddb

from farts.clock import Clock, LoopClock, Timer
from fast.geo import GeoIndex, decode_locations, walk_tree

log = logging.getLogger("farts.dns.geo")

# Databases without coordinates for a record (GeoLite2 Country, or a City record known
# only to the continent) still place the client on its continent.
CONTINENT_CENTRES = {
    "AF": (7.19, 21.09), "AN": (-82.86, 135.0), "AS": (29.84, 89.3), "EU": (48.69, 9.14),
    "NA": (46.07, -100.55), "OC": (-18.31, 138.52), "SA": (-14.6, -57.66),
}


def default_database() -> str:
    """The GeoLite2 City file shipped by the maxminddb-geolite2 package."""
    from _maxminddb_geolite2 import geolite2_database
    return geolite2_database()


@dataclass(frozen=True)
class GeoData:
    index: GeoIndex
    path: str
    mtime: float
    built_at: float
    build_seconds: float
    records: int
    database_type: str

    def locate(self, packed: bytes) -> tuple[int, int]:
        return self.index.lookup(packed)

    def describe(self, loc: int) -> str:
        if loc < 0:
            return "unknown location"
        lat, lon, label = self.index.locations[loc]
        return f"{label} ({lat:.2f}, {lon:.2f})"


def record_location(record) -> tuple[float, float, str] | None:
    """(lat, lon, label) of a decoded record (a dict from maxminddb), or None."""
    if not isinstance(record, dict):
        return None
    loc = record.get("location") or {}
    country = (record.get("country") or record.get("registered_country") or {}).get("iso_code", "")
    return _location(loc.get("latitude"), loc.get("longitude"), (record.get("continent") or {}).get("code", ""),
                     country, ((record.get("city") or {}).get("names") or {}).get("en", ""))


def _location(lat, lon, continent: str, country: str, city: str) -> tuple[float, float, str] | None:
    label = "/".join(p for p in (continent, country, city) if p) or "?"
    if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
        return float(lat), float(lon), label
    if continent in CONTINENT_CENTRES:
        return (*CONTINENT_CENTRES[continent], label)
    return None


def build(path: str, built_at: float | None = None) -> GeoData:
    """Reads and indexes one database file (blocking: run it in a worker thread).
    ``built_at``: the wall time to stamp it with (now when not given).
    Raises OSError or ValueError (maxminddb.InvalidDatabaseError) for a bad file."""
    started = time.perf_counter()
    mtime = os.stat(path).st_mtime
    with open(path, "rb") as f:
        data = f.read()
    reader = maxminddb.open_database(path)   # validates the file; gives the metadata
    try:
        meta = reader.metadata()
        tree = walk_tree(data, meta.node_count, meta.record_size, meta.ip_version)
        locations: list[tuple[float, float, str]] = []
        numbers: dict[tuple[float, float, str], int] = {}
        rec_location: list[int] = []
        # Only the fields we use, decoded in C (reader.get() per record took ~20x longer),
        # in chunks so that at most one chunk of decoded tuples is alive at a time.
        start = meta.node_count * meta.record_size // 4 + 16
        for i in range(0, len(tree.records), 20000):
            for f in decode_locations(data, start, tree.records[i:i + 20000]):
                where = None if f is None else _location(*f)
                if where is None:
                    rec_location.append(-1)
                    continue
                n = numbers.get(where)
                if n is None:
                    n = numbers[where] = len(locations)
                    locations.append(where)
                rec_location.append(n)
        del data
        index = GeoIndex(tree, locations, rec_location)
        return GeoData(index, path, mtime, time.time() if built_at is None else built_at,
                       time.perf_counter() - started,
                       len(tree.records), meta.database_type)
    finally:
        reader.close()


async def _in_daemon_thread(fn, *args):
    """Like run_in_executor, but a node stopping mid-build does not wait for the build
    (the default executor is joined at exit; a daemon thread is not)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(result, error) -> None:
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(result)

    def run() -> None:
        result = error = None
        try:
            result = fn(*args)
        except BaseException as e:  # noqa: B036 - handed to the awaiting coroutine
            error = e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:   # the loop closed while we were building
            pass

    threading.Thread(target=run, name="geo-index-build", daemon=True).start()
    return await done


class GeoSource:
    """The current GeoData, rebuilt when the file changes or ``interval`` passes.

    ``current`` is None until the first build finishes (queries then get the default
    region). ``on_swap`` callbacks run on the loop after each new index is in place.
    """

    def __init__(self, path: str, interval: float, check_every: float = 5.0,
                 initial: GeoData | None = None, clock: Clock | None = None) -> None:
        self.clock = clock or LoopClock()
        self.path = path
        self.interval = interval
        self.check_every = check_every
        self.current: GeoData | None = initial
        self.version = 0 if initial is None else 1
        self.failures = 0
        self.on_swap: list = []
        self._bad_mtime: float | None = None
        self._ticker: Timer | None = None
        self._checking: asyncio.Task | None = None

    async def load(self, path: str | None = None) -> GeoData:
        """Builds the index of ``path`` (another database: the master's published one;
        default: this source's file) and swaps it in; raises, keeping the current index,
        when it does not build."""
        data = await _in_daemon_thread(build, path or self.path, self.clock.wall())
        self.path = data.path
        self.current = data   # the swap: one assignment on the loop thread
        self.version += 1
        log.info("geo index: %s (%s), %d records, %d+%d ranges, %d locations, built in %.2fs",
                 self.path, data.database_type, data.records, *data.index.ranges,
                 data.index.nloc, data.build_seconds)
        for fn in list(self.on_swap):
            fn(data)
        return data

    def _due(self) -> bool:
        cur = self.current
        mtime = self._mtime()
        if cur is None and self.failures == 0:
            return True    # the first attempt, which reports a missing file
        if mtime is None or mtime == self._bad_mtime:
            return False   # keep serving what we have until a good file appears
        if cur is None:
            return True
        return mtime != cur.mtime or self.clock.wall() - cur.built_at >= self.interval

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.path).st_mtime
        except OSError:
            return None

    async def check(self) -> bool:
        """Rebuilds if due; True when a new index was swapped in."""
        if not self._due():
            return False
        try:
            await self.load()
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
            self.failures += 1
            log.error("geo index: cannot build from %s: %s (keeping the previous index)", self.path, e)
            self._bad_mtime = self._mtime()   # do not retry the same bad file every few seconds
            return False
        return True

    def _tick(self, _now: float) -> None:
        if self._checking is None or self._checking.done():  # one check at a time
            self._checking = asyncio.ensure_future(self.check())

    def start(self) -> None:
        self._ticker = self.clock.every(self.check_every, self._tick)

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._checking is not None:
            self._checking.cancel()
