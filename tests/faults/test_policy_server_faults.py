"""The policy server down, slow, answering 500s, and dropping the connection mid-answer, while a canary
runs: each request gets an OpenAI-shaped error within the timeout (a stream ends with an error event),
nothing is recorded, and every error counts against the canary version that caused it."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from proxy.records import ROUTING_KEY, TURNS_STREAM, UPSTREAM_OUTCOMES_KEY, RoutingTable
from tests.faults.conftest import SUITE
from tests.support import figures
from tests.support.fake_upstream import FakeUpstream, Reply
from tests.support.servers import free_port

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
CANARY = {"X-NextState-Canary": "1"}
READ_TIMEOUT_S = 0.5
CHUNK = json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "tiny@v2",
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hel"}, "finish_reason": None}]})


@contextlib.contextmanager
def dropping_upstream() -> Iterator[str]:
    """An upstream that starts its answer (headers and, for a stream, one chunk) and then closes the connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                if b'"stream": true' in body or b'"stream":true' in body:
                    event = f"data: {CHUNK}\n\n".encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                                 + f"{len(event):x}\r\n".encode() + event + b"\r\n")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"id\":")
                time.sleep(0.05)  # then the connection drops

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def _canary_table(client: redis.Redis) -> None:
    table = RoutingTable(revision=1, base_model="tiny", stable="v1", canary="v2", canary_fraction=0.05,
                         versions={"v1": "tiny@v1", "v2": "tiny@v2"})
    client.set(ROUTING_KEY, table.model_dump_json())


def _request(url: str, stream: bool) -> tuple[int, str, float]:
    started = time.monotonic()
    with httpx.Client(timeout=10) as http:
        response = http.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": stream}, headers=CANARY)
    return response.status_code, response.text, time.monotonic() - started


def _error_code(status: int, text: str, stream: bool) -> str | None:
    """The OpenAI error code a client got: from the JSON body, or from a stream's last event."""
    try:
        if stream and status == 200:
            events = [e for e in text.split("\n\n") if e.startswith("data: ") and e != "data: [DONE]"]
            return str(json.loads(events[-1][6:])["error"]["code"])
        error = json.loads(text)["error"]
        assert set(error) >= {"message", "type", "param", "code"}
        return str(error["code"] or error["type"])
    except (ValueError, KeyError, IndexError, AssertionError, TypeError):
        return None


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_policy_server_faults_are_errors_counted_against_the_canary(
        stream: bool, start_proxy: Callable[..., str], fake: FakeUpstream, redis_client: redis.Redis) -> None:
    _canary_table(redis_client)
    served = start_proxy(read_timeout_s=READ_TIMEOUT_S)
    down = start_proxy(upstream=f"http://127.0.0.1:{free_port()}/v1", read_timeout_s=READ_TIMEOUT_S)
    with dropping_upstream() as dropping_url:
        dropping = start_proxy(upstream=dropping_url, read_timeout_s=READ_TIMEOUT_S)
        time.sleep(0.3)  # each proxy's refresher has read the routing table
        expected = {"down": (down, {"upstream_unreachable"}), "dropped": (dropping, {"upstream_stream_broken",
                                                                                    "upstream_unreachable"})}
        results = {}
        fake.push(Reply(delay_s=READ_TIMEOUT_S * 4))
        results["slow"] = (_request(served, stream), {"upstream_timeout", "upstream_stream_broken"})
        fake.push(Reply(status=500))
        results["500"] = (_request(served, stream), {"server_error", "internal_error", "upstream_error"})
        for name, (url, codes) in expected.items():
            results[name] = (_request(url, stream), codes)
    wrong = []
    for name, ((status, text, seconds), codes) in results.items():
        figures.add(SUITE, "faults injected: policy server down, slow, 500, dropped")
        code = _error_code(status, text, stream)
        if code not in codes or seconds > READ_TIMEOUT_S + 2:
            wrong.append((name, status, code, round(seconds, 2), text[:200]))
    figures.add(SUITE, "client requests without a clear error in time", len(wrong))
    assert not wrong, wrong
    assert results["down"][0][0] == 502 and (stream or results["slow"][0][0] == 504)

    deadline = time.monotonic() + 5
    while int(redis_client.hget(UPSTREAM_OUTCOMES_KEY, "v2:error") or 0) < len(results) and time.monotonic() < deadline:
        time.sleep(0.05)
    counted = int(redis_client.hget(UPSTREAM_OUTCOMES_KEY, "v2:error") or 0)
    figures.add(SUITE, "policy server errors not counted against the canary", len(results) - counted)
    assert counted == len(results), redis_client.hgetall(UPSTREAM_OUTCOMES_KEY)
    assert redis_client.hget(UPSTREAM_OUTCOMES_KEY, "v1:error") is None  # nothing against the stable arm
    time.sleep(0.3)
    false_records = redis_client.xlen(TURNS_STREAM)
    figures.add(SUITE, "turns recorded from failed answers", false_records)
    assert false_records == 0
