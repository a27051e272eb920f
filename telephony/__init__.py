"""Telephony providers: provider-neutral media-stream events and state, and Twilio's pieces.

See docs/telephony.md. Modules: provider (events, errors, the MediaStreamProvider protocol), stream_state
(per-call checks, timestamp-gap filling), marks (played/outstanding audio from mark echoes), twilio_stream
(Twilio Media Streams), twiml, signatures, twilio_rest (Calls API; blocking).
"""
