"""One turn of an HTTP chat conversation, shared by ``/v1/chat`` and ``/v1/voice-chat``
(:mod:`gateway.speech.chat_api`): the conversation a request opens or continues, the turn run on it, and the
JSON that answers it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from gateway.agent.flow_agent import FlowNotAvailable, load_stored_flow
from gateway.api_common import app_state
from gateway.auth import principal_of
from gateway.drain import farewell, held_request
from gateway.keys.ownership import owns
from gateway.speech.conversations import ChatConversation, ConversationsFull, TurnResult, registry

# Flow errors a client can fix (404/422) apart from the ones it cannot (the store is down).
_FLOW_STATUS = {
    "unknown_flow": 404,
    "invalid_flow_version": 422,
    "invalid_flow": 400,
    "flow_unavailable": 503,
}


def turn_timeout(request: Request) -> float:
    """How long a turn may go without a word from the agent (``speech.chat_turn_timeout_s``)."""
    return app_state(request).settings.speech.chat_turn_timeout_s


async def run_turn(
    conversation: ChatConversation, act: Callable[[], Awaitable[None]], timeout: float
) -> TurnResult:
    """Run ``act`` on ``conversation`` and collect what it produced; 504 when the agent goes silent."""
    result = TurnResult()
    try:
        async with contextlib.aclosing(conversation.exchange(act, timeout)) as events:
            async for event in events:
                result.add(event)
    except TimeoutError:
        raise HTTPException(504, f"the agent produced nothing for {timeout:g} s") from None
    return result


async def open_conversation(
    request: Request, conversation_id: str | None, flow: str | None, flow_version: int | None
) -> tuple[ChatConversation, TurnResult | None]:
    """The conversation a request continues (404 if unknown or ended), or a new one and its greeting (a
    flow's first words; None without a flow)."""
    state = app_state(request)
    if not state.ready.is_set() or state.runtime is None:
        raise HTTPException(503, "models are still loading; try again shortly")
    conversations = registry(request)
    if conversation_id is not None:
        conversation = conversations.get(conversation_id)
        if conversation is None or not owns(principal_of(request), conversation.session.owner_key):
            raise HTTPException(
                404,
                f"no open conversation {conversation_id[:64]!r}: it never existed, or ended (a flow's end, "
                f"or {conversations.idle_timeout_s:g} s idle); omit conversation_id to start a new one",
            )
        if flow is not None and flow != conversation.flow_id:
            raise HTTPException(
                400, f"conversation {conversation_id!r} runs flow {conversation.flow_id!r}, not {flow!r}"
            )
        _end_on_drain(request, conversation)
        return conversation, None
    loaded = None
    if flow is not None:
        try:
            version = str(flow_version) if flow_version else None
            loaded = await load_stored_flow(state, flow, version, owner=principal_of(request).owner)
        except FlowNotAvailable as exc:
            raise HTTPException(_FLOW_STATUS.get(exc.code, 400), exc.message) from None
    client = request.client
    try:
        conversation = await conversations.create(
            state, loaded, f"{client.host}:{client.port}" if client else None
        )
    except ConversationsFull as exc:
        raise HTTPException(503, str(exc)) from None
    conversation.session.owner_key = principal_of(request).owner
    _end_on_drain(request, conversation)
    greeting = await run_turn(conversation, conversation.session.start, turn_timeout(request))
    return conversation, greeting if loaded is not None else None


def _end_on_drain(request: Request, conversation: ChatConversation) -> None:
    """A drain that times out with this request in flight lets the conversation finish the answer it is
    writing, then closes it (``server_shutdown``): the request's answer ends with the conversation's end."""
    held = held_request(request)
    if held is not None:
        held.end = lambda: _close_after_answer(conversation)


async def _close_after_answer(conversation: ChatConversation) -> None:
    await farewell(conversation.session, "")  # no goodbye: it would come after this request's answer
    await conversation.close("server_shutdown")  # the session is closed already; this waits for its reader


def _llm_first_token_ms(conversation: ChatConversation, result: TurnResult) -> float | None:
    for response_id in result.response_ids:
        answer = conversation.session.answers.get(response_id)
        response = answer.response if answer is not None else None
        if response is not None and response.t_llm_start and response.t_first_token:
            return round((response.t_first_token - response.t_llm_start) * 1000, 1)
    return None


def reply_json(
    conversation: ChatConversation, result: TurnResult, greeting: TurnResult | None, started: float
) -> dict[str, Any]:
    """The JSON answer to a turn (and an SSE stream's ``done``)."""
    session = conversation.session
    body: dict[str, Any] = {
        "conversation_id": conversation.id,
        "turn_id": result.turn_id,
        "reply": result.reply,
        "flow_id": conversation.flow_id,
        "ended": session.closed.is_set(),
        "close_reason": session.close_reason,
        "turn_count": len(session.turns),
        "timings": {
            "reply_ms": round((time.perf_counter() - started) * 1000, 1),
            "llm_first_token_ms": _llm_first_token_ms(conversation, result),
        },
    }
    if greeting is not None:
        body["greeting"] = greeting.reply
    if result.flow_events or (greeting is not None and greeting.flow_events):
        body["flow_events"] = [*(greeting.flow_events if greeting else []), *result.flow_events]
    if result.errors:
        body["errors"] = result.errors
    return body


def failure(result: TurnResult) -> HTTPException | None:
    """An exchange whose answer failed in the engine (the LLM, a flow's step) and said nothing: a 500."""
    if result.errors and not result.texts:
        return HTTPException(500, "; ".join(e["message"] for e in result.errors))
    return None
