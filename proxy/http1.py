"""A lean HTTP/1.1 client for the upstream hop: a keep-alive pool of asyncio connections, httptools parsing.

The proxy talks to one origin with small JSON requests and relays what comes back, so it needs only:
requests with a byte body, answers framed by Content-Length, chunked or by the connection's end, read
whole or streamed as they arrive, gzip/deflate decoded, TLS, an HTTP proxy from the environment
(proxy.connect). That much costs about a sixth of the CPU of a general client per request
(bench/proxy_overhead.py measures the whole hop). Every wait is bounded: a free slot in the pool
(``pool_timeout_s``), the connection (``connect_timeout_s``), the request's bytes leaving
(``write_timeout_s``), each piece of the answer (``read_timeout_s``); and so is the answer's size,
counted once decoded (``max_response_bytes``).

Errors::

    HTTPError            the connection broke, or the answer was not HTTP (or was an upgrade)
    ├── ConnectError     no connection to the server could be made
    ├── PoolTimeout      no connection came free within the pool timeout (also TimeoutError)
    ├── ReadTimeout      the server was silent past the read timeout (also TimeoutError)
    ├── WriteTimeout     the server did not take the request within the write timeout (also TimeoutError)
    └── TooLarge         the answer grew past ``max_response_bytes``

An idle connection that the server has closed is noticed before it is used. A request on a
kept-alive connection that breaks before any byte of the answer arrives is sent once more on a fresh
connection only when its method is idempotent: the server may have read a POST and acted on it.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping
from urllib.parse import urlsplit

import httptools

from proxy.connect import proxy_for, tls_context, tunnel

_HIGH_WATER = 1 << 20  # stop reading from the socket while this much body waits for the caller
_LOW_WATER = 1 << 16


class HTTPError(Exception):
    """The connection broke or the answer was not HTTP."""


class ConnectError(HTTPError):
    """No connection to the server could be made."""


class ReadTimeout(HTTPError, TimeoutError):
    """The server sent nothing for longer than the read timeout."""


class WriteTimeout(HTTPError, TimeoutError):
    """The server did not take the request's bytes within the write timeout."""


class PoolTimeout(HTTPError, TimeoutError):
    """Every connection of the pool stayed busy for longer than the pool timeout."""


class TooLarge(HTTPError):
    """The answer is larger than the pool's bound (counted once decoded)."""


class _StaleConnection(HTTPError):
    """A kept-alive connection was closed before any byte of the answer arrived."""


class _Expired(Exception):
    """The read timeout of one wait ran out (turned into ``ReadTimeout``)."""


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

HeaderPairs = Iterable[tuple[bytes, bytes]]
"""Request headers as (name, value) byte pairs, e.g. an ASGI scope's, in the order they are sent."""


def _decoder(encoding: str) -> zlib._Decompress | None:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(wbits=zlib.MAX_WBITS)
    raise HTTPError(f"unsupported content-encoding {encoding!r}")


class Response:
    """Status and headers once they have arrived; the body is read with ``read`` or ``iter_chunks``.

    The caller must end every response, best as ``async with response:`` (see ``__aexit__``), else with
    ``release`` (the connection goes back to the pool when the body was read to its end) or ``close``.
    """

    def __init__(self, connection: _Connection) -> None:
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []  # names lower-cased, in order
        self.headers: dict[str, str] = {}  # lower-cased name -> last value
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decode: zlib._Decompress | None = None
        self._finished = False
        self._left = connection.pool.max_response_bytes  # what the body may still grow by, decoded

    # -- fed by the connection ----------------------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _head_done(self, status: int) -> None:
        self.status = status
        self.headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in self.raw_headers}
        try:
            self._decode = _decoder(self.headers.get("content-encoding", "").strip().lower())
        except HTTPError as exc:
            self._fail(exc)
        self._wake()

    def _feed(self, data: bytes) -> None:
        if self._error is not None:
            return
        if self._decode is not None:
            try:  # never inflate past the bound: a small body may decode to gigabytes
                data = self._decode.decompress(data, self._left + 1)
            except zlib.error as exc:
                self._fail(HTTPError(f"cannot decode the body: {exc}"))
                return
        self._left -= len(data)
        if self._left < 0:
            limit = self._connection.pool.max_response_bytes
            self._fail(TooLarge(f"the answer is larger than {limit} bytes"))
            return
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > _HIGH_WATER:
                self._connection.pause()
            self._wake()

    def _end(self) -> None:
        if self._decode is not None and (tail := self._decode.flush()):
            self._chunks.append(tail)
        self._complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = error
            self._connection.close()
        self._wake()

    # -- used by the caller -------------------------------------------------------------------------
    async def _wait(self, timeout: float | None) -> None:
        # a future and a timer rather than asyncio.wait_for, which wraps every wait in a task of its own
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, self._expire, waiter) if timeout is not None else None
        try:
            await waiter
        except _Expired:
            self._connection.close()
            raise ReadTimeout(f"no data from the server for {timeout} s") from None
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    @staticmethod
    def _expire(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(_Expired())

    async def _head(self, timeout: float | None) -> None:
        while not self.status and self._error is None:
            await self._wait(timeout)
        if self._error is not None:
            raise self._error

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive (decoded, not re-chunked)."""
        timeout = self._connection.read_timeout
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                if self._buffered < _LOW_WATER:
                    self._connection.resume()
                yield data
            elif self._error is not None:
                raise self._error
            elif self._complete:
                return
            else:
                await self._wait(timeout)

    async def read(self) -> bytes:
        return b"".join([data async for data in self.iter_chunks()])

    def release(self) -> None:
        """Done with this response: keep the connection when the body was read to its end, else close it."""
        if self._finished:
            return
        self._finished = True
        connection = self._connection
        if self._complete and not self._chunks and self._error is None and connection.reusable():
            connection.pool.put_back(connection)
        else:
            connection.close()
            connection.pool.done_with(connection)

    def close(self) -> None:
        """Done with this response before its end: close the connection."""
        self._connection.close()
        self.release()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """Released when the block ends normally (kept when the body was read to its end), closed otherwise."""
        if exc_type is None:
            self.release()
        else:
            self.close()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.read_timeout = pool.read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.received = False  # a byte of the current answer has arrived
        self.reused = False  # the current request went out on a kept-alive connection
        self.closed = False
        self.paused = False
        self.keep_alive = False
        self.idle_since = 0.0
        self.drained: asyncio.Future[None] | None = None
        """Set while the transport's write buffer is full (the server is not taking the request)."""

    # -- protocol -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # nothing was asked: a server talking out of turn cannot be trusted
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(HTTPError(f"the server's answer is not valid HTTP: {exc}"))
        except httptools.HttpParserUpgrade:
            response._fail(HTTPError("the server switched protocols; none was asked for"))

    def pause_writing(self) -> None:
        self.drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    def connection_lost(self, exc: Exception | None) -> None:
        ours = self.closed
        self.closed = True
        self.resume_writing()
        response = self.response
        if response is None or response._complete or response._error is not None:
            return
        if ours:
            response._fail(HTTPError("the connection was closed"))
        elif response.status and not self._framed(response):  # a body that ends with the connection
            response._end()
        elif not self.received and self.reused:
            response._fail(_StaleConnection("the server closed the kept-alive connection"))
        else:
            response._fail(HTTPError("the server closed the connection before the answer was complete"))

    # -- parser callbacks ---------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.raw_headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.response is not None
        status = self.parser.get_status_code()
        if status == 101 or self.parser.should_upgrade():  # the proxy asked for no other protocol
            self.response._fail(HTTPError(f"the server switched protocols ({status}); none was asked for"))
            return
        if 100 <= status < 200:  # an interim answer: the real one follows
            self.response.raw_headers.clear()
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.response._head_done(status)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is not None and response.status:
            response._end()

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _framed(response: Response) -> bool:
        headers = response.headers
        return "content-length" in headers or "chunked" in headers.get("transfer-encoding", "").lower()

    def reusable(self) -> bool:
        return self.keep_alive and not self.closed

    def alive(self) -> bool:
        """Is an idle connection still open at the server's end? (Readable while idle: EOF, or bytes unasked for.)"""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    async def drain(self, timeout: float | None) -> None:
        """Wait until the transport has handed the request to the server, at most ``timeout`` seconds."""
        if self.drained is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.drained), timeout)
        except TimeoutError:
            if self.transport is not None:  # what is still buffered will never go: drop it with the connection
                self.closed = True
                self.transport.abort()
            raise WriteTimeout(f"the server took no request bytes for {timeout} s") from None

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


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
        self._idle: list[_Connection] = []
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
            except _StaleConnection as exc:
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

    def _take_idle(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_s and connection.alive():
                connection.reused = True
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        if self._closed:
            raise ConnectError("the client is closed")
        try:
            return await asyncio.wait_for(self._open(), self.connect_timeout)
        except TimeoutError:
            raise ConnectError(f"connecting to {self.authority} timed out after {self.connect_timeout} s") from None
        except OSError as exc:  # refused, unreachable, name not found, TLS failure, a proxy's refusal
            raise ConnectError(f"cannot connect to {self.authority}: {exc}") from exc

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self.via is None or not self.ssl:
            host, port = (self.host, self.port) if self.via is None else (self.via.host, self.via.port)
            _, connection = await loop.create_connection(
                lambda: _Connection(self), host, port, ssl=self.ssl, server_hostname=self.host if self.ssl else None)
            return connection
        raw, answer = await tunnel(self.via, self.authority if self.port != 443 else f"{self.authority}:443")
        transport = await loop.start_tls(raw, answer, self.ssl, server_hostname=self.host)
        assert transport is not None
        connection = _Connection(self)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        return connection

    def put_back(self, connection: _Connection) -> None:
        connection.response = None
        if self._closed:
            connection.close()
        else:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
        self._slots.release()

    def done_with(self, connection: _Connection) -> None:
        connection.response = None
        self._slots.release()

    async def close(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
