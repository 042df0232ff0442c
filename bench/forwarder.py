"""A bare forwarder, the floor under any proxy on the proxy's stack (for bench/proxy_overhead.py).

The same server (uvicorn, uvloop, httptools) and upstream client (proxy.http1's keep-alive pool) as
``nextstate proxy``, forwarding each request's bytes and the answer's bytes, nothing else: no parsing,
routing, capture, logging or recording. What it adds over going direct is the cost of the extra hop.
Run: ``FORWARD_TO=http://127.0.0.1:8000/v1 uvicorn bench.forwarder:app``.
"""

from __future__ import annotations

import os

from starlette.types import Message, Receive, Scope, Send

from proxy.pool import Pool

_pool: Pool | None = None


async def _lifespan(receive: Receive, send: Send) -> None:
    global _pool
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            _pool = Pool(os.environ["FORWARD_TO"], connect_timeout_s=5.0, read_timeout_s=60.0, limit=256)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _pool is not None:
                await _pool.close()
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
