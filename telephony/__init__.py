"""Telephony: provider-neutral media-stream events and state, and one package per provider.

See docs/telephony.md. Modules: provider (events, errors, the MediaStreamProvider protocol), stream_state
(per-call checks, timestamp-gap filling), marks (played/outstanding audio from mark echoes); twilio/ (Twilio's
Media Streams, TwiML, signatures, the Calls REST API).
"""
