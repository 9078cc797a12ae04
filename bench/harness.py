"""Process, measurement and tool plumbing shared by the benchmark sections.

Everything here talks to 127.0.0.1 only: every URL the harness builds goes through `local_url()`, and the
load generators refuse anything else, so a typo can never point wrk at a real host.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
# The server under test gets core 0 to itself; the load generator and the origins share core 1, so the
# measured process never competes for its core (the method in shared/research/performance.md).
SUT_CPU = 0
LOAD_CPU = 1

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    # Progress goes to stderr so stdout carries only the Markdown report.
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def local_url(port: int, path: str) -> str:
    return f"http://{HOST}:{port}{path}"


def _assert_local(url: str) -> None:
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError(f"refusing to target a non-loopback URL: {url}")


def free_port() -> int:
    # Racy in theory (the port is released before the server binds it) but each server is started right
    # after, and a clash shows up as a clear start failure rather than a wrong number.
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def raise_nofile_limit() -> int:
    # wrk -c1000 plus the proxy's upstream sockets exceed the usual soft limit of 1024; children inherit it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------------------------- tools


def nginx_binary() -> str | None:
    # /usr/sbin is not on every PATH (non-login shells, some CI images).
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def ensure_tools() -> None:
    """Install nginx, wrk and the bare proxy's libraries if missing; the bench must run on a fresh machine."""
    if not (nginx_binary() and shutil.which("wrk") and shutil.which("curl") and shutil.which("taskset")):
        log("installing nginx, wrk, curl from Debian (apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx", "wrk", "curl", "util-linux"],
                       check=True, env=env, timeout=900)
    wanted = ("aiohttp", "uvicorn", "uvloop", "httptools", "slowapi")  # slowapi: the middleware section
    missing = [m for m in wanted if importlib.util.find_spec(m) is None]
    if missing:
        log(f"installing {' '.join(missing)} with pip")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True, timeout=900)


def tool_versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (out.stdout + out.stderr).strip()
        return text.splitlines()[0] if text else "?"

    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "nginx": first_line([nginx_binary() or "nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]).split(" [")[0],
    }


# ----------------------------------------------------------------------------------------- processes


class StartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; everything after the last ')' is fixed-format.
    return raw[raw.rindex(")") + 2:].split()


def group_members(pgid: int) -> list[int]:
    """PIDs whose process group is `pgid`: the server plus its workers (nginx, multi-process servers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            # After the ')' the fields are: state ppid pgrp ...
            if fields and int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    log_path: Path
    port: int
    started_at: float = field(default_factory=time.monotonic)
    ready_after: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User+system CPU of the whole process group, so workers count too."""
        total = 0
        for pid in group_members(self.pid):
            fields = _proc_stat(pid)
            if fields:
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
        return total / _CLK_TCK

    def reset_peak_rss(self) -> bool:
        # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so each transfer's peak is its own.
        ok = True
        for pid in group_members(self.pid):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                ok = False
        return ok

    def peak_rss_kib(self) -> int:
        """Sum of VmHWM over the process group (an upper bound if workers peak at different times)."""
        total = 0
        for pid in group_members(self.pid):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        return total


class Processes:
    """Starts every server in its own session and guarantees the whole group is gone at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._servers: list[Server] = []

    def start(self, name: str, argv: list[str], *, cpu: int | str, port: int,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> Server:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                ["taskset", "-c", str(cpu), *argv],  # taskset execs argv, so proc.pid is the server itself
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})}, cwd=cwd,
                start_new_session=True,  # own process group: we can kill workers too, and ^C doesn't race us
            )
        server = Server(name, proc, log_path, port)
        self._servers.append(server)
        return server

    def launch(self, name: str, argv: list[str], *, cpu: int | str, port: int, ready_path: str = "/",
               ready_timeout: float = 30.0, env: dict[str, str] | None = None) -> Server:
        """Start a server and wait until it answers; one that never does is stopped, not left on a core."""
        server = self.start(name, argv, cpu=cpu, port=port, env=env)
        try:
            wait_ready(server, ready_path, ready_timeout)
        except BaseException:
            self.stop(server)
            raise
        return server

    def stop(self, server: Server, grace: float = 5.0) -> None:
        pgid = server.pid
        # Only signal the group while it still has members: a vanished group's id could be reused.
        if group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                server.proc.poll()  # reap the leader so it stops counting as a member
                if not group_members(pgid):
                    break
                time.sleep(0.05)
            if group_members(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=grace)
        if server in self._servers:
            self._servers.remove(server)

    def stop_all(self) -> None:
        for server in reversed(list(self._servers)):
            try:
                self.stop(server)
            except Exception as exc:  # cleanup must go on for the other servers
                log(f"warning: could not stop {server.name} (pid {server.pid}): {exc}")


def install_signal_cleanup() -> None:
    # SIGTERM/SIGHUP would otherwise kill the harness without running `finally`, leaving servers behind.
    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)


@dataclass
class HttpResult:
    status: int
    body: bytes
    headers: dict[str, str]


def http_get(port: int, path: str, timeout: float = 5.0) -> HttpResult:
    return http_request(port, "GET", path, timeout=timeout)


def http_request(port: int, method: str, path: str, *, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 5.0) -> HttpResult:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return HttpResult(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def wait_ready(server: Server, path: str = "/", timeout: float = 30.0) -> float:
    """Poll until the port accepts a connection and answers GET with any HTTP response; return seconds."""
    deadline = time.monotonic() + timeout
    last_err = "no attempt"
    while time.monotonic() < deadline:
        if not server.alive():
            tail = server.log_tail()
            last = tail.splitlines()[-1] if tail else "(no output)"
            raise StartError(f"{server.name} exited with code {server.proc.returncode}: {last}\n{tail}")
        try:
            with socket.create_connection((HOST, server.port), timeout=1.0):
                pass
            http_get(server.port, path, timeout=2.0)
        except (OSError, http.client.HTTPException) as exc:
            last_err = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
            continue
        server.ready_after = time.monotonic() - server.started_at
        return server.ready_after
    raise StartError(f"{server.name} not ready on port {server.port} after {timeout:.0f} s ({last_err}):\n"
                     f"{server.log_tail()}")


# ----------------------------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unparseable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    duration_s: float
    server_cpu_s: float | None = None

    @property
    def cpu_us_per_req(self) -> float | None:
        if self.server_cpu_s is None or not self.requests:
            return None
        return self.server_cpu_s / self.requests * 1e6

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and total and p50 and p99):
        raise ValueError(f"could not parse wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = {}
    if sock:
        errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
    return WrkResult(
        rps=float(rps.group(1)), requests=int(total.group(1)),
        p50_ms=_ms(p50.group(1)), p99_ms=_ms(p99.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0, socket_errors=errors,
        duration_s=_ms(total.group(2) + total.group(3)) / 1e3,
    )


def run_wrk(url: str, *, duration: float, connections: int = 32, server: Server | None = None,
            headers: dict[str, str] | None = None, script: Path | None = None) -> WrkResult:
    """One bounded wrk run from core 1; CPU of `server` is sampled around it for CPU µs per request.
    `script`: a wrk Lua script (a POST with a body)."""
    _assert_local(url)
    argv = ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s",
            "--timeout", "5s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    cpu0 = server.cpu_seconds() if server else None
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    cpu1 = server.cpu_seconds() if server else None
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    result = parse_wrk(out.stdout)
    if cpu0 is not None and cpu1 is not None:
        result.server_cpu_s = cpu1 - cpu0
    return result


# ---------------------------------------------------------------------------------------------- curl


@dataclass
class Transfer:
    status: int
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def curl_transfer(url: str, *, upload: Path | None = None, body_file: Path | None = None,
                  timeout: float = 300.0) -> Transfer:
    """Stream one upload (POST of a file) or one download with curl, pinned to core 1.

    curl reads the upload from disk as it sends, so the client never holds 100 MiB in memory. `Expect:` is
    blanked because curl would otherwise wait up to 1 s for a 100-continue on big bodies, and that wait
    would be measured as proxy slowness. The response body goes to `body_file` (or /dev/null).
    """
    _assert_local(url)
    argv = ["taskset", "-c", str(LOAD_CPU), "curl", "-sS", "--max-time", f"{timeout:g}", "-H", "Expect:",
            "-w", "%{http_code} %{size_upload} %{size_download} %{time_total}",
            "-o", str(body_file) if body_file else "/dev/null"]
    if upload is not None:
        argv += ["-X", "POST", "-T", str(upload), "-H", "Content-Type: application/octet-stream"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30)
    if out.returncode != 0:
        raise RuntimeError(f"curl failed ({out.returncode}): {out.stderr.strip()}")
    code, up, down, secs = out.stdout.split()
    moved = float(up) if upload is not None else float(down)
    return Transfer(int(code), int(moved), float(secs))
