"""The keep-alive pool of upstream connections (proxy.http1) to one origin: every wait bounded — a free
slot (``pool_timeout_s``), the connection (``connect_timeout_s``), the request's bytes leaving
(``write_timeout_s``), each piece of the answer (``read_timeout_s``) — and the answer's size
(``max_response_bytes``, counted once decoded).

An idle connection that the server has closed is noticed before it is used. A request on a
kept-alive connection that breaks before any byte of the answer arrives is sent once more on a fresh
connection only when its method is idempotent: the server may have read a POST and acted on it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

from proxy.connect import proxy_for, tls_context, tunnel
from proxy.http1 import (
    IDEMPOTENT,
    ConnectError,
    Connection,
    HeaderPairs,
    HTTPError,
    PoolTimeout,
    Response,
    StaleConnection,
)

__all__ = ["Pool"]


class Pool:
    """Keep-alive connections to one origin (``http://host:port`` or ``https://…``), at most ``limit`` busy.

    ``proxy_url``: the HTTP proxy to go through ("" for none; unset = from the environment, see
    proxy.connect); ``ssl_context``: TLS settings for an ``https`` origin (proxy.connect.tls_context).
    """

    def __init__(self, base_url: str, *, connect_timeout_s: float, read_timeout_s: float | None, limit: int,
                 pool_timeout_s: float | None = None, write_timeout_s: float | None = None,
                 max_response_bytes: int = 1 << 40, keepalive_s: float = 4.0,
                 ssl_context: ssl.SSLContext | None = None, proxy_url: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = host if default_port else f"{host}:{self.port}"
        self.ssl = (ssl_context or tls_context()) if parts.scheme == "https" else None
        self.via = proxy_for(parts.scheme, self.host, proxy_url)
        # a plain-HTTP origin behind a proxy is asked in absolute form, through the proxy
        self.target = f"http://{self.authority}{self.prefix}" if self.via and not self.ssl else self.prefix
        self.connect_timeout = connect_timeout_s
        self.read_timeout = read_timeout_s
        self.pool_timeout = pool_timeout_s
        self.write_timeout = write_timeout_s
        self.max_response_bytes = max_response_bytes
        # below the 5 s that uvicorn (and so vLLM) keeps an idle connection: rarely one the server is closing
        self.keepalive_s = keepalive_s
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._closed = False

    async def request(self, method: str, path: str, *, body: bytes | None = None,
                      headers: Mapping[str, str] | HeaderPairs | None = None,
                      read_timeout_s: float | None = None) -> Response:
        """Send a request and wait for the status and headers; the caller reads the body and releases it."""
        head = self._head(method, path, body, headers or ())
        await self._acquire()
        try:
            try:
                return await self._exchange(head, body, read_timeout_s)
            except StaleConnection as exc:
                if method not in IDEMPOTENT:  # the server may have read it and acted: never sent twice
                    raise HTTPError("the kept-alive connection closed before an answer; "
                                    f"a {method} is not sent again") from exc
                return await self._exchange(head, body, read_timeout_s, fresh=True)
        except BaseException:
            self._slots.release()
            raise

    async def _acquire(self) -> None:
        if not self._slots.locked():  # a free slot: taken at once, no timer
            await self._slots.acquire()
            return
        try:
            await asyncio.wait_for(self._slots.acquire(), self.pool_timeout)
        except TimeoutError:
            raise PoolTimeout(f"no connection to {self.authority} came free within {self.pool_timeout} s") from None

    async def _exchange(self, head: bytes, body: bytes | None, read_timeout_s: float | None,
                        fresh: bool = False) -> Response:
        connection = None if fresh else self._take_idle()
        if connection is None:
            connection = await self._connect()
        connection.read_timeout = read_timeout_s if read_timeout_s is not None else self.read_timeout
        response = connection.response = Response(connection)
        connection.received = False
        assert connection.transport is not None
        try:
            connection.transport.write(head + body if body else head)
            if connection.drained is not None:  # the server is slow to take the body
                await connection.drain(self.write_timeout)
            await response._head(connection.read_timeout)
        except BaseException:
            connection.close()
            raise
        return response

    def _head(self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | HeaderPairs) -> bytes:
        parts = [f"{method} {self.target}{path} HTTP/1.1\r\nhost: {self.authority}\r\n".encode("latin-1")]
        if self.via is not None and self.via.authorization and not self.ssl:
            parts.append(b"proxy-authorization: " + self.via.authorization + b"\r\n")
        pairs = ((n.encode("latin-1"), v.encode("latin-1")) for n, v in headers.items()) if isinstance(headers, Mapping) else headers
        for name, value in pairs:
            if b"\n" in value or b"\r" in value or b"\n" in name or b"\r" in name:
                raise ValueError(f"header {name!r} holds a line break")
            parts += (name, b": ", value, b"\r\n")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            parts.append(b"content-length: %d\r\n" % len(body or b""))
        parts.append(b"\r\n")
        return b"".join(parts)

    def _take_idle(self) -> Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_s and connection.alive():
                connection.reused = True
                return connection
            connection.close()
        return None

    async def _connect(self) -> Connection:
        if self._closed:
            raise ConnectError("the client is closed")
        try:
            return await asyncio.wait_for(self._open(), self.connect_timeout)
        except TimeoutError:
            raise ConnectError(f"connecting to {self.authority} timed out after {self.connect_timeout} s") from None
        except OSError as exc:  # refused, unreachable, name not found, TLS failure, a proxy's refusal
            raise ConnectError(f"cannot connect to {self.authority}: {exc}") from exc

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        if self.via is None or not self.ssl:
            host, port = (self.host, self.port) if self.via is None else (self.via.host, self.via.port)
            _, connection = await loop.create_connection(
                lambda: Connection(self), host, port, ssl=self.ssl, server_hostname=self.host if self.ssl else None)
            return connection
        raw, answer = await tunnel(self.via, self.authority if self.port != 443 else f"{self.authority}:443")
        transport = await loop.start_tls(raw, answer, self.ssl, server_hostname=self.host)
        assert transport is not None
        connection = Connection(self)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        return connection

    def put_back(self, connection: Connection) -> None:
        connection.response = None
        if self._closed:
            connection.close()
        else:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        self._slots.release()

    def done_with(self, connection: Connection) -> None:
        connection.response = None
        self._slots.release()

    async def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
