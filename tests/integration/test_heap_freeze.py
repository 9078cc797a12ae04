"""``bastion serve`` takes its startup heap out of the garbage collector's view once it is ready, so a
full collection never walks the config, compiled checks and libraries again (a pause of ~50 ms that every
request in flight would wait out); an embedding (tests, the middleware) keeps the collector as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import EchoUpstream, GatewayThread, config_text, load_text, request


@pytest.fixture()
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as up:
        yield up


def test_serve_freezes_the_startup_heap(tmp_path: Path, upstream: EchoUpstream) -> None:
    gc.unfreeze()
    loaded = load_text(config_text(upstream.port, tmp_path / "b.db", admin=False))
    gateway = GatewayThread(loaded, freeze_heap=True).start()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the config, the compiled routes, the libraries they loaded
        status, _, _ = request(gateway.port, "GET", "/v1/orders/7")
        assert status == 200  # and it serves as before
    finally:
        gateway.stop()
        gc.unfreeze()  # back to normal for the rest of the test session


def test_an_embedded_gateway_leaves_the_collector_alone(tmp_path: Path, upstream: EchoUpstream) -> None:
    gc.unfreeze()
    loaded = load_text(config_text(upstream.port, tmp_path / "b.db", admin=False))
    gateway = GatewayThread(loaded).start()
    try:
        assert gc.get_freeze_count() == 0
        assert request(gateway.port, "GET", "/v1/orders/7")[0] == 200
    finally:
        gateway.stop()
