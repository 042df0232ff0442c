"""The upstream client: one keep-alive pool per app (proxy.pool over proxy.http1), errors translated to proxy errors.

The client was chosen by measurement (bench/proxy_overhead.py, DESIGN's table): httpx, then aiohttp,
then the lean HTTP/1.1 pool in proxy.http1, which costs about a sixth of aiohttp's CPU per request.
Connect failures, broken connections and answers past the size bound become ``UpstreamUnreachable``
(502), read and write timeouts ``UpstreamTimeout`` (504), a pool that stays busy past its timeout
``UpstreamBusy`` (503 with Retry-After), all chained from the client's error. The upstream is asked for an unencoded body (the proxy reads every
answer it records); one it compresses anyway is decoded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from proxy.connect import tls_context
from proxy.errors import UpstreamBusy, UpstreamTimeout, UpstreamUnreachable
from proxy.http1 import (
    ConnectError,
    HeaderPairs,
    HTTPError,
    PoolTimeout,
    ReadTimeout,
    TooLarge,
    WriteTimeout,
)
from proxy.http1 import Response as UpstreamResponse
from proxy.pool import Pool
from proxy.settings import ProxySettings

__all__ = ["HTTPError", "Upstream", "UpstreamResponse"]

_IDENTITY = (b"accept-encoding", b"identity")


class Upstream:
    """The policy server's client; ``options`` go to ``proxy.http1.Pool`` (timeouts, bounds, TLS, proxy)."""

    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float, connections: int,
                 **options: Any) -> None:
        self.base_url = base_url.rstrip("/")
        self._options = {"connect_timeout_s": connect_timeout_s, "read_timeout_s": read_timeout_s,
                         "limit": connections, **options}
        self._pool: Pool | None = None

    @classmethod
    def from_settings(cls, settings: ProxySettings) -> Upstream:
        """The client a ``ProxySettings`` describes."""
        ssl_context = None
        if settings.upstream_ca_bundle or settings.upstream_client_cert:
            ssl_context = tls_context(settings.upstream_ca_bundle, settings.upstream_client_cert,
                                      settings.upstream_client_key)
        return cls(
            settings.upstream_url, connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s, connections=settings.upstream_connections,
            pool_timeout_s=settings.pool_timeout_s, write_timeout_s=settings.write_timeout_s,
            max_response_bytes=settings.max_response_bytes, ssl_context=ssl_context,
            proxy_url=settings.upstream_proxy,
        )

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
        """Send a request; the caller reads the body with ``read`` or streams it inside ``async with response:``,
        which hands the connection back (or closes it) however the block ends.

        ``headers`` are byte pairs (see ``proxy.headers.forward_headers``).
        """
        assert self._pool is not None, "Upstream.open() was not called"
        try:
            return await self._pool.request(method, path, body=body, headers=[*headers, _IDENTITY],
                                            read_timeout_s=read_timeout_s)
        except PoolTimeout as exc:
            raise UpstreamBusy(f"upstream busy: every connection to {self.base_url} is in use ({exc})") from exc
        except (ReadTimeout, WriteTimeout) as exc:
            raise UpstreamTimeout(f"upstream timed out: {self.base_url}{path}") from exc
        except TooLarge as exc:
            raise UpstreamUnreachable(f"upstream answer too large ({exc})", code="upstream_response_too_large") from exc
        except ConnectError as exc:
            raise UpstreamUnreachable(f"upstream unreachable: {self.base_url}{path} ({exc})") from exc
        except HTTPError as exc:
            raise UpstreamUnreachable(f"upstream connection failed: {self.base_url}{path} ({exc})") from exc

    @staticmethod
    async def read(response: UpstreamResponse) -> bytes:
        """The whole body; the connection goes back to the pool (or is closed) on the way out."""
        try:
            async with response:
                return await response.read()
        except ReadTimeout as exc:
            raise UpstreamTimeout("upstream timed out while sending its answer") from exc
        except TooLarge as exc:
            raise UpstreamUnreachable(f"upstream answer too large ({exc})", code="upstream_response_too_large") from exc
        except HTTPError as exc:
            raise UpstreamUnreachable(f"upstream connection failed ({exc})") from exc

    @staticmethod
    def iter_chunks(response: UpstreamResponse) -> AsyncIterator[bytes]:
        """Body chunks as they arrive (no re-chunking)."""
        return response.iter_chunks()
