"""The FastAPI apps of the `middleware` bench section (served by uvicorn, one process, core 0).

    BENCH_APP=bare        the endpoint alone
    BENCH_APP=diy         the usual do-it-yourself stack: slowapi's limiter and a hand-written API-key
                          dependency (a SHA-256 digest of the key, compared in constant time)
    BENCH_APP=bastion     BastionMiddleware with the config in BENCH_MW_CONFIG (API key + rate limit)

Every variant answers the origin's fixed JSON body, so the harness's sanity check applies. The endpoints
are ``async def`` (a sync one would run in a thread pool, and the thread hop would dominate every row).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import Response

import configs

BODY = configs.ORIGIN_BODY.encode()
variant = os.environ.get("BENCH_APP", "bare")
app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


def _answer() -> Response:
    return Response(BODY, media_type="application/json")


if variant == "diy":
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded

    KEY_DIGEST = hashlib.sha256(os.environ["BENCH_DIY_KEY"].encode()).digest()

    async def api_key(x_api_key: str | None = Header(default=None)) -> str:
        presented = hashlib.sha256((x_api_key or "").encode()).digest()
        if x_api_key is None or not hmac.compare_digest(presented, KEY_DIGEST):
            raise HTTPException(401, "invalid API key")
        return x_api_key

    limiter = Limiter(key_func=lambda request: request.headers.get("x-api-key", ""))
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]

    @app.get("/v1/orders/{order_id}")
    @limiter.limit("10000/second")
    async def order(order_id: str, request: Request, _key: str = Depends(api_key)) -> Response:
        return _answer()

else:

    @app.get("/v1/orders/{order_id}")
    async def order(order_id: str) -> Response:
        return _answer()

    if variant == "bastion":
        from bastion import BastionMiddleware

        app.add_middleware(BastionMiddleware, config=os.environ["BENCH_MW_CONFIG"])
