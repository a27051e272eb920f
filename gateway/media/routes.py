"""Every media route, in one list for the app: the studio API, OpenAI's shapes, and the jobs API."""

from __future__ import annotations

from starlette.routing import BaseRoute

from gateway.media import jobs_api, openai_api, studio_api
from gateway.media.service import start as start
from gateway.media.service import stop as stop

routes: list[BaseRoute] = [*studio_api.routes, *openai_api.routes, *jobs_api.routes]
