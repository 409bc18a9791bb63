"""The link layer's errors, apart so that every module of ``agent.links`` can raise them."""


class P2PError(Exception):
    """A link-level failure: dial, negotiation, timeout or broken stream."""


class P2PTimeout(P2PError):
    """``open_stream`` ran out of time: the peer may be slow (a busy event loop), not gone."""
