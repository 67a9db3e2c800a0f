"""Origins: where a miss is fetched from.

- ``HTTPOrigin``: HTTP/1.1 (or HTTPS) to a base URL through the node's pooled
  outbound client (farts.transport.client): keep-alive connections, so a run of
  misses costs one TLS handshake, not one each.
- ``S3Origin``: the same, path-style ``<endpoint>/<bucket>/<key>``, each request signed
  with AWS Signature V4 by botocore's signer when credentials are configured.
- ``DirOrigin``: files under a local folder (the built-in origin of `farts-edge up`).

``fetch`` returns an ``OriginResponse`` whose body is an async iterator of bytes, or
raises ``OriginError`` with the status the edge answers (502 or 504).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from farts.clock import LoopClock
from farts.transport.client import BadResponse, Client, ConnectionLost, ReadTimeout, ResponseBody

CHUNK = 256 * 1024


class OriginError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class OriginResponse:
    __slots__ = ("status", "headers", "content_length", "body")

    def __init__(self, status: int, headers: list, content_length: int,
                 body: AsyncIterator[bytes]) -> None:
        self.status = status
        self.headers = headers
        self.content_length = content_length
        self.body = body


class HTTPOrigin:
    def __init__(self, url: str, connect_timeout: float, read_timeout: float,
                 client: Client | None = None) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.authority = parts.netloc.rpartition("@")[2]
        self.base = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.client = client or Client(LoopClock())
        self.pool = self.client.pool_for(url)

    def target(self, rest: bytes) -> bytes:
        """Origin target for the request path after the route prefix (with its query)."""
        return (self.base + "/").encode() + rest

    def sign(self, method: str, target: bytes, headers: list) -> list:
        return headers

    async def fetch(self, rest: bytes, headers: list, head_only: bool = False, on_interim=None) -> OriginResponse:
        return await self.send(b"HEAD" if head_only else b"GET", rest, headers, on_interim=on_interim)

    async def send(self, method: bytes, rest: bytes, headers: list, body=None,
                   length: int = -2, on_interim=None) -> OriginResponse:
        """``method`` to the origin; ``body``: None or an async iterator of ``length``
        bytes (-1: chunked, -2: no body), streamed as it comes; the origin's 1xx
        answers (103 Early Hints) to ``on_interim(status, headers)``, never stored."""
        target = self.target(rest)
        head_only = method == b"HEAD"
        headers = self.sign(method.decode("latin-1"), target,
                            [(b"host", self.authority.encode()), *headers])
        try:
            resp = await self.client.request(self.pool, method, target, headers,
                                             connect_timeout=self.connect_timeout,
                                             read_timeout=self.read_timeout, head_only=head_only,
                                             body=body, length=length, on_interim=on_interim)
        except ReadTimeout:
            raise OriginError(504, "origin read timeout") from None
        except ConnectionLost as e:
            raise OriginError(502, f"origin connection failed: {e}") from None
        except BadResponse as e:
            raise OriginError(502, f"bad answer from the origin: {e}") from None
        except (OSError, TimeoutError) as e:  # connecting (TLS included)
            raise OriginError(502, f"cannot connect to the origin: {e or type(e).__name__}") from None
        head = resp.head
        body = _once(resp.body) if type(resp.body) is bytes else _stream(resp.body)
        return OriginResponse(head.status, head.headers, head.content_length, body)


async def _stream(body: ResponseBody) -> AsyncIterator[bytes]:
    """The body with the client's errors as the CDN's; closing it early (or losing it)
    closes the connection instead of leaving it half read."""
    try:
        async for piece in body:
            yield piece
    except ReadTimeout:
        raise OriginError(504, "origin read timeout") from None
    except (ConnectionLost, BadResponse) as e:
        raise OriginError(502, f"bad answer from the origin: {e}") from None
    finally:
        await body.aclose()


class S3Origin(HTTPOrigin):
    def __init__(self, url: str, bucket: str, region: str, access_key_id: str,
                 secret_access_key: str, connect_timeout: float, read_timeout: float,
                 client: Client | None = None) -> None:
        super().__init__(url, connect_timeout, read_timeout, client)
        self.bucket = bucket
        self.signer = None
        if access_key_id:
            from botocore.auth import S3SigV4Auth
            from botocore.credentials import Credentials
            self.signer = S3SigV4Auth(Credentials(access_key_id, secret_access_key), "s3", region)

    def target(self, rest: bytes) -> bytes:
        path, _, query = rest.partition(b"?")  # the query is the client's, not S3's
        key = quote(unquote(path.decode("latin-1")), safe="/~")
        return f"{self.base}/{quote(self.bucket)}/{key}".encode()

    def sign(self, method: str, target: bytes, headers: list) -> list:
        if self.signer is None:
            return headers
        from botocore.awsrequest import AWSRequest
        scheme = "https" if self.tls else "http"
        req = AWSRequest(method=method, url=f"{scheme}://{self.authority}{target.decode()}",
                         headers={k.decode(): v.decode("latin-1") for k, v in headers})
        self.signer.add_auth(req)
        return [(k.encode(), v.encode("latin-1") if isinstance(v, str) else v)
                for k, v in req.headers.items()]


class DirOrigin:
    """Files under ``root``: 200 with Last-Modified, ETag and max-age=60; 404 otherwise."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    async def fetch(self, rest: bytes, headers: list, head_only: bool = False, on_interim=None) -> OriginResponse:
        rel = unquote(rest.partition(b"?")[0].decode("latin-1"))
        path = (self.root / rel).resolve()
        loop = asyncio.get_running_loop()
        try:
            if not path.is_relative_to(self.root):
                raise FileNotFoundError
            fd = await loop.run_in_executor(None, os.open, path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            body = b"404 Not Found\n"
            return OriginResponse(404, [(b"content-type", b"text/plain; charset=utf-8")],
                                  len(body), _once(body))
        st = os.fstat(fd)
        if not os.path.isfile(path):
            os.close(fd)
            return OriginResponse(404, [], 0, _once(b""))
        etag = b'"' + hashlib.sha1(f"{st.st_mtime_ns}-{st.st_size}".encode()).hexdigest()[:16].encode() + b'"'
        lm = formatdate(st.st_mtime, usegmt=True).encode()
        hs = [(b"etag", etag), (b"last-modified", lm), (b"cache-control", b"max-age=60")]
        for k, v in headers:
            if k == b"if-none-match" and v == etag:
                os.close(fd)
                return OriginResponse(304, hs, -1, _once(b""))
        if head_only:
            os.close(fd)
            return OriginResponse(200, hs, st.st_size, _once(b""))
        return OriginResponse(200, hs, st.st_size, _read_file(fd, st.st_size))

    async def send(self, method: bytes, rest: bytes, headers: list, body=None,
                   length: int = -2, on_interim=None) -> OriginResponse:
        """Files are only read: any other method gets the 405 an origin would answer."""
        if method in (b"GET", b"HEAD"):
            return await self.fetch(rest, headers, method == b"HEAD")
        text = b"405 Method Not Allowed: the built-in origin serves files (GET, HEAD)\n"
        return OriginResponse(405, [(b"allow", b"GET, HEAD"),
                                    (b"content-type", b"text/plain; charset=utf-8")],
                              len(text), _once(text))


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


async def _read_file(fd: int, size: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    try:
        offset = 0
        while offset < size:
            data = await loop.run_in_executor(None, os.pread, fd, CHUNK, offset)
            if not data:
                return
            offset += len(data)
            yield data
    finally:
        os.close(fd)


def make_origin(cfg, data_dir: Path, client: Client | None = None):
    """``client``: the node's shared outbound client (its pools outlive one route)."""
    if cfg.kind == "s3":
        return S3Origin(cfg.url, cfg.bucket, cfg.region, cfg.access_key_id,
                        cfg.secret_access_key, cfg.connect_timeout, cfg.read_timeout, client)
    if cfg.kind == "dir":
        return DirOrigin(data_dir / cfg.path)
    return HTTPOrigin(cfg.url, cfg.connect_timeout, cfg.read_timeout, client)
