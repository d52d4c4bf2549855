"""How trayupdater's requests leave the machine: which certificates it trusts, which proxy.

Fleets sit behind company networks, where two things break updaters, frozen ones most:

- **Trust.** A company proxy or firewall doing TLS inspection re-signs every HTTPS answer
  with the company's own CA, which IT installs in the operating system's trust store. An
  executable that brings its own CA list (certifi, in a PyInstaller build) never sees it.
  So certificates are checked against the *system* store through truststore, as pip does:
  the Windows certificate store, the macOS keychain, OpenSSL's system store on Linux
  (``/etc/ssl/certs``, or what ``SSL_CERT_FILE``/``SSL_CERT_DIR`` name). ``[network]
  ca_bundle`` adds the CAs of one PEM file on top. requests' ``REQUESTS_CA_BUNDLE`` /
  ``CURL_CA_BUNDLE`` and certifi are not used: one trust model, the same in every build.
- **Proxies.** ``[network] proxy`` when set, else ``HTTPS_PROXY`` / ``HTTP_PROXY`` (and the
  system proxy settings on Windows and macOS, as urllib reads them); ``NO_PROXY`` names hosts
  reached directly either way. Plain HTTP to loopback never goes through a proxy: the URL
  policy allows plain HTTP there only because such a request never leaves the machine.
  Every other URL is HTTPS, so through a proxy each request is a CONNECT tunnel: the proxy
  sees a host name and a port, never a path, a header or a token.

:class:`Network` holds the two settings; :class:`~trayupdater.http_client.HttpClient` asks it
for the TLS context and for the proxy of each request (each redirect hop included).
"""

from __future__ import annotations

import functools
import os
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import truststore
from requests.utils import prepend_scheme_if_needed, select_proxy, should_bypass_proxies

from trayupdater.errors import TrayUpdaterError
from trayupdater.failure_reasons import causes
from trayupdater.urls import is_loopback_host, odd_characters, redact_url

if TYPE_CHECKING:
    from trayupdater.config import Config

PROXY_SCHEMES = ("http", "https")
CA_BUNDLE_OPTION = "[network] ca_bundle"


class NetworkSettingError(TrayUpdaterError):
    """A proxy or CA setting that cannot be used; nothing was sent."""

    reason = "config"


@dataclass(frozen=True)
class Network:
    ca_bundle: Path | None = None  # PEM CAs trusted on top of the system store
    proxy: str | None = None  # None: HTTPS_PROXY / HTTP_PROXY / the system settings

    @classmethod
    def from_config(cls, config: Config) -> Network:
        return cls(ca_bundle=config.ca_bundle, proxy=config.proxy)

    def tls_context(self) -> ssl.SSLContext:
        """The context HTTPS connections verify with (one per CA bundle, shared)."""
        return _tls_context(self.ca_bundle)

    def proxy_for(self, url: str) -> str | None:
        """The proxy to send a request for ``url`` through; None: connect directly."""
        parts = urlsplit(url)
        if parts.scheme == "http" and is_loopback_host(parts.hostname):
            return None  # must never leave the machine (see the module doc)
        if should_bypass_proxies(url, no_proxy=None):  # NO_PROXY, the system's exceptions
            return None
        proxy = self.proxy or select_proxy(url, urllib.request.getproxies())
        if not proxy:
            return None
        if odd_characters(proxy):  # CORP\user:pass@host would go to the host "corp"
            raise NetworkSettingError(
                f"the proxy {shown_proxy(proxy)} has a backslash, a space or a control "
                "character; write a user name such as CORP\\jdoe as CORP%5Cjdoe"
            )
        proxy = prepend_scheme_if_needed(proxy, "http")
        scheme = urlsplit(proxy).scheme.lower()
        if scheme not in PROXY_SCHEMES or not urlsplit(proxy).hostname:
            raise NetworkSettingError(
                f"the proxy {shown_proxy(proxy)} for {redact_url(url)} is not an http:// or "
                "https:// proxy URL; fix [network] proxy or HTTPS_PROXY"
            )
        return proxy


def shown_proxy(proxy: str) -> str:
    """A proxy URL fit for a message or a log: no user name or password."""
    if odd_characters(proxy):  # shown as written: adding a scheme would move the password
        return redact_url(proxy)
    return redact_url(prepend_scheme_if_needed(proxy, "http")).rstrip("/")


@functools.lru_cache(maxsize=8)
def _tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=os.fspath(ca_bundle))
        except (OSError, ssl.SSLError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise NetworkSettingError(
                f"cannot use {CA_BUNDLE_OPTION} {ca_bundle}: {why} (it must be a PEM file "
                "of CA certificates)"
            ) from None
    return context


def certificate_problem(exc: BaseException) -> str | None:
    """What a TLS failure says about the server's certificate, if it is a verification
    failure (not a reset or a timeout): OpenSSL's reason, such as "self-signed certificate
    in certificate chain"."""
    for item in causes(exc):
        if isinstance(item, ssl.SSLCertVerificationError):
            return str(item.verify_message or item.reason or "verification failed")
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate verify failed"
    return None


# OpenSSL's reasons for a certificate outside its validity period, for the leaf or a CA.
_TIME_PROBLEMS = ("has expired", "is not yet valid")


def untrusted_message(url: str, problem: str) -> str:
    if any(words in problem for words in _TIME_PROBLEMS):
        # Most often this computer's clock is wrong (a flat CMOS battery, a restored VM),
        # which no CA setting fixes: name the date it believes.
        today = time.strftime("%Y-%m-%d")
        return (
            f"{redact_url(url)}: the server's certificate is not valid on this computer's "
            f"date, {today} ({problem}): if that date is wrong, set the right date and time; "
            "if it is right, the server's certificate is out of date"
        )
    return (
        f"{redact_url(url)}: the server's certificate is not trusted ({problem}). This looks "
        "like TLS inspection by a company proxy or firewall: if your organisation's CA is "
        f"not in this computer's trust store, name its PEM file with {CA_BUNDLE_OPTION}"
    )
