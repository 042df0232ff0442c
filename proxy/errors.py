"""The proxy's errors and their one OpenAI-shaped JSON form.

Exceptions::

    ProxyError (carries status, type, code, param; rendered by ``error_response``)
    ├── BadRequest            400 invalid_request_error (not retryable)
    ├── Unauthorized          401 (not retryable)
    ├── NotFound              404 (unknown route, version or turn; not retryable)
    ├── MethodNotAllowed      405 (not retryable)
    ├── BodyTooLarge          413 (not retryable)
    ├── RateLimited           429 (a client key over its rate; retry after the Retry-After header)
    ├── UnsupportedEncoding   415 (a request body compressed in a way the proxy does not read)
    ├── HeadersTooLarge       431 (not retryable)
    └── UpstreamError         (retryable: the upstream may come back)
        ├── UpstreamUnreachable   502 (also: the connection broke, the answer was too large or not HTTP)
        ├── UpstreamBusy          503 (no pooled connection came free in time; with Retry-After)
        └── UpstreamTimeout       504 (also TimeoutError)
"""

from __future__ import annotations

import json

from starlette.responses import Response


class ProxyError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    retryable = False

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class BadRequest(ProxyError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_admin_token"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class BodyTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class UnsupportedEncoding(ProxyError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_content_encoding"


class HeadersTooLarge(ProxyError):
    status = 431
    type = "invalid_request_error"
    code = "request_headers_too_large"


class UpstreamError(ProxyError):
    status = 502
    type = "upstream_error"
    retryable = True


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamBusy(UpstreamError):
    status = 503
    code = "upstream_busy"
    retry_after_s = 1


class UpstreamTimeout(UpstreamError, TimeoutError):
    status = 504
    code = "upstream_timeout"


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """The OpenAI error envelope, serialised."""
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def error_response(exc: ProxyError, headers: dict[str, str] | None = None) -> Response:
    body = error_body(exc.message, exc.type, param=exc.param, code=exc.code)
    if isinstance(exc, UpstreamBusy):
        headers = {**(headers or {}), "retry-after": str(exc.retry_after_s)}
    return Response(body, status_code=exc.status, media_type="application/json", headers=headers)
