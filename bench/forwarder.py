"""A bare forwarder, the floor under any proxy on the proxy's stack (for bench/proxy_overhead.py).

The same server (uvicorn, uvloop, httptools) and upstream client (proxy.pool's keep-alive pool) as
``nextstate proxy``, forwarding each request's bytes and the answer's bytes, nothing else: no parsing,
routing, capture, logging or recording. What it adds over going direct is the cost of the extra hop.
``FORWARD_CLIENT=aiohttp`` or ``httpcore`` puts that library's client in place of the proxy's, so the
upstream client options are measured side by side on the same hop.
Run: ``FORWARD_TO=http://127.0.0.1:8000/v1 [FORWARD_CLIENT=http1] uvicorn bench.forwarder:app``.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from proxy.pool import Pool

_pool: Pool | None = None
_other: Any = None  # an aiohttp.ClientSession or an httpcore.AsyncConnectionPool
_CLIENT = os.environ.get("FORWARD_CLIENT", "http1")


async def _lifespan(receive: Receive, send: Send) -> None:
    global _pool, _other
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _pool = Pool(os.environ["FORWARD_TO"], connect_timeout_s=5.0, read_timeout_s=60.0, limit=256)
            if _CLIENT == "aiohttp":
                import aiohttp

                # idle connections dropped before the upstream's 5 s keep-alive ends, as proxy.pool does
                _other = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=4),
                                               auto_decompress=False)
            elif _CLIENT == "httpcore":
                import httpcore

                _other = httpcore.AsyncConnectionPool(max_connections=256, keepalive_expiry=4)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _pool is not None:
                await _pool.close()
            if _other is not None:
                await (_other.close() if _CLIENT == "aiohttp" else _other.aclose())
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    assert _pool is not None
    parts = []
    message: Message = {"more_body": True}
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    path = scope["path"].removeprefix("/v1")
    if _other is not None:
        await _forward_other(scope["method"], os.environ["FORWARD_TO"] + path, b"".join(parts), send)
        return
    response = await _pool.request(scope["method"], path, body=b"".join(parts) or None,
                                   headers=[(b"content-type", b"application/json")])
    content_type = response.headers.get("content-type", "application/json")
    headers = [(b"content-type", content_type.encode())]
    try:
        if "text/event-stream" not in content_type:
            data = await response.read()
            await send({"type": "http.response.start", "status": response.status,
                        "headers": [*headers, (b"content-length", b"%d" % len(data))]})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in response.iter_chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        response.release()


async def _send_answer(status: int, content_type: str, chunks: Any, send: Send) -> None:
    headers = [(b"content-type", content_type.encode())]
    if "text/event-stream" not in content_type:
        data = b"".join([chunk async for chunk in chunks])
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    async for chunk in chunks:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _forward_other(method: str, url: str, body: bytes, send: Send) -> None:
    """The same forwarding through aiohttp's or httpcore's client."""
    headers = {"content-type": "application/json"}
    if _CLIENT == "aiohttp":
        async with _other.request(method, url, data=body or None, headers=headers) as response:
            await _send_answer(response.status, response.headers.get("content-type", "application/json"),
                               response.content.iter_any(), send)
        return
    async with _other.stream(method, url, content=body or None, headers=headers) as response:
        content_type = dict(response.headers).get(b"content-type", b"application/json").decode()
        await _send_answer(response.status, content_type, response.aiter_stream(), send)
