"""``voxgate_webhook_failures_total``: failed delivery attempts, on the runtime's Prometheus registry.

The engines (and so the registry /metrics serves) load after the app starts, and tests run several apps on one
runtime: the counter is made once per registry, registered on it, and shared by every app that uses it.
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter

_COUNTERS: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()


def failures_counter(registry: CollectorRegistry) -> Counter:
    """The registry's webhook failure counter, labelled by ``outcome``: ``retrying`` (another attempt will
    follow) or ``failed`` (the delivery gave up)."""
    counter = _COUNTERS.get(registry)
    if counter is None:
        counter = Counter(
            "voxgate_webhook_failures_total",
            "Webhook delivery attempts that failed",
            ["outcome"],
            registry=registry,
        )
        counter.labels("retrying")
        counter.labels("failed")
        _COUNTERS[registry] = counter
    return counter
