"""Webhooks (issue 15): registrations per API key or per flow, signed deliveries that are stored, retried with
back-off and never sent twice after a success, and the publishers of the platform's events.

- :mod:`gateway.webhooks.publish`: what each event carries; the one-line publish calls.
- :mod:`gateway.webhooks.dispatcher`: events to stored deliveries, and the sending.
- :mod:`gateway.webhooks.api`: ``/v1/webhooks`` and ``/v1/webhooks/deliveries``.
- :mod:`gateway.webhooks.signing`, :mod:`gateway.webhooks.targets`: signatures and the SSRF rules.
"""
