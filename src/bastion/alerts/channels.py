"""Alert channels: where an ``alert.fired`` event goes besides the event log.

* **webhook** — ``POST`` of ``{"alert": <the event as the admin API shows it>}`` (JSON), signed with the
  Standard Webhooks scheme (https://www.standardwebhooks.com/, "Signature scheme"): ``webhook-id`` is the
  alert's event id (the same on every retry, so a receiver can deduplicate), ``webhook-timestamp`` the Unix
  time of the attempt, ``webhook-signature`` ``v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>``. A
  ``whsec_`` secret is the base64-decoded bytes, exactly as Bastion's own ``hmac_signature`` check verifies
  (:func:`bastion.core.webhook_signing.standard_webhooks_secret`). Redirects are not followed.
* **email** — a plain-text message through SMTP (:mod:`smtplib`, in the channel's own worker threads,
  never on the event loop). ``smtps://`` is implicit TLS (RFC 8314); ``smtp://`` to any host but loopback
  must offer STARTTLS (RFC 3207) or nothing is sent; certificates are verified. ``LOGIN`` only when the
  channel has a username and password.

A channel makes one attempt per :meth:`Channel.send` and raises :class:`DeliveryError` saying whether a
later attempt may succeed; the engine retries with backoff (:func:`deliver`).
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

import httpx

from ..config.models import EmailChannelSettings, WebhookChannelSettings
from ..core.events import Event, event_document
from ..core.webhook_signing import sign_standard_webhook, standard_webhooks_secret
from ..smtp import SmtpEndpoint, StartTlsUnavailable

__all__ = [
    "Channel",
    "DeliveryError",
    "EmailChannel",
    "WebhookChannel",
    "build_channels",
    "deliver",
    "email_message",
    "sign_standard_webhook",
]

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)  # between the 5 attempts: about 8 s of trying, then delivery_failed


class DeliveryError(Exception):
    """One attempt failed. ``error`` is a short name safe for the event log (an exception class or
    ``http_<status>``; never a URL, a credential or a server's reply); ``retry`` whether to try again."""

    def __init__(self, error: str, *, retry: bool) -> None:
        super().__init__(error)
        self.error = error
        self.retry = retry


class Channel(Protocol):
    name: str

    async def send(self, alert: Event) -> None:
        """Deliver once, or raise :class:`DeliveryError`."""
        ...

    async def aclose(self) -> None: ...


async def deliver(
    channel: Channel,
    alert: Event,
    *,
    delays: Sequence[float] = RETRY_DELAYS,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> tuple[int, DeliveryError | None]:
    """Send with retries: ``len(delays) + 1`` attempts at most, waiting ``delays[i]`` after the i-th
    failure; a failure that says ``retry=False`` ends it at once. Returns the attempts made and the last
    error (``None`` when delivered)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            await channel.send(alert)
            return attempt, None
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # a channel's bug or an unforeseen library error: retry, name its class
            error = DeliveryError(type(exc).__name__, retry=True)
        if not error.retry or attempt > len(delays):
            return attempt, error
        await sleep(delays[attempt - 1])


class WebhookChannel:
    def __init__(
        self,
        settings: WebhookChannelSettings,
        *,
        clock: Callable[[], float] = time.time,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.name = settings.name
        self.url = settings.url
        self.timeout = settings.timeout
        # ValueError for a whsec_ secret that is not base64: raised here, when the config loads
        self._key = standard_webhooks_secret(settings.secret.reveal())
        self.clock = clock  # the receiver compares the timestamp with its own clock: a real one
        self._verify = verify
        self._client: httpx.AsyncClient | None = None

    async def send(self, alert: Event) -> None:
        body = json.dumps({"alert": event_document(alert)}, separators=(",", ":")).encode()
        timestamp = str(int(self.clock()))
        headers = {
            "content-type": "application/json",
            "user-agent": "bastion-alerts",
            "webhook-id": alert.id,
            "webhook-timestamp": timestamp,
            "webhook-signature": sign_standard_webhook(self._key, alert.id, timestamp, body),
        }
        if self._client is None:
            # trust_env=False: no proxy, .netrc or CA bundle from the environment (as the JWKS client)
            self._client = httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, trust_env=False, verify=self._verify
            )
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # connect, TLS, timeout, protocol: all worth another attempt
            raise DeliveryError(type(exc).__name__, retry=True) from None
        status = response.status_code
        if not 200 <= status < 300:
            raise DeliveryError(f"http_{status}", retry=status in (408, 425, 429) or status >= 500)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _clean(value: object, limit: int = 200) -> str:
    """A value for a mail header or line: printable, one line, bounded (values may come from requests)."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def email_message(alert: Event, sender: str, to: Sequence[str]) -> EmailMessage:
    """The plain-text message for an alert: subject ``[Bastion] <rule>: <summary>``."""
    data: Mapping[str, Any] = alert.data
    rule = _clean(data.get("rule", ""))
    summary = _clean(data.get("summary", ""), 120)
    evidence: Mapping[str, Any] = data.get("evidence") or {}
    stamp = event_document(alert)["time"]
    lines = [
        f"Bastion alert: {rule}",
        "",
        f"Rule:      {rule} ({_clean(data.get('detector', ''))})",
        f"Severity:  {alert.severity}",
        f"Group:     {_clean(data.get('group', ''))}",
        f"Time:      {stamp}",
        f"Event id:  {alert.id}",
        f"Summary:   {summary}",
        "",
        "Evidence:",
    ]
    for name, value in evidence.items():
        if name != "samples":
            lines.append(f"  {_clean(name, 40)}: {_clean(json.dumps(value, default=str), 300)}")
    samples = evidence.get("samples") or []
    if samples:
        lines += ["", "Sample events:"]
        for s in samples:
            parts = [str(s.get("time", "")), str(s.get("type", ""))]
            parts += [f"{k}={s[k]}" for k in ("source_ip", "actor", "reason", "key_id") if s.get(k)]
            parts.append(f"id={s.get('id', '')}")
            lines.append("  " + _clean(" ".join(parts), 300))
    lines += ["", "The event log has the details: bastion events --type alert.fired"]
    msg = EmailMessage()
    msg["Subject"] = f"[Bastion] {rule}: {summary}"
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(alert.time, usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=alert.id, domain=sender.rpartition("@")[2] or "bastion")
    msg.set_content("\n".join(lines) + "\n")
    return msg


class EmailChannel:
    def __init__(
        self,
        settings: EmailChannelSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        workers: int = 2,
    ) -> None:
        self.name = settings.name
        self.endpoint = SmtpEndpoint.from_settings(settings, ssl_context)
        self.sender = settings.sender
        self.to = list(settings.to)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"bastion-alert-{self.name}")

    async def send(self, alert: Event) -> None:
        message = email_message(alert, self.sender, self.to)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._send, message)

    def _send(self, message: EmailMessage) -> None:
        """One SMTP session (in a worker thread); the failure classified for the retry queue."""
        try:
            self.endpoint.send(message, from_addr=self.sender, to_addrs=self.to)
        except StartTlsUnavailable:
            # a server that offers no TLS would see the message (and the login) in clear: not retried
            raise DeliveryError("starttls_unavailable", retry=False) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError("SMTPRecipientsRefused", retry=all(400 <= c < 500 for c in codes)) from None
        except smtplib.SMTPResponseException as exc:  # 4xx: try again later; 5xx: it will not change
            raise DeliveryError(type(exc).__name__, retry=400 <= exc.smtp_code < 500) from None
        except ssl.SSLCertVerificationError:
            raise DeliveryError("SSLCertVerificationError", retry=False) from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timeout, TLS handshake
            raise DeliveryError(type(exc).__name__, retry=True) from None

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def build_channels(settings: Sequence[WebhookChannelSettings | EmailChannelSettings]) -> dict[str, Channel]:
    """The channels of ``alerts.channels`` by name. ValueError for a broken ``whsec_`` secret."""
    channels: dict[str, Channel] = {}
    for item in settings:
        if isinstance(item, WebhookChannelSettings):
            channels[item.name] = WebhookChannel(item)
        else:
            channels[item.name] = EmailChannel(item)
    return channels
