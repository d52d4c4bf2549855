"""Every HTTP request trayupdater makes to a release source, under one policy.

What is fetched decides what the app will execute, and some requests carry a token, so the
rules are applied *before* a byte goes to a server, on every hop:

- **Allowed URLs**: HTTPS, or plain HTTP to loopback only (:func:`urls.insecure_reason`).
  Redirects are followed here, by hand, at most :data:`MAX_REDIRECTS` hops, and each
  ``Location`` is checked before it is requested; HTTPS to plain HTTP is refused.
- **Credentials stay with their origin**: ``Authorization``, ``Cookie`` and
  ``Proxy-Authorization`` given for a URL are sent only to that URL's origin (scheme, host,
  port). A hop to another origin gets none of them, including any set on the session.
- **Capped bodies**: :func:`~trayupdater.http_body.read_capped` reads a body *after*
  decoding and stops at the cap, so a small gzip answer cannot expand into gigabytes.
- **Interruptible**: sockets are registered with the :class:`~trayupdater.cancel.Interrupt`
  given, so a rollback or quit stops a request that is waiting on a slow server.
- **Deadlines**: a :class:`Deadline` started with :meth:`HttpClient.deadline` covers all a
  thread then does with the client, status line and headers included: when it passes, the
  sockets used meanwhile are shut down, so a server that drips a byte within each read
  timeout is cut off (the per-read timeout alone restarts with every byte). Looking up a
  host's name waits under the same deadline and Interrupt (:meth:`_Sockets.resolve`).
- **Trust and proxies** come from :class:`~trayupdater.network.Network` alone: certificates
  are checked against the system trust store (plus ``[network] ca_bundle``), and each hop
  goes through the proxy it names. requests' own environment handling (``trust_env``:
  ``REQUESTS_CA_BUNDLE``, proxies, ``.netrc`` credentials) is switched off, so nothing
  outside this policy adds a certificate, a proxy or a credential. A certificate that does
  not verify is :class:`HttpUntrusted`, whose message names the likely cause (TLS
  inspection) and the setting that fixes it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

from trayupdater import __version__
from trayupdater.cancel import Interrupt
from trayupdater.errors import TrayUpdaterError
from trayupdater.failure_reasons import describe
from trayupdater.http_body import discard
from trayupdater.network import (
    Network,
    NetworkSettingError,
    certificate_problem,
    shown_proxy,
    untrusted_message,
)
from trayupdater.shown import keep_secret
from trayupdater.urls import insecure_reason, redact_url

log = logging.getLogger(__name__)

USER_AGENT = f"trayupdater/{__version__}"
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Headers that identify the user: they go to the origin they were given for, and nowhere else.
SENSITIVE_HEADERS = ("Authorization", "Cookie", "Proxy-Authorization")
LOOKUP_POLL_SECONDS = 0.05  # how soon a name lookup notices the deadline or the Interrupt

# What a misbehaving peer can make requests/urllib3 raise while a body is read.


class HttpRefused(TrayUpdaterError):
    """The policy refuses a URL or a redirect; nothing was sent to it."""

    reason = "unsafe_url"


class HttpUntrusted(HttpRefused):
    """The server's TLS certificate does not verify; trying again will not help."""

    reason = "tls"

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(untrusted_message(url, problem))
        self.problem = problem


class HttpFailed(TrayUpdaterError):
    """The request did not complete (connection, timeout, broken answer); may be retried."""

    reason = "network"

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"{redact_url(url)}: request failed ({why})")
        self.why = why


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the default port filled in: what a credential is bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if scheme == "https" else 80
    return scheme, (parts.hostname or "").lower(), port


class Deadline:
    """The deadline of what one thread does with a client (see the module doc): when it
    passes, the sockets used meanwhile are shut down, so a blocked read returns at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False
        self.stalled_lookup: str | None = None  # the host whose name lookup the deadline cut
        self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if self._done:
                return
            if not self.expired:
                self._sockets.append(sock)
                return
        _shut(sock)

    @contextlib.contextmanager
    def enforced(
        self, too_slow: Callable[[], BaseException], *errors: type[BaseException]
    ) -> Iterator[None]:
        """Raise ``too_slow()`` once the deadline has cut the block off, instead of what the
        cut ended in: one of ``errors`` (a reset, a body cut short), or what came out fine
        (a head or body cut short can still parse). Cancels the deadline at the end."""
        try:
            try:
                yield
            except errors:
                if self.expired:
                    raise too_slow() from None
                raise
            if self.expired:
                raise too_slow()
        finally:
            self.cancel()

    @property
    def cause(self) -> str:
        """What the time went on, as the user's sentence names it."""
        if self.stalled_lookup:
            return f"the DNS server did not answer for {self.stalled_lookup}"
        return "the server is too slow"

    def cancel(self) -> None:
        """Done in time (or given up): nothing is cut any more."""
        self._timer.cancel()
        with self._lock:
            self._done = True
            self._sockets.clear()  # back in the pool: no longer ours to cut

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)


class _Sockets:
    """What the client's connections tell their sockets to: the Interrupt, if any, and the
    deadline this thread has started, if any."""

    def __init__(self, interrupt: Interrupt | None) -> None:
        self.interrupt = interrupt
        self.local = threading.local()

    def watch(self, sock: socket.socket) -> None:
        if self.interrupt is not None:
            self.interrupt.watch(sock)
        deadline: Deadline | None = getattr(self.local, "deadline", None)
        if deadline is not None:
            deadline.add(sock)

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, in the resolver's order; ``[host]`` for an address or a
        name the resolver would refuse anyway (urllib3 explains those).

        getaddrinfo blocks before there is a socket to shut down: a DNS server that does not
        answer holds it for the resolver's timeout times its attempts (10 s to minutes), past
        the deadline and through Quit. So it runs in a thread of its own, and this waits for
        it, or for the deadline or the Interrupt; a lookup given up on ends in its own time.
        """
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host.strip("[]"))
            return [host]
        try:
            host.encode("idna")
        except UnicodeError:
            return [host]
        answer: list[Any] = []
        done = threading.Event()

        def lookup() -> None:
            try:
                answer.append(
                    socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
                )
            except Exception as exc:  # handed to the waiting thread
                answer.append(exc)
            finally:
                done.set()

        threading.Thread(target=lookup, name=f"lookup {host}", daemon=True).start()
        deadline: Deadline | None = getattr(self.local, "deadline", None)
        while not done.wait(LOOKUP_POLL_SECONDS):
            if self.interrupt is not None and self.interrupt.pending:
                raise OSError(f"looking up {host} was interrupted")
            if deadline is not None and deadline.expired:
                log.info("looking up %s: no answer from the DNS server within the deadline", host)
                deadline.stalled_lookup = host
                raise TimeoutError(f"looking up {host} took too long")
        if isinstance(answer[0], Exception):
            raise answer[0]
        addresses = list(dict.fromkeys(str(info[4][0]) for info in answer[0]))
        if not addresses:
            raise OSError("getaddrinfo returns an empty list")
        return addresses


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class HttpClient:
    """A requests session with the policy above; one per release source."""

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        interrupt: Interrupt | None = None,
        user_agent: str = USER_AGENT,
        verify: bool | str = True,
        network: Network | None = None,
    ) -> None:
        """``verify``: True checks certificates against the system trust store (and
        ``network.ca_bundle``); a path trusts that CA file only (tests)."""
        self.session = session or requests.Session()
        self.session.trust_env = False  # trust and proxies: Network's, not the environment's
        self.verify = verify  # passed with every request, like the proxy
        self.network = network or Network()
        self.session.headers["User-Agent"] = user_agent
        self.interrupt = interrupt
        self._sockets = _Sockets(interrupt)
        adapter = _PolicyAdapter(self.network.tls_context(), self._sockets)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        # get() follows redirects. With allow_redirects=False requests still works out the next
        # request of a redirect answer (Response.next): it reads the answer's whole body into
        # memory first, however large (a 302 with gigabytes of body), and parses its Location
        # (a ValueError for some). Nothing reads Response.next; this makes it None.
        self.session.resolve_redirects = _no_redirects  # type: ignore[method-assign]

    def deadline(self, seconds: float) -> Deadline:
        """Start a deadline for what this thread does with the client from now on (the
        requests it sends and the answers it reads), until :meth:`Deadline.cancel`."""
        deadline = self._sockets.local.deadline = Deadline(seconds)
        return deadline

    def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | tuple[float, float],
    ) -> requests.Response:
        """GET ``url`` (body streamed), following redirects under the policy.

        Raises HttpRefused for a refused URL or redirect (also a chain that is too long),
        HttpFailed when a request fails; messages name no query string and no header.
        """
        given = dict(headers or {})
        # Credentials set on the session count as given for this URL, like those passed in.
        secrets = {
            name: value
            for source in (self.session.headers, given)
            for name in SENSITIVE_HEADERS
            if (value := _lookup(source, name)) is not None
        }
        for value in secrets.values():
            keep_secret(value)  # an origin that sends it back cannot put it in a log
        public = {k: v for k, v in given.items() if k.title() not in SENSITIVE_HEADERS}
        home = origin(url)
        first = url
        for _hop in range(MAX_REDIRECTS + 1):
            reason = insecure_reason(url)
            if reason:
                where = redact_url(url)
                if url != first:
                    where += f" (redirected from {redact_url(first)})"
                raise HttpRefused(f"{where}: {reason}; refused")
            sent: dict[str, str | None] = dict(public)
            for name in SENSITIVE_HEADERS:
                sent[name] = None  # also drops what the session itself would add
            if origin(url) == home:
                sent.update(secrets)
            response = self._send(url, sent, timeout)
            if response.status_code not in REDIRECT_STATUSES:
                return response
            location = response.headers.get("Location")
            discard(response)
            if not location:
                raise HttpRefused(
                    f"{redact_url(url)} answered {response.status_code} without Location"
                )
            try:
                target = urljoin(url, location)
                downgrade = urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https"
            except ValueError:  # from urljoin: an unclosed IPv6 bracket ("http://[::1/x"), say
                raise HttpRefused(
                    f"{redact_url(url)} redirected to a URL that cannot be parsed; refused"
                ) from None
            if downgrade:
                raise HttpRefused(f"{redact_url(url)} redirected to plain HTTP; refused")
            url = target
        raise HttpRefused(f"{redact_url(first)}: more than {MAX_REDIRECTS} redirects; refused")

    def _send(
        self,
        url: str,
        headers: dict[str, str | None],
        timeout: float | tuple[float, float],
    ) -> requests.Response:
        if self.interrupt is not None:
            self.interrupt.check()
        try:
            proxy = self.network.proxy_for(url)
        except NetworkSettingError as exc:
            raise HttpRefused(str(exc)) from None
        if proxy:
            keep_secret(urlsplit(proxy).password)  # a proxy may quote it in a refusal
        try:
            return self.session.get(
                url,
                headers=headers,
                timeout=timeout,
                stream=True,
                allow_redirects=False,
                verify=self.verify,
                proxies={urlsplit(url).scheme: proxy} if proxy else {},
            )
        except requests.RequestException as exc:
            if self.interrupt is not None:
                self.interrupt.check()  # a shut-down socket: say why, not "connection reset"
            tls = isinstance(exc, requests.ConnectionError)  # SSLError, ProxyError among them
            problem = certificate_problem(exc) if tls else None
            if problem is not None:
                raise HttpUntrusted(url, problem) from None
            why = describe(exc)
            if isinstance(exc, requests.exceptions.ProxyError) and proxy:
                why = f"through the proxy {shown_proxy(proxy)}: {why}"
            raise HttpFailed(url, why) from None

    def close(self) -> None:
        self.session.close()


def _no_redirects(*args: Any, **kwargs: Any) -> Iterator[requests.PreparedRequest]:
    return iter(())


def _lookup(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


# --- the adapter: the trust store, and sockets registered with the Interrupt -----------------


class _PolicyAdapter(HTTPAdapter):
    """HTTPS verified with the trust-store context, and connection pools whose connections
    register their sockets (with the Interrupt, and with this thread's deadline)."""

    def __init__(self, tls: ssl.SSLContext, sockets: _Sockets, **kwargs: Any) -> None:
        self._tls = tls
        self._sockets = sockets
        super().__init__(**kwargs)

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host, pool = super().build_connection_pool_key_attributes(request, verify, cert)
        if verify is True and host.get("scheme") == "https":
            pool["ssl_context"] = self._tls
        return host, pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        if verify is True and url.lower().startswith("https"):
            # requests would add certifi's list to the context here; the trust store decides.
            conn.ca_certs = conn.ca_cert_dir = None

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._sockets)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        if proxy.lower().startswith("https:"):
            # The proxy's own certificate is checked as any server's is (the trust store plus
            # [network] ca_bundle); urllib3 would use its default context and refuse a
            # company proxy whose CA only ca_bundle names.
            kwargs.setdefault("proxy_ssl_context", self._tls)
        manager = super().proxy_manager_for(proxy, **kwargs)
        with contextlib.suppress(AttributeError):  # SOCKS managers build their own pools
            manager.pool_classes_by_scheme = _pool_classes(self._sockets)
        return manager


def _pool_classes(interrupt: _Sockets) -> dict[str, type[HTTPConnectionPool]]:
    # The socket is watched from the moment it is connected, before connect() goes on with a
    # proxy's CONNECT and the TLS handshake: a proxy dripping its answer to CONNECT (http.client
    # reads its header lines without a count limit) held a check past its deadline for ever,
    # and Quit could not cut it. Then watched again (the TLS socket) on each request.
    class Watching:
        """The three overrides, for a plain and a TLS connection alike."""

        sock: socket.socket | None

        _dns_host: str
        host: str
        port: int

        def _new_conn(self) -> socket.socket:
            # The name is looked up under the deadline and the Interrupt (_Sockets.resolve),
            # then urllib3 connects to each address in turn, as it would have.
            name = self._dns_host
            try:
                addresses = interrupt.resolve(name, self.port)
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, str(exc)) from exc
            except OSError as exc:
                raise NewConnectionError(
                    self, f"Failed to establish a new connection: {exc}"
                ) from exc  # type: ignore[arg-type]
            error: Exception | None = None
            for address in addresses:
                self._dns_host = address
                try:
                    sock = super()._new_conn()  # type: ignore[misc]
                except (NewConnectionError, ConnectTimeoutError) as exc:
                    error = exc
                    continue
                finally:
                    self._dns_host = name
                interrupt.watch(sock)
                return sock  # type: ignore[no-any-return]
            assert error is not None
            raise error

        def connect(self) -> None:
            super().connect()  # type: ignore[misc]
            interrupt.watch(self.sock)  # type: ignore[arg-type]

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            if self.sock is not None:  # a reused keep-alive connection
                interrupt.watch(self.sock)
            return super().getresponse(*args, **kwargs)  # type: ignore[misc]

    class Watched(Watching, HTTPConnection):
        pass

    class WatchedTLS(Watching, HTTPSConnection):
        pass

    class Pool(HTTPConnectionPool):
        ConnectionCls = Watched

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = WatchedTLS

    return {"http": Pool, "https": TLSPool}
