"""Instructions per request: what authentication and validation cost, counted rather than timed.

    python bench/instructions.py [--requests N] [--rounds R] [--only auth|validation]

On a shared VM the time of the same request moves by ±25 % from one run to the next (steal from
neighbours; no hardware counters here), so the throughput ratios of `bench/run.py` swing by as much as
the differences they are meant to show. Valgrind's callgrind counts the instructions the server executes
instead: the same build and the same requests give the same count to within ~1 %, whatever the machine
is doing. The server runs under callgrind with instrumentation off (start-up and warm-up at near-native
speed); for each row it is switched on, N requests go over one keep-alive connection, and the count is
dumped. Ratios compare rows served by the same process.

What it does not see: the kernel's share (sockets, ~30-40 % of Bastion's CPU per request on loopback),
which is the same for every row, and how fast each instruction runs (cache misses: Rust extensions and
fresh allocations run slower per instruction than the interpreter's hot loop). So the instruction ratio
is a floor for the throughput ratio's cost, not the same number: a row that executes 20 % more user
instructions costs ~12-15 % more CPU once the kernel's share is counted, if it runs as fast per
instruction. Only the event loop's thread is counted: the identity store's refresh (every 0.2 s in the
bench configs) and the event writer run in their own threads on their own clocks, and counted with the
loop they added 4,000-18,000 instructions to whichever row happened to be running (±2-3 % per row).
Under valgrind, OpenSSL cannot use the CPU's SHA extensions: SHA-256 (the API key's HMAC, computed for a
key's first use in the process) counts ~2,000 instructions a block, several times what it costs
natively; a key seen before is checked by its BLAKE2s tag (~1,300 a block, as natively). The other way
round, a count cannot see cache misses: code that runs once per request from a cold cache (the tag's)
costs more time than its instructions say.

Needs `valgrind` (apt-get install valgrind) and nginx (the origin), like bench/run.py.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import configs
import harness
import run
from harness import log


@dataclass
class Target:
    label: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    counts: list[float] = field(default_factory=list)  # instructions per request, one per round


def _requests(port: int, t: Target, n: int) -> None:
    conn = http.client.HTTPConnection(harness.HOST, port, timeout=60)
    conn.connect()
    sock = conn.sock
    assert sock is not None
    done = 0
    try:
        for _ in range(n):
            # http.client sends the head and the body in two writes: corked, they leave in one segment,
            # as wrk sends them. (Split, the origin's fixed answer can come before the body has been
            # forwarded, and the gateway then closes the connection instead of reusing it.)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            conn.request(t.method, t.path, body=t.body, headers=t.headers)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{t.label}: {t.method} {t.path} answered {resp.status}")
            done += 1
    except OSError as exc:
        raise OSError(f"request {done + 1}: {exc}") from None
    finally:
        conn.close()


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=120)


def _count(pid: int, out_dir: Path, port: int, t: Target, n: int, keep: Path | None = None) -> float:
    """Instructions the server executed for n requests of t, per request."""
    before = set(out_dir.glob("cg.*.out.*-01"))
    _control(pid, "-i", "on")
    _control(pid, "-z")
    _requests(port, t, n)
    _control(pid, "-d")
    _control(pid, "-i", "off")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # thread 01 only: the event loop, where requests are served; the others (the identity store's
        # refresh, the event writer) run on their own clocks and would land on whichever row is running
        new = sorted(set(out_dir.glob("cg.*.out.*-01")) - before, key=lambda p: p.stat().st_mtime)
        if new:
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                slug = "".join(c if c.isalnum() else "-" for c in t.label.lower())[:40].strip("-")
                shutil.copy(new[-1], keep / f"{len(t.counts) + 1}-{slug}.out")
            for line in new[-1].read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1]) / n
        time.sleep(0.2)  # the dump is written by the server after the command returns
    raise RuntimeError("callgrind wrote no dump")


def _serve_under_callgrind(bench: run.Bench, key: str, make_conf, env: dict[str, str] | None,
                           out_dir: Path) -> harness.Server:
    exe = run.bastion_cli()
    if exe is None:
        raise RuntimeError("no bastion command")
    wrapped = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
               f"--callgrind-out-file={out_dir}/cg.%p.out", *exe]
    old = os.environ.get(run.BASTION_CMD_ENV)
    os.environ[run.BASTION_CMD_ENV] = shlex.join(wrapped)
    try:
        return bench.bastion(key, make_conf, ready_timeout=180, env=env)
    finally:  # the CLI calls that follow (keys, clients) run natively
        if old is None:
            del os.environ[run.BASTION_CMD_ENV]
        else:
            os.environ[run.BASTION_CMD_ENV] = old


def measure(bench: run.Bench, section: str, args: argparse.Namespace) -> list[Target]:
    out_dir = bench.tmp / f"callgrind-{section}"
    out_dir.mkdir()
    if section == "auth":
        key = "bastion-auth-cg"
        env = {"BASTION_PEPPER": configs.BENCH_PEPPER}
        server = _serve_under_callgrind(bench, key, lambda port: configs.bastion_auth_conf(
            bench.tmp, port, bench.origin().port, name=key), env, out_dir)
        creds = run._auth_credentials(bench, server, bench.tmp / f"{key}.yaml")
        targets = [
            Target("auth: none", "GET", configs.PATH_ITEM),
            Target("auth: none, same X-API-Key header sent", "GET", configs.PATH_ITEM,
                   {"x-api-key": creds["key"]}),
            Target("API key (X-API-Key)", "GET", configs.PATH_KEYED, {"x-api-key": creds["key"]}),
            Target("OAuth2 JWT (ES256, Bearer)", "GET", configs.PATH_TOKEN,
                   {"authorization": f"Bearer {creds['token']}"}),
        ]
    else:
        key = "bastion-validation-cg"
        (bench.tmp / "orders-api.yaml").write_text(configs.validation_spec("/api"))
        (bench.tmp / "orders-checked.yaml").write_text(configs.validation_spec("/checked"))
        server = _serve_under_callgrind(bench, key, lambda port: configs.bastion_validation_conf(
            bench.tmp, port, bench.origin().port, name=key), None, out_dir)
        body = configs.ORDER_BODY.encode()
        json_type = {"content-type": "application/json"}
        targets = [
            Target("JSON POST, forwarded as is", "POST", "/plain/v1/orders", json_type, body),
            Target("validated (validate: strict)", "POST", "/api/v1/orders", json_type, body),
            Target("validated and inspected (inspect: block)", "POST", "/checked/v1/orders", json_type, body),
        ]
    try:
        for t in targets:  # warm every path (imports, memos, caches) before counting
            _requests(server.port, t, args.warmup)
    except (OSError, http.client.HTTPException, RuntimeError) as exc:
        raise RuntimeError(f"{section}: warm-up of {t.label} failed: {exc}\n{server.log_tail(3)}") from None
    for rnd in range(args.rounds):
        for t in targets if rnd % 2 == 0 else targets[::-1]:
            t.counts.append(_count(server.pid, out_dir, server.port, t, args.requests, args.keep))
            log(f"{section} round {rnd + 1}/{args.rounds}: {t.label}: {t.counts[-1]:,.0f} per request")
    return targets


def report(section: str, targets: list[Target]) -> str:
    base = statistics.median(targets[0].counts)
    lines = [f"### {section}", "", "| row | instructions per request | ÷ first row (its cost as a ratio) |",
             "|---|---|---|"]
    for t in targets:
        med = statistics.median(t.counts)
        spread = (max(t.counts) - min(t.counts)) / med * 100
        lines.append(f"| {t.label} | {med:,.0f} (±{spread / 2:.1f} %) | {base / med:.3f} |")
    return "\n".join(lines) + "\n"


def _revision() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent)
    return out.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="requests per counted run (default 1000)")
    p.add_argument("--rounds", type=int, default=2, help="counted runs per row (default 2)")
    p.add_argument("--warmup", type=int, default=300, help="uncounted requests per row first (default 300)")
    p.add_argument("--only", action="append", choices=["auth", "validation"], help="one section (repeatable)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="copy each row's callgrind dump here (callgrind_annotate reads them)")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    harness.ensure_tools()
    harness.install_signal_cleanup()
    tmp = Path(tempfile.mkdtemp(prefix="bastion-instr-"))
    bench = run.Bench(argparse.Namespace(), tmp)
    out = [f"## Instructions per request (callgrind, {args.requests} requests x {args.rounds} rounds, "
           f"Bastion @ {_revision()})", ""]
    try:
        for section in args.only or ["auth", "validation"]:
            out.append(report(section, measure(bench, section, args)))
    finally:
        bench.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
