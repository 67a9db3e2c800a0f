"""The built-in task ``geoip_rebuild`` (the master): download the GeoIP database, check
it, put it in use here and publish it to every node (``geoshare.py``).

The download is a tar.gz (MaxMind's GeoLite2 permalink, with the licence key) and its
SHA-256 companion, fetched with the node's pooled Client (redirects followed: MaxMind
answers its newer URLs with one). The archive must match the companion; its one .mmdb
member is extracted (never a path from the archive: the member is read and written
under our name), must open as a MaxMind database of the configured type, and is then
handed to GeoShare.install, which builds the index (the DNS service's, on a node with
DNS) before anything changes. Any failure raises: the cron records a failed run (the
``cron_failed`` alert), and every node keeps the database it uses.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import tarfile
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import maxminddb

from farts.clock import Clock
from farts.master.config import GeoIPConfig
from farts.master.geoshare import GeoShare, Published

log = logging.getLogger("farts.master.geoip")

READ_TIMEOUT = 60.0     # seconds without a byte of the download
CONNECT_TIMEOUT = 10.0
MAX_REDIRECTS = 5
MAX_COMPANION = 4096
WRITE_BATCH = 1 << 20   # download bytes gathered before a write (in the thread pool)


class DownloadError(Exception):
    pass


def companion_url(url: str) -> str:
    """MaxMind's checksum permalink is the archive's with suffix=tar.gz.sha256."""
    if "suffix=tar.gz" in url and "suffix=tar.gz.sha256" not in url:
        return url.replace("suffix=tar.gz", "suffix=tar.gz.sha256")
    return url + ".sha256"


def parse_sha256(text: bytes) -> str:
    """The digest of a ``sha256sum`` line ("<hex>  <file name>")."""
    first = text.decode("ascii", "replace").split(maxsplit=1)[:1]
    digest = first[0].lower() if first else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise DownloadError(f"the checksum file does not start with a SHA-256 digest: {text[:80]!r}")
    return digest


def extract_mmdb(archive: Path, expected_sha256: str, directory: Path, database_type: str,
                 max_bytes: int) -> tuple[Path, str, str]:
    """(blocking) Checks the archive against its digest and extracts its .mmdb as
    ``<sha256 of the mmdb>.mmdb`` in ``directory``; returns (path, its sha256, its
    database type). Raises DownloadError."""
    h = hashlib.sha256()
    with open(archive, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != expected_sha256:
        raise DownloadError(f"the archive's SHA-256 is {h.hexdigest()}, its checksum file says {expected_sha256}")
    part = directory / "extract.mmdb.part"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".mmdb")]
            if len(members) != 1:
                raise DownloadError(f"the archive holds {len(members)} .mmdb files, not one")
            if members[0].size > max_bytes:
                raise DownloadError(f"{members[0].name}: {members[0].size} bytes, over master.geoip.max_bytes")
            digest = hashlib.sha256()
            with tar.extractfile(members[0]) as src, open(part, "wb") as out:
                while block := src.read(1 << 20):
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
        with maxminddb.open_database(str(part)) as reader:
            kind = reader.metadata().database_type
        if database_type and kind != database_type:
            raise DownloadError(f"the database is a {kind!r}, master.geoip.database_type says {database_type!r}")
        path = directory / f"{digest.hexdigest()}.mmdb"
        os.replace(part, path)
        return path, digest.hexdigest(), kind
    except (tarfile.TarError, EOFError, OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
        raise DownloadError(f"not a readable tar.gz with a MaxMind database: {type(e).__name__}: {e}") from None
    finally:
        part.unlink(missing_ok=True)


class GeoIPRebuild:
    def __init__(self, cfg: GeoIPConfig, http, share: GeoShare, clock: Clock) -> None:
        self.cfg, self.http, self.share, self.clock = cfg, http, share, clock

    def _key(self) -> str:
        return self.cfg.license_key or os.environ.get(self.cfg.license_key_env, "")

    def _urls(self) -> tuple[str, str]:
        url, key = self.cfg.url, self._key()
        if "{license_key}" in url + self.cfg.sha256_url or self.cfg.account_id:
            if not key:
                raise DownloadError(f"no licence key: set master.geoip.license_key or ${self.cfg.license_key_env}")
        companion = self.cfg.sha256_url or companion_url(url)
        return url.replace("{license_key}", key), companion.replace("{license_key}", key)

    async def run(self) -> None:
        url, companion = self._urls()
        directory = self.share.directory
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: directory.mkdir(parents=True, exist_ok=True))
        digest = parse_sha256(await self._get(companion, None, MAX_COMPANION))
        archive = directory / "download.tar.gz.part"
        try:
            await self._get(url, archive, self.cfg.max_bytes)
            path, sha, kind = await loop.run_in_executor(None, extract_mmdb, archive, digest, directory,
                                                         self.cfg.database_type, self.cfg.max_bytes)
        finally:
            await loop.run_in_executor(None, lambda: archive.unlink(missing_ok=True))
        cur = self.share.current
        if cur is not None and cur.sha256 == sha:
            log.info("geoip: the downloaded database is the one in use (sha256 %s): nothing to publish", sha)
            return
        database = Published(sha, path.stat().st_size, self.clock.wall(), kind)
        await self.share.install(database, offer=True)

    async def _get(self, url: str, into: Path | None, limit: int) -> bytes:
        """GET url (redirects followed): the body, or written to ``into``. Raises
        DownloadError on an error status, a body over ``limit``, or the Client's errors."""
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = [(b"host", parts.netloc.rpartition("@")[2].encode()), (b"accept", b"*/*")]
            if self.cfg.account_id:
                auth = base64.b64encode(f"{self.cfg.account_id}:{self._key()}".encode())
                headers.append((b"authorization", b"Basic " + auth))
            resp = await self.http.request(self.http.pool_for(url), b"GET", target.encode(), headers,
                                           connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)
            status = resp.head.status
            location = next((v for k, v in resp.head.headers if k.lower() == b"location"), None)
            if 300 <= status < 400 and location:
                await _drain(resp.body)
                url = urljoin(url, location.decode("latin-1"))
                continue
            if status != 200:
                await _drain(resp.body)
                raise DownloadError(f"GET {_redact(url)}: HTTP {status}")
            return await self._body(resp.body, into, limit, url)
        raise DownloadError(f"GET {_redact(url)}: more than {MAX_REDIRECTS} redirects")

    async def _body(self, body, into: Path | None, limit: int, url: str) -> bytes:
        loop = asyncio.get_running_loop()
        got, pending = 0, []
        out = open(into, "wb") if into is not None else None   # noqa: SIM115 - closed below
        try:
            async for chunk in _chunks(body):
                got += len(chunk)
                if got > limit:
                    raise DownloadError(f"GET {_redact(url)}: more than {limit} bytes")
                pending.append(chunk)
                if out is not None and sum(map(len, pending)) >= WRITE_BATCH:
                    data, pending = b"".join(pending), []
                    await loop.run_in_executor(None, out.write, data)
            if out is None:
                return b"".join(pending)
            await loop.run_in_executor(None, out.write, b"".join(pending))
            return b""
        finally:
            if out is not None:
                out.close()
            await _drain(body)


async def _chunks(body):
    """A Client response body, streamed or whole, as chunks."""
    if isinstance(body, bytes):
        yield body
        return
    async for chunk in body:
        yield chunk


async def _drain(body) -> None:
    """Lets go of a response body not read to its end (its connection is closed)."""
    if not isinstance(body, bytes):
        await body.aclose()


def _redact(url: str) -> str:
    """The URL without its licence key (it goes to logs and to the cron's history)."""
    parts = urlsplit(url)
    query = "&".join(p if not p.startswith("license_key=") else "license_key=…" for p in parts.query.split("&"))
    return parts._replace(query=query, netloc=parts.netloc.rpartition("@")[2]).geturl()
