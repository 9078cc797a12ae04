"""``services[].openapi: app``: the generated OpenAPI document of the application the middleware protects.

Which application: a middleware's ``app`` is only the next ASGI layer, so the document comes from, in order,
the ``openapi=`` argument (a mapping, or a callable returning one: ``BastionMiddleware(app,
openapi=fastapi_app.openapi)``); ``scope["app"]`` — Starlette and FastAPI put themselves there before their
middleware stack runs, for the lifespan and for every request, so it is the application whose middleware
this is; and the wrapped ``app`` itself, for ``BastionMiddleware(fastapi_app, …)`` written around it. The
first of the last two with an ``openapi()`` method is asked, once, when the engine starts (the lifespan's
startup, or the first request without one); the config is then loaded with it and compiled like a file's
document (``LoadedConfig.with_app_openapi``). Nothing of this happens per request.

A FastAPI application built with ``openapi_url=None`` has said it publishes no document: that is a
configuration error rather than a document generated anyway (pass ``openapi=`` to use it regardless).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..config.errors import ConfigError, ConfigIssue
from ..config.loader import LoadedConfig

__all__ = ["OpenApiSource", "resolve_app_openapi"]

OpenApiSource = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def resolve_app_openapi(
    loaded: LoadedConfig, given: OpenApiSource | None, candidates: tuple[Any, ...]
) -> LoadedConfig:
    """``loaded`` with the application's document for its ``openapi: app`` services (itself when none)."""
    if not loaded.app_openapi:
        return loaded
    index = next(i for i, s in enumerate(loaded.settings.services) if s.name == loaded.app_openapi[0])
    line = loaded.lines.get(("services", index, "openapi"))

    def fail(message: str) -> ConfigError:
        return ConfigError([ConfigIssue(loaded.source, line, f"services[{index}].openapi", message)])

    source: Any = given
    if source is None:
        app = next((c for c in candidates if callable(getattr(c, "openapi", None))), None)
        if app is None:
            raise fail(
                "openapi: app needs the generated OpenAPI document of the application, and the "
                "application BastionMiddleware wraps has none (it is not a FastAPI application): give the "
                "document a file, or pass BastionMiddleware(openapi=…)"
            )
        if getattr(app, "openapi_url", "") is None:
            raise fail(
                "openapi: app, but the FastAPI application publishes no OpenAPI document "
                "(FastAPI(openapi_url=None)): give it an openapi_url (Bastion still refuses that path "
                "unless a route declares it), or pass BastionMiddleware(openapi=app.openapi)"
            )
        source = app.openapi
    try:
        document = source() if callable(source) else source
    except Exception as exc:
        raise fail(
            f"the application's OpenAPI document could not be generated: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if not isinstance(document, Mapping):
        raise fail("the application's OpenAPI document is not a mapping (openapi= must give one)")
    return loaded.with_app_openapi(document)
