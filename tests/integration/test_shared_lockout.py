"""Brute-force lockout shared through Redis: a source address locked out by failures on one gateway is
refused by another gateway on the same Redis within about a second, without any Redis call per request
while nothing is blocked."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

from ._identity import identity_stack, random_key

EXTRA_LOCKOUT = """
identity:
  pepper: ${env:BASTION_PEPPER}
  lockout: {failures: 3, within: 5m, block_for: 5m}
"""

ROUTES = """
      - path: /v1/orders/{id}
        methods: [GET]
        auth: [api_key]
"""


def test_a_lockout_on_one_gateway_is_enforced_by_the_other(tmp_path: Path) -> None:
    state = f"redis://127.0.0.1:6379/0\n  state_prefix: test-{secrets.token_hex(6)}"
    with (
        identity_stack(tmp_path / "a", ROUTES, EXTRA_LOCKOUT, state=state) as a,
        identity_stack(tmp_path / "b", ROUTES, EXTRA_LOCKOUT, state=state) as b,
    ):
        assert b.get("/v1/orders/1", {"X-API-Key": random_key()}).status == 401  # b: nothing blocked yet
        codes = [a.get("/v1/orders/1", {"X-API-Key": random_key()}).status for _ in range(5)]
        assert codes[-1] == 429 or 429 in codes, codes  # a locks the address out
        started = time.monotonic()
        while True:
            reply = b.get("/v1/orders/1", {"X-API-Key": random_key()})
            if reply.status == 429:
                break
            assert time.monotonic() - started < 3.0, "gateway b never saw the lockout"
            threading.Event().wait(0.05)
        assert int(reply.headers["retry-after"]) >= 1
        assert reply.json()["code"] == "auth_locked_out"
