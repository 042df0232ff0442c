"""The proxy's other routes: completions, models and the API's other resource paths passed through (adapters
over proxy.forward); feedback, health, readiness, metrics."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import unquote_to_bytes

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy import fastjson
from proxy.access import CLIENT
from proxy.body import decode_body, parse_json_object, receive_body
from proxy.errors import BadRequest, NotFound, ProxyError, error_response
from proxy.forward import Flight, Reply
from proxy.headers import forward_headers, key_hash
from proxy.openapi import document
from proxy.recorder import REDIS_DOWN, Entry
from proxy.records import FeedbackRecord, turn_key
from proxy.routing import UnknownVersion, foreign_adapter, foreign_adapter_in
from proxy.settings import ProxySettings
from proxy.state import ProxyState
from proxy.targets import extra_prefixes, passes_through
from proxy.turn import flight_scope, scope_of
from proxy.upstream import Upstream

MAX_COMMENT_CHARS = 10_000
_OFF = frozenset({"off", "0", "false", "no"})


async def _forward(request: Request, path: str, *, method: str = "POST", check_json: bool = False) -> Reply | Response:
    """``request`` sent on to the upstream's ``path`` with its body as sent; the answer comes back streamed
    when the upstream streams it (an event stream, or a body of unknown length), else whole. Not recorded."""
    flight = Flight.start(request.scope, "passthrough", as_sent=not check_json)
    flight.stream_unsized = True
    try:
        raw = await flight.read(request.receive, decode=check_json)
        if check_json:  # then sent on as JSON, decoded
            refuse_foreign_adapter(flight, parse_json_object(raw, flight.limits.json_depth))
        elif raw:
            refuse_foreign_adapter_in(flight, raw)
        # an empty POST still says content-length: 0
        await flight.send(flight.request(method, path, raw or None))
    except ProxyError as exc:
        return flight.refuse(exc)
    return await flight.answer()


def refuse_foreign_adapter_in(flight: Flight, raw: bytes) -> None:
    """A pass-through body goes upstream as sent, in whatever form the client chose: JSON under any content type or
    none (an upstream may read it as JSON all the same), compressed, a multipart or URL-encoded form. It is read,
    never changed, for another learning scope's adapter: the ``model`` of a JSON object, else any adapter name the
    body carries. A compressed body the proxy cannot decode is refused as for chat (415, 400, 413)."""
    table = flight.state.routing.table
    if table is None or not table.base_model:
        return  # no adapter is served: nothing to look for
    encoding = flight.controls.get(b"content-encoding")
    text = decode_body(raw, encoding, flight.state.settings.max_body_bytes) if encoding else raw
    if (body := _json_object(text)) is not None:
        refuse_foreign_adapter(flight, body)
        return
    kind = next((v for k, v in flight.headers if k == b"content-type"), b"").split(b";")[0].strip().lower()
    if kind == b"application/x-www-form-urlencoded":
        text = unquote_to_bytes(text)  # a form's "%40" is the "@" of an adapter name
    if name := foreign_adapter_in(table, text, flight_scope(flight, {})):
        raise UnknownVersion(f"unknown model {name!r}", param="model")


def _json_object(text: bytes) -> dict[str, Any] | None:
    """``text`` as a JSON object, read as a Python server reads JSON (white space first, a byte-order mark, UTF-16
    or UTF-32 too), or None when it is none."""
    for loads in (fastjson.loads, json.loads):  # the fast parser first; the standard one for the encodings it takes
        try:
            value = loads(text)
        except (ValueError, RecursionError):  # a UnicodeDecodeError is a ValueError
            continue
        return value if isinstance(value, dict) else None
    return None


def refuse_foreign_adapter(flight: Flight, body: dict[str, Any]) -> None:
    """404, as for a model that does not exist, when the body names another learning scope's adapter."""
    if foreign_adapter(flight.state.routing.table, body.get("model"), flight_scope(flight, body)):
        raise UnknownVersion(f"unknown model {body.get('model')!r}", param="model")


async def completions(request: Request) -> Reply | Response:
    """``POST /v1/completions``: forwarded unchanged (streamed when the upstream streams), not recorded."""
    return await _forward(request, "/completions", check_json=True)


async def passthrough(request: Request) -> Reply | Response:
    """Any other of the API's resource paths under ``/v1`` (embeddings, stored responses, moderations, audio,
    files, …, and the ``passthrough_extra_paths`` a provider adds): sent on as it came — method, query, body
    and content type — and relayed, not recorded. Anything else (the policy server's runtime-LoRA endpoints
    among them) is a 404."""
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    path = raw_path.decode("latin-1").removeprefix("/v1")
    state: ProxyState = request.state.proxy
    if not passes_through(request.url.path.removeprefix("/v1"), extra_prefixes(state.settings.passthrough_extra_paths)):
        return error_response(NotFound(f"no route {request.url.path}"))
    query = request.scope.get("query_string", b"")
    if query:
        path += "?" + query.decode("latin-1")
    # HEAD goes up as GET (the server drops the body)
    return await _forward(request, path, method="GET" if request.method == "HEAD" else request.method)


async def models(request: Request) -> Reply | Response:
    """``GET /v1/models``: the upstream's list, less other learning scopes' personal adapters."""
    flight = Flight.start(request.scope, "passthrough", as_sent=True)
    try:
        await flight.send(flight.request("GET", "/models", None))
    except ProxyError as exc:
        return flight.refuse(exc)
    answer = await flight.answer()
    if not isinstance(answer, Reply) or answer.status != 200:
        return answer
    try:
        listed = fastjson.loads(answer.body)
    except ValueError:
        return answer
    if not isinstance(listed, dict) or not isinstance(listed.get("data"), list):
        return answer
    table, scope = flight.state.routing.table, flight_scope(flight, {})
    kept = [m for m in listed["data"] if not (isinstance(m, dict) and foreign_adapter(table, m.get("id"), scope))]
    if len(kept) == len(listed["data"]):
        return answer
    body = fastjson.dumps({**listed, "data": kept})
    headers = [(k, b"%d" % len(body) if k == b"content-length" else v) for k, v in answer.headers]
    return Reply(answer.status, headers, body)


def parse_feedback(body: dict[str, Any]) -> tuple[str, int, str | None]:
    turn_id = body.get("turn_id")
    if not isinstance(turn_id, str) or not turn_id:
        raise BadRequest("'turn_id' must be a non-empty string", param="turn_id")
    rating = body.get("rating")
    if isinstance(rating, bool) or rating not in (1, -1):
        raise BadRequest("'rating' must be 1 or -1", param="rating")
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
        raise BadRequest(f"'comment' must be a string of at most {MAX_COMMENT_CHARS} characters", param="comment")
    return turn_id, int(rating), comment


def records_feedback(settings: ProxySettings, headers: Headers) -> bool:
    """Is feedback kept? Not with recording off for the proxy, the request or its key (``proxy.access``
    sets ``X-NextState-Record: off`` for a key set to ``record=off``, whatever the client sent)."""
    return settings.record and headers.get("x-nextstate-record", "on").strip().lower() not in _OFF


async def feedback(request: Request) -> Response:
    """``POST /v1/feedback``: thumbs up/down on a served turn, appended once to the feedback stream; with
    recording off it is checked, answered ``"status": "not_recorded"`` and dropped (nothing is read or kept)."""
    state: ProxyState = request.state.proxy
    try:
        raw = await receive_body(request.receive, request.headers.get("content-length"), state.settings.max_body_bytes)
        body = parse_json_object(raw, state.settings.max_json_depth)
        turn_id, rating, comment = parse_feedback(body)
        scope = feedback_scope(state.settings, request, body)
        if not records_feedback(state.settings, request.headers):
            return _feedback_answer(body, turn_id, rating, comment, request, "not_recorded", scope)[0]
        stored = None
        try:
            stored = await state.redis.get(turn_key(turn_id))
            known = stored is not None and _scope_of_turn(stored) == scope
        except REDIS_DOWN:
            known = True  # cannot check now: accept, the spool keeps it (the labeler checks the scope)
        if not known and (stored is not None or not state.recorder.knows_turn(turn_id)):
            # a turn of another learning scope is answered as one that does not exist: nothing says it does
            raise NotFound(f"unknown turn {turn_id!r}", param="turn_id", code="turn_not_found")
    except ProxyError as exc:
        return error_response(exc)
    answer, record = _feedback_answer(body, turn_id, rating, comment, request, "accepted", scope)
    state.recorder.submit(Entry(kind="feedback", feedback=record))
    return answer


def feedback_scope(settings: ProxySettings, request: Request, body: dict[str, Any]) -> str:
    """The learning scope of a feedback request, settled as a chat request's is (its key, header or ``user``)."""
    return scope_of(settings, header=request.headers.get("x-nextstate-scope"),
                    authorization=request.headers.get("authorization"), user=body.get("user"),
                    client=request.scope.get(CLIENT))


def _scope_of_turn(stored: bytes) -> str | None:
    """The learning scope a stored turn (its JSON copy) was recorded in; None when the copy cannot be read."""
    try:
        turn = fastjson.loads(stored)
    except ValueError:
        return None
    return str(turn.get("scope", "global")) if isinstance(turn, dict) else None


def _feedback_answer(body: dict[str, Any], turn_id: str, rating: int, comment: str | None, request: Request,
                     status: str, scope: str) -> tuple[Response, FeedbackRecord]:
    """The feedback's record (its id: the client's ``feedback_id``, else a hash of what it says) and the answer."""
    client = key_hash(request.headers.get("authorization"))
    given = body.get("feedback_id")
    feedback_id = given if isinstance(given, str) and given else hashlib.sha256(
        json.dumps([turn_id, rating, comment, client]).encode()
    ).hexdigest()[:32]
    record = FeedbackRecord(
        record_id=f"fb-{feedback_id}", feedback_id=feedback_id, turn_id=turn_id, rating=rating,  # type: ignore[arg-type]
        comment=comment, client_key_hash=client, scope=scope,
    )
    return JSONResponse({"id": feedback_id, "object": "feedback", "turn_id": turn_id, "rating": rating,
                         "status": status}), record


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the document of the proxy's own routes (proxy.openapi)."""
    return JSONResponse(document())


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the upstream answers ``/models`` and Redis answers PING."""
    state: ProxyState = request.state.proxy
    checks: dict[str, str] = {}
    try:
        await state.redis.ping()
        checks["redis"] = "ok"
    except REDIS_DOWN as exc:
        checks["redis"] = f"unavailable: {exc.__class__.__name__}"
    try:
        response = await state.upstream.request(
            "GET", "/models", headers=forward_headers(request.scope["headers"], state.settings.upstream_api_key,
                                                    own_key=CLIENT in request.scope),
            read_timeout_s=2.0,
        )
        await Upstream.read(response)
        checks["upstream"] = "ok" if response.status < 500 else f"status {response.status}"
    except ProxyError as exc:
        checks["upstream"] = f"unavailable: {exc.code}"
    for name in state.failed_tasks:
        checks[name] = "stopped"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    state: ProxyState = request.state.proxy
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
