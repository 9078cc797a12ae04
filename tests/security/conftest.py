from __future__ import annotations

import time
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _origin_settles(request: pytest.FixtureRequest) -> Iterator[None]:
    """Let the shared, threaded origin finish recording before the next test counts its requests.

    A test whose request is cut mid-body (413, 408, a bad chunk) may leave the origin's handler thread
    recording the half-forwarded head a moment later; without this, the next test's "nothing reached
    the upstream" assertion would count it. This waits for the origin's request log to stop changing
    (50 ms, at most 1 s) — it synchronises with a thread, it does not stand in for elapsed time.
    """
    yield
    if "origin" not in request.fixturenames:
        return
    origin = request.getfixturevalue("origin")
    deadline = time.monotonic() + 1.0
    last = len(origin.requests)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.01)
        now = len(origin.requests)
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 0.05:
            return
