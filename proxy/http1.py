"""A lean HTTP/1.1 client for the upstream hop, the wire side: one connection's protocol (httptools
parsing) and the answer it reads, whole or streamed as it arrives, gzip/deflate decoded, its size
bounded once decoded. The keep-alive pool over these connections is proxy.pool; how a connection is
made (TLS, an HTTP proxy) is proxy.connect. That much costs about a sixth of the CPU of a general
client per request (bench/proxy_overhead.py measures the whole hop).

Errors::

    HTTPError            the connection broke, or the answer was not HTTP (or was an upgrade)
    ├── ConnectError     no connection to the server could be made
    ├── PoolTimeout      no connection came free within the pool timeout (also TimeoutError)
    ├── ReadTimeout      the server was silent past the read timeout (also TimeoutError)
    ├── WriteTimeout     the server did not take the request within the write timeout (also TimeoutError)
    └── TooLarge         the answer grew past the pool's ``max_response_bytes``
"""

from __future__ import annotations

import asyncio
import collections
import select
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

import httptools

if TYPE_CHECKING:
    from proxy.pool import Pool


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


class StaleConnection(HTTPError):
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

    def __init__(self, connection: Connection) -> None:
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


class Connection(asyncio.Protocol):
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
            response._fail(StaleConnection("the server closed the kept-alive connection"))
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
