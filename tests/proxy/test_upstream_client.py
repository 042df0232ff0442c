"""The upstream client's bounds and settings against real loopback servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from proxy.connect import Via, proxy_for, tls_context
from proxy.http1 import ConnectError, HTTPError, PoolTimeout, TooLarge, WriteTimeout
from tests.proxy.test_errors import assert_openai_error
from tests.proxy.test_http1 import answer, keep_answering, pool, raw_server, read_request
from tests.support.fake_upstream import Reply

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def test_a_busy_pool_gives_up_after_its_timeout() -> None:
    async def main(url: str) -> float:
        client = pool(url, limit=1, pool_timeout_s=0.2)
        held = await client.request("GET", "/a")
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await client.request("GET", "/b")
        waited = time.monotonic() - started
        async with held:
            await held.read()
        async with await client.request("GET", "/c") as response:  # the slot came back
            assert response.status == 200
            await response.read()
        await client.close()
        return waited

    with raw_server(keep_answering) as (url, _):
        assert 0.15 < asyncio.run(main(url)) < 1.5


def test_a_busy_upstream_is_an_openai_shaped_503_with_retry_after(start_proxy, fake, http) -> None:
    url = start_proxy(upstream_connections=1, pool_timeout_s=0.2)
    fake.push(Reply(content="abcdef", chunk_chars=1, chunk_delay_s=0.2))
    with httpx.Client(timeout=10) as other, other.stream(
            "POST", f"{url}/v1/chat/completions", json={**CHAT, "stream": True}) as streaming:
        assert streaming.status_code == 200  # holds the only connection while it streams
        busy = http.post(f"{url}/v1/chat/completions", json=CHAT)
        streaming.read()
    error = assert_openai_error(busy, 503)
    assert error["code"] == "upstream_busy" and busy.headers["retry-after"] == "1"
    assert http.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200


def test_an_answer_past_the_size_bound_is_an_error_also_once_decoded() -> None:
    bomb = gzip.compress(b"0" * (8 << 20))  # 8 MiB of zeros in a few kB

    def handler(conn: socket.socket, n: int) -> None:
        while (request := read_request(conn)) is not None:
            if b"/bomb" in request:
                conn.sendall(answer(bomb, "content-encoding: gzip"))
            else:
                conn.sendall(answer(b"x" * 5000))

    async def main(url: str) -> None:
        client = pool(url, max_response_bytes=4096)
        for path in ("/big", "/bomb"):
            with pytest.raises(TooLarge):  # with the head when the body came in the same packet, else reading
                async with await client.request("GET", path) as response:
                    await response.read()
        await client.close()

    with raw_server(handler) as (url, _):
        assert len(bomb) < 16 << 10
        asyncio.run(main(url))


def test_a_server_that_does_not_take_the_request_is_a_write_timeout() -> None:
    stop = threading.Event()

    def never_reads(conn: socket.socket, n: int) -> None:
        stop.wait(5)

    async def main(url: str) -> None:
        client = pool(url, write_timeout_s=0.3)
        with pytest.raises(WriteTimeout):
            await client.request("POST", "/x", body=b"x" * (64 << 20))
        await client.close()

    with raw_server(never_reads) as (url, _):
        started = time.monotonic()
        asyncio.run(main(url))
        stop.set()
        assert time.monotonic() - started < 5


def test_a_switch_of_protocols_nobody_asked_for_is_an_error() -> None:
    def upgrades(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nraw bytes")
        time.sleep(0.5)

    async def main(url: str) -> None:
        client = pool(url)
        with pytest.raises(HTTPError, match="switched protocols"):
            await client.request("GET", "/x")
        await client.close()

    with raw_server(upgrades) as (url, _):
        asyncio.run(main(url))


def test_a_plain_http_upstream_is_reached_through_a_proxy_in_absolute_form() -> None:
    seen: list[bytes] = []

    def forward_proxy(conn: socket.socket, n: int) -> None:
        while (request := read_request(conn)) is not None:
            seen.append(request.split(b"\r\n\r\n")[0])
            conn.sendall(answer(b"via proxy"))

    async def main(proxy: str) -> bytes:
        client = pool("http://upstream.internal:8000/v1", proxy_url=proxy.removesuffix("/v1"))
        async with await client.request("GET", "/models") as response:
            body = await response.read()
        await client.close()
        return body

    with raw_server(forward_proxy) as (proxy, _):
        proxy = proxy.replace("http://", "http://user:pa%20ss@")
        assert asyncio.run(main(proxy)) == b"via proxy"
    lines = seen[0].split(b"\r\n")
    assert lines[0] == b"GET http://upstream.internal:8000/v1/models HTTP/1.1"
    assert b"proxy-authorization: Basic dXNlcjpwYSBzcw==" in lines


def test_proxy_settings_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,.svc")
    assert proxy_for("https", "api.openai.com") == Via("proxy.corp", 3128)
    assert proxy_for("https", "internal.example") is None and proxy_for("https", "vllm.svc") is None
    assert proxy_for("https", "127.0.0.1") is None and proxy_for("http", "api.openai.com") is None
    assert proxy_for("https", "api.openai.com", "") is None  # a setting of "" turns it off
    with pytest.raises(ValueError):
        proxy_for("https", "api.openai.com", "socks5://proxy.corp:1080")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A self-signed certificate for 127.0.0.1 (key and certificate in one PEM file)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", folder / "key.pem", "-out", folder / "cert.pem"],
                   check=True, capture_output=True, timeout=60)
    (folder / "both.pem").write_bytes((folder / "key.pem").read_bytes() + (folder / "cert.pem").read_bytes())
    return folder


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_an_https_upstream_is_verified_with_the_ca_bundle_through_a_connect_tunnel(certificate) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certificate / "both.pem")

    def tls_origin(conn: socket.socket, n: int) -> None:
        with contextlib.suppress(ssl.SSLError), server_tls.wrap_socket(conn, server_side=True) as tls:
            keep_answering(tls, n)  # type: ignore[arg-type]

    def connect_proxy(conn: socket.socket, n: int) -> None:
        head = conn.recv(65536)
        target = head.split(b" ")[1].decode()
        if not head.startswith(b"CONNECT ") or target != origin_authority:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
            return
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as upstream:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            threading.Thread(target=_pipe, args=(upstream, conn), daemon=True).start()
            _pipe(conn, upstream)

    async def get(url: str, **options) -> int:
        client = pool(url, **options)
        try:
            async with await client.request("GET", "/models") as response:
                await response.read()
                return response.status
        finally:
            await client.close()
            await asyncio.sleep(0.05)  # a connection closed on failure finishes closing before the loop ends

    with raw_server(tls_origin) as (origin, _), raw_server(connect_proxy) as (proxy, _):
        https = origin.replace("http://", "https://")
        origin_authority = https.split("/")[2]
        trusted = tls_context(str(certificate / "cert.pem"))
        assert asyncio.run(get(https, ssl_context=trusted)) == 200
        assert asyncio.run(get(https, ssl_context=trusted, proxy_url=proxy.removesuffix("/v1"))) == 200
        with pytest.raises(ConnectError):  # the system's CAs do not know it
            asyncio.run(get(https))
        with pytest.raises(ConnectError, match="refused CONNECT"):
            asyncio.run(get("https://127.0.0.2:1/v1", ssl_context=trusted, proxy_url=proxy.removesuffix("/v1")))
