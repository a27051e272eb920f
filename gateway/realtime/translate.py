"""voxgate's server events and agent audio, as the Realtime API's events.

The session emits its own typed events (``pipeline/events.py``) and :class:`~gateway.realtime.session.Note`s
into its outbox; the transport's writer hands each one here, in order, and sends what comes back. This is the
only place that knows both vocabularies: the caller's side (speech, commits, transcripts, items the client
added) is here, the responses are in :mod:`gateway.realtime.replies`, the items in :mod:`gateway.realtime.items`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from gateway.realtime.config import RealtimeConfig
from gateway.realtime.items import Wire, event_id, user_item, wire
from gateway.realtime.replies import Reply, ReplyEvents, count_tokens
from gateway.realtime.session import Note, RealtimeSession
from gateway.realtime.transcripts import TranscriptDeltas
from pipeline import events as ev
from pipeline.conversation import TurnRecord
from pipeline.response import new_id

__all__ = ["Reply", "Translator", "count_tokens", "event_id", "user_item", "wire"]

SERVER_ERRORS = frozenset({"response_failed", "stt_failed", "internal_error", "agent_failed"})


class Translator(ReplyEvents):
    """Turns a Realtime session's outbox items into Realtime API events (see the module docstring)."""

    def __init__(self, session: RealtimeSession, config: RealtimeConfig) -> None:
        super().__init__(session, config)
        self.turn_items: dict[str, str] = {}  # voxgate turn id -> its user item
        self.open_item: str | None = None  # the caller's utterance the VAD is in (or just left)
        self.speech_start_ms = 0
        self.speech_end_ms = 0
        self.item_seconds: dict[str, float] = {}  # user item -> seconds of caller audio in it
        self.deltas: dict[str, TranscriptDeltas] = {}  # user item -> what its transcription deltas said

    def translate(self, event: ev.ServerEvent) -> list[Wire]:
        if isinstance(event, Note):
            return self._note(event)
        if isinstance(event, ev.SessionCreated):
            return [wire("session.created", session=self.config.to_wire())]
        if isinstance(event, ev.TranscriptPartial):
            return self._partial(event.text)
        if isinstance(event, ev.TranscriptFinal):
            return self._transcript(event)
        if isinstance(event, ev.ResponseStarted):
            return self._started(event)
        if isinstance(event, ev.ResponseTextDelta):
            return self._delta(event)
        if isinstance(event, ev.ResponseTextDone):
            return self._text_done(event)
        if isinstance(event, ev.ResponseAudioDone):
            reply = self.replies.get(event.response_id)
            return self._finish(reply, "completed") if reply is not None and reply.speaks else []
        if isinstance(event, ev.ResponseInterrupted):
            return self._interrupted(event)
        if isinstance(event, ev.ErrorEvent):
            return self._error(event)
        if isinstance(event, ev.SessionUpdated) and event.session.get("reason") == "language_routing":
            return self._routed(event.session)
        # metrics, session.closed, dtmf, flow events: nothing in the Realtime API says them.
        return []

    def _routed(self, change: Mapping[str, Any]) -> list[Wire]:
        """Language routing gave the session another voice (pipeline/language.py): the client's view of the
        session changes, so it hears of it as of any update (OpenAI sends no such event by itself)."""
        if change.get("voice"):
            self.config.voice = str(change["voice"])
        return [wire("session.updated", session=self.config.to_wire())]

    def _note(self, note: Note) -> list[Wire]:
        data, kind = note.data, note.kind
        if kind == "speech_started":
            if self.open_item is None:
                self.open_item = new_id("item")
                self.speech_start_ms = data["audio_start_ms"]
            start = self.speech_start_ms
            return [wire("input_audio_buffer.speech_started", audio_start_ms=start, item_id=self.open_item)]
        if kind == "speech_stopped" and self.open_item is not None:
            self.speech_end_ms = data["audio_end_ms"]
            end = self.speech_end_ms
            return [wire("input_audio_buffer.speech_stopped", audio_end_ms=end, item_id=self.open_item)]
        if kind == "utterance_dropped":
            if self.open_item is not None:
                self.deltas.pop(self.open_item, None)
            self.open_item = None
            return []
        if kind == "committed":
            return self._committed(data["item_id"], data["audio_ms"] / 1000)
        if kind == "transcribed":
            return self._transcribed(data["item_id"], data["text"], data["turn"])
        if kind == "transcription_failed":
            error = {"type": "server_error", "code": "stt_failed", "message": data["message"], "param": None}
            failed = wire("conversation.item.input_audio_transcription.failed", item_id=data["item_id"],
                          content_index=0, error=error)  # fmt: skip
            return [failed, self.item_done(data["item_id"])]
        if kind == "wire":
            return [wire(data["type"], **data["fields"])]
        if kind == "item":  # conversation.item.create
            return [self.add_item(data["item"], data["history"]), self.item_done(data["item"]["id"])]
        if kind == "retrieve":
            item = self.items.get(data["item_id"])
            return [wire("conversation.item.retrieved", item=copy.deepcopy(item))] if item is not None else []
        if kind == "delete":
            self.items.pop(data["item_id"], None)
            self.history.pop(data["item_id"], None)
            return [wire("conversation.item.deleted", item_id=data["item_id"])]
        if kind == "call_started":
            return self._call_started(data)
        if kind == "call_delta":
            return self._call_delta(data)
        if kind == "call_done":
            return self._call_done(data)
        if kind == "truncated":
            item = self.items.get(data["item_id"])
            if item is not None and item["content"]:
                item["content"][0]["transcript"] = data["heard"]
            return [wire("conversation.item.truncated", item_id=data["item_id"], content_index=0,
                         audio_end_ms=data["audio_end_ms"])]  # fmt: skip
        return []

    def _committed(self, item_id: str, seconds: float) -> list[Wire]:
        previous = self._last_item()
        self.item_seconds[item_id] = seconds
        committed = wire("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        content = [{"type": "input_audio", "transcript": None}]
        return [committed, self.add_item(user_item(item_id, content, "in_progress"))]

    def _transcribed(self, item_id: str, text: str, turn: TurnRecord | None) -> list[Wire]:
        item = self.items[item_id]
        item["status"] = "completed"
        item["content"][0]["transcript"] = text
        if turn is not None:
            self.turn_items[turn.turn_id] = item_id
            message = self._user_message(turn)
            if message is not None:
                self.history[item_id] = message
        usage = {"type": "duration", "seconds": round(self.item_seconds.get(item_id, 0.0), 3)}
        rest = self.deltas.pop(item_id, TranscriptDeltas()).final(text)
        out = [self._transcript_delta(item_id, rest)] if rest else []
        completed = wire("conversation.item.input_audio_transcription.completed", item_id=item_id,
                         content_index=0, transcript=text, usage=usage)  # fmt: skip
        return [*out, completed, self.item_done(item_id)]

    def _partial(self, text: str) -> list[Wire]:
        # Partials come only while the caller speaks, for the utterance speech_started named.
        if self.open_item is None:
            return []
        delta = self.deltas.setdefault(self.open_item, TranscriptDeltas()).partial(text)
        return [self._transcript_delta(self.open_item, delta)] if delta else []

    def _transcript_delta(self, item_id: str, delta: str) -> Wire:
        return wire("conversation.item.input_audio_transcription.delta", item_id=item_id, content_index=0,
                    delta=delta)  # fmt: skip

    def _transcript(self, event: ev.TranscriptFinal) -> list[Wire]:
        if event.source != "voice":
            return []
        item_id = self.open_item or new_id("item")
        self.open_item = None
        seconds = max(0, self.speech_end_ms - self.speech_start_ms) / 1000
        out = self._committed(item_id, seconds)
        turn = next((t for t in reversed(self.session.turns) if t.turn_id == event.turn_id), None)
        return out + self._transcribed(item_id, event.text, turn)

    def _user_message(self, turn: TurnRecord | None) -> dict[str, Any] | None:
        # The history entry a user turn added: the last user message with its text.
        history = self.session.conversation.history
        if turn is None:
            return None
        for message in reversed(history):
            if message["role"] == "user" and message.get("content") == turn.user_text:
                return message
        return None

    def _error(self, event: ev.ErrorEvent) -> list[Wire]:
        out: list[Wire] = []
        reply = self.open_reply()
        if event.code == "response_failed" and reply is not None:
            error = {"type": "server_error", "code": event.code, "message": event.message}
            out += self._finish(reply, "failed", {"type": "failed", "error": error})
        kind = "server_error" if event.code in SERVER_ERRORS else "invalid_request_error"
        error = {"type": kind, "code": event.code, "message": event.message, "param": None, "event_id": None}
        return [wire("error", error=error), *out]
