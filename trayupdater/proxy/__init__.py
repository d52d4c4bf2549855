"""The zero-downtime reverse proxy in front of the child server.

How it works, in one place (each part lives in its own module, named in brackets):

Parking [clients]. One selector thread, the *parker*, owns the listening socket and every
client connection that is not being served: new connections, idle keep-alive connections
between requests, and connections with a partial request head. It accepts, watches them, and
puts a connection that became readable on the ready queue. It closes a connection whose
deadline passed: ``header_timeout`` from a new connection or the first byte of a head (a
slow-loris client gets 408), ``client_idle_timeout`` for an idle keep-alive one. A refused
client is *lingered*: the proxy shuts its write side and reads what the client still sends
for a moment, so the close never turns into an RST that destroys the error response.

Workers [workers]. A bounded pool of threads takes ready connections off the queue, reads what
arrived without blocking, and serves every complete request the connection holds. A request
head is parsed strictly [trayupdater.http11]: ambiguous framing (smuggling) is refused before
anything reaches a backend. With no complete head the connection goes back to the parker:
a worker never waits for a client. After a response the worker waits a moment (2 ms) for the
next request when no other connection needs a worker (cheaper than a round trip through the
parker), then parks the connection. That wait is one blocking recv() bounded by the client
socket's SO_RCVTIMEO, set once at accept: every other read of a client is of bytes known to
be there (non-blocking, or after readiness), so the short timeout never cuts anything else.
So threads serve requests, not sockets: a thousand idle keep-alive clients cost a selector
entry each. A worker serving the only request in flight (a lone client) busy-polls for a
moment (0.2 ms) before it sleeps on the backend's answer or the client's next request: on a
VM, waking a thread on an idle core costs more than the request [sockets].

Heads [heads]. A request head is parsed, checked and turned into the upstream head once; a
backend's response head into the client's head once per client HTTP version. Both are pure
functions of the bytes, so the answers for recent heads are remembered (a bounded LRU, heads
up to 2 KiB): a busy client repeats its head, a backend its head until its Date changes.

Request bodies [bodies]. A body that did not arrive with its head is received by the parker,
without blocking, up to ``max_buffered_body`` bytes per request and ``max_buffered_total``
across all connections; only a complete request is handed to a worker, so clients trickling
a body hold no thread. Larger bodies are streamed by a worker. Either way the client must
keep a minimum rate (``body_timeout``, ``body_min_rate``) or it gets 408.

Forwarding [forward, relay]. One request goes to the backend of the generation it entered,
on a pooled keep-alive connection [upstream] or a new one; the response is relayed with the
framing re-written by the proxy (hop-by-hop fields dropped, X-Forwarded-* added). A small
response body is read whole before anything goes to the client, so a backend dying between
its head and its body is still a failure the proxy can retry. A large body of known length
goes out with its head in one send and then, on Linux, is spliced backend socket -> pipe ->
client socket in the kernel [zerocopy] (one pipe per worker thread, dropped if an error may
have left bytes in it); elsewhere it is copied through one reused buffer. A 101 answer turns
the connection into a byte tunnel (WebSocket). A client that vanished mid-response closes the
upstream connection too: it is mid-message and must never be reused.

Generations, switch and drain [routing]. Each routing decision is a *generation*: the
backend (or none), its upstream pool, an optional warm *fallback*, and a count of requests
in flight. A request enters the current generation when an attempt starts and leaves it
when that attempt ends. ``switch()`` replaces the current generation atomically and returns
the old one; ``drain()`` waits until the old one has no request in flight, after which the
old child can be stopped: that is the zero-failure update. Client connections are never
tied to a backend, so a switch never breaks them. A retired generation's pool is closed
once it is idle.

Backend death [routing, retry]. The supervisor calls ``backend_down()`` the moment a child
exits or fails health. If it is the current backend the proxy switches at once to the
generation's fallback (probation: the previous version, kept warm), or else to a *holding*
generation; attempts still waiting for that backend's answer are cut loose. Any request
that has no response byte yet and whose whole request the proxy holds (no body, or one it
buffered) is then sent again to whatever is current: a backend's death never fails it. The
retry policy waits for the routing to change rather than spinning: a moment (20 ms) covers
a refused connect that arrives before the exit is reported; past that, an unreachable
backend's requests are held. Timeouts are not retried (504); a request whose body was being
streamed cannot be replayed (502); a response already under way is cut short.

Holds [holding]. ``hold()`` (a child restarting or backing off) or a dead backend without a
fallback makes requests wait instead of failing: each is parked in the parker with its
request kept for replay, costing no worker, and handed back to the workers when the routing
changes. Holds are bounded in time (``hold_seconds``, then 503 with Retry-After), count and
bytes (beyond: 503 at once); a client that goes away while held is forgotten.

Reporting [observer, summary]. Every request, upstream error, retry and hold goes to the
observer (metrics; the app counts requests in per-thread counters folded when /metrics is
scraped, trayupdater.tally, so a request takes no lock for them). The log gets one line per
event that matters (a switch, a backend down) and, for what repeats per request (backends
that cannot be reached, retries, holds), one summary line per second: "45 requests could not
reach 1.6.1 in the last second (connection refused)".
"""

from trayupdater.proxy.observer import (
    ERR_BODY,
    ERR_CLOSED,
    ERR_CONNECT,
    ERR_NO_BACKEND,
    ERR_PROTOCOL,
    ERR_STALE,
    ERR_TIMEOUT,
    NullObserver,
    ProxyObserver,
)
from trayupdater.proxy.routing import Generation
from trayupdater.proxy.server import ReverseProxy
from trayupdater.proxy.upstream import Backend

__all__ = [
    "ERR_BODY",
    "ERR_CLOSED",
    "ERR_CONNECT",
    "ERR_NO_BACKEND",
    "ERR_PROTOCOL",
    "ERR_STALE",
    "ERR_TIMEOUT",
    "Backend",
    "Generation",
    "NullObserver",
    "ProxyObserver",
    "ReverseProxy",
]
