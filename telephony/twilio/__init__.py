"""Twilio, as one provider package: everything Twilio-specific, and `PROVIDER`, which the registry lists.

Modules: stream (Media Streams frames parsed and built), twiml (the documents Twilio runs), signatures
(X-Twilio-Signature), rest (the Calls REST API; blocking), control (who may use the routes, owned calls,
hang-up and transfer), webhooks (``/twilio/voice``, ``/twilio/status``), provider (`TwilioProvider`: the
routes, the media socket, outbound calls).
"""

from telephony.twilio.provider import PROVIDER as PROVIDER
