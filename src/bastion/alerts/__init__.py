"""Alert rules for abnormal behaviour (P17) and their channels (P20).

Rules read the event stream (``AlertEngine.observe``) and the authenticated traffic
(``AlertEngine.observe_use``); built-in detectors find credential stuffing, traffic spikes, keys used from
a new country or address, undeclared endpoints, rotated keys still in use and admin activity outside
policy, and ``when:`` rules count any event type. A finding becomes an ``alert.fired`` event (one per rule
and group per cooldown, across instances) delivered to webhook and email channels. Aggregates live in
:mod:`bastion.alerts.state` — in memory, or in Redis shared by every instance. See docs/alerts.md.
"""

from __future__ import annotations

from .channels import Channel, DeliveryError, EmailChannel, WebhookChannel, build_channels
from .engine import AlertEngine, default_geo
from .state import AlertState, FallbackAlertState, MemoryAlertState, RedisAlertState, build_alert_state

__all__ = [
    "AlertEngine",
    "AlertState",
    "Channel",
    "DeliveryError",
    "EmailChannel",
    "FallbackAlertState",
    "MemoryAlertState",
    "RedisAlertState",
    "WebhookChannel",
    "build_alert_state",
    "build_channels",
    "default_geo",
]
