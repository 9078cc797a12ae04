"""Export sinks: every event, as the JSON document of :func:`event_document`, copied to a JSON-lines file,
a syslog receiver (RFC 5424 over UDP, RFC 5426, or TCP with octet counting, RFC 6587 §3.4.1) or an HTTPS
webhook signed the Standard Webhooks way. docs/exports.md is the reference.

Theory of operation: ``SinkSet.emit`` runs on the request path, so for each sink it only tests the
filters (precomputed) and appends to that sink's bounded deque: O(1), no I/O, never raises (a lock is
taken only to wake the thread when a batch fills up). A full queue counts the event as ``dropped``; the
sink's thread, not the request path, logs the count now and then. Each sink has its own daemon thread,
so a slow receiver holds up nobody else.

**A down sink loses nothing and never slows requests.** A batch the receiver refuses (an error, a
timeout, a non-2xx answer) goes to the sink's dead-letter file (JSON lines, appended, flushed and fsynced
under an exclusive ``flock``), and so does every batch after it, without waiting. With backoff (0.1 s
doubling up to 30 s) the thread probes: it delivers the dead-letter file in order, then removes it and
resumes. A probe that fails part-way keeps the undelivered rest (written to a new file and renamed over
the old one, so a crash leaves either file whole). A dead-letter file left by an earlier run is delivered
when the sink starts. Delivery is **at least once**: a batch that arrived but whose answer was lost is
sent again; receivers deduplicate by the events' ``id`` (ULIDs, unique).

Several processes may share one dead-letter file: appends and probes take the ``flock``, and an appender
that waited for the lock checks that the path still names the file it opened (a probe may have renamed
or removed it) before writing.

Nothing here logs event contents or secrets: log lines name the sink and the class of the error.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

import httpx

from ..config.errors import ConfigError
from ..config.models import JsonlSinkSettings, SyslogSinkSettings, WebhookSinkSettings
from ..core.events import Event, event_document, severity_rank
from ..core.webhook_signing import sign_standard_webhook, standard_webhooks_secret

__all__ = ["SinkSet"]

log = logging.getLogger("bastion.events.sinks")

SinkSettings = JsonlSinkSettings | SyslogSinkSettings | WebhookSinkSettings
Document = dict[str, Any]

_STREAM_BATCH = 500  # events per write for jsonl and syslog
_STREAM_INTERVAL = 0.2  # jsonl and syslog deliver at least this often
_DROP_LOG_EVERY = 60.0  # seconds between two "queue full" log lines of one sink
_LOCK_POLL = 0.05


def _dumps(doc: object) -> str:
    # default=str as in the database writer: one odd value in ``data`` must not sink a whole batch.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str)


class _DeliveryError(Exception):
    """A delivery failed; ``str()`` is safe to log (a status, a condition — never content or secrets)."""


def _why(exc: BaseException) -> str:
    if isinstance(exc, _DeliveryError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


class _Transport(Protocol):
    batch_size: int
    interval: float

    def deliver(self, docs: list[Document], timeout: float) -> None:
        """Deliver ``docs`` in order or raise; ``timeout`` bounds each network wait."""

    def close(self) -> None: ...


# -- jsonl -----------------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _JsonlFile:
    """Appends one document per line; rotates by size (``events.jsonl`` → ``.1`` → … → ``.<keep>``)."""

    interval = _STREAM_INTERVAL
    batch_size = _STREAM_BATCH

    def __init__(self, settings: JsonlSinkSettings) -> None:
        self.path = os.fspath(settings.path)
        self.rotate = settings.rotate
        self.keep = settings.keep

    def deliver(self, docs: list[Document], timeout: float) -> None:
        lines = [(_dumps(d) + "\n").encode("utf-8") for d in docs]
        # Opened for every batch, so a file moved away by someone else (or a directory created while the
        # sink was failing) is noticed.
        fd = self._open_locked()
        try:
            size = os.fstat(fd).st_size
            chunk: list[bytes] = []
            length = 0
            for line in lines:
                if size + length + len(line) > self.rotate and size + length > 0:
                    self._append(fd, chunk, size)
                    fd = self._rotated(fd)
                    size, chunk, length = 0, [], 0
                chunk.append(line)
                length += len(line)
            self._append(fd, chunk, size)
        finally:
            os.close(fd)

    def _open_locked(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                if not os.path.isdir(os.path.dirname(self.path) or "."):
                    raise _DeliveryError(f"the directory of {self.path} does not exist") from None
                raise
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, self.path):
                return fd
            os.close(fd)  # another process rotated it while we waited for the lock

    @staticmethod
    def _append(fd: int, chunk: list[bytes], size: int) -> None:
        try:
            _write_all(fd, b"".join(chunk))
        except OSError:
            # Never leave half a line for the next append to continue: the batch is retried whole.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise

    def _rotated(self, fd: int) -> int:
        """Shift the numbered files up (the oldest falls off), move the file to ``.1`` and return a new,
        locked file. Runs under the old file's lock; waiters on it notice the rename and reopen."""
        base = self.path
        for i in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{base}.{i}", f"{base}.{i + 1}")
        os.replace(base, f"{base}.1")
        new = self._open_locked()
        os.close(fd)
        return new

    def close(self) -> None:
        pass


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


# -- syslog ----------------------------------------------------------------------------------------------

_FACILITY = {
    "user": 1,
    "daemon": 3,
    "auth": 4,
    "authpriv": 10,
    **{f"local{i}": 16 + i for i in range(8)},
}
_SEVERITY = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "error": 3, "critical": 2}
_SD_ID = "bastion@32473"  # 32473: the enterprise number RFC 5612 reserves for documentation
_SD_FIELDS = ("id", "type", "severity", "request_id", "route", "source_ip", "actor", "reason")
_SD_VALUE_MAX = 256  # characters per SD-PARAM value, before escaping
UDP_MAX = 8192  # bytes per datagram: above this, a message is shortened (docs/exports.md)
TCP_MAX = 65536  # bytes per framed message
_TCP_TIMEOUT = 5.0  # connecting, and writing one batch
_NOT_PRINTABLE = re.compile(r"[^!-~]")


def _header_field(value: str, limit: int) -> str:
    """RFC 5424 §6: header fields are PRINTUSASCII (33 to 126) or the NILVALUE ``-``."""
    value = _NOT_PRINTABLE.sub("", value)[:limit]
    return value or "-"


def _sd_escape(value: str) -> str:
    """RFC 5424 §6.3.3: inside PARAM-VALUE, ``"``, ``\\`` and ``]`` MUST be escaped with a backslash."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(
    doc: Document, *, facility: int, app_name: str, hostname: str, procid: str, limit: int
) -> bytes:
    """One RFC 5424 message, ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG``, at most
    ``limit`` bytes: MSG is the document as JSON (UTF-8, no BOM). Too long, its ``data`` becomes
    ``{"_truncated": true}``; still too long, MSG is cut (at a character boundary)."""
    pri = facility * 8 + _SEVERITY.get(doc["severity"], 6)
    params = " ".join(
        f'{name}="{_sd_escape(str(doc[name])[:_SD_VALUE_MAX])}"'
        for name in _SD_FIELDS
        if doc.get(name) is not None
    )
    head = (
        f"<{pri}>1 {doc['time']} {hostname} {app_name} {procid} {_header_field(doc['type'], 32)} "
        f"[{_SD_ID} {params}] "
    ).encode()
    msg = _dumps(doc).encode("utf-8")
    room = max(limit - len(head), 0)
    if len(msg) > room:
        msg = _dumps({**doc, "data": {"_truncated": True}}).encode("utf-8")
        if len(msg) > room:
            msg = msg[:room].decode("utf-8", "ignore").encode("utf-8")
    return head + msg


def _hostname() -> str:
    return _header_field(socket.gethostname(), 255)


class _Syslog:
    """RFC 5424 messages over UDP (one datagram each, RFC 5426) or TCP (a persistent connection, each
    message framed ``LEN SP MSG``, RFC 6587 §3.4.1)."""

    interval = _STREAM_INTERVAL
    batch_size = _STREAM_BATCH

    def __init__(self, settings: SyslogSinkSettings) -> None:
        parts = urlsplit(settings.address)
        self.tcp = parts.scheme == "tcp"
        self.host = parts.hostname or ""
        self.port = parts.port or 514
        self.facility = _FACILITY[settings.facility]
        self.app_name = settings.app_name
        self.hostname = _hostname()
        self._sock: socket.socket | None = None
        self._peer: Any = None

    def _message(self, doc: Document) -> bytes:
        return syslog_message(
            doc,
            facility=self.facility,
            app_name=self.app_name,
            hostname=self.hostname,
            procid=str(os.getpid()),
            limit=TCP_MAX if self.tcp else UDP_MAX,
        )

    def deliver(self, docs: list[Document], timeout: float) -> None:
        try:
            if self.tcp:
                data = b"".join(b"%d %s" % (len(m), m) for m in map(self._message, docs))
                timeout = min(timeout, _TCP_TIMEOUT)
                sock = self._connected(timeout)
                sock.settimeout(timeout)
                sock.sendall(data)
            else:
                sock = self._datagram_socket()
                for doc in docs:
                    sock.sendto(self._message(doc), self._peer)
        except OSError:
            self.close()  # reconnect (TCP) or resolve again (UDP) next time
            raise

    def _connected(self, timeout: float) -> socket.socket:
        # RFC 6587 has no acknowledgements: a receiver that went away is only seen as a closed connection.
        # Look before writing, so a batch is not written into a connection the receiver already closed.
        if self._sock is not None and not _alive(self._sock):
            self.close()
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._sock

    def _datagram_socket(self) -> socket.socket:
        if self._sock is None:
            family, kind, proto, _, addr = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(family, kind, proto)
            self._peer = addr
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _alive(sock: socket.socket) -> bool:
    """False when the peer closed or reset the connection (a syslog receiver never sends anything)."""
    timeout = sock.gettimeout()
    # Non-blocking for the peek: with a timeout set, Python would first wait that long for data.
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.settimeout(timeout)


# -- webhook ---------------------------------------------------------------------------------------------


def webhook_id(docs: list[Document]) -> str:
    """Stable for the same events (so a retry carries the same ``webhook-id``): the first event's id, the
    count and 8 hex digits of a SHA-256 over every id."""
    digest = hashlib.sha256("\n".join(d["id"] for d in docs).encode("ascii")).hexdigest()[:8]
    return f"{docs[0]['id']}-{len(docs)}-{digest}"


class _Webhook:
    """``POST url`` with ``{"events": [...]}``, signed; 2xx is delivered, anything else is retried."""

    def __init__(self, settings: WebhookSinkSettings, name: str, clock: Callable[[], float]) -> None:
        try:
            self._key = standard_webhooks_secret(settings.secret.reveal())
        except ValueError:
            raise ConfigError(
                f"events.sinks[{name}].secret: a whsec_ secret must be followed by base64"
            ) from None
        self.url = settings.url
        self.batch_size = settings.batch_size
        self.interval = settings.flush_interval
        self.timeout = settings.timeout
        self._clock = clock
        self._client: Any = None

    def __repr__(self) -> str:
        return "_Webhook(<signed>)"

    def deliver(self, docs: list[Document], timeout: float) -> None:
        if self._client is None:
            # trust_env=False: no .netrc credentials, no proxy from the environment
            self._client = httpx.Client(
                timeout=self.timeout, follow_redirects=False, verify=True, trust_env=False
            )
        body = _dumps({"events": docs}).encode("utf-8")
        message_id = webhook_id(docs)
        stamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "user-agent": "bastion-sink",
            "webhook-id": message_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign_standard_webhook(self._key, message_id, stamp, body),
        }
        try:
            with self._client.stream(
                "POST", self.url, content=body, headers=headers, timeout=min(timeout, self.timeout)
            ) as resp:
                status = resp.status_code
                answer = _read_some(resp.iter_bytes(), 4096 if status == 409 else 65536)
        except httpx.HTTPError as exc:
            # httpx's messages may quote the URL; only the class goes further.
            raise _DeliveryError(type(exc).__name__) from None
        if 200 <= status < 300:
            return
        if status == 409 and _problem_code(answer) == "webhook_replayed":
            # A Bastion receiver (hmac_signature) already accepted this webhook-id: an earlier attempt
            # arrived and only its answer was lost. Sending it again would be refused forever.
            return
        raise _DeliveryError(f"HTTP {status}")

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None


def _read_some(chunks: Iterator[bytes], limit: int) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) >= limit:
            break
    return bytes(out[:limit])


def _problem_code(body: bytes) -> object:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc.get("code") if isinstance(doc, dict) else None


# -- the sink: queue, thread, dead letters ---------------------------------------------------------------


class _Sink:
    def __init__(
        self,
        name: str,
        settings: SinkSettings,
        transport: _Transport,
        dead_letter: str,
        *,
        monotonic: Callable[[], float],
        backoff: tuple[float, float],
    ) -> None:
        self.name = name
        self.transport = transport
        self.dead_letter = dead_letter
        self.queue: deque[Event] = deque()
        self.queue_size = settings.queue_size
        self.batch_size = transport.batch_size
        self.interval = transport.interval
        self.min_rank = severity_rank(settings.min_severity)
        # "request" takes request.* (not requests.*); a prefix with a dot ("request.den") is literal.
        self.exact = frozenset(p for p in settings.types if "." not in p)
        self.prefixes = tuple(p if "." in p else p + "." for p in settings.types)
        self.filtered = bool(settings.types)
        self._mono = monotonic
        self._backoff_start, self._backoff_cap = backoff
        self._delay = self._backoff_start
        self._wake = threading.Event()
        self._stopping = False
        self._abandoned = False  # close() timed out and buried what was left; the thread must not repeat it
        self._drains = 0  # dead-letter files this sink moved aside to deliver
        self._deadline = float("inf")
        self._down = False  # batches go to the dead-letter file until a probe succeeds
        self._next_probe = 0.0
        self._last_flush = monotonic()
        self._inflight: list[Event] = []
        self.thread: threading.Thread | None = None
        self.delivered = 0
        self.failures = 0
        self.dead_lettered = 0
        self.dropped = 0  # counted on the request path only (a full queue)
        self.lost = 0  # counted by the thread: an unwritable dead-letter file, an unreadable line in it
        self._drops_logged = 0
        self._next_drop_log = 0.0

    # -- the request path: O(1), no I/O ----------------------------------------------------------------
    def offer(self, event: Event) -> None:
        if severity_rank(event.severity) < self.min_rank:
            return
        if self.filtered and event.type not in self.exact and not event.type.startswith(self.prefixes):
            return
        q = self.queue
        if len(q) >= self.queue_size:
            self.dropped += 1
            return
        q.append(event)
        if len(q) == self.batch_size:
            self._wake.set()

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self.queue),
            "delivered": self.delivered,
            "failures": self.failures,
            "dead_lettered": self.dead_lettered,
            "dropped": self.dropped + self.lost,
        }

    # -- the thread ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name=f"bastion-sink-{self.name}", daemon=True)
            self.thread.start()

    def stop(self, deadline: float) -> None:
        self._deadline = deadline
        self._stopping = True
        self._wake.set()

    def _run(self) -> None:
        if _has_content(self.dead_letter) or self._draining_files():  # left by an earlier run: first
            self._down = True
            self._next_probe = self._mono()
        try:
            while True:
                stopping = self._stopping
                if not stopping:
                    self._wake.wait(self._wait_time())
                    self._wake.clear()
                    stopping = self._stopping
                try:
                    self._cycle(stopping)
                except Exception as exc:  # never let the sink die silently
                    log.error("sink %s: unexpected %s", self.name, type(exc).__name__)
                if stopping:
                    return
        finally:
            self.transport.close()

    def finish_inline(self) -> None:
        """``close`` without a thread: deliver or bury what is queued, in the caller."""
        if _has_content(self.dead_letter) or self._draining_files():
            self._down = True  # older events wait there: the queue goes after them, in order
        try:
            self._cycle(True)
        finally:
            self.transport.close()

    def _wait_time(self) -> float:
        due = self._last_flush + self.interval
        if self._down:
            due = min(due, self._next_probe)
        return min(max(due - self._mono(), 0.005), self.interval)

    def _cycle(self, stopping: bool) -> None:
        self._report_drops()
        now = self._mono()
        if self._down and not stopping and now >= self._next_probe:
            self._probe()
        partial = stopping or now - self._last_flush >= self.interval
        if partial:
            self._last_flush = now
        while self.queue and (partial or len(self.queue) >= self.batch_size):
            if self._down or (stopping and self._mono() >= self._deadline):
                self._bury([event_document(e) for e in self._take(len(self.queue))])  # one fsync for all
            else:
                self._send(self._take(self.batch_size))

    def _take(self, n: int) -> list[Event]:
        q = self.queue
        batch: list[Event] = []
        while q and len(batch) < n:
            batch.append(q.popleft())
        return batch

    def _attempt_timeout(self) -> float:
        if self._stopping:
            return max(min(self._deadline - self._mono(), 60.0), 0.05)
        return 60.0  # transports cap this with their own configured timeout

    def _send(self, batch: list[Event]) -> None:
        docs = [event_document(e) for e in batch]
        self._inflight = batch
        try:
            self.transport.deliver(docs, self._attempt_timeout())
        except Exception as exc:
            self._inflight = []
            self.failures += 1
            self._down = True
            self._delay = self._backoff_start
            self._next_probe = self._mono() + self._delay
            log.error(
                "sink %s: delivery failed (%s); events go to the dead-letter file until it answers",
                self.name,
                _why(exc),
            )
            if not self._abandoned:
                self._bury(docs)
            return
        self._inflight = []
        self.delivered += len(docs)

    def _probe(self) -> None:
        """Deliver the dead-letter backlog in order; when it is all delivered, leave the down state.

        The lock on the dead-letter file is held only to move it aside (``<file>.draining.<pid>.<n>``),
        never while delivering: other processes keep appending to a fresh file without waiting on this
        one's network. Files moved aside earlier (this or another process, maybe one that crashed) are
        older than the current file, so they go first; one being drained elsewhere (locked) is skipped."""
        while not self._stopping:
            for path in self._draining_files():
                done = self._drain(path)
                if not done:  # failed, stopping, or (None) being drained elsewhere: newer ones wait
                    return
            try:
                fh = open(self.dead_letter, "r+b")  # noqa: SIM115 - held across the lock
            except FileNotFoundError:
                log.info("sink %s: answering again; the dead-letter backlog was delivered", self.name)
                self._up()
                return
            except OSError as exc:
                self._probe_failed(exc)
                return
            with fh:
                fcntl.flock(fh, fcntl.LOCK_EX)  # appenders hold it for one write: microseconds
                if not _same_file(fh.fileno(), self.dead_letter):
                    continue  # another process moved it while we waited: look again
                self._drains += 1
                aside = f"{self.dead_letter}.draining.{os.getpid()}.{self._drains}"
                try:
                    os.rename(self.dead_letter, aside)
                except OSError as exc:
                    self._probe_failed(exc)
                    return
            # the loop comes back for what was appended to a new file meanwhile

    def _draining_files(self) -> list[str]:
        found = glob.glob(glob.escape(self.dead_letter) + ".draining.*")
        paths = [p for p in found if not p.endswith(".tmp")]
        return sorted(paths, key=lambda p: (_mtime(p), p))

    def _drain(self, path: str) -> bool | None:
        """Deliver one moved-aside file and remove it: True when done, False when delivery failed or
        close() came (the rest stays in the file), None when another process holds it."""
        try:
            fh = open(path, "r+b")  # noqa: SIM115 - held across the lock
        except FileNotFoundError:
            return True
        except OSError as exc:
            self._probe_failed(exc)
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            if not _same_file(fh.fileno(), path):
                return True  # drained and removed by whoever held it
            offset = 0
            try:
                while not self._stopping:
                    docs, end = self._read_docs(fh, offset)
                    if end == offset:
                        break
                    if docs:
                        self.transport.deliver(docs, self._attempt_timeout())
                        self.delivered += len(docs)
                    offset = end
                    self._spill()
                else:
                    self._keep_rest(fh, offset, path)  # close() came: the rest waits for the next start
                    return False
            except Exception as exc:
                self._keep_rest(fh, offset, path)
                self._probe_failed(exc)
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return True

    def _read_docs(self, fh: BinaryIO, offset: int) -> tuple[list[Document], int]:
        fh.seek(offset)
        docs: list[Document] = []
        while len(docs) < self.batch_size:
            line = fh.readline()
            if not line:
                break
            try:
                doc = json.loads(line)
                if not isinstance(doc, dict) or "id" not in doc:
                    raise ValueError
            except ValueError:
                if line.strip():
                    self.lost += 1
                    log.error("sink %s: skipped an unreadable line in the dead-letter file", self.name)
                continue
            docs.append(doc)
        return docs, fh.tell()

    def _spill(self) -> None:
        """During a long probe, move queued events to the dead-letter file (they are newer than the
        backlog being drained), so the queue does not overflow while the backlog drains."""
        if len(self.queue) < self.queue_size // 2:
            return
        self._bury([event_document(e) for e in self._take(len(self.queue))])

    def _keep_rest(self, fh: BinaryIO, offset: int, path: str) -> None:
        """Replace the file at ``path`` by its undelivered part (from ``offset``), atomically (nothing
        undelivered: the file goes)."""
        if offset == 0:
            return
        if offset >= os.fstat(fh.fileno()).st_size:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # O_EXCL below: never write through a file or link someone left there
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                fh.seek(offset)
                while chunk := fh.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            # The whole file stays: its delivered part will be sent again (at least once).
            log.error("sink %s: the dead-letter file could not be shortened (%s)", self.name, _why(exc))
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _probe_failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._delay = min(self._delay * 2, self._backoff_cap)
        self._next_probe = self._mono() + self._delay
        log.warning("sink %s: still failing (%s); next try in %.1fs", self.name, _why(exc), self._delay)

    def _up(self) -> None:
        self._down = False
        self._delay = self._backoff_start

    def _bury(self, docs: list[Document], *, wait: float | None = None) -> None:
        """Append to the dead-letter file (flushed, fsynced, under the lock). ``wait`` bounds the wait for
        the lock (``None``: as long as it takes)."""
        if not docs:
            return
        try:
            self._append_dead_letter(_lines(docs), wait)
        except Exception as exc:  # a full disk, a lock not had in time, anything: counted, never silent
            self.lost += len(docs)
            log.error(
                "sink %s: the dead-letter file is not writable (%s): %d events lost",
                self.name,
                _why(exc),
                len(docs),
            )
            return
        self.dead_lettered += len(docs)

    def _append_dead_letter(self, data: bytes, wait: float | None) -> None:
        path = self.dead_letter
        give_up = None if wait is None else time.monotonic() + wait
        while True:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                _lock(fd, give_up)
                if not _same_file(fd, path):
                    continue  # a probe removed or replaced it while we waited
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # a crash left half a line: do not glue ours to it
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise
                return
            finally:
                os.close(fd)

    def take_over(self, wait: float) -> None:
        """``close`` timed out while the thread is stuck in a delivery: bury its batch and the queue from
        the caller (at least once: the stuck batch may still arrive), so exiting loses nothing."""
        self._abandoned = True
        docs = [event_document(e) for e in self._inflight]
        docs += [event_document(e) for e in self._take(len(self.queue))]
        self._bury(docs, wait=wait)

    def _report_drops(self) -> None:
        dropped = self.dropped
        if dropped > self._drops_logged and self._mono() >= self._next_drop_log:
            log.warning(
                "sink %s: queue full (%d); %d events dropped (%d in total)",
                self.name,
                self.queue_size,
                dropped - self._drops_logged,
                dropped,
            )
            self._drops_logged = dropped
            self._next_drop_log = self._mono() + _DROP_LOG_EVERY


def _lines(docs: list[Document]) -> bytes:
    return "".join(_dumps(d) + "\n" for d in docs).encode("utf-8")


def _lock(fd: int, give_up: float | None) -> None:
    if give_up is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= give_up:
                raise TimeoutError from None
            time.sleep(_LOCK_POLL)


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def _has_content(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


# -- the set ---------------------------------------------------------------------------------------------


class SinkSet:
    """Every configured sink; the gateway emits each event once, here."""

    def __init__(
        self,
        settings: Sequence[SinkSettings],
        *,
        base_dir: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        backoff: tuple[float, float] = (0.1, 30.0),
    ) -> None:
        sinks: list[_Sink] = []
        paths: dict[str, str] = {}
        for i, s in enumerate(settings):
            name = s.name or f"{s.type}-{i + 1}"
            transport: _Transport
            if isinstance(s, JsonlSinkSettings):
                transport = _JsonlFile(s)
            elif isinstance(s, SyslogSinkSettings):
                transport = _Syslog(s)
            else:
                transport = _Webhook(s, name, clock)
            dead_letter = os.fspath(s.dead_letter or Path(base_dir) / f"bastion-sink-{name}.unsent.jsonl")
            key = os.path.abspath(dead_letter)
            if key in paths:
                raise ConfigError(f"events.sinks[{name}].dead_letter: the same file as sink {paths[key]}")
            paths[key] = name
            sinks.append(_Sink(name, s, transport, dead_letter, monotonic=monotonic, backoff=backoff))
        self._sinks = tuple(sinks)
        self._closed = False

    def emit(self, event: Event) -> None:
        """On the request path: filter and queue for every sink; never blocks, never raises."""
        for sink in self._sinks:
            try:
                sink.offer(event)
            except Exception:  # a malformed event must not break a request
                sink.dropped += 1

    def start(self) -> None:
        for sink in self._sinks:
            sink.start()

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (or put it in the dead-letter files) and stop the threads, within about
        ``timeout`` seconds. A sink still stuck in a delivery then has its batch and queue buried by the
        caller."""
        if self._closed:
            return
        self._closed = True
        end = time.monotonic() + timeout
        margin = min(1.0, timeout * 0.2)  # time left to bury what could not be delivered
        for sink in self._sinks:
            sink.stop(sink._mono() + timeout - margin)
        for sink in self._sinks:
            if sink.thread is None:
                sink.finish_inline()
                continue
            sink.thread.join(max(end - margin / 2 - time.monotonic(), 0.0))
            if sink.thread.is_alive():
                log.error(
                    "sink %s: still delivering at shutdown; its queue goes to the dead-letter file", sink.name
                )
                sink.take_over(wait=max(end - time.monotonic(), 0.1))

    def stats(self) -> dict[str, dict[str, int]]:
        return {sink.name: sink.stats() for sink in self._sinks}
