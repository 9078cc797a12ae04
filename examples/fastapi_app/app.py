"""An orders API protected by BastionMiddleware: API keys with scopes, rate limits, request validation
against the application's own OpenAPI document (FastAPI's, generated from the pydantic models below:
``openapi: app`` in bastion.yaml), response filtering, a Twilio webhook and the events of all of it —
configured in bastion.yaml beside this file, with no security code in the endpoints.

Run it (Bastion starts and stops with the application's lifespan)::

    export BASTION_PEPPER=$(openssl rand -base64 32) TWILIO_AUTH_TOKEN=...
    export BASTION_CONFIG=examples/fastapi_app/bastion.yaml
    bastion consumers create shop --scope orders:read --scope orders:write
    bastion keys create --consumer shop
    uvicorn --app-dir examples/fastapi_app app:app --no-proxy-headers --no-server-header

When the application starts, Bastion reads its generated document (``app.openapi()``) once and validates
every request against it before an endpoint runs: a body the models do not allow is Bastion's 422
problem+json, and the endpoint is never called. ``python app.py --openapi`` prints that document.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from bastion.asgi import BastionMiddleware, BastionPrincipal
from bastion.fastapi import CurrentPrincipal, require_scopes

HERE = Path(__file__).parent


# No extra="forbid" here: bastion.yaml's reject_unknown_fields refuses unknown fields before the endpoint,
# where pydantic would silently drop them.
class Item(BaseModel):
    sku: str = Field(pattern=r"^[A-Z0-9-]{3,20}$")
    qty: int = Field(ge=1, le=100)


class NewOrder(BaseModel):
    email: str = Field(max_length=254)
    items: list[Item] = Field(min_length=1, max_length=50)


class Order(NewOrder):
    id: str
    placed_by: str


Reader = Annotated[BastionPrincipal, Depends(require_scopes("orders:read"))]
Writer = Annotated[BastionPrincipal, Depends(require_scopes("orders:write"))]
Admin = Annotated[BastionPrincipal, Depends(require_scopes("orders:admin"))]


def build_api() -> FastAPI:
    """The endpoints alone (no middleware): what the OpenAPI document is generated from."""
    api = FastAPI(title="Orders", version="1.0")
    orders: dict[str, dict[str, Any]] = {}

    @api.get("/v1/orders")
    async def list_orders(who: Reader) -> list[dict[str, Any]]:
        # internal_note is removed by Bastion (response_fields in bastion.yaml) before the client sees it.
        return [{**o, "internal_note": f"risk score for {o['email']}"} for o in orders.values()]

    @api.post("/v1/orders", status_code=201)
    async def place_order(order: NewOrder, who: Writer) -> Order:
        placed = Order(id=f"ord-{len(orders) + 1}", placed_by=who.consumer, **order.model_dump())
        orders[placed.id] = placed.model_dump()
        return placed

    @api.get("/v1/orders/{order_id}")
    async def get_order(order_id: str, who: Reader) -> Order:
        if order_id not in orders:
            raise HTTPException(404, "no such order")
        return Order(**orders[order_id])

    @api.delete("/v1/orders/{order_id}", status_code=204)
    async def cancel_order(order_id: str, who: Admin) -> Response:
        # The config lets orders:write keys reach this route; the endpoint asks for orders:admin as well.
        orders.pop(order_id, None)
        return Response(status_code=204)

    @api.get("/v1/orders/{order_id}/invoice")
    async def invoice(order_id: str, who: Reader) -> dict[str, Any]:
        # A failing backend: its message never reaches the client, who gets a generic problem+json 500.
        raise RuntimeError(f"billing backend refused order {order_id} (db password=hunter2)")

    @api.get("/v1/export")
    async def export(who: Reader) -> StreamingResponse:
        async def rows() -> AsyncIterator[bytes]:
            yield b"id,email\n"
            for n in range(1000):
                yield f"ord-{n},user{n}@example.com\n".encode()

        # x-powered-by is one of the headers Bastion hides (responses.hide_headers).
        return StreamingResponse(rows(), media_type="text/csv", headers={"x-powered-by": "FastAPI"})

    @api.get("/v1/me")
    async def me(who: CurrentPrincipal, request: Request) -> dict[str, Any]:
        return {
            "consumer": who.consumer,
            "scopes": sorted(who.scopes),
            "method": who.method,
            "request_id": who.request_id,
            "client": request.client.host if request.client else None,
            "credentials_seen": [h for h in ("authorization", "x-api-key") if h in request.headers],
        }

    @api.post("/hooks/sms", include_in_schema=False)
    async def incoming_sms(request: Request) -> Response:
        # Bastion checked X-Twilio-Signature (and replays) before this runs.
        form = dict(parse_qsl((await request.body()).decode()))
        reply = f"<Response><Message>Got: {form.get('Body', '')[:100]}</Message></Response>"
        return Response(reply, media_type="application/xml")

    @api.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return api


def create_app(bastion_config: Any = HERE / "bastion.yaml", **options: Any) -> FastAPI:
    """The protected application. ``bastion_config``: anything BastionMiddleware takes (a path, a loaded
    config; the tests pass a ``bastion.testing.MemoryGateway``)."""
    app = build_api()
    app.add_middleware(BastionMiddleware, config=bastion_config, **options)
    return app


app = create_app()  # uvicorn app:app — Bastion loads bastion.yaml when the server starts the lifespan

if __name__ == "__main__" and sys.argv[1:] == ["--openapi"]:
    print(json.dumps(build_api().openapi(), indent=2))
