"""Config files for the servers the benchmark starts: nginx origin, nginx proxy, and Bastion.

All of them are rendered into the run's temp directory; nothing is written outside it.
"""

from __future__ import annotations

from pathlib import Path

# The origin's answer: a fixed 103-byte JSON body, as in the method's anchor numbers.
ORIGIN_BODY = ('{"ok":true,"service":"orders","order_id":"123","status":"shipped","items":3,'
               '"total":"42.0","cur":"EUR"}')
assert len(ORIGIN_BODY) == 103

# Paths the main rows request. Both must reach the origin through Bastion's example routes.
PATH_ITEM = "/v1/orders/123"  # a route with a path parameter
PATH_LIST = "/v1/orders"  # a static route with an ip_allow check (127.0.0.0/8 lets wrk through)
PATH_KEYED = "/v1/keyed/123"  # the auth section: same shape as PATH_ITEM, API key required
PATH_TOKEN = "/v1/tokened/123"  # the auth section: same shape, a Bastion-issued OAuth2 JWT required
BENCH_PEPPER = "bench-pepper-not-a-secret-0123456789"


def _nginx_common(tmp: Path, name: str, *, user: bool) -> str:
    # Everything nginx would write lives in the temp dir; `user root` lets the worker read the temp dir
    # (mkdtemp makes it 0700) and is ignored with a warning when the harness does not run as root.
    return f"""
{"user root;" if user else ""}
worker_processes 1;
worker_rlimit_nofile 16384;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 8192; }}
"""


def _nginx_http_common(tmp: Path, name: str) -> str:
    # keepalive_requests is raised from nginx's default 1000 so that neither wrk nor any proxy has to
    # reconnect every 1000 requests: that churn would be measured as proxy cost.
    return f"""
    access_log off;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/{name}-client_body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
"""


def nginx_origin_conf(tmp: Path, port: int, files_dir: Path, *, root_user: bool) -> str:
    """Fast origin: the JSON body on any path, and static files under /files/ for the download rows."""
    return _nginx_common(tmp, f"origin-{port}", user=root_user) + f"""
http {{
{_nginx_http_common(tmp, f"origin-{port}")}
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /files/ {{
            alias {files_dir}/;
        }}
        location / {{
            default_type application/json;
            return 200 '{ORIGIN_BODY}';
        }}
    }}
}}
"""


def nginx_proxy_conf(tmp: Path, port: int, origin_port: int, sink_port: int | None, *,
                     root_user: bool) -> str:
    """nginx as the reference reverse proxy: 1 worker, pooled keep-alive upstream connections.

    The idle-pool size (1024) is above the largest connection count we test: with nginx's usual 64, the
    -c1000 row spends its time opening and closing upstream connections and halves nginx's throughput.
    Large bodies stream with bounded memory, as a gateway's should: uploads unbuffered, downloads through
    1 MiB of in-memory buffers and never a temp file (nginx's own unbuffered mode copies in 4-8 KiB reads
    and runs at a quarter of the speed; a temp file would measure the disk).
    """
    sink = ""
    if sink_port is not None:
        sink = f"""
    upstream sink {{
        server 127.0.0.1:{sink_port};
        keepalive 16;
    }}"""
    upload = """
        location = /upload {
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }""" if sink_port is not None else ""
    return _nginx_common(tmp, f"proxy-{port}", user=root_user) + f"""
http {{
{_nginx_http_common(tmp, f"proxy-{port}")}
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 1024;
        keepalive_requests 1000000;
    }}{sink}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location /files/ {{
            proxy_buffering on;
            proxy_max_temp_file_size 0;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}{upload}
    }}
}}
"""


# ------------------------------------------------------------------------------------------- Bastion

# The project's example routes, verbatim apart from the upstream. Only keys the strict validator accepts.
_EXAMPLE_ROUTES = """\
      - path: /v1/orders/{order_id}
        methods: [GET]
        auth: none
      - path: /v1/orders
        methods: [GET, POST]
        auth: none
        max_body: 16KiB
        ip_allow: [127.0.0.0/8]
      - path: /public/{rest:path}
        methods: [GET]
        auth: none
        ip_deny: [10.0.0.0/8]
"""
EXAMPLE_ROUTE_COUNT = 3


def bastion_conf(tmp: Path, port: int, origin_port: int, *, filler_routes: int = 0,
                 sink_port: int | None = None, name: str = "bastion") -> str:
    """Bastion's example config pointed at our origin, optionally with extra routes or body routes.

    Filler routes come *before* the benchmarked ones, so a router that scans routes in order pays for
    all of them: the routes section then measures the worst case, not the lucky one.
    """
    parts = [f"""\
listen: 127.0.0.1:{port}
trusted_proxies: []
limits: {{max_body: 1MiB, max_header_bytes: 16KiB, max_headers: 100, max_url: 8KiB}}
storage:
  database: sqlite:///{tmp}/{name}.db
  state: memory://
services:
"""]
    if filler_routes:
        parts.append(f"  - name: filler\n    upstream: http://127.0.0.1:{origin_port}\n    routes:\n")
        parts.extend(f"      - path: /svc{i}/items/{{id}}\n        methods: [GET]\n        auth: none\n"
                     for i in range(filler_routes))
    parts.append(f"  - name: orders\n    upstream: http://127.0.0.1:{origin_port}\n    routes:\n")
    parts.append(_EXAMPLE_ROUTES)
    if sink_port is not None:
        # Body rows: downloads come from the nginx origin's /files/, uploads go to the discarding sink.
        parts.append("""\
      - path: /files/{name}
        methods: [GET]
        auth: none
""")
        parts.append(f"""\
  - name: sink
    upstream: http://127.0.0.1:{sink_port}
    routes:
      - path: /upload
        methods: [POST]
        auth: none
        max_body: 200MiB
""")
    return "".join(parts)


def bastion_auth_conf(tmp: Path, port: int, origin_port: int, *, name: str = "bastion-auth") -> str:
    """The auth section: three routes of the same shape — no auth, API key, OAuth2 token — one gateway."""
    return f"""\
listen: 127.0.0.1:{port}
trusted_proxies: []
storage:
  database: sqlite:///{tmp}/{name}.db
identity:
  pepper: ${{env:BASTION_PEPPER}}
  refresh_interval: 0.2s
oauth2:
  issuer: http://127.0.0.1:{port}
  token_ttl: 24h
services:
  - name: orders
    upstream: http://127.0.0.1:{origin_port}
    routes:
      - path: /v1/orders/{{order_id}}
        methods: [GET]
        auth: none
      - path: /v1/keyed/{{order_id}}
        methods: [GET]
        auth: [api_key]
        scopes: [orders:read]
      - path: /v1/tokened/{{order_id}}
        methods: [GET]
        auth: [oauth2]
        scopes: [orders:read]
"""


PATH_LIMITED = "/v1/limited/123"  # the rate-limit section: same shape as PATH_ITEM, with a rate limit


def bastion_ratelimit_conf(tmp: Path, port: int, origin_port: int, *, state: str, name: str) -> str:
    """The rate-limit section: the same route shape without and with `rate_limit`, on one state backend.

    The limit is counted per route (one subject, the worst case for contention) and is far above what the
    run can reach in a second, so every request is admitted and forwarded: the row measures the check
    (one Counters call per request), not refusals.
    """
    return f"""\
listen: 127.0.0.1:{port}
trusted_proxies: []
storage:
  database: sqlite:///{tmp}/{name}.db
  state: {state}
  state_prefix: bench-{name}
  state_timeout: 1s
services:
  - name: orders
    upstream: http://127.0.0.1:{origin_port}
    routes:
      - path: /v1/orders/{{order_id}}
        methods: [GET]
        auth: none
      - path: /v1/limited/{{order_id}}
        methods: [GET]
        auth: none
        rate_limit: [10000/second]
        rate_limit_by: route
        on_state_failure: closed
"""


# -- the validation section -----------------------------------------------------------------------------

ORDER_BODY = (
    '{"customer_id":"5b1e2a4c-1d2e-4f3a-9b8c-7d6e5f4a3b2c","email":"ada@example.com",'
    '"items":[{"sku":"ABC-123","qty":2,"note":"gift wrap, please"},{"sku":"XYZ-9","qty":1}],'
    '"shipping":{"name":"Ada Lovelace","street":"12 St James Square","city":"London","country":"GB"},'
    '"priority":"normal","note":"Leave at the door if nobody answers."}'
)

def validation_spec(base: str) -> str:
    """The orders API's OpenAPI document, served under `base`."""
    return VALIDATION_SPEC.replace("servers: []", f"servers: [{{url: {base}}}]")


VALIDATION_SPEC = """\
openapi: 3.1.0
info: {title: orders, version: "1"}
servers: []
paths:
  /v1/orders:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/NewOrder"}
      responses: {"200": {description: ok}}
components:
  schemas:
    NewOrder:
      type: object
      additionalProperties: false
      required: [customer_id, items, shipping]
      properties:
        customer_id: {type: string, format: uuid}
        email: {type: string, format: email}
        items:
          type: array
          minItems: 1
          maxItems: 50
          items: {$ref: "#/components/schemas/Item"}
        shipping: {$ref: "#/components/schemas/Address"}
        priority: {type: string, enum: [low, normal, high]}
        note: {type: [string, "null"], maxLength: 500}
    Item:
      type: object
      additionalProperties: false
      required: [sku, qty]
      properties:
        sku: {type: string, pattern: "^[A-Z0-9-]{3,20}$"}
        qty: {type: integer, minimum: 1, maximum: 100}
        note: {type: string, maxLength: 200}
    Address:
      type: object
      required: [name, street, city, country]
      properties:
        name: {type: string, maxLength: 100}
        street: {type: string, maxLength: 200}
        city: {type: string, maxLength: 100}
        country: {type: string, pattern: "^[A-Z]{2}$"}
"""


def post_script(body: str) -> str:
    """A wrk script: every request a JSON POST of `body`."""
    escaped = body.replace("\\", "\\\\").replace('"', '\\"')
    return f"""wrk.method = "POST"
wrk.body = "{escaped}"
wrk.headers["Content-Type"] = "application/json"
"""


def bastion_validation_conf(tmp: Path, port: int, origin_port: int, *, name: str) -> str:
    """Three services on one origin: a JSON POST forwarded as is, validated, validated and inspected."""
    return f"""\
listen: 127.0.0.1:{port}
trusted_proxies: []
storage:
  database: sqlite:///{tmp}/{name}.db
services:
  - name: plain
    upstream: http://127.0.0.1:{origin_port}
    routes:
      - {{path: /plain/v1/orders, methods: [POST], auth: none}}
      - {{path: "/v1/orders/{{order_id}}", methods: [GET], auth: none}}
  - name: api
    upstream: http://127.0.0.1:{origin_port}
    openapi: {tmp}/orders-api.yaml
    routes:
      - {{path: /api/v1/orders, methods: [POST], auth: none}}
  - name: checked
    upstream: http://127.0.0.1:{origin_port}
    openapi: {tmp}/orders-checked.yaml
    inspect: block
    routes:
      - {{path: /checked/v1/orders, methods: [POST], auth: none}}
"""


# -- the middleware section -------------------------------------------------------------------------------


def bastion_middleware_conf(tmp: Path, *, name: str = "bastion-mw") -> str:
    """BastionMiddleware in front of the FastAPI endpoint: an API key and a rate limit far above the load,
    the same checks as the do-it-yourself row."""
    return f"""\
trusted_proxies: []
storage:
  database: sqlite:///{tmp}/{name}.db
identity:
  pepper: ${{env:BASTION_PEPPER}}
  refresh_interval: 0.2s
services:
  - name: orders
    upstream: app
    routes:
      - path: /v1/orders/{{order_id}}
        methods: [GET]
        auth: [api_key]
        rate_limit: [10000/second]
        rate_limit_by: key
"""
