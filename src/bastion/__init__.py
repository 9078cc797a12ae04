"""Bastion: an API security gateway. The public Python surface is pinned here (tests check it)."""

__version__ = "0.1.0"

from .config import ConfigError, GatewayConfig, load_config

__all__ = ["ConfigError", "GatewayConfig", "__version__", "load_config"]
