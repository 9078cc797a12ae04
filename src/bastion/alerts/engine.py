"""The alert engine (P17, P20): rules on the event stream and on authenticated traffic, turned into
``alert.fired`` events and deliveries to the rules' channels.

Theory of operation. The request path pays almost nothing: :meth:`AlertEngine.observe` appends an event to
a bounded deque (only event types some rule reads; overflow is counted), :meth:`AlertEngine.observe_use`
adds one to a counter per (consumer, key, address) in a bounded dict — no clock, no lock, no I/O (about
0.25 µs; nothing at all when no rule reads traffic). Every ``interval`` (0.5 s) :meth:`AlertEngine.step`
takes what was observed and, on the event loop:

1. hands each event to the detectors that read its type, ``concurrency`` events at a time (their state
   calls pipeline on the alerts' own Redis connection), at most ``max_per_step`` per step — the rest wait
   for the next step, and past ``queue_size`` new events are dropped and counted;
2. hands the traffic aggregated since the last step to the traffic detectors (the counts go to the
   current interval's shared counter; closed intervals are evaluated);
3. for each finding claims the rule's cooldown for its group in the shared state — exactly one instance
   wins per cooldown — emits the ``alert.fired`` event, and queues one delivery per channel.

Deliveries run in a few worker tasks fed by a bounded queue (email in the channel's worker threads), with
retries and backoff; a delivery that fails for good is counted and becomes an ``alert.delivery_failed``
event. Nothing here ever raises into the gateway: a failing detector or state call is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..config.models import AlertRuleSettings, AlertSettings
from ..core.events import Event
from ..events.writer import new_event
from .channels import RETRY_DELAYS, Channel, build_channels, deliver
from .detectors import EventDetector, Finding, Samples, UseDetector, build_detector, sample_document
from .state import AlertState, key_part

__all__ = ["AlertEngine", "default_geo"]

log = logging.getLogger("bastion.alerts")


def default_geo(ip: str) -> str | None:
    """The ISO 3166 country of a public address from the embedded RIR data (iptocc); ``None`` for private,
    reserved or unknown addresses."""
    import iptocc

    return iptocc.country_code(ip)


def _snapshot(uses: dict[tuple[str, str | None, Any], int]) -> dict[tuple[str, str | None, Any], int]:
    """A copy of the use counts. ``observe_use`` belongs on the event loop that steps, but a caller on
    another thread must not make a step fail: a copy that raced a write is simply taken again."""
    for _ in range(10):
        try:
            return dict(uses)
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return {}


def _ignore_use(consumer: str, key_id: str | None, source_ip: str) -> None:
    return None


class _Throttled:
    """Log a recurring problem at most once a minute, with how often it happened meanwhile."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._at: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def __call__(self, what: str, exc: BaseException) -> None:
        self._count[what] = self._count.get(what, 0) + 1
        now = time.monotonic()
        if now - self._at.get(what, -math.inf) >= self.every:
            count = self._count[what]
            log.warning("alerts: %s failed (%s: %s; %d times)", what, type(exc).__name__, exc, count)
            self._at[what] = now
            self._count[what] = 0


class AlertEngine:
    def __init__(
        self,
        settings: AlertSettings,
        *,
        state: AlertState,
        emit: Callable[[Event], None],
        clock: Callable[[], float] = time.time,
        geo: Callable[[str], str | None] | None = None,
        channels: dict[str, Channel] | None = None,
        queue_size: int = 100_000,
        max_per_step: int = 5_000,
        concurrency: int = 32,
        settle: float = 2.0,
        max_uses: int = 100_000,
        delivery_queue: int = 1_000,
        delivery_workers: int = 4,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        flush_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.state = state
        self._emit = emit
        self.clock = clock
        self.geo = geo or default_geo
        # ValueError for a broken whsec_ secret: the caller reports it as a config error
        if channels is None:
            channels = build_channels(settings.channels)
        self.channels: dict[str, Channel] = channels
        self.queue_size = queue_size
        self.max_per_step = max_per_step
        self.concurrency = concurrency
        self.max_uses = max_uses  # distinct (consumer, key, address) per step; more are counted, not kept
        self.retry_delays = tuple(retry_delays)
        self.flush_timeout = flush_timeout
        self._samples = Samples()
        self._event_rules: list[tuple[AlertRuleSettings, EventDetector]] = []
        self._use_rules: list[tuple[AlertRuleSettings, UseDetector]] = []
        for rule in settings.rules:
            detector = build_detector(rule, state, self._samples, self.geo, settle=settle)
            if isinstance(detector, UseDetector):
                self._use_rules.append((rule, detector))
            # A detector may watch both: new_source_country sees API use and admin sign-in events.
            if not isinstance(detector, UseDetector) or getattr(detector, "types", ()):
                self._event_rules.append((rule, detector))  # type: ignore[arg-type]
        self._prefixes: tuple[str, ...] = tuple({t for _, d in self._event_rules for t in d.types})
        if not self._use_rules:
            self.observe_use = _ignore_use  # type: ignore[method-assign]  # no rule reads traffic
        # request path: written by observe()/observe_use(), swapped out by step()
        self._queue: deque[Event] = deque()
        self._uses: dict[tuple[str, str | None, Any], int] = {}  # (consumer, key id, address) -> requests
        # cooldowns this instance knows are held: skip the shared claim until then
        self._held: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = asyncio.Lock()
        self._deliveries: asyncio.Queue[tuple[Event, str, str]] | None = None
        self._delivery_queue = delivery_queue
        self._delivery_workers = delivery_workers
        self._workers: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._closed = False
        self._log = _Throttled()
        counters = "observed dropped uses_dropped fired suppressed deliveries deliveries_failed errors"
        self._n = dict.fromkeys(counters.split(), 0)
        self._drops_reported = 0

    # -- the request path ----------------------------------------------------------------------------------
    def observe(self, event: Event) -> None:
        """Queue an event for the next step (any thread; O(1); never blocks or raises). Types no rule reads
        are ignored; when the queue is full the event is counted as dropped."""
        prefixes = self._prefixes
        if not prefixes or not event.type.startswith(prefixes):
            return
        if len(self._queue) >= self.queue_size:
            self._n["dropped"] += 1
            return
        self._queue.append(event)
        self._n["observed"] += 1

    def observe_use(self, consumer: str, key_id: str | None, source_ip: Any) -> None:
        """An authenticated request that passed: one dictionary update, nothing else (the per-consumer
        counts and the distinct (key, address) pairs are derived from it at the next step)."""
        uses = self._uses
        use = (consumer, key_id, source_ip)
        n = uses.get(use)
        if n is not None:
            uses[use] = n + 1
        elif len(uses) < self.max_uses:
            uses[use] = 1
        else:
            self._n["uses_dropped"] += 1

    # -- the background half -------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = dict(self._n)
        stats["queued"] = len(self._queue)
        stats["deliveries_queued"] = self._deliveries.qsize() if self._deliveries is not None else 0
        stats["state_failures"] = getattr(self.state, "failures", 0)
        return stats

    async def step(self) -> list[Event]:
        """Process everything observed so far at ``clock()``; the ``alert.fired`` events emitted."""
        async with self._lock:
            now = self.clock()
            self._start_workers()
            fired: list[Event] = []
            self._report_drops()
            queue = self._queue
            taken = [queue.popleft() for _ in range(min(len(queue), self.max_per_step))]
            for start in range(0, len(taken), self.concurrency):
                chunk = taken[start : start + self.concurrency]
                results = await asyncio.gather(*(self._on_event(event, now) for event in chunk))
                for found in results:
                    await self._fire_all(found, now, fired)
                await asyncio.sleep(0)  # the step shares the gateway's event loop: let requests in between
            raw = _snapshot(self._uses)
            self._uses = {}
            uses: dict[tuple[str, str | None, str], int] = {}
            for (consumer, key_id, address), n in raw.items():  # the gateway passes address objects
                use = (consumer, key_id, str(address))
                uses[use] = uses.get(use, 0) + n
            counts: dict[str, int] = {}
            for (consumer, _, _), n in uses.items():
                counts[consumer] = counts.get(consumer, 0) + n
            for rule, detector in self._use_rules:
                try:
                    findings = await detector.on_uses(counts, uses, now)
                except Exception as exc:
                    self._n["errors"] += 1
                    self._log(f"rule {rule.name}", exc)
                    continue
                await self._fire_all([(rule, detector, f) for f in findings], now, fired)
            return fired

    def _report_drops(self) -> None:
        dropped = self._n["dropped"] + self._n["uses_dropped"]
        if dropped > self._drops_reported:
            self._log("observing", OverflowError(f"{dropped - self._drops_reported} observations dropped"))
            self._drops_reported = dropped

    async def _on_event(self, event: Event, now: float) -> list[tuple[AlertRuleSettings, Any, Finding]]:
        at = min(event.time, now)  # a clock ahead of ours must not stretch a window
        out: list[tuple[AlertRuleSettings, Any, Finding]] = []
        for rule, detector in self._event_rules:
            if not event.type.startswith(detector.types):
                continue
            try:
                out.extend((rule, detector, f) for f in await detector.on_event(event, at))
            except Exception as exc:
                self._n["errors"] += 1
                self._log(f"rule {rule.name}", exc)
        return out

    async def _fire_all(
        self, found: Iterable[tuple[AlertRuleSettings, Any, Finding]], now: float, fired: list[Event]
    ) -> None:
        for rule, detector, finding in found:
            alert = await self._fire(rule, detector.detector, finding, now)
            if alert is not None:
                fired.append(alert)

    async def _claim(self, rule: AlertRuleSettings, group: str, now: float) -> bool:
        if rule.cooldown <= 0:
            return True
        held = self._held
        key = (rule.name, group)
        until = held.get(key)
        if until is not None and until > now:
            return False
        try:
            won = await self.state.claim(f"cd:{rule.name}:{key_part(group)}", now, rule.cooldown)
        except Exception as exc:  # a state that cannot answer: better a second alert than none
            self._n["errors"] += 1
            self._log("cooldown claim", exc)
            won = True
        if len(held) >= 10_000:
            held.popitem(last=False)
        # won: ours for the cooldown; lost: someone else's — look again in a few seconds, not every event
        held[key] = now + (rule.cooldown if won else min(rule.cooldown, 5.0))
        held.move_to_end(key)
        return won

    async def _fire(
        self, rule: AlertRuleSettings, detector: str, finding: Finding, now: float
    ) -> Event | None:
        if not await self._claim(rule, finding.cooldown_group or finding.group, now):
            self._n["suppressed"] += 1
            return None
        evidence = dict(finding.evidence)
        evidence["samples"] = [sample_document(e) for e in finding.samples[-5:]]
        alert = new_event(
            "alert.fired",
            now=now,
            severity=rule.severity,
            actor="system",
            resource=f"alert:{rule.name}",
            source_ip=finding.source_ip,
            data={
                "rule": rule.name,
                "detector": detector,
                "group": finding.group,
                "summary": finding.summary,
                "evidence": evidence,
                "channels": list(rule.channels),
            },
        )
        self._n["fired"] += 1
        self._send_event(alert)
        for name in rule.channels:
            self._enqueue(alert, rule.name, name)
        return alert

    def _send_event(self, event: Event) -> None:
        try:
            self._emit(event)
        except Exception as exc:  # the sink promises not to raise; if it does, the alert still goes out
            self._n["errors"] += 1
            self._log("emit", exc)

    # -- deliveries ----------------------------------------------------------------------------------------
    def _start_workers(self) -> None:
        if self._deliveries is None and any(r.channels for r in self.settings.rules):
            queue: asyncio.Queue[tuple[Event, str, str]] = asyncio.Queue(self._delivery_queue)
            self._deliveries = queue
            loop = asyncio.get_running_loop()
            self._workers = [
                loop.create_task(self._worker(queue), name=f"bastion-alert-delivery-{i}")
                for i in range(self._delivery_workers)
            ]

    def _enqueue(self, alert: Event, rule: str, channel: str) -> None:
        if self._deliveries is None or channel not in self.channels:
            self._failed(alert, rule, channel, "channel_unavailable", 0)
            return
        try:
            self._deliveries.put_nowait((alert, rule, channel))
        except asyncio.QueueFull:
            self._failed(alert, rule, channel, "queue_full", 0)

    async def _worker(self, queue: asyncio.Queue[tuple[Event, str, str]]) -> None:
        while True:
            alert, rule, name = await queue.get()
            try:
                attempts, error = await deliver(self.channels[name], alert, delays=self.retry_delays)
                if error is None:
                    self._n["deliveries"] += 1
                else:
                    self._failed(alert, rule, name, error.error, attempts)
            except asyncio.CancelledError:
                self._failed(alert, rule, name, "shutdown", 0)  # cut off at shutdown: still on record
                raise
            except Exception as exc:
                self._failed(alert, rule, name, type(exc).__name__, 0)
            finally:
                queue.task_done()

    def _failed(self, alert: Event, rule: str, channel: str, error: str, attempts: int) -> None:
        self._n["deliveries_failed"] += 1
        log.warning("alerts: delivery of %s (rule %s) to %s failed: %s", alert.id, rule, channel, error)
        self._send_event(
            new_event(
                "alert.delivery_failed",
                now=self.clock(),
                severity="error",
                actor="system",
                resource=f"alert:{rule}",
                data={
                    "rule": rule,
                    "channel": channel,
                    "alert_id": alert.id,
                    "error": error,
                    "attempts": attempts,
                },
            )
        )

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def run(self, interval: float = 0.5) -> None:
        """Call :meth:`step` every ``interval`` seconds until :meth:`aclose`."""
        self._wake = wake = asyncio.Event()
        while not self._closed:
            try:
                await self.step()
            except Exception as exc:  # step contains its failures; this is a last guard for the loop
                self._n["errors"] += 1
                self._log("step", exc)
            if self._closed:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)

    async def aclose(self) -> None:
        """Stop: process what is still observed, wait (up to ``flush_timeout``) for the queued deliveries,
        then close the channels and the state."""
        if self._closed:
            return
        self._closed = True
        if self._wake is not None:
            self._wake.set()
        try:
            await self.step()
        except Exception as exc:
            self._log("final step", exc)
        if self._deliveries is not None:
            try:
                await asyncio.wait_for(self._deliveries.join(), self.flush_timeout)
            except TimeoutError:
                log.warning("alerts: %d deliveries still pending at shutdown", self._deliveries.qsize())
        if self._deliveries is not None:  # never started: every one on record, not silently dropped
            while not self._deliveries.empty():
                alert, rule, name = self._deliveries.get_nowait()
                self._deliveries.task_done()
                self._failed(alert, rule, name, "shutdown", 0)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        for channel in self.channels.values():
            try:
                await channel.aclose()
            except Exception as exc:
                self._log("channel close", exc)
        await self.state.aclose()
