"""Wires settings, stores and checks into a running gateway (``Gateway``). The data plane (``proxy``)
and the adapters call it; it never touches sockets itself."""

from .gateway import Forward, Gateway, Respond, UpstreamSpec, build_gateway

__all__ = ["Forward", "Gateway", "Respond", "UpstreamSpec", "build_gateway"]
