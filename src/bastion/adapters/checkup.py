"""Warnings ``bastion check`` adds to a valid config: things that run but weaken the gateway.

They are the findings of the posture audit's rules marked ``in_check`` (``bastion audit``,
adapters/audit.py): one set of rules, shown as warnings here and scored there.
"""

from __future__ import annotations

from ..config.errors import ConfigIssue
from ..config.loader import LoadedConfig
from .audit import check_warnings

__all__ = ["posture_warnings"]


def posture_warnings(loaded: LoadedConfig) -> list[ConfigIssue]:
    return check_warnings(loaded)
