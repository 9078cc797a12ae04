"""The response side of one forwarded request: what the application sends goes to the client through
the same policy the proxy applies to an upstream's response (P7).

* Every response gets the security headers, the checks' response headers (rate-limit state, CORS) and
  ``X-Request-Id``; ``responses.hide_headers`` and hop-by-hop fields are removed, as are the
  application's own copies of the headers Bastion sets (Bastion's value wins, never two).
* An application 5xx is replaced by a generic problem+json (``responses.replace_upstream_errors``),
  keeping only ``Retry-After``; its body is dropped unread. A webhook's replay record is undone so the
  sender's retry is delivered.
* On a route with ``response_fields`` a JSON body is buffered (bounded), filtered and sent with its new
  length; what cannot be filtered is refused (502 ``response_unfilterable``). Only those routes buffer:
  everywhere else each ``http.response.body`` message is passed on as it comes (streaming).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from ..runtime.gateway import Forward, Gateway, Respond, actor_of
from ..runtime.responses import filter_json, is_encoded, json_kind

__all__ = ["Responder", "send_respond"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

_RELAY, _REPLACE, _FILTER = 0, 1, 2


async def send_respond(send: Send, resp: Respond) -> None:
    """Send one of the gateway's own answers (a deny, a preflight, an OAuth2 endpoint's reply)."""
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in resp.headers]
    if not any(n == "content-length" for n, _ in resp.headers):
        headers.append((b"content-length", b"%d" % len(resp.body)))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": resp.body})


class Responder:
    """The ``send`` the application gets. ``started``: whether a response head went to the client."""

    def __init__(
        self,
        gateway: Gateway,
        fwd: Forward,
        send: Send,
        skip: frozenset[bytes],
        security: Sequence[tuple[bytes, bytes]],
    ) -> None:
        self.gateway = gateway
        self.fwd = fwd
        self._send = send
        self._skip = skip
        self._security = security
        self.head = fwd.req.method == "HEAD"
        # response_fields: (max_body, the filter) compiled at load, or None
        self.fields: Any = fwd.req.route.options.get("response_fields")
        self.started = False
        self.finished = False
        self._mode = _RELAY
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._parts: list[bytes] = []
        self._size = 0
        self._too_large = False

    @property
    def holding(self) -> bool:
        """Whether a response head came from the application and is held back (to replace or filter)."""
        return self._mode != _RELAY

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif kind == "http.response.body":
            if self._mode == _RELAY:
                if not message.get("more_body", False):
                    self.finished = True
                await self._send(message)
                return
            if self._mode == _FILTER and not self._too_large:
                chunk = message.get("body", b"")
                self._size += len(chunk)
                if self._size > self.fields[0]:
                    self._too_large, self._parts = True, []  # refused anyway: stop holding it
                elif chunk:
                    self._parts.append(bytes(chunk))
            if not message.get("more_body", False):
                await self.finish()
        elif self._mode == _RELAY:
            await self._send(message)  # trailers, or a server extension the application was offered
        elif kind == "http.response.pathsend":
            await self.finish()

    async def _start(self, message: Message) -> None:
        gw = self.gateway
        status = int(message["status"])
        headers = list(message.get("headers") or ())
        if status >= 500 and self.fwd.ctx.undo is not None:
            gw.upstream_failed(self.fwd.ctx)  # not taken: the sender's retry is not a replay
        if status >= 500 and gw.replace_upstream_errors:
            self._mode, self._status, self._headers = _REPLACE, status, headers
            return
        if self.fields is not None and not self.head and status not in (204, 304):
            kind = json_kind([v for n, v in headers if n.lower() == b"content-type"])
            if kind != "other" or status == 206:
                self._mode, self._status, self._headers = _FILTER, status, headers
                return
        drop_length = self.fields is not None and self.head  # the unfiltered body's length
        out = {**message, "headers": self._client_headers(headers, drop_length=drop_length)}
        self.started = True
        await self._send(out)

    async def finish(self) -> None:
        """The application's response is complete (or it returned): send what was held back."""
        if self.finished:
            return
        self.finished = True
        if self._mode == _REPLACE:
            retry = [
                (n.decode("latin-1").lower(), v.decode("latin-1"))
                for n, v in self._headers
                if n.lower() == b"retry-after"
            ]
            await self.refuse(
                self._status,
                "upstream_error",
                "The upstream service failed to handle the request.",
                {"service": self.fwd.upstream.name, "upstream_status": self._status},
                headers=[*retry, *self.fwd.ctx.response_headers],
                event="upstream.error",
            )
        elif self._mode == _FILTER:
            _, apply = self.fields
            raw = None if self._too_large else b"".join(self._parts)
            kind = json_kind([v for n, v in self._headers if n.lower() == b"content-type"])
            out, reason = filter_json(
                raw, apply, status=self._status, kind=kind, encoded=is_encoded(self._headers)
            )
            if out is None:
                await self.refuse(
                    502,
                    "response_unfilterable",
                    "The upstream's response could not be checked before sending it.",
                    {"service": self.fwd.upstream.name, "stage": reason},
                )
                return
            headers = self._client_headers(self._headers, drop_length=True)
            headers.append((b"content-length", b"%d" % len(out)))
            self.started = True
            await self._send({"type": "http.response.start", "status": self._status, "headers": headers})
            await self._send({"type": "http.response.body", "body": out})

    async def refuse(
        self,
        status: int,
        code: str,
        detail: str,
        evidence: dict[str, Any] | None = None,
        *,
        headers: Sequence[tuple[str, str]] = (),
        event: str = "request.denied",
        severity: str = "error",
    ) -> None:
        """Answer with the gateway's own problem+json instead of the application's response."""
        req = self.fwd.req
        resp = self.gateway.deny(
            status,
            code,
            detail=detail,
            method=req.method,
            path=req.path,
            source_ip=req.client_ip,
            request_id=req.request_id,
            route=req.route,
            headers=headers,
            evidence=evidence,
            severity=severity,
            head=self.head,
            event=event,
            actor=actor_of(self.fwd.ctx.principal),
        )
        self.started = self.finished = True
        await send_respond(self._send, resp)

    def _client_headers(
        self, headers: Sequence[tuple[bytes, bytes]], *, drop_length: bool = False
    ) -> list[tuple[bytes, bytes]]:
        skip = self._skip
        out = [
            (n, v)
            for n, v in headers
            if n.lower() not in skip and not (drop_length and n.lower() == b"content-length")
        ]
        out.extend(self._security)
        out.extend((n.encode("latin-1"), v.encode("latin-1")) for n, v in self.fwd.ctx.response_headers)
        out.append((b"x-request-id", self.fwd.req.request_id.encode("latin-1")))
        return out
