"""One app's webhooks: the dispatcher started in the app's lifespan, subscribed to ``state.events``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection

from gateway.webhooks.dispatcher import DeliveryPolicy, WebhookDispatcher
from storage.webhooks import WebhookStore

# How long a shutdown waits for the deliveries it can still make (storage, sessions and jobs are flushed
# before; what is not sent by then stays stored for the next start or another replica).
SHUTDOWN_FLUSH_S = 5.0


async def start(app: Starlette) -> None:
    """App start-up, after the store opened."""
    state = app.state.voxgate
    assert state.store is not None
    dispatcher = WebhookDispatcher(
        WebhookStore(state.store.engine),
        DeliveryPolicy.from_settings(state.settings),
        registry=lambda: state.runtime.metrics.registry if state.runtime is not None else None,
    )
    state.events.subscribe(dispatcher.on_event)
    dispatcher.start()
    app.state.webhooks = dispatcher


async def stop(app: Starlette) -> None:
    """App shutdown, after sessions, calls and jobs ended and before the store closes."""
    dispatcher: WebhookDispatcher | None = getattr(app.state, "webhooks", None)
    if dispatcher is not None:
        await dispatcher.stop(SHUTDOWN_FLUSH_S)


def dispatcher_of(conn: HTTPConnection) -> WebhookDispatcher:
    """The app's dispatcher (its store holds the registrations); 503 before the app has started."""
    dispatcher: WebhookDispatcher | None = getattr(conn.app.state, "webhooks", None)
    if dispatcher is None:
        raise HTTPException(503, "the server is starting")
    return dispatcher
