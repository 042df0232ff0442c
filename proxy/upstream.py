"""The upstream client: one pooled aiohttp session per app, errors translated to proxy errors.

aiohttp was chosen by measurement (bench/proxy_overhead.py, DESIGN's table): on the same loop it adds
about half the per-request time of httpx. Connect failures become ``UpstreamUnreachable`` (502),
timeouts ``UpstreamTimeout`` (504), both chained from the aiohttp error. The upstream is asked for
an unencoded body (the proxy reads every answer it records); one it compresses anyway is decoded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import aiohttp
from starlette.responses import Response
from yarl import URL

from proxy.errors import UpstreamTimeout, UpstreamUnreachable

# hop-by-hop headers, and what describes the body the proxy sends rather than the one it received
_NOT_RELAYED = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length", b"content-encoding", b"date", b"server",
})


class Upstream:
    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float, connections: int) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._connections, ttl_dns_cache=300, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers={"accept-encoding": "identity"},
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, path: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """Send a request; the caller reads (or streams) the body and must release the response."""
        assert self._session is not None, "Upstream.open() was not called"
        url = self._urls.get(path)
        if url is None:  # parsed once per path, not per request
            url = self._urls[path] = URL(self.base_url + path)
        try:
            return await self._session.request(method, url, data=body, headers=headers, timeout=timeout or self._timeout)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"upstream timed out: {url}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"upstream unreachable: {url} ({exc.__class__.__name__})") from exc

    @staticmethod
    async def read(response: aiohttp.ClientResponse) -> bytes:
        try:
            return await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("upstream timed out while sending its answer") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"upstream connection failed ({exc.__class__.__name__})") from exc
        finally:
            response.release()

    @staticmethod
    async def iter_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """Body chunks as they arrive (no re-chunking)."""
        async for data in response.content.iter_any():
            yield data


def relay_headers(upstream: aiohttp.ClientResponse, response: Response) -> Response:
    """Add the upstream's end-to-end headers (request id, rate limits, ``retry-after``) to ``response``.

    Headers the proxy already set win; the upstream's own ``x-nextstate-*`` (a proxy in front of a
    proxy) are not repeated.
    """
    own = {name for name, _ in response.raw_headers}
    for name, value in upstream.raw_headers:
        name = name.lower()
        if name not in _NOT_RELAYED and name not in own and not name.startswith(b"x-nextstate-"):
            response.raw_headers.append((name, value))
    return response
