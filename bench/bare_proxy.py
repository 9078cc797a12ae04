"""The "bare Python proxy" baseline: uvicorn (uvloop, httptools) + raw ASGI + one shared aiohttp session.

It does the least a forwarding proxy must do and nothing else (no policy, no streaming, no limits), so it
marks what the usual Python stack costs before any security work. Run it as
    BARE_PROXY_UPSTREAM=http://127.0.0.1:8081 uvicorn bare_proxy:app --loop uvloop --http httptools
It buffers bodies both ways, so keep it out of the large-body section.
"""

from __future__ import annotations

import os

import aiohttp
from yarl import URL

UPSTREAM = os.environ.get("BARE_PROXY_UPSTREAM", "http://127.0.0.1:8081").rstrip("/")

# Hop-by-hop headers (RFC 9110 §7.6.1) plus the ones aiohttp/uvicorn recompute for each side.
_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"host", b"content-length",
})

_session: aiohttp.ClientSession | None = None


async def _lifespan(receive, send) -> None:
    global _session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # limit=0: no cap on upstream connections, like nginx (whose `keepalive` only caps idle ones),
            # so -c1000 runs measure the proxy and not a queue in front of the pool.
            _session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=60),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if _session is not None:
                await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return

    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)

    target = scope.get("raw_path") or scope["path"].encode()
    if scope["query_string"]:
        target += b"?" + scope["query_string"]
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in _HOP]

    assert _session is not None, "lifespan startup did not run"
    try:
        # encoded=True: forward the path byte-for-byte instead of letting yarl re-quote it.
        async with _session.request(scope["method"], URL(UPSTREAM + target.decode("latin-1"), encoded=True),
                                    headers=headers, data=body or None, allow_redirects=False) as resp:
            payload = await resp.read()
            out = [(k, v) for k, v in resp.raw_headers if k.lower() not in _HOP]
            status = resp.status
    except (aiohttp.ClientError, TimeoutError):
        status, payload, out = 502, b"bad gateway\n", [(b"content-type", b"text/plain")]
    out.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": payload})
