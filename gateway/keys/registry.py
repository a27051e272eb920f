"""Creating, resolving and revoking API keys, with a short in-memory cache in front of the ``api_keys`` table.

Every request with a key resolves it, so lookups are cached; but a revocation must count at once. On this
replica ``revoke`` drops the key from the cache before it answers. Other replicas share only the database, so
a cached answer is re-checked against its row when it is older than ``recheck_s`` (2 s): a key revoked
elsewhere stops working here within that.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from gateway.principal import SCOPES, KeyLimits, Principal
from storage.store import Store

KEY_PREFIX = "vg_"
SHOWN_PREFIX_CHARS = (
    10  # "vg_" and 7 more: enough to tell keys apart in a list, far too few to guess the rest
)


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def principal_from_row(row: dict[str, Any]) -> Principal:
    limits = {k: v for k, v in (row.get("limits") or {}).items() if k in KeyLimits.__dataclass_fields__}
    return Principal(
        key_id=row["id"],
        name=row["name"],
        scopes=frozenset(s for s in row.get("scopes") or () if s in SCOPES),
        limits=KeyLimits(**limits),
    )


def key_view(row: dict[str, Any]) -> dict[str, Any]:
    """A key as the API lists it: never its secret, nor its hash."""
    return {
        "id": row["id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "scopes": list(row.get("scopes") or []),
        "limits": row.get("limits") or {},
        "created_at": row["created_at"],
        "revoked_at": row["revoked_at"],
        "last_used_at": row["last_used_at"],
    }


@dataclass
class _Cached:
    principal: Principal | None  # None: unknown or revoked
    checked_at: float  # monotonic


class KeyRegistry:
    """The keys of one app; ``store_of`` gives the open store (None until the app has started)."""

    MAX_CACHED = 4096  # unknown keys are cached too (briefly): a flood of made-up keys stays bounded

    def __init__(
        self,
        store_of: Callable[[], Store | None],
        recheck_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store_of = store_of
        self.recheck_s = recheck_s
        self._clock = clock
        self._cache: dict[str, _Cached] = {}  # secret hash -> what it resolved to
        # Revoked here: a lookup that read the row just before the revocation must not cache it as live.
        self._revoked: set[str] = set()

    def _store(self) -> Store | None:
        return self._store_of()

    async def resolve(self, secret: str) -> Principal | None:
        """The principal of a live key; None for an unknown or revoked one (or before storage is open)."""
        digest = hash_secret(secret)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached.checked_at < self.recheck_s:
            return cached.principal
        store = self._store()
        if store is None:
            return None
        row = await store.keys.by_hash(digest)
        principal = None if row is None or row["revoked_at"] is not None else principal_from_row(row)
        if principal is not None and principal.key_id in self._revoked:
            principal = None
        if principal is not None and (cached is None or cached.principal is None):
            await store.keys.touch(principal.key_id or "", time.time())  # first use seen by this replica
        self._cache.pop(digest, None)
        while len(self._cache) >= self.MAX_CACHED:
            del self._cache[next(iter(self._cache))]
        self._cache[digest] = _Cached(principal, now)
        return principal

    async def create(self, name: str, scopes: Iterable[str], limits: KeyLimits) -> tuple[dict[str, Any], str]:
        """A new key's row and its secret (shown once: only its hash is stored)."""
        store = self._store()
        if store is None:
            raise RuntimeError("storage is not open yet")
        secret = new_secret()
        row = {
            "id": "key_" + secrets.token_hex(12),
            "name": name,
            "prefix": secret[:SHOWN_PREFIX_CHARS],
            "secret_hash": hash_secret(secret),
            "scopes": sorted(set(scopes)),
            "limits": {k: v for k, v in asdict(limits).items() if v is not None},
            "created_at": time.time(),
            "revoked_at": None,
            "last_used_at": None,
        }
        await store.keys.create(row)
        return row, secret

    async def revoke(self, key_id: str) -> bool:
        """Revoke the key in the database, then forget it here: its next request on this replica fails."""
        store = self._store()
        if store is None:
            raise RuntimeError("storage is not open yet")
        self._revoked.add(key_id)
        found = await store.keys.revoke(key_id, time.time())
        now = self._clock()
        for digest, cached in list(self._cache.items()):
            if cached.principal is not None and cached.principal.key_id == key_id:
                self._cache[digest] = _Cached(None, now)
        return found
