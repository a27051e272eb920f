"""The OpenAI Realtime API served on voxgate's own pipeline: ``WS /v1/realtime`` (docs/realtime.md).

``transport`` admits a client and carries the socket; ``handlers`` says what each client event does to the
session; ``session`` is the voxgate session with the Realtime API's turn model; ``translate`` writes the
session's events and audio as the Realtime API's; ``config``, ``schema`` and ``formats`` hold the session
object, the client events and the audio formats.
"""

from starlette.routing import BaseRoute

from gateway.realtime import calls, secrets, transport

routes: list[BaseRoute] = [*transport.routes, *secrets.routes, *calls.routes]

__all__ = ["routes"]
