"""Outbound mail: one SMTP session per message, with TLS required everywhere but loopback.

Both senders of mail use it — the email alert channel (``alerts/``) and the admin sign-in codes and links
(``identity/``) — so the rule that protects the message and the login is written once:

* ``smtps://host[:465]`` is TLS from the first byte; ``smtp://host[:587]`` must offer ``STARTTLS`` and
  is upgraded before anything else is said. A server that offers no TLS is refused
  (:class:`StartTlsUnavailable`): the message, and the password if there is one, would cross in clear.
* On a loopback host (a local relay, a test server) plain ``smtp://`` is accepted as it is.
* Certificates are verified with the given context (the system's trust store by default).

Blocking (``smtplib``): callers run it in a worker thread. Errors propagate as ``smtplib``, ``ssl`` and
``OSError`` exceptions for the caller to classify.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import urlsplit

from .core.urls import is_loopback_host

__all__ = ["SmtpEndpoint", "SmtpSettings", "StartTlsUnavailable"]


class StartTlsUnavailable(smtplib.SMTPNotSupportedError):
    """An ``smtp://`` server off loopback that does not offer STARTTLS."""

    def __init__(self) -> None:
        super().__init__("starttls_unavailable")


class SmtpSettings(Protocol):
    """What the config's SMTP sections hold (config.models._SmtpSettings: alert email, admin email)."""

    smtp: str
    username: str | None
    password: Any  # a Secret with .reveal(), or None
    timeout: float


@dataclass(frozen=True)
class SmtpEndpoint:
    host: str
    port: int
    implicit_tls: bool
    loopback: bool
    username: str | None
    password: Any  # a config Secret (``.reveal()``), or None
    timeout: float
    ssl_context: ssl.SSLContext

    @classmethod
    def from_settings(
        cls, settings: SmtpSettings, ssl_context: ssl.SSLContext | None = None
    ) -> SmtpEndpoint:
        """From the config's SMTP settings (``smtp`` URL, ``username``, ``password``, ``timeout``)."""
        parts = urlsplit(settings.smtp)
        implicit_tls = parts.scheme == "smtps"
        host = parts.hostname or ""
        return cls(
            host=host,
            port=parts.port or (465 if implicit_tls else 587),
            implicit_tls=implicit_tls,
            loopback=is_loopback_host(host),
            username=settings.username,
            password=settings.password,
            timeout=settings.timeout,
            ssl_context=ssl_context or ssl.create_default_context(),
        )

    def send(self, message: EmailMessage, *, from_addr: str, to_addrs: Sequence[str]) -> None:
        """One session: connect, TLS, log in, send, quit. Once the server has accepted the message, an odd
        answer to QUIT (or a reset) is not a failure: a retry would deliver it twice."""
        client: smtplib.SMTP
        if self.implicit_tls:
            client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.ssl_context)
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            client.ehlo()
            if not self.implicit_tls and not self.loopback:
                if not client.has_extn("starttls"):
                    raise StartTlsUnavailable()
                client.starttls(context=self.ssl_context)
                client.ehlo()
            if self.username is not None and self.password is not None:
                client.login(self.username, self.password.reveal())
            client.send_message(message, from_addr=from_addr, to_addrs=list(to_addrs))
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
