"""Bastion as ASGI middleware: the gateway's engine inside a Starlette or FastAPI application.

::

    from bastion.asgi import BastionMiddleware

    app = FastAPI()
    app.add_middleware(BastionMiddleware, config="bastion.yaml")

Theory of operation. The middleware is the gateway with one difference: where the proxy forwards a
request upstream, the middleware calls the application it wraps (``services[].upstream: app``). The
request goes through :meth:`bastion.runtime.Gateway.admit` — the same canonical path, router, check
chains, identities, counters, replay caches and events as ``bastion serve`` — and the decision is acted
on here:

* ``Respond`` (a deny, a preflight, an OAuth2 endpoint): Bastion answers; the application is not called.
* ``Forward``: the application is called with a new scope: ``path`` is the canonical path, ``headers``
  are the ones the gateway forwards (the caller's credentials stripped, ``X-Bastion-Consumer``,
  ``X-Bastion-Scopes``, ``X-Forwarded-*`` and ``X-Request-Id`` set), ``client`` is the client address
  after trusted-proxy resolution, and ``scope["bastion"]`` is a :class:`BastionPrincipal` (None when no
  consumer credential authenticated the request). The body is read lazily from ``receive``
  (``_body.py``), bounded by the route's ``max_body``; if a check read it whole, the application gets
  those bytes. The response goes back through the response policy (``_response.py``) and streams unless
  the route filters it.

Pure ASGI (no ``BaseHTTPMiddleware``): nothing is buffered that the policy does not need. The lifespan
starts the engine (database, event writer, sinks, alerts, identity snapshot, state connections) before
the application's own startup and stops it after the application's shutdown (``_runtime.py``).
WebSocket connections are refused (closed with 1008) until Bastion can check them.

``services[].openapi: app`` is the application's own generated document (FastAPI's ``app.openapi()``), read
once when the engine starts and compiled like a file's (``_openapi.py``). The admin API is served from the
application's listener with ``admin=True`` (``/admin/v1``) or where the application mounts
:class:`BastionAdmin` (``_admin.py``).
"""

from ._admin import BastionAdmin
from ._middleware import BastionMiddleware
from ._principal import BastionPrincipal, Denied

__all__ = ["BastionAdmin", "BastionMiddleware", "BastionPrincipal", "Denied"]
