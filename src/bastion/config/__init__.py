"""Configuration: YAML → validated, immutable settings.

``load_config(path)`` reads a ``bastion.yaml``, resolves secret references (``${env:NAME}``,
``${file:/path}``) and validates it with pydantic. Every problem becomes one :class:`ConfigError`
whose message names the file, the line, the field path and what was expected — and never the value,
which may be a secret.
"""

from .errors import ConfigError, ConfigIssue
from .loader import LoadedConfig, load_config, load_config_text
from .models import GatewayConfig

__all__ = ["ConfigError", "ConfigIssue", "GatewayConfig", "LoadedConfig", "load_config", "load_config_text"]
