"""What each Realtime client event does to the session underneath.

Handlers run in the transport's reader, one event after another. What they tell the client goes through
the session's outbox as :class:`~gateway.realtime.session.Note`s, so it reaches the client in order with the
session's own events; the translator turns notes into the Realtime API's events.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from typing import Any

from pydantic import TypeAdapter, ValidationError

from gateway.realtime import schema as s
from gateway.realtime.config import RealtimeConfig, apply_session, resolve_voice
from gateway.realtime.formats import InputConverter
from gateway.realtime.schema import RealtimeError, parse_client_event, validation_error
from gateway.realtime.session import Note, RealtimeSession
from gateway.realtime.tools import offered, respond_with_call
from gateway.realtime.translate import Translator, user_item
from pipeline.conversation import TurnRecord
from pipeline.response import new_id

log = logging.getLogger("voxgate.realtime")

MAX_APPEND_MS = 15_000
INLINE_ITEM: TypeAdapter[Any] = TypeAdapter(
    s.ItemIn
)  # one input_audio_buffer.append carries at most this much audio


def note(type_: str, **fields: Any) -> Note:
    """A Realtime event to send as it is, in order with the session's events."""
    return Note("wire", {"type": type_, "fields": fields})


class Handlers:
    """Dispatches parsed client events; every refusal is a :class:`RealtimeError` with the event's id."""

    def __init__(self, session: RealtimeSession, config: RealtimeConfig, translator: Translator) -> None:
        self.session = session
        self.config = config
        self.translator = translator
        self.converter = InputConverter(config.input_format)
        session.responder = lambda: self.respond_to_turn()
        session.on_idle = self.idle_timeout

    async def respond_to_turn(self) -> None:
        """A turn ended and tools are on offer: the response starts here (it may be a call), not in the session."""
        try:
            await self.create_response(s.ResponseIn())
        except RealtimeError as exc:
            await self.send_error(exc)

    async def idle_timeout(self, start_ms: int, end_ms: int) -> None:
        """server_vad's ``idle_timeout_ms`` ran out after an answer: as OpenAI documents it, the silent audio
        is committed as an (empty) user item and a response is created, asked to prompt the caller."""
        session, item_id = self.session, new_id("item")
        await session.emit(note("input_audio_buffer.timeout_triggered", audio_start_ms=start_ms,
                                audio_end_ms=end_ms, item_id=item_id))  # fmt: skip
        await session.emit(
            Note("committed", {"item_id": item_id, "audio_ms": end_ms - start_ms, "end_ms": end_ms})
        )
        await session.emit(Note("transcribed", {"item_id": item_id, "text": "", "turn": None}))
        system = str(session.conversation.context()[0].get("content") or "")
        silent = f"The caller has said nothing for {(end_ms - start_ms) / 1000:.0f} seconds."
        ask = "In one short sentence, check whether they are still there or invite them to go on."
        try:
            await self.create_response(s.ResponseIn(instructions=f"{system}\n\n{silent} {ask}"))
        except RealtimeError as exc:
            await self.send_error(exc)

    async def handle_text(self, text: str) -> None:
        event_id: str | None = None
        try:
            event = parse_client_event(text)
            event_id = event.event_id
            await self.dispatch(event)
        except RealtimeError as exc:
            exc.event_id = exc.event_id or event_id
            await self.send_error(exc)

    async def send_error(self, exc: RealtimeError) -> None:
        self.session.rt.metrics.errors.labels(exc.code).inc()
        await self.session.emit(note("error", error=exc.to_error()))

    async def dispatch(self, event: Any) -> None:
        session = self.session
        session.last_activity = time.monotonic()  # any valid event keeps the session from idling out
        if isinstance(event, s.BufferAppend):
            self.append(event.audio)
        elif isinstance(event, s.SessionUpdate):
            await self.update(event.session)
        elif isinstance(event, s.BufferCommit):
            await session.commit_buffer()
        elif isinstance(event, s.BufferClear):
            await session.clear_buffer()
            await session.emit(note("input_audio_buffer.cleared"))
        elif isinstance(event, s.ItemCreate):
            await self.create_item(event.item)
        elif isinstance(event, s.ResponseCreate):
            await self.create_response(event.response or s.ResponseIn())
        elif isinstance(event, s.ResponseCancel):
            await self.cancel(event.response_id)
        elif isinstance(event, s.OutputBufferClear):
            # Over a WebSocket the client holds the audio; this stops what the server still sends.
            reply = self.translator.open_reply()
            if session.answers.current is not None:
                await session.cancel_response()
            await session.emit(note("output_audio_buffer.cleared", response_id=reply.id if reply else None))
        elif isinstance(event, s.ItemTruncate):
            await self.truncate(event)
        elif isinstance(event, s.ItemRetrieve):
            await session.emit(Note("retrieve", {"item_id": self._known(event.item_id)}))
        elif isinstance(event, s.ItemDelete):
            self.delete(self._known(event.item_id))
            await session.emit(Note("delete", {"item_id": event.item_id}))

    # -- audio ----------------------------------------------------------------------------------------------

    def decode_audio(self, audio: str, param: str) -> bytes:
        """Base64 caller audio in the input format, checked, as 16 kHz PCM16."""
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("invalid_value", "audio is not valid base64", param=param) from None
        fmt = self.converter.format
        if len(raw) % fmt.sample_bytes:
            raise RealtimeError(
                "invalid_value",
                f"{fmt.type} audio must hold whole 16-bit samples (an even byte count)",
                param=param,
            )
        if fmt.ms(len(raw)) > MAX_APPEND_MS:
            raise RealtimeError(
                "input_audio_too_large",
                f"one append carries at most {MAX_APPEND_MS / 1000:g} s of audio; send smaller chunks",
                param=param,
            )
        return self.converter.convert(raw)

    def append(self, audio: str) -> None:
        self.session.push_audio(self.decode_audio(audio, "audio"))

    # -- session ----------------------------------------------------------------------------------------------

    async def update(self, update: s.SessionIn) -> None:
        try:
            apply_session(self.config, self.session, update)
        except RealtimeError as exc:
            if exc.param and not exc.param.startswith("session."):
                exc.param = f"session.{exc.param}"
            raise
        if self.converter.format != self.config.input_format:
            self.converter = InputConverter(self.config.input_format)
        await self.session.emit(note("session.updated", session=self.config.to_wire()))

    # -- conversation items --------------------------------------------------------------------------------------

    async def create_item(self, item: Any) -> None:
        session = self.session
        item_id = item.id or new_id("item")
        if item_id in self.translator.items:
            raise RealtimeError("invalid_value", f"an item {item_id!r} exists already", param="item.id")
        if isinstance(item, s.FunctionCallOutputIn):
            # Chat templates differ on tool messages: the result reaches the LLM as a note from the user.
            name = session.calls.get(item.call_id, "the function")
            message = {"role": "user", "content": f"({name} returned: {item.output})"}
            session.conversation.history.append(message)
            wire = {"id": item_id, "object": "realtime.item", "type": "function_call_output",
                    "status": "completed", "call_id": item.call_id, "output": item.output}  # fmt: skip
            await session.emit(Note("item", {"item": wire, "history": message}))
            return
        texts: list[str] = []
        content: list[dict[str, Any]] = []
        for index, part in enumerate(item.content):
            if part.type == "input_audio" and item.role == "user":
                if not part.audio:
                    raise RealtimeError("missing_required_parameter", "input_audio needs audio",
                                        param=f"item.content.{index}.audio")  # fmt: skip
                pcm = self.decode_audio(part.audio, f"item.content.{index}.audio")
                text = await session.listener.transcribe(pcm)
                content.append({"type": "input_audio", "transcript": text})
            elif part.text is not None:
                text = part.text
                kind = "input_text" if item.role != "assistant" else "output_text"
                content.append({"type": kind, "text": text})
            else:
                raise RealtimeError("invalid_value", f"a {item.role} message part of type {part.type!r} needs text",
                                    param=f"item.content.{index}")  # fmt: skip
            texts.append(text)
        text = " ".join(t.strip() for t in texts if t.strip())
        history: dict[str, Any] | None
        if item.role == "user":
            turn = session.add_user_turn(text, "text")
            history = session.conversation.history[-1] if turn is not None else None
        else:
            history = {"role": item.role, "content": text}
            session.conversation.history.append(history)
        wire = user_item(item_id, content)
        wire["role"] = item.role
        await session.emit(Note("item", {"item": wire, "history": history}))

    def _known(self, item_id: str) -> str:
        if item_id not in self.translator.items:
            raise RealtimeError("item_not_found", f"no item {item_id!r} in the conversation", param="item_id")
        return item_id

    def delete(self, item_id: str) -> None:
        entry = self.translator.history.get(item_id)
        if entry is not None:
            self.session.conversation.drop(entry)

    async def truncate(self, event: s.ItemTruncate) -> None:
        session, item_id = self.session, self._known(event.item_id)
        reply = next((r for r in self.translator.replies.values() if r.item_id == item_id), None)
        answer = session.answers.get(reply.id) if reply is not None else None
        if reply is None or answer is None or not reply.speaks:
            raise RealtimeError(
                "invalid_value", "only an assistant item with audio can be truncated", param="item_id"
            )
        response = answer.response
        if session.answers.current is answer:
            # Still speaking: what the client played is what was heard, and the rest is not said.
            answer.ack(event.audio_end_ms)
            await session.cancel_response()
            return
        played = min(float(event.audio_end_ms), response.audio_ms)
        heard = response.heard_text(played)
        session.conversation.record_heard(response, heard)
        answer.turn.heard_text, answer.turn.interrupted = heard, True
        session.record(answer.turn)
        await session.emit(
            Note("truncated", {"item_id": item_id, "audio_end_ms": round(played), "heard": heard})
        )

    # -- responses --------------------------------------------------------------------------------------------

    async def cancel(self, response_id: str | None) -> None:
        current = self.session.answers.current
        if current is None or (response_id is not None and response_id != current.id):
            raise RealtimeError(
                "response_cancel_not_active", "there is no active response to cancel", param="response_id"
            )
        await self.session.cancel_response()

    async def create_response(self, options: s.ResponseIn) -> None:
        session, config = self.session, self.session.config
        session.disarm_idle()
        current = session.answers.current
        reply = self.translator.replies.get(current.id) if current is not None else None
        if current is not None and reply is not None and reply.done:
            # Its response.done is out (all its audio sent); the answer ends once the client has played its
            # last lead_ms. A client may ask for the next response at once, as OpenAI allows.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(current.response.finished.wait(), 2.0)
        if session.answers.current is not None:
            raise RealtimeError(
                "conversation_already_has_active_response",
                "a response is in progress; cancel it or wait for response.done",
            )
        if options.conversation not in (None, "auto", "none"):
            raise RealtimeError(
                "invalid_value", "conversation is 'auto' or 'none'", param="response.conversation"
            )
        out_of_band = options.conversation == "none"
        modalities = options.output_modalities
        speaks = self.config.speaks if modalities is None else modalities == ["audio"]
        output = options.audio.output if options.audio is not None else None
        voice = (
            resolve_voice(session, output.voice) if output is not None and output.voice is not None else False
        )
        declared = (
            [t.model_dump(exclude_none=True) for t in options.tools] if options.tools is not None else None
        )
        choice = options.tool_choice if options.tool_choice is not None else self.config.tool_choice
        tools, required = offered(self.config.tools if declared is None else declared, choice)
        if options.input is not None:  # a context of its own, instead of the conversation
            instructions = options.instructions if options.instructions is not None else config.instructions
            messages = [{"role": "system", "content": instructions}, *self.input_messages(options.input)]
        else:
            messages = session.conversation.context()
        if options.instructions is not None:
            messages[0] = {"role": "system", "content": options.instructions}
        # Out of band: a turn of its own, stored, and neither it nor the answer enters the conversation.
        turn = TurnRecord(new_id("turn"), "text", "") if out_of_band else session.pending_turn()
        saved = config.max_tokens, config.voice, config.speed
        try:
            if isinstance(options.max_output_tokens, int):
                config.max_tokens = options.max_output_tokens
            if voice is not False:
                config.voice = voice if voice is not None else self.config.default_voice
            if output is not None and output.speed is not None:
                config.speed = output.speed
            if tools and not out_of_band:
                fmt = self.config.schema_format
                if await respond_with_call(session, turn, messages, tools, required, fmt, speaks):
                    return
            answer = await session.answers.start(turn, messages, speak=speaks, keep=not out_of_band)
            self.translator.metadata[answer.id] = options.metadata
            self.translator.token_limits[answer.id] = config.max_tokens
        finally:
            config.max_tokens, config.voice, config.speed = saved

    def input_messages(self, items: list[Any]) -> list[dict[str, Any]]:
        """``response.input``: references to conversation items, or items given inline, as LLM messages."""
        messages: list[dict[str, Any]] = []
        for index, raw in enumerate(items):
            param = f"response.input.{index}"
            if isinstance(raw, dict) and raw.get("type") == "item_reference":
                entry = self.translator.history.get(str(raw.get("id")))
                if entry is None:
                    raise RealtimeError(
                        "item_not_found", f"no item {raw.get('id')!r} in the conversation", param=param
                    )
                messages.append(dict(entry))
                continue
            try:
                item = INLINE_ITEM.validate_python(raw)
            except ValidationError as exc:
                raise validation_error(exc, None, param + ".") from None
            if isinstance(item, s.FunctionCallOutputIn):
                messages.append({"role": "user", "content": f"({item.output})"})
            else:
                text = " ".join(part.text or part.transcript or "" for part in item.content).strip()
                messages.append({"role": item.role, "content": text})
        return messages
