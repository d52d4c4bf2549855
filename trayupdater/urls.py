"""Which URLs trayupdater may fetch release data and programs from.

Everything fetched decides what the app will execute, so remote sources must be HTTPS;
plain HTTP is allowed only to loopback (the tests' and the demo's local feed).

A URL is judged by the host it will be *connected* to. Python's ``urllib.parse`` and
urllib3 (which requests connects with) read some URLs differently: in
``http://other\\@api.example/x`` the first sees ``api.example`` (the host after the last
``@``) and the second ``other`` (its host stops at the backslash). So a URL with a
backslash, a space or a control character is refused outright, and one the two parsers
still read differently is refused too: the token and the HTTPS rule must never be decided
for one host and sent to another.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

_AMBIGUOUS = re.compile(r"[\\\x00-\x20\x7f]")


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def insecure_reason(url: str) -> str | None:
    """Why ``url`` may not be fetched, or None if it may."""
    problem = ambiguity(url)
    if problem:
        return problem
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return None
    if parts.scheme == "http":
        return "plain http is only allowed for loopback hosts; use https"
    return f"expected an https URL, got {parts.scheme or 'no'} scheme"


def odd_characters(url: str) -> bool:
    """A backslash, a space or a control character: URL parsers differ on those."""
    return _AMBIGUOUS.search(url) is not None


def ambiguity(url: str) -> str | None:
    """Why parsers might disagree on where ``url`` goes, or None (see the module doc)."""
    if odd_characters(url):
        return "it has a backslash, a space or a control character (URL parsers differ on those)"
    try:
        connected = parse_url(url)
        parts = urlsplit(url)
        port = parts.port
    except (LocationParseError, ValueError):
        return "it cannot be parsed"
    if (connected.host or "").strip("[]").lower() != (parts.hostname or "") or (
        connected.port != port
    ):
        return "URL parsers disagree on its host"
    return None


def redact_url(url: str) -> str:
    """The URL without credentials or query: storage redirects carry signatures there."""
    if ambiguity(url):  # shown as written (escaped), not as one parser reads it
        scheme, sep, rest = url.partition("://")
        if not sep:  # "https:\\host/x?sig=..." has no "://" but may have a query or password
            scheme, rest = "", url
        authority_end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
        authority, path = rest[:authority_end], rest[authority_end:].split("?", 1)[0]
        if "@" in authority:  # whatever precedes the last @ may be a user name and password
            authority = "...@" + authority.rpartition("@")[2]
        return ascii((scheme + sep + authority + path)[:120])
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
