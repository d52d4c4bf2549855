"""Which URLs trayupdater may fetch release data and programs from.

Everything fetched decides what the app will execute, so remote sources must be HTTPS;
plain HTTP is allowed only to loopback (the tests' and the demo's local feed).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit


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
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return None
    if parts.scheme == "http":
        return "plain http is only allowed for loopback hosts; use https"
    return f"expected an https URL, got {parts.scheme or 'no'} scheme"


def redact_url(url: str) -> str:
    """The URL without credentials or query: storage redirects carry signatures there."""
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
