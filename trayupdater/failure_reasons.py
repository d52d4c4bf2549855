"""Why a request failed, in a few words a user can act on.

requests and urllib3 wrap the cause of a failure several layers deep, and their text is
for programmers: ``TLSPool(host='api.github.com', port=443): Max retries exceeded with url:
/repos/... (Caused by ProxyError('Unable to connect to proxy', OSError('Tunnel connection
failed: 407 Proxy Authentication Required')))``. :func:`describe` walks the chain of causes
for one it knows and says that ("the proxy refused to open a tunnel: 407 Proxy
Authentication Required"); anything else falls back to the exception's own text, cut short.

What a peer sent (a proxy's reason phrase) is shown only as printable text, clipped. No
text ever holds a query string (signed storage URLs carry signatures there) or a URL's
``user:password@``; exception texts never hold request headers, so no token either.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl

import requests
import urllib3

MAX_REASON = 300  # characters of a fallback text
MAX_PEER_TEXT = 80  # characters of what a peer wrote (a proxy's reason phrase)
_QUERY = re.compile(r"\?[^\s'\")]*")
_USERINFO = re.compile(r"//[^/\s@'\"]*@")
_TUNNEL_FAILED = "Tunnel connection failed: "
_MAX_CAUSES = 20  # a chain longer than this is not walked further (cycles are skipped too)


def describe(exc: BaseException) -> str:
    """A one-line reason for a network error (see the module doc)."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    for cause in causes(exc):
        known = _known(cause)
        if known is not None:
            return known
    text = _QUERY.sub("?…", str(exc)) or type(exc).__name__
    text = _USERINFO.sub("//", text)  # a proxy URL's user:password, should one be quoted
    text = " ".join(text.split())  # one line
    return text if len(text) <= MAX_REASON else text[:MAX_REASON] + "…"


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps, outermost first: causes, contexts, arguments, ``reason``."""
    found: list[BaseException] = []
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo and len(found) < _MAX_CAUSES:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        found.append(item)
        todo += [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
    return found


def _known(cause: BaseException) -> str | None:
    # Not urllib3's TimeoutError: its NewConnectionError (a refused connection) is one.
    if isinstance(cause, TimeoutError | urllib3.exceptions.ReadTimeoutError):
        return "timed out"
    if type(cause) is OSError and str(cause).startswith(_TUNNEL_FAILED):
        answer = _peer_text(str(cause)[len(_TUNNEL_FAILED) :])
        hint = "; check the user name and password" if answer.startswith("407") else ""
        return f"the proxy refused to open a tunnel: {answer}{hint}"
    if isinstance(cause, http.client.RemoteDisconnected):
        return "the connection was closed before an answer came"
    if isinstance(cause, http.client.LineTooLong):
        return "an answer's header line was too long"
    if isinstance(cause, http.client.BadStatusLine):
        return "the answer was not HTTP"
    if isinstance(cause, http.client.IncompleteRead):
        return "the connection ended before the whole answer came"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, ConnectionResetError):
        return "the connection was reset"
    if isinstance(cause, socket.gaierror):
        return "the host name could not be resolved"
    if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLCertVerificationError):
        reason = cause.reason or cause.strerror or type(cause).__name__
        return f"the TLS handshake failed ({_peer_text(str(reason)).lower()})"
    return None


def _peer_text(text: str) -> str:
    """What a peer wrote, printable and clipped: it may be anything, of any length."""
    shown = "".join(c if c.isprintable() else "?" for c in text.strip())
    return shown if len(shown) <= MAX_PEER_TEXT else shown[:MAX_PEER_TEXT] + "…"
