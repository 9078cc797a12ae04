"""Policies, one per module, all with the same shape (see ``bastion.core.chain.Check``):

* built once from settings at config load (``__init__`` does all the work: CIDR sets, header tuples,
  prebuilt :class:`~bastion.core.decision.Deny` values),
* called per request with ``(RequestView, Context)`` and returning ``Deny``, ``Answer`` or ``None``.

Checks import only ``bastion.core``. Gateway-wide limits that apply before any route is known (URL
length, header count and size, framing) are enforced by the data plane with the same codes.
"""
