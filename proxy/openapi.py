"""``GET /openapi.json``: the OpenAPI 3.1 document of the proxy's own routes.

It describes what the proxy itself accepts and answers — chat completions, the Responses API,
completions, feedback, models, health and readiness — with every status the proxy may give: the
upstream's own answers (relayed with their status), the proxy's OpenAI-shaped 4xx for bad input and
its 502/503/504 when the upstream cannot answer. Request bodies are described as loosely as the
proxy reads them (it forwards bytes and parses only what it routes on), so any extra field is allowed.
"""

from __future__ import annotations

from functools import cache
from typing import Any

_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "integer", "null"]}},
    }},
}
_MESSAGE = {
    "type": "object", "required": ["role"], "additionalProperties": True,
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {
            "type": "object", "required": ["type"],
            "properties": {"type": {"type": "string"}, "text": {"type": "string"}}}}]},
        "name": {"type": "string"},
        "tool_call_id": {"type": "string"},
    },
}
_TOOLS = {"type": "array", "items": {
    "type": "object", "required": ["type", "function"],
    "properties": {"type": {"const": "function"}, "function": {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                       "parameters": {"type": "object"}}}}}}
_SESSION = {"name": "X-Session-Id", "in": "header", "required": False,
            "description": "Names the session (at most 200 visible ASCII characters).",
            "schema": {"type": "string", "maxLength": 200}}
_CONTROLS = [
    _SESSION,
    {"name": "X-Turn-Type", "in": "header", "required": False, "schema": {"type": "string", "enum": ["main", "side"]}},
    {"name": "X-Session-Done", "in": "header", "required": False, "schema": {"type": "string"}},
    {"name": "X-NextState-Record", "in": "header", "required": False, "schema": {"type": "string"}},
    {"name": "X-NextState-Canary", "in": "header", "required": False, "schema": {"type": "string", "enum": ["0", "1"]}},
]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {
        400: "Invalid request (bad JSON, nesting too deep, too many messages or tools, a message too long).",
        404: "Unknown turn, version or route.", 413: "Request body too large.",
        415: "Request body compressed in an unsupported way.", 431: "Request headers too large.",
        502: "The upstream could not be reached, broke the connection, or answered too much.",
        503: "Every upstream connection stayed busy (see Retry-After).", 504: "The upstream timed out.",
    }
    return {str(status): {"description": reasons[status], **_json({"$ref": "#/components/schemas/Error"})}
            for status in statuses}


_RELAYED = {"default": {"description": "The upstream's own answer, relayed with its status."}}
_FORWARDED = _errors(400, 413, 415, 431, 502, 503, 504)


def _forwarded(summary: str, body: dict[str, Any], params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": params or [],
        "requestBody": {"required": True, **_json(body)},
        "responses": {"200": {"description": "The upstream's answer (JSON, or an event stream when streamed)."},
                      **_FORWARDED, **_RELAYED},
    }}


@cache
def document() -> dict[str, Any]:
    chat = {"type": "object", "required": ["messages"], "additionalProperties": True, "properties": {
        "model": {"type": "string"}, "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean"}, "tools": _TOOLS, "user": {"type": "string", "maxLength": 200},
        "max_tokens": {"type": "integer", "minimum": 1}, "temperature": {"type": "number", "minimum": 0},
    }}
    responses = {"type": "object", "additionalProperties": True, "properties": {
        "model": {"type": "string"}, "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": _MESSAGE}]},
        "instructions": {"type": "string"}, "previous_response_id": {"type": "string"},
        "stream": {"type": "boolean"}, "tools": {"type": "array", "items": {"type": "object"}},
        "user": {"type": "string", "maxLength": 200},
    }}
    completions = {"type": "object", "required": ["prompt"], "additionalProperties": True, "properties": {
        "model": {"type": "string"}, "prompt": {"type": "string"}, "stream": {"type": "boolean"}}}
    feedback = {"type": "object", "required": ["turn_id", "rating"], "properties": {
        "turn_id": {"type": "string", "minLength": 1}, "rating": {"type": "integer", "enum": [1, -1]},
        "comment": {"type": "string", "maxLength": 10_000}, "feedback_id": {"type": "string"},
        "user": {"type": "string", "maxLength": 200}}}
    ok = {"status": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "nextstate proxy", "version": "1",
                 "description": "An OpenAI-compatible proxy that records every turn for a learner. Every other "
                                "path of the OpenAI API under /v1 is passed through to the upstream."},
        "paths": {
            "/v1/chat/completions": _forwarded("Chat completions, recorded", chat, _CONTROLS),
            "/v1/responses": _forwarded("The Responses API, recorded", responses, _CONTROLS),
            "/v1/completions": _forwarded("Text completions, not recorded", completions),
            "/v1/feedback": {"post": {
                "summary": "Thumbs up or down on a served turn (with recording off: checked, answered "
                           "not_recorded and dropped)", "requestBody": {"required": True, **_json(feedback)},
                "responses": {"200": {"description": "Accepted, or not recorded", **_json({"type": "object", "properties": {
                    "id": {"type": "string"}, "status": {"enum": ["accepted", "not_recorded"]}}})},
                    **_errors(400, 404, 413, 431)},
            }},
            "/v1/models": {"get": {"summary": "The upstream's models",
                                   "responses": {"200": {"description": "The list"},
                                                 **_errors(431, 502, 503, 504), **_RELAYED}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {
                "200": {"description": "Alive", **_json({"type": "object", "properties": ok})}}}},
            "/readyz": {"get": {"summary": "Readiness: Redis and the upstream answer", "responses": {
                "200": {"description": "Ready", **_json({"type": "object", "properties": ok})},
                "503": {"description": "Not ready", **_json({"type": "object", "properties": ok})}}}},
        },
        "components": {"schemas": {"Error": _ERROR}},
    }
