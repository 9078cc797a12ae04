"""The egress gateway's outbound side: what Bastion adds to a request on its way to a third-party API —
the provider credential (the caller never holds it) and a PKCV signature. The per-request policies of an
egress route (operations, geo permissions, URL fields, caps, SMS pumping) are checks in ``checks/``;
``runtime/egress.py`` compiles an ``egress:`` entry into a route with both."""

from .outbound import Outbound, OutboundHeaders
from .signing import PkcvSigner

__all__ = ["Outbound", "OutboundHeaders", "PkcvSigner"]
