"""The upstream HTTP/1.1 client against a real socket server that answers byte for byte as scripted."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from proxy.http1 import ConnectError, HTTPError, ReadTimeout
from proxy.pool import Pool
from tests.support.servers import free_port

Handler = Callable[[socket.socket, int], None]


def read_request(conn: socket.socket) -> bytes | None:
    """One request (head and body) off the connection; None once the client closed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@contextlib.contextmanager
def raw_server(handler: Handler) -> Iterator[tuple[str, list[int]]]:
    """Serve each accepted connection with ``handler(conn, n)``; yields the URL and the connection count."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[int] = []

    def serve(conn: socket.socket, n: int) -> None:
        with conn, contextlib.suppress(OSError):
            handler(conn, n)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                accepted.append(1)
                threading.Thread(target=serve, args=(conn, len(accepted)), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1", accepted
    finally:
        listener.close()


def pool(url: str, **options: float) -> Pool:
    settings = {"connect_timeout_s": 1.0, "read_timeout_s": 2.0, "limit": 8, **options}
    return Pool(url, **settings)  # type: ignore[arg-type]


def keep_answering(conn: socket.socket, n: int) -> None:
    while (request := read_request(conn)) is not None:
        conn.sendall(answer(request.split(b"\r\n", 1)[0], "content-type: text/plain", "x-conn: " + str(n)))


def test_requests_reuse_one_kept_alive_connection_and_send_the_origin_path() -> None:
    async def main(url: str) -> list[tuple[int, bytes, str]]:
        client, seen = pool(url), []
        for _ in range(3):
            response = await client.request("POST", "/chat/completions", body=b"{}",
                                            headers={"content-type": "application/json"})
            seen.append((response.status, await response.read(), response.headers["x-conn"]))
            response.release()
        await client.close()
        return seen

    with raw_server(keep_answering) as (url, accepted):
        seen = asyncio.run(main(url))
    assert seen == [(200, b"POST /v1/chat/completions HTTP/1.1", "1")] * 3
    assert len(accepted) == 1


def test_a_chunked_body_streams_piece_by_piece_as_the_server_sends_it() -> None:
    go_on = threading.Event()

    def chunked(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"7\r\ndata: 1\r\n")
        go_on.wait(5)
        conn.sendall(b"7\r\ndata: 2\r\n0\r\n\r\n")
        read_request(conn)

    async def main(url: str) -> list[bytes]:
        client = pool(url)
        response = await client.request("GET", "/stream")
        pieces = []
        async for data in response.iter_chunks():
            pieces.append(data)
            go_on.set()  # the second piece is sent only after the first was received
        response.release()
        await client.close()
        return pieces

    with raw_server(chunked) as (url, _):
        assert asyncio.run(main(url)) == [b"data: 1", b"data: 2"]


def test_a_body_that_ends_with_the_connection_is_read_whole() -> None:
    def close_delimited(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{\"a\": ")
        time.sleep(0.05)
        conn.sendall(b"1}")

    async def main(url: str) -> tuple[bytes, bytes]:
        client = pool(url)
        first = await client.request("GET", "/models")
        one = await first.read()
        first.release()
        second = await client.request("GET", "/models")  # the closed connection is not reused
        two = await second.read()
        second.release()
        await client.close()
        return one, two

    with raw_server(close_delimited) as (url, accepted):
        assert asyncio.run(main(url)) == (b'{"a": 1}', b'{"a": 1}')
    assert len(accepted) == 2


def test_an_idle_connection_the_server_closed_is_replaced_without_an_error() -> None:
    def answer_then_close(conn: socket.socket, n: int) -> None:
        assert read_request(conn) is not None
        conn.sendall(answer(b"ok"))  # keep-alive by default, then closed while idle (the server's idle timeout)

    async def main(url: str) -> list[bytes]:
        client, bodies = pool(url), []
        for _ in range(3):
            response = await client.request("POST", "/chat/completions", body=b"{}")
            bodies.append(await response.read())
            response.release()
            await asyncio.sleep(0.05)
        await client.close()
        return bodies

    with raw_server(answer_then_close) as (url, accepted):
        assert asyncio.run(main(url)) == [b"ok"] * 3
    assert len(accepted) == 3


def test_a_request_the_server_may_have_read_is_resent_only_when_idempotent() -> None:
    seen: list[bytes] = []

    def one_answer_then_drop(conn: socket.socket, n: int) -> None:
        request = read_request(conn)
        assert request is not None
        conn.sendall(answer(b"ok"))
        if (again := read_request(conn)) is not None:  # read, then closed without an answer
            seen.append(again.split(b" ", 1)[0])

    async def main(url: str, method: str) -> bytes:
        client = pool(url)
        async with await client.request(method, "/x", body=b"{}") as response:
            await response.read()
        try:
            async with await client.request(method, "/x", body=b"{}") as response:
                return await response.read()
        finally:
            await client.close()

    with raw_server(one_answer_then_drop) as (url, accepted):
        assert asyncio.run(main(url, "PUT")) == b"ok"  # idempotent: sent again on a fresh connection
        assert len(accepted) == 2
        with pytest.raises(HTTPError, match="not sent again"):
            asyncio.run(main(url, "POST"))
        time.sleep(0.1)
    assert seen == [b"PUT", b"POST"]  # the POST reached the server once, and no more


def test_a_connection_broken_mid_answer_is_an_error_not_a_short_body() -> None:
    def broken(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")

    async def main(url: str) -> None:
        client = pool(url)
        response = await client.request("POST", "/chat/completions", body=b"{}")
        try:
            await response.read()
        finally:
            response.release()
            await client.close()

    with raw_server(broken) as (url, _), pytest.raises(HTTPError, match="before the answer was complete"):
        asyncio.run(main(url))


def test_silence_is_a_read_timeout_and_a_closed_port_a_connect_error() -> None:
    def silent(conn: socket.socket, n: int) -> None:
        read_request(conn)
        time.sleep(1.0)

    async def ask(url: str) -> None:
        client = pool(url, read_timeout_s=0.2)
        try:
            await client.request("GET", "/models")
        finally:
            await client.close()

    with raw_server(silent) as (url, _), pytest.raises(ReadTimeout):
        asyncio.run(ask(url))
    with pytest.raises(ConnectError, match="cannot connect"):
        asyncio.run(ask(f"http://127.0.0.1:{free_port()}/v1"))


def test_gzip_is_decoded_and_an_unknown_encoding_refused() -> None:
    packed = gzip.compress(b'{"text": "' + b"x" * 5000 + b'"}')

    def encoded(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(answer(packed, "content-encoding: gzip"))
        read_request(conn)
        conn.sendall(answer(b"????", "content-encoding: br"))
        read_request(conn)

    async def main(url: str) -> None:
        client = pool(url)
        response = await client.request("GET", "/a")
        assert await response.read() == gzip.decompress(packed)
        response.release()
        try:
            await client.request("GET", "/b")
        finally:
            await client.close()

    with raw_server(encoded) as (url, _), pytest.raises(HTTPError, match="unsupported content-encoding 'br'"):
        asyncio.run(main(url))


def test_a_large_body_arrives_intact_through_flow_control() -> None:
    big = bytes(range(256)) * 40_000  # ~10 MB, more than the client buffers before it pauses the socket

    def large(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(answer(big))

    async def main(url: str) -> bytes:
        client = pool(url)
        response = await client.request("GET", "/big")
        received = b""
        async for data in response.iter_chunks():
            received += data
            await asyncio.sleep(0)  # a slow reader
        response.release()
        await client.close()
        return received

    with raw_server(large) as (url, _):
        assert asyncio.run(main(url)) == big


def test_an_interim_answer_is_skipped_and_header_injection_refused() -> None:
    def interim(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"final", "x-final: yes"))
        read_request(conn)

    async def main(url: str) -> tuple[int, bytes, dict[str, str]]:
        client = pool(url)
        with pytest.raises(ValueError, match="line break"):
            await client.request("GET", "/a", headers={"x-evil": "a\r\nhost: elsewhere"})
        response = await client.request("POST", "/a", body=b"{}")
        body = await response.read()
        response.release()
        await client.close()
        return response.status, body, response.headers

    with raw_server(interim) as (url, _):
        status, body, headers = asyncio.run(main(url))
    assert (status, body, headers.get("x-final")) == (200, b"final", "yes")
    assert Pool("https://api.example.com/v1", connect_timeout_s=1, read_timeout_s=1, limit=1).authority == \
        "api.example.com"
