"""The zero-downtime reverse proxy in front of the child server.

How it works, in one place (each part lives in its own module, named in brackets):

The dispatcher [dispatcher, poller, waits]. One selector thread owns the listening socket and every
client connection no worker is using: new connections, idle keep-alive connections between
requests, connections with a partial request head or body. It accepts, and arms each socket
it waits on for one readable event (EPOLLONESHOT on Linux: one system call per wait). It
also *serves*: when an idle connection becomes readable it reads the request and forwards it
on a pooled backend connection, and while the backend answers it arms that socket too and
goes on with other connections; the answer is relayed when it is readable. So one thread
serves every small request in flight, with no hand-off between threads (which, with the GIL,
cost more than the request), and under load one poll returns many ready sockets. Before it
sleeps it polls a moment (0.2 ms) when no worker needs the GIL: on a VM, waking a sleeping
thread costs more than a small request, and a backend's answer or a lone client's next
request usually comes within microseconds. At most ``workers`` requests are in flight;
connections beyond that wait their turn in a backlog. The dispatcher closes a connection
whose deadline passed: ``header_timeout`` from a new connection or the first byte of a head
(a slow-loris client gets 408), ``client_idle_timeout`` for an idle keep-alive one. A
refused client is *lingered*: the proxy shuts its write side and reads what the client still
sends for a moment, so the close never turns into an RST that destroys the error response.

One request code, two drivers [steps, service]. The code that serves a connection is written
once, as generators that yield where a blocking proxy would wait: for a backend's bytes, for
a socket to be ready (a Wait), or BLOCK before something that may block. The dispatcher runs
them while they never block; a task that would (a backend connection by host name, a
streamed request body, a chunked response still arriving or an until-close one, a large
body, a retry that waits) is handed to a worker [workers], a bounded pool of threads that
runs the rest blocking, bounded by the sockets' kernel timeouts, and gives the connection
back. Waiting is not work: a Wait that lasts (a client that takes a response slowly or not
at all, an event stream between events, a large upload arriving at a crawl) goes back to the
dispatcher, which waits for the socket without a thread [streams, bodies], and such a task
does not count against the requests in flight; an open WebSocket is run by the dispatcher
alone [tunnel]. Client sockets are non-blocking (where sends take MSG_DONTWAIT), so no call
on one holds a thread. A worker serving the only request in flight keeps its client and
busy-polls (a lone client costs no hand-off per request). A request head is parsed strictly
[trayupdater.http11]: ambiguous framing (smuggling) is refused before anything reaches a
backend. With no complete head the connection is parked: nobody waits for a client. So
threads serve the parts of requests that block, not sockets: a thousand idle keep-alive
clients cost a poller entry each.

Heads [heads]. A request head is parsed, checked and turned into the upstream head once; a
backend's response head into the client's head once per client HTTP version. Both are pure
functions of the bytes, so the answers for recent heads are remembered (a bounded LRU, heads
up to 2 KiB): a busy client repeats its head, a backend its head until its Date changes.

Request bodies [bodies]. A body that did not arrive with its head is received by the
dispatcher, without blocking, up to ``max_buffered_body`` bytes per request and
``max_buffered_total`` across all connections; only a complete request is forwarded, so
clients trickling a body hold no thread. Larger bodies are streamed by a worker. Either way
the client must keep a minimum rate (``body_timeout``, ``body_min_rate``) or it gets 408.

Forwarding [forward, relay]. One request goes to the backend of the generation it entered,
on a pooled keep-alive connection [upstream] or a new one (connected without blocking when
the backend is an address); the response is relayed with the
framing re-written by the proxy (hop-by-hop fields dropped, X-Forwarded-* added). A small
response body is read whole before anything goes to the client, so a backend dying between
its head and its body is still a failure the proxy can retry. A large body of known length
goes out with its head in one send and then, on Linux, is spliced backend socket -> pipe ->
client socket in the kernel, by a worker [zerocopy] (pipes from a small pool, one dropped
if an error may have left bytes in it); elsewhere it is copied through one reused buffer.
A body still arriving is relayed as it comes [streams]. A 101 answer turns
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
that has no response byte yet and whose whole request the proxy holds (no body, one it
buffered, or a streamed one not begun: still in the client's socket) is then sent again
to whatever is current: a backend's death never fails it. The retry policy waits for the
routing to change rather than spinning: a moment (20 ms) covers
a refused connect that arrives before the exit is reported; past that, an unreachable
backend's requests are held. Timeouts are not retried (504); a request whose body was being
streamed cannot be replayed (502); a response already under way is cut short.

Holds [holding]. ``hold()`` (a child restarting or backing off) or a dead backend without a
fallback makes requests wait instead of failing: each is parked in the dispatcher with its
request kept for replay, costing no worker, and served again when the routing changes. Holds
are bounded in time (``hold_seconds``, then 503 with Retry-After), count and bytes (beyond:
503 at once); a client that goes away while held is forgotten.

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
