"""Bastion benchmark harness: Bastion side by side with nginx and a bare Python proxy, in one run.

    python bench/run.py [--quick] [--rounds N] [--duration S] [--only main|routes|bodies|conns]

See bench/README.md for what each row means. Method (shared/research/performance.md): wrk -t1 -c32
--latency, the server under test alone on core 0, wrk and the origins on core 1, rounds interleaved so
drift hits every row alike, medians reported, ratios taken within a round before the median.
Loopback only; every process started here is killed on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import configs
import harness
from harness import LOAD_CPU, SUT_CPU, Processes, Server, StartError, WrkResult, log

BENCH_DIR = Path(__file__).resolve().parent
SECTIONS = ("main", "auth", "ratelimit", "validation", "middleware", "routes", "bodies", "conns")
KIB, MIB = 1024, 1024 * 1024
BODY_SIZES = (("1 KiB", KIB), ("100 MiB", 100 * MIB))
ROUTE_COUNTS = (10, 10_000)
CONN_COUNTS = (32, 1000)
BASTION_CMD_ENV = "BENCH_BASTION_CMD"
# A proxy whose peak RSS grows by more than this between 1 KiB and 100 MiB transfers is holding the body.
RSS_GROWTH_LIMIT_KIB = 32 * 1024


# ---------------------------------------------------------------------------------------------- model


@dataclass
class Row:
    """One line of a results table: a target URL on a server, measured once per round."""

    key: str
    label: str
    path: str
    connections: int = 32
    server: Server | None = field(default=None, repr=False)
    skip: str | None = None
    # One entry per round once measuring starts; None marks a failed round so rounds stay aligned.
    samples: list[WrkResult | None] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # never reported: may hold a key
    script: Path | None = None  # a wrk Lua script: the request is a POST with a body
    post_body: bytes | None = None  # that body, for the sanity request (a JSON POST)

    def to_json(self) -> dict:
        return {"key": self.key, "label": self.label, "path": self.path, "connections": self.connections,
                "skip": self.skip, "failures": self.failures,
                "samples": [None if s is None else asdict(s) | {"cpu_us_per_req": s.cpu_us_per_req}
                            for s in self.samples]}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def paired_ratios(num: Row, den: Row) -> list[float]:
    """rps ratios taken within each round (same drift on both sides), for the rounds where both ran."""
    return [a.rps / b.rps for a, b in zip(num.samples, den.samples, strict=False)
            if a is not None and b is not None and b.rps > 0]


def ratio_summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# -------------------------------------------------------------------------------------------- context


class Bench:
    """Servers shared across sections, started on first use and stopped in `close()`."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = Processes(tmp)
        self.files_dir = tmp / "files"
        self.files_dir.mkdir()
        self.root = os.geteuid() == 0
        self.sink_port = harness.free_port()
        self._servers: dict[str, Server] = {}
        self._failed: dict[str, str] = {}
        self._bastion_checked = False
        self._bastion_reason: str | None = None  # why Bastion can't run; None = usable
        self.notes: list[str] = []

    def close(self) -> None:
        self.procs.stop_all()

    # ----------------------------------------------------------------------------------- generic start

    def _get(self, key: str, start: Callable[[], Server]) -> Server:
        """Start a server once; a failure is remembered so later sections skip it with the same reason."""
        if key in self._failed:
            raise StartError(self._failed[key])
        server = self._servers.get(key)
        if server is not None and server.alive():
            return server
        if server is not None:
            self.procs.stop(server)  # died since last use: start it again rather than reuse a corpse
        try:
            server = start()
        except StartError as exc:
            self._failed[key] = str(exc)
            raise
        self._servers[key] = server
        return server

    def _nginx(self, name: str, conf: str, port: int, cpu: int) -> Server:
        path = self.tmp / f"{name}.conf"
        path.write_text(conf)
        nginx = harness.nginx_binary() or "nginx"
        # -g 'daemon off;' keeps the master as our child, so killing its process group takes the worker too.
        return self.procs.launch(name, [nginx, "-p", str(self.tmp), "-c", str(path), "-g", "daemon off;"],
                                 cpu=cpu, port=port, ready_timeout=15)

    # ------------------------------------------------------------------------------------------ servers

    def origin(self) -> Server:
        def start() -> Server:
            port = harness.free_port()
            conf = configs.nginx_origin_conf(self.tmp, port, self.files_dir, root_user=self.root)
            return self._nginx("origin", conf, port, LOAD_CPU)
        return self._get("origin", start)

    def direct(self) -> Server:
        """A second copy of the origin, on core 0, so 'direct' measures the origin as server under test."""
        def start() -> Server:
            port = harness.free_port()
            conf = configs.nginx_origin_conf(self.tmp, port, self.files_dir, root_user=self.root)
            return self._nginx("nginx-direct", conf, port, SUT_CPU)
        return self._get("nginx-direct", start)

    def nginx_proxy(self) -> Server:
        def start() -> Server:
            port = harness.free_port()
            conf = configs.nginx_proxy_conf(self.tmp, port, self.origin().port, self.sink_port,
                                            root_user=self.root)
            return self._nginx("nginx-proxy", conf, port, SUT_CPU)
        return self._get("nginx-proxy", start)

    def sink(self) -> Server:
        def start() -> Server:
            return self.procs.launch("sink", [sys.executable, str(BENCH_DIR / "sink_origin.py"),
                                              str(self.sink_port)], cpu=LOAD_CPU, port=self.sink_port,
                                     ready_timeout=15)
        return self._get("sink", start)

    def bare_proxy(self) -> Server:
        def start() -> Server:
            port = harness.free_port()
            argv = [sys.executable, "-m", "uvicorn", "bare_proxy:app", "--app-dir", str(BENCH_DIR),
                    "--host", harness.HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools",
                    "--no-access-log", "--log-level", "warning", "--lifespan", "on", "--backlog", "4096"]
            upstream = f"http://{harness.HOST}:{self.origin().port}"
            return self.procs.launch("bare-proxy", argv, cpu=SUT_CPU, port=port,
                                     env={"BARE_PROXY_UPSTREAM": upstream})
        return self._get("bare-proxy", start)

    def bastion_unavailable(self) -> str | None:
        """Why Bastion can't be benchmarked (not installed, CLI broken), or None when it can."""
        if self._bastion_checked:
            return self._bastion_reason
        reason = None
        exe = bastion_cli()
        if not os.environ.get(BASTION_CMD_ENV):  # an explicit command may live in another environment
            probe = subprocess.run([sys.executable, "-c", "import bastion.proxy"], capture_output=True,
                                   text=True, timeout=60)
            if probe.returncode != 0:
                reason = f"`import bastion.proxy` failed: {_last_line(probe.stderr)}"
        if reason is None and exe is None:
            reason = "no `bastion` executable next to this Python or on PATH"
        if reason is None and exe is not None:
            helped = subprocess.run([*exe, "serve", "--help"], capture_output=True, text=True, timeout=60)
            if helped.returncode != 0:
                reason = (f"`{' '.join(exe)} serve --help` exited {helped.returncode}: "
                          f"{_last_line(helped.stderr or helped.stdout)}")
        self._bastion_checked, self._bastion_reason = True, reason
        if reason:
            self.notes.append(f"Bastion rows skipped: {reason}")
        return reason

    def bastion(self, key: str, make_conf: Callable[[int], str], ready_timeout: float = 60.0,
                env: dict[str, str] | None = None, workers: int = 1) -> Server:
        """Start `bastion serve -c <conf>` on core 0 (two workers: on both cores, beside the load); raises
        StartError with the reason and log tail.

        `make_conf(port)` renders the config for the port Bastion must listen on.
        """
        def start() -> Server:
            reason = self.bastion_unavailable()
            exe = bastion_cli()
            if reason or exe is None:
                raise StartError(reason or "no bastion command")
            port = harness.free_port()
            cfg_path = self.tmp / f"{key}.yaml"
            cfg_path.write_text(make_conf(port))
            argv = [*exe, "serve", "-c", str(cfg_path)] + (["--workers", str(workers)] if workers > 1 else [])
            cpu = SUT_CPU if workers == 1 else f"{SUT_CPU},{LOAD_CPU}"
            server = self.procs.launch(key, argv, cpu=cpu, port=port,
                                       ready_path=configs.PATH_ITEM, ready_timeout=ready_timeout, env=env)
            log(f"{key} ready after {server.ready_after:.2f} s")
            return server
        return self._get(key, start)

    def bastion_main(self) -> Server:
        return self.bastion("bastion-main", lambda port: configs.bastion_conf(
            self.tmp, port, self.origin().port, name="bastion-main"))


def bastion_cli() -> list[str] | None:
    """The command that runs Bastion's CLI: $BENCH_BASTION_CMD, else the script beside this Python."""
    override = os.environ.get(BASTION_CMD_ENV)
    if override:
        return shlex.split(override)
    # A `bastion` shim on PATH may belong to another Python; `pip install -e` puts ours beside sys.executable.
    beside = Path(sys.executable).parent / "bastion"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("bastion")
    return [found] if found else None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


# ------------------------------------------------------------------------------------------ measuring


def attach(row: Row, start: Callable[[], Server]) -> Row:
    """Start the row's server and check it really proxies to the origin before spending time on it."""
    try:
        row.server = start()
    except StartError as exc:
        row.skip = f"did not start: {exc}"
        log(f"{row.label}: {row.skip.splitlines()[0]}")
        return row
    method = "GET" if row.post_body is None else "POST"
    try:
        got = harness.http_request(row.server.port, method, row.path, body=row.post_body,
                                   headers={"content-type": "application/json"} if row.post_body else None)
    except Exception as exc:  # any failure here is a reason to skip, and is reported
        row.skip = f"sanity {method} {row.path} failed: {type(exc).__name__}: {exc}"
    else:
        if got.status != 200 or got.body != configs.ORIGIN_BODY.encode():
            row.skip = (f"sanity {method} {row.path} returned {got.status} "
                        f"{got.headers.get('content-type', '')}: {got.body[:300]!r}")
    if row.skip:
        log(f"{row.label}: {row.skip}")
    return row


def measure_rounds(rows: list[Row], args: argparse.Namespace, title: str) -> None:
    """Run every live row once per round, rotating the order so no row always goes first or last."""
    live = [r for r in rows if not r.skip]
    for rnd in range(args.rounds):
        shift = rnd % len(live) if live else 0
        for row in live[shift:] + live[:shift]:
            assert row.server is not None
            if row.skip:
                row.samples.append(None)
                continue
            if not row.server.alive():
                row.skip = _exit_reason(row.server, f" during round {rnd + 1}")
                log(f"{row.label}: {row.skip.splitlines()[0]}")
                row.samples.append(None)
                continue
            url = harness.local_url(row.server.port, row.path)
            log(f"{title} round {rnd + 1}/{args.rounds}: {row.label} -c{row.connections}")
            try:
                if args.warmup > 0:
                    harness.run_wrk(url, duration=args.warmup, connections=row.connections,
                                    headers=row.headers, script=row.script)
                result = harness.run_wrk(url, duration=args.duration, connections=row.connections,
                                         server=row.server, headers=row.headers, script=row.script)
            except Exception as exc:  # a broken row must not stop the others
                row.failures.append(f"round {rnd + 1}: {type(exc).__name__}: {exc}")
                row.samples.append(None)
                continue
            if not row.server.alive() or result.requests == 0:
                # A run that ended with the server gone measured the crash, not the server: keep it out.
                row.failures.append(f"round {rnd + 1}: server exited or answered nothing; wrk saw "
                                    f"{result.requests} requests, socket errors {result.socket_errors}")
                row.samples.append(None)
                continue
            if result.errors:
                row.failures.append(f"round {rnd + 1}: {result.non_2xx} non-2xx, socket errors "
                                    f"{result.socket_errors}")
            row.samples.append(result)


def _exit_reason(server: Server, when: str) -> str:
    tail = server.log_tail()
    return (f"server exited (code {server.proc.returncode}){when}: {_last_line(tail)}\n{tail}").rstrip()


def valid(row: Row) -> list[WrkResult]:
    return [s for s in row.samples if s is not None]


def wrk_summary(row: Row) -> dict:
    s = valid(row)
    cpu = [x.cpu_us_per_req for x in s if x.cpu_us_per_req is not None]
    return {
        "rps": median([x.rps for x in s]),
        "p50_ms": median([x.p50_ms for x in s]),
        "p99_ms": median([x.p99_ms for x in s]),
        "cpu_us_per_req": median(cpu),
        "errors": sum(x.errors for x in s) if s else None,
        "rounds": len(s),
    }


# ------------------------------------------------------------------------------------------- sections


def section_main(bench: Bench) -> dict:
    rows = [
        attach(Row("nginx-direct", "nginx origin, direct (no proxy)", configs.PATH_ITEM), bench.direct),
        attach(Row("nginx-proxy", "nginx reverse proxy (1 worker, upstream keepalive)", configs.PATH_ITEM),
               bench.nginx_proxy),
        attach(Row("bare-proxy", "bare Python proxy (uvicorn + raw ASGI + aiohttp)", configs.PATH_ITEM),
               bench.bare_proxy),
        attach(Row("bastion-item", f"Bastion GET {configs.PATH_ITEM}", configs.PATH_ITEM),
               bench.bastion_main),
        attach(Row("bastion-list", f"Bastion GET {configs.PATH_LIST} (ip_allow)", configs.PATH_LIST),
               bench.bastion_main),
    ]
    measure_rounds(rows, bench.args, "main")
    ref_nginx, ref_bare = rows[1], rows[2]
    return {"rows": [r.to_json() | {
        "summary": wrk_summary(r),
        "vs_nginx_proxy": ratio_summary(paired_ratios(r, ref_nginx)),
        "vs_bare_proxy": ratio_summary(paired_ratios(r, ref_bare)),
    } for r in rows]}


def _auth_credentials(bench: Bench, server: Server, cfg: Path) -> dict[str, str]:
    """A consumer, an API key and an OAuth2 access token for the auth rows, made with the real CLI and
    the real token endpoint (the running gateway picks the CLI's changes up within refresh_interval)."""
    exe = bastion_cli()
    assert exe is not None
    env = {**os.environ, "BASTION_PEPPER": configs.BENCH_PEPPER}

    def cli(*args: str) -> dict:
        out = subprocess.run([*exe, *args, "-c", str(cfg), "--json"], capture_output=True, text=True,
                             env=env, timeout=60, check=True)
        return json.loads(out.stdout)

    cli("consumers", "create", "bench", "--scope", "orders:read")
    key = cli("keys", "create", "--consumer", "bench")["key"]
    client = cli("clients", "create", "--consumer", "bench")
    deadline = time.monotonic() + 10
    while True:
        token_resp = harness.http_request(
            server.port, "POST", "/oauth/token",
            body=b"grant_type=client_credentials",
            headers={"content-type": "application/x-www-form-urlencoded",
                     "authorization": "Basic " + base64.b64encode(
                         f"{client['client_id']}:{client['client_secret']}".encode()).decode()})
        if token_resp.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # waiting for the gateway's snapshot reload, not measuring anything
    if token_resp.status != 200:
        raise RuntimeError(f"token endpoint answered {token_resp.status}: {token_resp.body[:200]!r}")
    token = json.loads(token_resp.body)["access_token"]
    for path, hdrs in ((configs.PATH_KEYED, {"x-api-key": key}),
                       (configs.PATH_TOKEN, {"authorization": f"Bearer {token}"})):
        check = harness.http_request(server.port, "GET", path, headers=hdrs)
        if check.status != 200:
            raise RuntimeError(f"{path} with credentials answered {check.status}")
    return {"key": key, "token": token}


def section_auth(bench: Bench) -> dict:
    """Authentication's cost: the same route shape with no auth, an API key, and a Bastion-issued JWT."""
    key = "bastion-auth"
    cfg = bench.tmp / f"{key}.yaml"
    try:
        server = bench.bastion(key, lambda port: configs.bastion_auth_conf(
            bench.tmp, port, bench.origin().port, name=key), env={"BASTION_PEPPER": configs.BENCH_PEPPER})
        creds = _auth_credentials(bench, server, cfg)
        skip = None
    except Exception as exc:  # reported as skipped rows, with the reason
        creds, skip = {}, f"{type(exc).__name__}: {exc}"
    rows = [
        Row("auth-none", f"Bastion GET {configs.PATH_ITEM}, auth: none", configs.PATH_ITEM),
        # The same request as the API-key row on the no-auth route: what carrying the header costs (parsing
        # it, forwarding it) apart from checking it.
        Row("auth-none-header", f"Bastion GET {configs.PATH_ITEM}, auth: none, same X-API-Key header sent",
            configs.PATH_ITEM, headers={"x-api-key": creds.get("key", "")}),
        Row("auth-api-key", f"Bastion GET {configs.PATH_KEYED}, API key (X-API-Key)", configs.PATH_KEYED,
            headers={"x-api-key": creds.get("key", "")}),
        Row("auth-jwt", f"Bastion GET {configs.PATH_TOKEN}, OAuth2 JWT (ES256, Bearer)", configs.PATH_TOKEN,
            headers={"authorization": f"Bearer {creds.get('token', '')}"}),
    ]
    for r in rows:
        if skip:
            r.skip = skip
        else:
            r.server = server
    measure_rounds(rows, bench.args, "auth")
    base = rows[0]
    return {"rows": [r.to_json() | {
        "summary": wrk_summary(r),
        "vs_no_auth": ratio_summary(paired_ratios(r, base)),
    } for r in rows]}


def section_validation(bench: Bench) -> dict:
    """Checking what goes in: the same JSON POST forwarded as is, validated against an OpenAPI document
    (validate: strict), and validated and inspected (inspect: block)."""
    key = "bastion-validation"
    (bench.tmp / "orders-api.yaml").write_text(configs.validation_spec("/api"))
    (bench.tmp / "orders-checked.yaml").write_text(configs.validation_spec("/checked"))
    script = bench.tmp / "post-order.lua"
    script.write_text(configs.post_script(configs.ORDER_BODY))

    def start() -> Server:
        return bench.bastion(key, lambda port: configs.bastion_validation_conf(
            bench.tmp, port, bench.origin().port, name=key))

    body = configs.ORDER_BODY.encode()
    rows = [
        attach(Row("val-none", "Bastion POST /plain/v1/orders (JSON, forwarded as is)", "/plain/v1/orders",
                   script=script, post_body=body), start),
        attach(Row("val-openapi", "Bastion POST /api/v1/orders, validate: strict (OpenAPI)", "/api/v1/orders",
                   script=script, post_body=body), start),
        attach(Row("val-inspect", "Bastion POST /checked/v1/orders, validate: strict + inspect: block",
                   "/checked/v1/orders", script=script, post_body=body), start),
    ]
    measure_rounds(rows, bench.args, "validation")
    base = rows[0]
    return {"rows": [r.to_json() | {
        "summary": wrk_summary(r),
        "vs_unvalidated": ratio_summary(paired_ratios(r, base)),
    } for r in rows]}


def _fastapi(bench: Bench, variant: str, env: dict[str, str]) -> Server:
    """A FastAPI app of bench/asgi_apps.py under uvicorn (uvloop, httptools), alone on core 0."""
    def start() -> Server:
        port = harness.free_port()
        argv = [sys.executable, "-m", "uvicorn", "asgi_apps:app", "--app-dir", str(BENCH_DIR),
                "--host", harness.HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools",
                "--no-access-log", "--log-level", "warning", "--lifespan", "on", "--backlog", "4096"]
        return bench.procs.launch(f"fastapi-{variant}", argv, cpu=SUT_CPU, port=port, ready_timeout=60,
                                  env={"BENCH_APP": variant, "PYTHONPATH": str(BENCH_DIR), **env})
    return bench._get(f"fastapi-{variant}", start)


def section_middleware(bench: Bench) -> dict:
    """The embedded face: the same FastAPI endpoint bare, behind the usual do-it-yourself stack (slowapi
    and a hand-written API-key dependency), and behind BastionMiddleware (API key + rate limit)."""
    path = configs.PATH_ITEM
    rows: list[Row] = []
    key = ""
    skip = None
    try:
        import fastapi  # noqa: F401
        import slowapi  # noqa: F401
    except ImportError as exc:
        skip = f"needs fastapi and slowapi ({exc.name} is missing): pip install slowapi"
    cfg = bench.tmp / "bastion-mw.yaml"
    if skip is None:
        cfg.write_text(configs.bastion_middleware_conf(bench.tmp))
        exe = bastion_cli()
        env = {**os.environ, "BASTION_PEPPER": configs.BENCH_PEPPER}
        try:
            assert exe is not None, "no bastion command"
            for args in (["consumers", "create", "bench", "--scope", "orders:read"],
                         ["keys", "create", "--consumer", "bench"]):
                out = subprocess.run([*exe, *args, "-c", str(cfg), "--json"], capture_output=True, text=True,
                                     env=env, timeout=60, check=True)
            key = json.loads(out.stdout)["key"]
        except Exception as exc:  # reported as skipped rows
            skip = f"could not make a key: {type(exc).__name__}: {exc}"
    variants = [
        ("mw-bare", "FastAPI GET /v1/orders/{id}, nothing in front", "bare", {}),
        ("mw-diy", "FastAPI + slowapi + a hand-written API-key dependency", "diy", {"BENCH_DIY_KEY": key}),
        ("mw-bastion", "FastAPI + BastionMiddleware (API key + rate limit)", "bastion",
         {"BENCH_MW_CONFIG": str(cfg), "BASTION_PEPPER": configs.BENCH_PEPPER}),
    ]
    for row_key, label, variant, env_extra in variants:
        row = Row(row_key, label, path, headers={"x-api-key": key} if variant != "bare" else {})
        if skip:
            row.skip = skip
        else:
            try:
                row.server = _fastapi(bench, variant, env_extra)
                got = harness.http_request(row.server.port, "GET", path, headers=row.headers or None)
                if got.status != 200 or got.body != configs.ORIGIN_BODY.encode():
                    row.skip = f"sanity GET {path} returned {got.status}: {got.body[:200]!r}"
            except Exception as exc:
                row.skip = f"did not start: {type(exc).__name__}: {exc}"
        rows.append(row)
    measure_rounds(rows, bench.args, "middleware")
    base = rows[0]
    return {"rows": [r.to_json() | {
        "summary": wrk_summary(r),
        "vs_bare": ratio_summary(paired_ratios(r, base)),
    } for r in rows]}


@contextlib.contextmanager
def redis_on_load_core(bench: Bench) -> Iterator[None]:
    """Redis is a service beside the gateway, not part of it: while the rate-limit rows run, the local
    redis-server shares the load generator's core, so the server core holds the gateway alone. Its
    affinity is restored afterwards."""
    saved: dict[int, set[int]] = {}
    found = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True, check=False)
    for pid in (int(p) for p in found.stdout.split()):
        try:
            saved[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, {LOAD_CPU})
        except OSError as exc:
            bench.notes.append(f"could not pin redis-server {pid} to core {LOAD_CPU}: {exc}")
    try:
        yield
    finally:
        for pid, mask in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, mask)


def section_ratelimit(bench: Bench) -> dict:
    """Rate limiting's cost: the same route shape without and with a limit, on memory and on Redis, with one
    worker (on the server core) and two (on both cores, sharing them with the load generator, the origin and
    Redis: on this two-core machine the two-worker rows show scaling under contention, not a second core's
    worth of capacity)."""
    rows: list[Row] = []
    for state, label, workers in (
        ("memory://", "memory", 1),
        ("redis://127.0.0.1:6379/0", "Redis", 1),
        ("memory://", "memory", 2),
        ("redis://127.0.0.1:6379/0", "Redis", 2),
    ):
        tag = f"{label.lower()}" + ("-2w" if workers > 1 else "")
        key = f"bastion-rl-{tag}"
        shown = f"state {label}" + (", 2 workers" if workers > 1 else "")

        def start(key: str = key, state: str = state, workers: int = workers) -> Server:
            return bench.bastion(key, lambda port: configs.bastion_ratelimit_conf(
                bench.tmp, port, bench.origin().port, state=state, name=key), workers=workers)

        rows.append(attach(Row(f"rl-none-{tag}", f"Bastion GET {configs.PATH_ITEM}, no limit ({shown})",
                               configs.PATH_ITEM), start))
        rows.append(attach(Row(f"rl-{tag}", f"Bastion GET {configs.PATH_LIMITED}, rate_limit "
                               f"10000/second ({shown})", configs.PATH_LIMITED), start))
    with redis_on_load_core(bench):
        measure_rounds(rows, bench.args, "ratelimit")
    out = []
    for i, r in enumerate(rows):
        base = rows[i - i % 2]
        summary = wrk_summary(r)
        base_summary = wrk_summary(base)
        added_p99 = (summary["p99_ms"] - base_summary["p99_ms"]
                     if summary["p99_ms"] is not None and base_summary["p99_ms"] is not None else None)
        out.append(r.to_json() | {"summary": summary, "vs_no_limit": ratio_summary(paired_ratios(r, base)),
                                  "added_p99_ms": added_p99})
    return {"rows": out}


def section_routes(bench: Bench) -> dict:
    rows = []
    for count in ROUTE_COUNTS:
        key = f"bastion-routes-{count}"

        def start(key: str = key, count: int = count) -> Server:
            def conf(port: int) -> str:
                return configs.bastion_conf(bench.tmp, port, bench.origin().port,
                                            filler_routes=count - configs.EXAMPLE_ROUTE_COUNT, name=key)
            # Compiling thousands of routes is allowed to take a while, but it is measured and reported.
            return bench.bastion(key, conf, ready_timeout=300.0)

        rows.append(attach(Row(key, f"Bastion, {count:,} routes", configs.PATH_ITEM), start))
    measure_rounds(rows, bench.args, "routes")
    small, large = rows
    ratios = paired_ratios(large, small)
    out = {"rows": [], "slowdown_pct": None}
    for r in rows:
        out["rows"].append(r.to_json() | {
            "summary": wrk_summary(r),
            "routes": int(r.key.rsplit("-", 1)[1]),
            "ready_after_s": r.server.ready_after if r.server else None,
            "peak_rss_kib": r.server.peak_rss_kib() if r.server and r.server.alive() else None,
        })
    if ratios:
        out["slowdown_pct"] = ratio_summary([(1 - x) * 100 for x in ratios])
    return out


def section_conns(bench: Bench) -> dict:
    rows = []
    for conns in CONN_COUNTS:
        rows.append(attach(Row(f"nginx-proxy-c{conns}", "nginx reverse proxy", configs.PATH_ITEM, conns),
                           bench.nginx_proxy))
        rows.append(attach(Row(f"bastion-c{conns}", "Bastion", configs.PATH_ITEM, conns), bench.bastion_main))
    measure_rounds(rows, bench.args, "conns")
    by_key = {r.key: r for r in rows}
    out = []
    for r in rows:
        server_kind = r.key.rsplit("-c", 1)[0]
        out.append(r.to_json() | {
            "summary": wrk_summary(r),
            "vs_nginx_proxy": ratio_summary(paired_ratios(r, by_key[f"nginx-proxy-c{r.connections}"])),
            "vs_c32": ratio_summary(paired_ratios(r, by_key[f"{server_kind}-c{CONN_COUNTS[0]}"])),
        })
    return {"rows": out}


@dataclass
class BodyTarget:
    key: str
    label: str
    upload_port: int | None = None
    download_port: int | None = None
    server: Server | None = None  # the proxy whose memory we watch; None for the direct reference
    skip: str | None = None


def _make_body_files(bench: Bench) -> dict[str, Path]:
    files = {}
    for label, size in BODY_SIZES:
        path = bench.files_dir / f"body-{size}.bin"
        if not path.exists():
            # Random bytes so nothing on the way can compress them; written in chunks to stay small in RAM.
            with open(path, "wb") as f:
                for done in range(0, size, 4 * MIB):
                    f.write(os.urandom(min(4 * MIB, size - done)))
            path.chmod(0o644)
        files[label] = path
    return files


def section_bodies(bench: Bench) -> dict:
    files = _make_body_files(bench)
    origin, sink = bench.origin(), bench.sink()
    targets = [BodyTarget("direct", "origin direct (no proxy)", sink.port, origin.port)]
    try:
        proxy = bench.nginx_proxy()
        targets.append(BodyTarget("nginx-proxy", "nginx reverse proxy (bounded buffers)", proxy.port,
                                  proxy.port, proxy))
    except StartError as exc:
        targets.append(BodyTarget("nginx-proxy", "nginx reverse proxy", skip=f"did not start: {exc}"))
    try:
        server = bench.bastion("bastion-bodies", lambda port: configs.bastion_conf(
            bench.tmp, port, origin.port, sink_port=sink.port, name="bastion-bodies"))
        targets.append(BodyTarget("bastion", "Bastion", server.port, server.port, server))
    except StartError as exc:
        targets.append(BodyTarget("bastion", "Bastion", skip=f"did not start: {exc}"))

    samples: dict[tuple[str, str, str], list[dict]] = {}
    failures: dict[tuple[str, str, str], list[str]] = {}
    for rnd in range(bench.args.rounds):
        live = [t for t in targets if not t.skip]
        shift = rnd % len(live) if live else 0
        for t in live[shift:] + live[:shift]:
            for direction in ("upload", "download"):
                for label, size in BODY_SIZES:
                    if t.skip:
                        break
                    log(f"bodies round {rnd + 1}/{bench.args.rounds}: {t.label} {direction} {label}")
                    try:
                        sample = _one_transfer(bench, t, direction, files[label], size)
                    except Exception as exc:  # report it and carry on with the other rows
                        failures.setdefault((t.key, direction, label), []).append(
                            f"round {rnd + 1}: {type(exc).__name__}: {exc}")
                        if t.server is not None and not t.server.alive():
                            t.skip = _exit_reason(t.server, f" during round {rnd + 1}")
                        continue
                    samples.setdefault((t.key, direction, label), []).append(sample)
    rows = []
    for t in targets:
        for direction in ("upload", "download"):
            peaks = {}
            for label, _size in BODY_SIZES:
                got = samples.get((t.key, direction, label), [])
                peak = max((s["peak_rss_kib"] for s in got if s["peak_rss_kib"] is not None), default=None)
                peaks[label] = peak
                rows.append({
                    "key": t.key, "label": f"{t.label} {direction} {label}", "target": t.label,
                    "direction": direction, "size": label, "skip": t.skip, "samples": got,
                    "failures": failures.get((t.key, direction, label), []),
                    "seconds": median([s["seconds"] for s in got]),
                    "mb_per_s": median([s["mb_per_s"] for s in got]),
                    "peak_rss_kib": peak,
                })
            small, large = peaks[BODY_SIZES[0][0]], peaks[BODY_SIZES[-1][0]]
            if small is not None and large is not None:
                rows[-1]["rss_growth_kib"] = large - small
    return {"rows": rows}


def _one_transfer(bench: Bench, t: BodyTarget, direction: str, path: Path, size: int) -> dict:
    watched = t.server
    reset_ok = watched.reset_peak_rss() if watched else False
    answer = bench.tmp / "answer.json"
    answer.unlink(missing_ok=True)
    if direction == "upload":
        url = harness.local_url(t.upload_port, "/upload")
        tr = harness.curl_transfer(url, upload=path, body_file=answer)
        body = answer.read_bytes() if answer.exists() else b""
        if tr.status != 200 or body != b'{"received":%d}' % size:
            raise RuntimeError(f"upload of {size} bytes: HTTP {tr.status}, origin said {body[:300]!r}")
    else:
        url = harness.local_url(t.download_port, f"/files/{path.name}")
        tr = harness.curl_transfer(url, body_file=None)
        if tr.status != 200 or tr.bytes != size:
            raise RuntimeError(f"download of {size} bytes: HTTP {tr.status}, got {tr.bytes} bytes")
    return {"seconds": tr.seconds, "mb_per_s": tr.mb_per_s, "bytes": tr.bytes,
            "peak_rss_kib": watched.peak_rss_kib() if watched else None, "peak_reset": reset_ok}


# --------------------------------------------------------------------------------------------- report


def _num(v: float | None, fmt: str = ",.0f", suffix: str = "") -> str:
    return "—" if v is None else f"{v:{fmt}}{suffix}"


def _ratio(r: dict | None) -> str:
    if not r:
        return "—"
    if r["n"] == 1 or r["min"] == r["max"]:
        return f"{r['median']:.2f}"
    return f"{r['median']:.2f} ({r['min']:.2f} to {r['max']:.2f})"


def _skip_cell(row: dict) -> str:
    if row.get("skip"):
        return "skipped: " + row["skip"].splitlines()[0][:160].replace("|", "\\|")
    if row.get("failures"):
        return f"{len(row['failures'])} problem(s), see notes"
    return ""


def _ratio_table(title: str, rows: list[dict], ratio_title: str, ratio_key: str, *,
                 p99_added: bool = False) -> list[str]:
    """A section whose rows are compared with its own baseline row (no auth, no limit, no validation)."""
    added_head, added_rule = (" p99 added |", "---|") if p99_added else ("", "")
    out = [title, "", f"| row | rps | p50 | p99 | server CPU µs/req | {ratio_title} |{added_head} notes |",
           f"|---|---|---|---|---|---|{added_rule}---|"]
    for r in rows:
        s = r["summary"]
        added = ""
        if p99_added:
            added = " " + (_num(r["added_p99_ms"], "+.2f", " ms") if "none" not in r["key"] else "") + " |"
        out.append(f"| {r['label']} | {_num(s['rps'])} | {_num(s['p50_ms'], '.2f', ' ms')} | "
                   f"{_num(s['p99_ms'], '.2f', ' ms')} | {_num(s['cpu_us_per_req'], '.1f')} | "
                   f"{_ratio(r[ratio_key])} |{added} {_skip_cell(r)} |")
    return [*out, ""]


def render_report(results: dict) -> str:
    meta, settings = results["meta"], results["settings"]
    out = [
        "# Bastion benchmark",
        "",
        f"{meta['date']} · {meta['cpu']}, {meta['cores']} cores · Linux {meta['kernel']} · "
        f"Python {meta['python']} · {meta['nginx']} · {meta['wrk']} · Bastion: {meta['bastion']}",
        "",
        f"Method: wrk -t1 --latency, {settings['duration']:g} s runs after {settings['warmup']:g} s warm-up, "
        f"{settings['rounds']} interleaved rounds; server under test alone on core {SUT_CPU}, wrk and "
        f"origins on core {LOAD_CPU}; loopback only. Figures are medians over rounds; ratios are taken "
        "within each round, then the median (range in brackets). Compare ratios, not absolute numbers, "
        "across machines."
        + (" **Quick mode: smoke test only, numbers are noisy.**" if settings["quick"] else ""),
        "",
    ]
    sec = results["sections"]
    if "main" in sec:
        out += ["## Main: proxy throughput (wrk -c32, 103-byte JSON origin)", "",
                "| row | rps | p50 | p99 | server CPU µs/req | ÷ nginx proxy | ÷ bare proxy | notes |",
                "|---|---|---|---|---|---|---|---|"]
        for r in sec["main"]["rows"]:
            s = r["summary"]
            out.append(f"| {r['label']} | {_num(s['rps'])} | {_num(s['p50_ms'], '.2f', ' ms')} | "
                       f"{_num(s['p99_ms'], '.2f', ' ms')} | {_num(s['cpu_us_per_req'], '.1f')} | "
                       f"{_ratio(r['vs_nginx_proxy'])} | {_ratio(r['vs_bare_proxy'])} | {_skip_cell(r)} |")
        out.append("")
    if "auth" in sec:
        out += _ratio_table("## Auth: the cost of authentication (Bastion, wrk -c32, same origin and route "
                            "shape)", sec["auth"]["rows"], "÷ no auth", "vs_no_auth")
    if "ratelimit" in sec:
        out += _ratio_table("## Rate limits: the cost of a limit (Bastion, wrk -c32, one and two workers, "
                            "same routes)", sec["ratelimit"]["rows"], "÷ no limit", "vs_no_limit",
                            p99_added=True)
    if "validation" in sec:
        out += _ratio_table("## Validation and inspection: the cost of checking a JSON POST (Bastion, "
                            "wrk -c32)", sec["validation"]["rows"], "÷ forwarded as is", "vs_unvalidated")
    if "middleware" in sec:
        out += _ratio_table("## Middleware: FastAPI + BastionMiddleware against the do-it-yourself stack "
                            "(uvicorn, wrk -c32)", sec["middleware"]["rows"], "÷ bare FastAPI", "vs_bare")
    if "routes" in sec:
        sd = sec["routes"]["slowdown_pct"]
        out += ["## Routes: 10 vs 10,000 declared routes (Bastion, wrk -c32, GET /v1/orders/123)", "",
                "| routes | rps | p50 | p99 | server CPU µs/req | ready after | peak RSS | notes |",
                "|---|---|---|---|---|---|---|---|"]
        for r in sec["routes"]["rows"]:
            s = r["summary"]
            rss = r["peak_rss_kib"] / 1024 if r["peak_rss_kib"] else None
            out.append(f"| {r['routes']:,} | {_num(s['rps'])} | {_num(s['p50_ms'], '.2f', ' ms')} | "
                       f"{_num(s['p99_ms'], '.2f', ' ms')} | {_num(s['cpu_us_per_req'], '.1f')} | "
                       f"{_num(r['ready_after_s'], '.2f', ' s')} | {_num(rss, '.0f', ' MiB')} | "
                       f"{_skip_cell(r)} |")
        slowdown = "—"
        if sd:
            slowdown = f"**{sd['median']:.1f} %** (per-round range {sd['min']:.1f} to {sd['max']:.1f} %)"
        out += ["", f"Slowdown with 10,000 routes: {slowdown}", ""]
    if "bodies" in sec:
        out += ["## Bodies: 1 KiB vs 100 MiB, streamed through the proxy (curl, one transfer at a time)", "",
                "| row | transfer | size | time | MB/s | proxy peak RSS | RSS growth vs 1 KiB | notes |",
                "|---|---|---|---|---|---|---|---|"]
        for r in sec["bodies"]["rows"]:
            rss = _num(r["peak_rss_kib"] / 1024 if r["peak_rss_kib"] is not None else None, ".0f", " MiB")
            growth = r.get("rss_growth_kib")
            growth_cell = "—" if growth is None else f"{growth / 1024:+.0f} MiB" + (
                " **(buffers the body?)**" if growth > RSS_GROWTH_LIMIT_KIB else "")
            mbps = _num(r["mb_per_s"], ",.0f") if r["size"] != BODY_SIZES[0][0] else "n/a"
            out.append(f"| {r['target']} | {r['direction']} | {r['size']} | "
                       f"{_num(r['seconds'] and r['seconds'] * 1e3, ',.1f', ' ms')} | {mbps} | {rss} | "
                       f"{growth_cell} | {_skip_cell(r)} |")
        out.append("")
    if "conns" in sec:
        out += ["## Connections: 32 vs 1,000 concurrent (wrk -c32 / -c1000, GET /v1/orders/123)", "",
                "| row | conns | rps | p50 | p99 | errors | ÷ nginx proxy | ÷ same server at c32 | notes |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in sec["conns"]["rows"]:
            s = r["summary"]
            out.append(f"| {r['label']} | {r['connections']:,} | {_num(s['rps'])} | "
                       f"{_num(s['p50_ms'], '.2f', ' ms')} | {_num(s['p99_ms'], '.2f', ' ms')} | "
                       f"{_num(s['errors'])} | {_ratio(r['vs_nginx_proxy'])} | {_ratio(r['vs_c32'])} | "
                       f"{_skip_cell(r)} |")
        out.append("")

    notes = list(results["notes"])
    # Rows sharing a server share its skip reason (and log tail): show each reason once, naming its rows.
    skipped: dict[str, list[str]] = {}
    for name, data in sec.items():
        for r in data["rows"]:
            if r.get("skip") and "\n" in r["skip"]:
                skipped.setdefault(r["skip"], []).append(f"{name} / {r['label']}")
            notes += [f"{name} / {r['label']}: {f}" for f in r.get("failures", [])]
    notes += [f"{'; '.join(rows)}: skipped:\n```\n{reason}\n```" for reason, rows in skipped.items()]
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke test: 3 s runs, 1 s warm-up, 2 rounds")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 2 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per measured wrk run (default 10; 3 with --quick)")
    p.add_argument("--warmup", type=float, help="seconds of wrk warm-up before each run (default 3; 1 quick)")
    p.add_argument("--only", action="append", choices=SECTIONS,
                   help="run only this section (repeatable); default: all")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where latest.md/.json go")
    p.add_argument("--no-install", action="store_true", help="don't apt-get/pip install missing tools")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, server logs)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    args.sections = [s for s in SECTIONS if s in (args.only or SECTIONS)]
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds and --duration must be positive")
    return args


def bastion_version() -> str:
    code = "import bastion; print(getattr(bastion, '__version__', '?'))"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        return "not importable"
    rev = subprocess.run(["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=10)
    return probe.stdout.strip() + (f" @ {rev.stdout.strip()}" if rev.returncode == 0 else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 cores; the server and wrk will share a core and numbers mean little")
    if not args.no_install:
        harness.ensure_tools()
    nofile = harness.raise_nofile_limit()
    if nofile < 4096 and "conns" in args.sections:
        log(f"warning: open-files limit is {nofile}; the -c1000 rows may fail")
    harness.install_signal_cleanup()

    tmp = Path(tempfile.mkdtemp(prefix="bastion-bench-"))
    bench = Bench(args, tmp)
    results: dict = {
        "meta": harness.tool_versions() | {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                           "bastion": bastion_version()},
        "settings": {"rounds": args.rounds, "duration": args.duration, "warmup": args.warmup,
                     "quick": args.quick, "sections": args.sections},
        "sections": {},
        "notes": bench.notes,
    }
    runners = {"main": section_main, "auth": section_auth, "ratelimit": section_ratelimit,
               "validation": section_validation,
               "middleware": section_middleware,
               "routes": section_routes, "bodies": section_bodies, "conns": section_conns}
    started = time.monotonic()
    try:
        bench.origin()
        for name in args.sections:
            log(f"== section {name}")
            results["sections"][name] = runners[name](bench)
    finally:
        bench.close()
        if args.keep_tmp:
            log(f"kept temp dir {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started

    report = render_report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(report)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report)
    log(f"done in {results['elapsed_s']:.0f} s; wrote {args.out / 'latest.md'} and latest.json")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
