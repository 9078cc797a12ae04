"""Bastion: an API security gateway. The public Python surface is pinned here (tests check it).

``BastionMiddleware`` (the ASGI face) is imported on first use, so ``import bastion`` stays light for the
CLI and the gateway.
"""

from typing import Any

__version__ = "0.1.0"

from .config import ConfigError, GatewayConfig, load_config

__all__ = ["BastionMiddleware", "ConfigError", "GatewayConfig", "__version__", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "BastionMiddleware":
        from .asgi import BastionMiddleware

        return BastionMiddleware
    raise AttributeError(f"module 'bastion' has no attribute {name!r}")
