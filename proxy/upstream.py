"""The upstream client: one keep-alive pool per app (proxy.http1), errors translated to proxy errors.

The client was chosen by measurement (bench/proxy_overhead.py, DESIGN's table): httpx, then aiohttp,
then the lean HTTP/1.1 pool in proxy.http1, which costs about a sixth of aiohttp's CPU per request.
Connect failures become ``UpstreamUnreachable`` (502), timeouts ``UpstreamTimeout`` (504), both
chained from the client's error. The upstream is asked for an unencoded body (the proxy reads every
answer it records); one it compresses anyway is decoded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import Response

from proxy.errors import UpstreamTimeout, UpstreamUnreachable
from proxy.http1 import ConnectError, HeaderPairs, HTTPError, Pool, ReadTimeout
from proxy.http1 import Response as UpstreamResponse

__all__ = ["HTTPError", "Upstream", "UpstreamResponse", "relay_headers", "relayed"]

# hop-by-hop headers, and what describes the body the proxy sends rather than the one it received
_IDENTITY = (b"accept-encoding", b"identity")
_NOT_RELAYED = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length", b"content-encoding", b"date", b"server",
})


class Upstream:
    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float, connections: int) -> None:
        self.base_url = base_url.rstrip("/")
        self._options = {"connect_timeout_s": connect_timeout_s, "read_timeout_s": read_timeout_s,
                         "limit": connections}
        self._pool: Pool | None = None

    async def open(self) -> None:
        self._pool = Pool(self.base_url, **self._options)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def request(
        self, method: str, path: str, *, body: bytes | None = None, headers: HeaderPairs = (),
        read_timeout_s: float | None = None,
    ) -> UpstreamResponse:
        """Send a request; the caller reads (or streams) the body and must release the response.

        ``headers`` are byte pairs (see ``proxy.chat.forward_headers``).
        """
        assert self._pool is not None, "Upstream.open() was not called"
        try:
            return await self._pool.request(method, path, body=body, headers=[*headers, _IDENTITY],
                                            read_timeout_s=read_timeout_s)
        except ReadTimeout as exc:
            raise UpstreamTimeout(f"upstream timed out: {self.base_url}{path}") from exc
        except ConnectError as exc:
            raise UpstreamUnreachable(f"upstream unreachable: {self.base_url}{path} ({exc})") from exc
        except HTTPError as exc:
            raise UpstreamUnreachable(f"upstream connection failed: {self.base_url}{path} ({exc})") from exc

    @staticmethod
    async def read(response: UpstreamResponse) -> bytes:
        try:
            return await response.read()
        except ReadTimeout as exc:
            raise UpstreamTimeout("upstream timed out while sending its answer") from exc
        except HTTPError as exc:
            raise UpstreamUnreachable(f"upstream connection failed ({exc})") from exc
        finally:
            response.release()

    @staticmethod
    def iter_chunks(response: UpstreamResponse) -> AsyncIterator[bytes]:
        """Body chunks as they arrive (no re-chunking)."""
        return response.iter_chunks()


def relayed(upstream: UpstreamResponse, own: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's end-to-end headers (request id, rate limits, ``retry-after``) to add to ``own``.

    Headers the proxy already set win; the upstream's own ``x-nextstate-*`` (a proxy in front of a
    proxy) are not repeated.
    """
    names = {name for name, _ in own}
    return [(name, value) for name, value in upstream.raw_headers
            if name not in _NOT_RELAYED and name not in names and not name.startswith(b"x-nextstate-")]


def relay_headers(upstream: UpstreamResponse, response: Response) -> Response:
    """``response`` with the upstream's end-to-end headers added (see ``relayed``)."""
    response.raw_headers += relayed(upstream, response.raw_headers)
    return response
