"""API keys (issue 15): the registry that creates, resolves and revokes them, and the ``/v1/keys`` routes."""

from gateway.keys.registry import KeyRegistry, hash_secret, new_secret

__all__ = ["KeyRegistry", "hash_secret", "new_secret"]
