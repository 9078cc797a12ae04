"""The data plane: Bastion's own HTTP/1.1 server and upstream connection pool.

Theory of operation
===================

Why not an ASGI server? Measured on this class of machine (docs/performance.md), the ASGI layer alone
halves a proxy's throughput and the usual Python HTTP clients cost more than everything else together.
So the gateway face owns its connections: an ``asyncio.Protocol`` per client connection (uvloop when
available), ``httptools`` (llhttp) for every byte of HTTP parsing on both sides, and a pool of persistent
upstream connections per service. We never parse HTTP by hand; we only enforce policy on what llhttp
reports, and we always *re-serialise* the request for the upstream, never pass raw bytes through.

One client connection (``server.ClientConnection``)
---------------------------------------------------
* ``data_received`` feeds llhttp. Its callbacks build an :class:`~bastion.proxy.server.Exchange` per
  request (method, target, headers, framing, a bounded body queue) and enforce the gateway-wide limits
  as bytes arrive: URL length (414), header bytes and count (431), both before anything is buffered.
* Exchanges run one at a time, in order, so pipelined requests are answered in order. For each the
  data plane checks framing (CL+TE, duplicate or invalid CL, TE other than ``chunked``: 400), asks
  :meth:`Gateway.admit <bastion.runtime.gateway.Gateway.admit>` for a decision, and either writes the
  gateway's own response or forwards.
* The fast path: a bodiless request that finds its connection idle is decided right after llhttp
  returns (``admit`` is driven synchronously; none of today's checks waits), written to a pooled
  upstream connection, and its response relayed from the upstream protocol's callback — no task, no
  future, no event-loop hop. Anything that needs to wait (a request body, a pipelined backlog, a check
  that awaits a store, a response that streams, a connect) continues in a task started on demand, with
  the same code as the slow path. Reads (GET, HEAD, DELETE without a body) take the fast path.
* Timeouts use one timer per connection that re-arms itself lazily (no timer churn per request):
  ``idle`` (keep-alive), ``head`` (the whole request head must arrive within ``timeouts.header`` of its
  first byte: slowloris gets 408), ``body`` (the longest gap between two body reads: 408).
* Backpressure in both directions: a body queue above 256 KiB pauses reading from the client; a client
  whose socket buffer is full pauses reading from the upstream. Memory per connection stays bounded
  whatever the body size, so 200 MB uploads and downloads stream through in constant memory.
* Overload: above ``limits.max_connections`` new connections get 503 + ``Retry-After`` and are closed;
  above ``limits.max_in_flight`` requests get 503 + ``Retry-After``.

Forwarding (``upstream.UpstreamPool``)
--------------------------------------
* A connection is taken from the service's pool (LIFO, so warm connections stay warm) or opened within
  ``timeouts.connect``. The request head is written, then the body is pumped by its own task while the
  response is read, so an upstream that answers early (say, its own 413) is never deadlocked.
* A request that is one write (no body, or a small body already read) waits in the ``upstream.Outbox``
  until the end of the event-loop turn it was decided in, and all of the turn's requests are written
  together: each write that finds the origin asleep pays for waking it, and together one wake-up serves
  the batch (~25 % more throughput against nginx on loopback). A connection lost while its request waits
  reports that nothing was sent, so the request goes again on a fresh connection whatever its method;
  bytes that arrive before the request was written answer nothing and fail the connection, and a write
  the transport refuses fails that request alone (502), never the ones queued after it. A small
  response that arrived whole waits in the same outbox for its client; any other write to that client
  connection (a gateway answer to a pipelined request, the close) sends it first, so order is kept.
* Response framing is recomputed: a known ``Content-Length`` is kept, anything else is re-chunked for
  HTTP/1.1 clients (close-delimited for HTTP/1.0). Hop-by-hop and implementation-revealing headers are
  removed, security headers added.
* A connection goes back to the pool only when both messages completed cleanly and the upstream agreed
  to keep it alive. A request without a body that fails on a *reused* connection before any response
  byte (the upstream closed it while idle) is retried once on a fresh connection.
* Upstream failures become 502 (``upstream_unavailable``) or 504 (``upstream_timeout``) problem+json
  responses that say nothing about the upstream's address.

Shutdown: the listener stops accepting, idle connections close, in-flight requests finish with
``Connection: close`` within ``timeouts.shutdown``, then the event queue is flushed.
"""

from .server import GatewayServer, serve

__all__ = ["GatewayServer", "serve"]
