"""Every speech side endpoint (issue 13), in one list for the app: each module owns one API family."""

from __future__ import annotations

from starlette.routing import BaseRoute

from gateway.speech import chat_api, microservice, openai_audio, piper_api, voices

routes: list[BaseRoute] = [
    *openai_audio.routes,
    *microservice.routes,
    *piper_api.routes,
    *chat_api.routes,
    *voices.routes,
]
