"""Helpers for testing an application protected by Bastion, in its own test suite.

::

    from bastion.testing import FrozenClock, make_key, memory_gateway, twilio_signature

    def test_orders() -> None:
        with memory_gateway(Path("bastion.yaml"), BASTION_PEPPER="test-pepper-0123456789abcdef") as bastion:
            app = create_app(bastion_config=bastion)     # app.add_middleware(BastionMiddleware, config=…)
            with TestClient(app) as client:              # runs the lifespan: Bastion starts
                key = make_key(bastion, "shop", ["orders:read"])
                assert client.get("/v1/orders/1", headers={"X-API-Key": key}).status_code == 200
                assert bastion.events("request.denied") == []

* :func:`memory_gateway` — the same config with its database in a temporary directory (SQLite) and its
  state in memory: every test starts from nothing, and nothing is left behind.
* :func:`make_key` — a consumer (made when missing) and an API key for it, in force on the next request.
* :func:`twilio_signature` — ``X-Twilio-Signature`` as Twilio computes it (Twilio's own SDK when it is
  installed, else Bastion's implementation of the same algorithm).
* :class:`FrozenClock` — a clock that moves only when told (rate-limit windows, key expiry, timestamps).
* :func:`lifespan` — run an ASGI application's lifespan around a block (for ``httpx.ASGITransport``,
  which does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select

from .config.loader import LoadedConfig, load_config_text
from .events.query import row_to_dict
from .identity.credentials import Peppers
from .identity.manage import IdentityAdmin, IdentityError
from .store.database import open_database
from .store.schema import events_table

if TYPE_CHECKING:
    from .asgi import BastionMiddleware
    from .runtime.gateway import Gateway

__all__ = ["FrozenClock", "MemoryGateway", "lifespan", "make_key", "memory_gateway", "twilio_signature"]

_ACTOR = "bastion.testing"


class FrozenClock:
    """A clock for ``BastionMiddleware(clock=…)`` (or ``memory_gateway(clock=…)``): it reads ``now``
    until a test moves it with :meth:`advance` or :meth:`set`."""

    def __init__(self, now: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def set(self, now: float) -> None:
        self.now = float(now)


class MemoryGateway:
    """A config ready for tests; pass it as ``BastionMiddleware(config=…)``. The running middleware binds
    itself here, so :func:`make_key` and :meth:`events` reach the live engine."""

    def __init__(self, loaded: LoadedConfig, directory: str, clock: Any = None) -> None:
        self.loaded = loaded
        self.directory = directory
        self.clock = clock
        self.middleware: BastionMiddleware | None = None
        self._engine: Engine | None = None
        self._cleanup = weakref.finalize(self, shutil.rmtree, directory, True)

    @property
    def database_url(self) -> str:
        return self.loaded.settings.storage.database

    @property
    def gateway(self) -> Gateway | None:
        """The running engine, while an application using this config is up."""
        return self.middleware.gateway if self.middleware is not None else None

    def bind(self, middleware: BastionMiddleware | None) -> None:
        self.middleware = middleware

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = open_database(self.database_url)
        return self._engine

    def admin(self) -> IdentityAdmin:
        """Identity management (consumers, keys, clients). While the engine runs, a change is in force on
        the very next request."""
        gateway = self.gateway
        if gateway is not None and gateway.identity is not None:
            adm = gateway.identity.admin()
        else:
            ident = self.loaded.settings.identity
            peppers = Peppers(ident.pepper.reveal()) if ident.pepper is not None else None
            adm = IdentityAdmin(self.engine, peppers, max_key_ttl=ident.max_key_ttl)
        if self.clock is not None:
            adm.clock = self.clock
        return adm

    def events(self, type: str | None = None) -> list[dict[str, Any]]:
        """The stored events, oldest first (those still queued are written first)."""
        runtime = self.middleware.runtime if self.middleware is not None else None
        if runtime is not None and runtime.monitoring is not None:
            runtime.monitoring.writer.flush()
        query = select(events_table).order_by(events_table.c.id)
        if type is not None:
            query = query.where(events_table.c.type == type)
        with self.engine.connect() as conn:
            return [row_to_dict(dict(r._mapping)) for r in conn.execute(query)]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._cleanup()

    def __enter__(self) -> MemoryGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def memory_gateway(
    config: str | Path | Mapping[str, Any],
    *,
    clock: Any = None,
    base_dir: str | Path | None = None,
    **env: str,
) -> MemoryGateway:
    """``config``: YAML text, a path to a YAML file (a :class:`~pathlib.Path`, or a one-line string ending
    in ``.yaml``, ``.yml`` or ``.json``), or a mapping. ``env``: the values ``${env:…}`` references read,
    over ``os.environ``. ``storage.database`` and ``storage.state`` are replaced by a fresh SQLite file in
    a temporary directory and ``memory://``."""
    source = "<memory_gateway>"
    if isinstance(config, str) and "\n" not in config and config.endswith((".yaml", ".yml", ".json")):
        config = Path(config)  # a file name, not a one-line config
    if isinstance(config, Path):
        text, source = config.read_text(encoding="utf-8"), str(config)
        base_dir = base_dir or config.resolve().parent
    elif isinstance(config, Mapping):
        text = json.dumps(config)  # YAML is a superset of JSON
    else:
        text = config
    loaded = load_config_text(
        text,
        source=source,
        env={**os.environ, **env},
        base_dir=Path(base_dir) if base_dir else None,
        defer_app_openapi=True,  # openapi: app: the middleware reads the application's document at startup
    )
    directory = tempfile.mkdtemp(prefix="bastion-test-")
    return MemoryGateway(_in_memory(loaded, f"sqlite:///{Path(directory) / 'bastion.db'}"), directory, clock)


def _in_memory(loaded: LoadedConfig, database: str) -> LoadedConfig:
    """``loaded`` with its database at ``database`` and its state in memory — and so is the config it
    becomes once the application's document is known (``LoadedConfig.with_app_openapi``)."""
    settings = loaded.settings
    storage = settings.storage.model_copy(update={"database": database, "state": "memory://"})
    reload = loaded.reload
    return dataclasses.replace(
        loaded,
        settings=settings.model_copy(update={"storage": storage}),
        reload=(lambda document: _in_memory(reload(document), database)) if reload is not None else None,
    )


def make_key(
    target: MemoryGateway | BastionMiddleware | IdentityAdmin,
    consumer: str,
    scopes: Iterable[str] | None = None,
    *,
    ttl: float | None = None,
    permissions: Iterable[str] = (),
    ip_allow: Iterable[str] = (),
) -> str:
    """A new API key for ``consumer`` with ``scopes`` (default: all of the consumer's); the consumer is
    created with those scopes when it does not exist. Returns the full key (shown once, as in production)."""
    admin = _admin(target)
    wanted = list(scopes) if scopes is not None else None
    try:
        admin.get_consumer(consumer)
    except IdentityError as exc:
        if exc.status != 404:
            raise
        admin.create_consumer(consumer, wanted or [], actor=_ACTOR)
    _, key = admin.create_key(
        consumer, wanted, ttl=ttl, permissions=permissions, ip_allow=ip_allow, actor=_ACTOR
    )
    return key


def _admin(target: Any) -> IdentityAdmin:
    if isinstance(target, IdentityAdmin):
        return target
    if isinstance(target, MemoryGateway):
        return target.admin()
    gateway = getattr(target, "gateway", None)
    if gateway is not None and gateway.identity is not None:
        adm: IdentityAdmin = gateway.identity.admin()
        return adm
    raise TypeError("make_key needs a MemoryGateway, a running BastionMiddleware or an IdentityAdmin")


def twilio_signature(
    auth_token: str, url: str, params: Mapping[str, str | Sequence[str]] | None = None
) -> str:
    """``X-Twilio-Signature`` for a webhook to ``url`` (the full public URL, query included) with form
    ``params``; JSON webhooks carry ``bodySHA256`` in the URL and no params."""
    try:
        from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
    except ImportError:  # the SDK is optional: Bastion's implementation is checked against it
        from .checks.twilio_signature import twilio_signature as compute

        values = {k: [v] if isinstance(v, str) else list(v) for k, v in (params or {}).items()}
        return compute(auth_token.encode("utf-8"), url, values)
    return str(RequestValidator(auth_token).compute_signature(url, dict(params or {})))


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run ``app``'s ASGI lifespan (startup before the block, shutdown after it)."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.get_running_loop().create_task(app(scope, to_app.get, from_app.put))

    async def reply(message: dict[str, Any]) -> dict[str, Any]:
        await to_app.put(message)
        getter = asyncio.ensure_future(from_app.get())
        await asyncio.wait([getter, task], return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            task.result()  # raises what the application raised
            raise RuntimeError("the application ended its lifespan without answering")
        return getter.result()

    started = await reply({"type": "lifespan.startup"})
    if started["type"] != "lifespan.startup.complete":
        await task
        raise RuntimeError(f"startup failed: {started.get('message', '')}")
    try:
        yield
    finally:
        await reply({"type": "lifespan.shutdown"})
        await task
