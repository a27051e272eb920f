"""Usage per API key (issue 15): rows written by :mod:`gateway.usage.collector`, summed per day by
:mod:`gateway.usage.store`, served by :mod:`gateway.usage.api` (``GET /v1/usage``, the ``/usage`` page)."""

from __future__ import annotations

from gateway.usage.collector import UsageCollector, meter, usage_of

__all__ = ["UsageCollector", "meter", "usage_of"]
