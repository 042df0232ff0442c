"""How the upstream client reaches its server: directly, or through an HTTP proxy (``HTTPS_PROXY``,
``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` from the environment, or one named in settings), and with
TLS verified against the system's or a given CA bundle, presenting a client certificate when given.

An ``https`` server behind a proxy is reached through a ``CONNECT`` tunnel (TLS end to end); a plain
``http`` one by sending the request to the proxy in absolute form. The environment's proxy is never
used for a loopback server.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Via:
    """An HTTP proxy to go through."""

    host: str
    port: int
    authorization: bytes | None = None
    """``Proxy-Authorization`` value, from the proxy URL's user and password."""


def tls_context(ca_bundle: str | None = None, client_cert: str | None = None,
                client_key: str | None = None) -> ssl.SSLContext:
    """A verifying TLS context: the system's CAs, or ``ca_bundle`` (a PEM file or directory); a client certificate."""
    if ca_bundle and not ca_bundle.endswith((".pem", ".crt", ".cer")) and "." not in ca_bundle.rsplit("/", 1)[-1]:
        context = ssl.create_default_context(capath=ca_bundle)
    else:
        context = ssl.create_default_context(cafile=ca_bundle or None)
    if client_cert:
        context.load_cert_chain(client_cert, client_key or None)
    return context


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_for(scheme: str, host: str, proxy_url: str | None = None) -> Via | None:
    """The proxy to reach ``scheme://host`` through: ``proxy_url`` when given ("" for none), else the
    environment's unless ``NO_PROXY`` names the host or the host is loopback; None when none applies."""
    if proxy_url is None:
        if _loopback(host):
            return None
        proxies = urllib.request.getproxies_environment()
        if proxies.get("no") and urllib.request.proxy_bypass_environment(host, proxies):
            return None
        proxy_url = proxies.get(scheme) or proxies.get("all") or ""
    if not proxy_url:
        return None
    parts = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// proxies are supported, not {proxy_url!r}")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(pair)
    return Via(parts.hostname, parts.port or 80, authorization)


class _ConnectAnswer(asyncio.Protocol):
    """Reads a proxy's answer to ``CONNECT`` (its head), then hands the transport on."""

    def __init__(self) -> None:
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and not self.head.done():
            self.head.set_result(self.data.partition(b"\r\n\r\n")[0])
        elif len(self.data) > 65536 and not self.head.done():
            self.head.set_exception(OSError("the proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(OSError("the proxy closed the connection during CONNECT"))


async def tunnel(via: Via, authority: str) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """A ``CONNECT`` tunnel through ``via`` to ``authority`` (``host:port``), ready for TLS (the caller bounds
    the time). Raises ``OSError`` when the proxy refuses or answers something else than 2xx."""
    loop = asyncio.get_running_loop()
    transport, answer = await loop.create_connection(_ConnectAnswer, via.host, via.port)
    head = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n".encode("latin-1")
    if via.authorization:
        head += b"proxy-authorization: " + via.authorization + b"\r\n"
    transport.write(head + b"\r\n")
    try:
        status_line = (await answer.head).split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].startswith("2"):
            raise OSError(f"the proxy {via.host}:{via.port} refused CONNECT {authority}: {status_line}")
    except BaseException:
        transport.close()
        raise
    return transport, answer
