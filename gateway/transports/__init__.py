"""What every transport shares (:mod:`gateway.transports.base`); the transports themselves are
``gateway/ws_voice.py`` (WebSocket), ``gateway/webrtc.py`` (WebRTC) and ``telephony/media_call.py``
(a provider's media stream)."""
