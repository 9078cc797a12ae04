"""The check protocol and the chain that runs a route's checks in order.

A route's chain is compiled once at config load: an ordered tuple of check objects, cheap ones first
(ip → size → cors → authn → authz → rate → validate → inspect). Per request the chain is a plain loop;
the first check that returns a verdict ends it.
"""

from __future__ import annotations

from typing import Protocol

from .decision import Context, Verdict
from .request import RequestView

__all__ = ["Check", "run_checks"]


class Check(Protocol):
    """One policy. Built from config at load; never parses config per request.

    ``name`` is the stable policy name used in events and docs (``ip_access``, ``limits``, ``cors``…).
    """

    name: str

    async def __call__(self, req: RequestView, ctx: Context) -> Verdict: ...


async def run_checks(checks: tuple[Check, ...], req: RequestView, ctx: Context) -> Verdict:
    for check in checks:
        verdict = await check(req, ctx)
        if verdict is not None:
            return verdict
    return None
