from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import EchoUpstream, GatewayThread, config_text, load_text


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as up:
        yield up


@pytest.fixture
def gateway(upstream: EchoUpstream, tmp_path: Path) -> Iterator[GatewayThread]:
    """The quickstart-like config in front of the echo upstream, served for real on loopback."""
    loaded = load_text(config_text(upstream.port, tmp_path / "bastion.db"))
    with GatewayThread(loaded) as gw:
        yield gw
