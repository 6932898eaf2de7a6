"""The arbiter's refusal, in a leaf module: every part of the arbiter, the proxy and the RPC layer raise or catch
it without importing the arbiter itself."""


class ArbiterError(Exception):
    """A request the arbiter refuses; the message says why in words a user can act on."""
