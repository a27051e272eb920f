"""The Realtime API's response events: a voxgate answer (or a function call) as a response and its item.

A response's events follow OpenAI's order: ``response.created``, ``response.output_item.added``,
``conversation.item.added``, ``response.content_part.added``, the deltas, then the ``.done`` events inside out
and ``response.done`` with its status and usage.
"""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from typing import Any

from gateway.realtime.config import RealtimeConfig
from gateway.realtime.formats import encode_output
from gateway.realtime.items import ItemLog, Wire, wire
from gateway.realtime.session import RealtimeSession
from gateway.speech.engine_memory import is_unloaded
from pipeline import events as ev
from pipeline.outbox import OutAudio
from pipeline.response import new_id


@dataclass
class Reply:
    """One response as the client sees it: its assistant item and what it carried."""

    id: str
    item_id: str
    speaks: bool
    turn_id: str
    voice: str
    format: Wire
    max_output_tokens: int | str
    text: str = ""
    audio_bytes: int = 0
    audio_ms: float = 0.0
    input_tokens: int = 0
    done: bool = False
    out_of_band: bool = False  # conversation "none": its item is not part of the conversation
    item: Wire | None = None  # its output item (in the item log too, unless out of band)
    metadata: dict[str, str] | None = None
    parts: list[str] = field(default_factory=list)


class ReplyEvents(ItemLog):
    """The response side of the translator: each response's state, and its events."""

    def __init__(self, session: RealtimeSession, config: RealtimeConfig) -> None:
        super().__init__(session, config)
        self.replies: dict[str, Reply] = {}  # response id -> the response
        self.metadata: dict[str, dict[str, str] | None] = {}  # response id -> response.create's metadata
        self.token_limits: dict[
            str, int
        ] = {}  # response id -> its output token cap, when response.create set it
        self.audio_on_track = (
            False  # WebRTC: audio is on the media track; events say when it starts and stops
        )

    def _response(self, reply: Reply, status: str, details: Wire | None = None) -> Wire:
        output = [copy.deepcopy(reply.item)] if reply.item is not None else []
        response: Wire = {
            "object": "realtime.response",
            "id": reply.id,
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": None if reply.out_of_band else "conv_" + self.session.id.removeprefix("sess_"),
            "output_modalities": ["audio"] if reply.speaks else ["text"],
            "max_output_tokens": reply.max_output_tokens,
            "audio": {"output": {"format": reply.format, "voice": reply.voice}},
            "usage": None,
            "metadata": reply.metadata,
        }
        if status != "in_progress":
            response["usage"] = self._usage(reply)
        return response

    def _usage(self, reply: Reply) -> Wire:
        output_tokens = count_tokens(self.session, reply.text)
        seconds = round(reply.audio_ms / 1000, 3)
        return {
            "total_tokens": reply.input_tokens + output_tokens,
            "input_tokens": reply.input_tokens,
            "output_tokens": output_tokens,
            "input_token_details": {
                "text_tokens": reply.input_tokens,
                "audio_tokens": 0,
                "cached_tokens": 0,
                "image_tokens": 0,
            },  # fmt: skip
            "output_token_details": {"text_tokens": output_tokens, "audio_tokens": 0},
            # voxgate's own: how much speech the response carried (its tokens are the LLM's text).
            "output_audio_seconds": seconds,
        }

    def _started(self, event: ev.ResponseStarted) -> list[Wire]:
        answer = self.session.answers.get(event.response_id)
        speaks = answer.speak if answer is not None else self.config.speaks
        messages = answer.messages if answer is not None else []
        reply = Reply(
            event.response_id,
            new_id("item"),
            speaks,
            event.turn_id,
            self.config.voice,
            self.config.output_format.to_wire(),
            self.config.max_output_tokens,
            input_tokens=sum(count_tokens(self.session, str(m.get("content") or "")) for m in messages),
            metadata=self.metadata.pop(event.response_id, None),
            out_of_band=answer is not None and not answer.keep,
        )
        self.replies[reply.id] = reply
        item = {"id": reply.item_id, "object": "realtime.item", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}  # fmt: skip
        reply.item = item
        part = {"type": "audio", "transcript": ""} if speaks else {"type": "text", "text": ""}
        where = {"response_id": reply.id, "item_id": reply.item_id, "output_index": 0, "content_index": 0}
        return [
            wire("response.created", response=self._response(reply, "in_progress")),
            wire(
                "response.output_item.added", response_id=reply.id, output_index=0, item=copy.deepcopy(item)
            ),
            *([] if reply.out_of_band else [self.add_item(item)]),
            wire("response.content_part.added", **where, part=part),
        ]

    def _where(self, reply: Reply) -> Wire:
        return {"response_id": reply.id, "item_id": reply.item_id, "output_index": 0, "content_index": 0}

    def _delta(self, event: ev.ResponseTextDelta) -> list[Wire]:
        reply = self.replies.get(event.response_id)
        if reply is None or reply.done:
            return []
        reply.parts.append(event.delta)
        kind = "response.output_audio_transcript.delta" if reply.speaks else "response.output_text.delta"
        return [wire(kind, **self._where(reply), delta=event.delta)]

    def _text_done(self, event: ev.ResponseTextDone) -> list[Wire]:
        reply = self.replies.get(event.response_id)
        if reply is None or reply.done:
            return []
        reply.text = event.text
        return [] if reply.speaks else self._finish(reply, "completed")

    def audio(self, frame: OutAudio) -> list[Wire]:
        """One 20 ms frame the pacer released: a ``response.output_audio.delta``."""
        reply = self.replies.get(frame.response_id)
        if reply is None or reply.done:
            return []
        reply.audio_ms += frame.ms
        if self.audio_on_track:
            first = reply.audio_bytes == 0
            reply.audio_bytes += len(frame.payload)
            return [wire("output_audio_buffer.started", response_id=reply.id)] if first else []
        payload = encode_output(self.config.output_format, frame.payload)
        reply.audio_bytes += len(payload)
        delta = base64.b64encode(payload).decode("ascii")
        return [wire("response.output_audio.delta", **self._where(reply), delta=delta)]

    def _finish(
        self, reply: Reply, status: str, details: Wire | None = None, heard: str | None = None
    ) -> list[Wire]:
        reply.done = True
        text = reply.text or "".join(reply.parts)
        where = self._where(reply)
        item = reply.item
        out: list[Wire] = []
        if reply.speaks:
            part = {"type": "audio", "transcript": text}
            out += [wire("response.output_audio.done", **where),
                    wire("response.output_audio_transcript.done", **where, transcript=text)]  # fmt: skip
        else:
            part = {"type": "text", "text": text}
            out.append(wire("response.output_text.done", **where, text=text))
        out.append(wire("response.content_part.done", **where, part=part))
        if item is not None:
            item["status"] = "completed" if status == "completed" else "incomplete"
            item["content"] = [{"type": "output_audio" if reply.speaks else "output_text", **(
                {"transcript": text} if reply.speaks else {"text": text})}]  # fmt: skip
            done = copy.deepcopy(item)
            out.append(wire("response.output_item.done", response_id=reply.id, output_index=0, item=done))
            if not reply.out_of_band:
                out.append(self.item_done(reply.item_id))
        out.append(wire("response.done", response=self._response(reply, status, details)))
        if status == "completed" and not reply.out_of_band:
            self.session.arm_idle()  # its audio is all sent: the caller's silence counts from here
        limit = self.token_limits.pop(reply.id, self.session.config.max_tokens)
        out.append(rate_limits(limit, count_tokens(self.session, reply.text or "".join(reply.parts))))
        if self.audio_on_track and reply.audio_bytes:
            stop = "output_audio_buffer.stopped" if heard is None else "output_audio_buffer.cleared"
            out.append(wire(stop, response_id=reply.id))
        answer = self.session.answers.get(reply.id)
        entry = answer.response.history_entry if answer is not None else None
        if entry is not None:
            self.history[reply.item_id] = entry
        if heard is not None and item is not None and reply.speaks:
            # voxgate cut the item to what the caller heard (its history keeps only that), as OpenAI does
            # over WebRTC; a client's own conversation.item.truncate may cut it again.
            item["content"][0]["transcript"] = heard
        return out

    def _interrupted(self, event: ev.ResponseInterrupted) -> list[Wire]:
        reply = self.replies.get(event.response_id)
        if reply is None or reply.done:
            return []
        reason = "turn_detected" if event.reason == "barge_in" else "client_cancelled"
        out = self._finish(
            reply, "cancelled", {"type": "cancelled", "reason": reason}, heard=event.heard_text
        )
        if reply.speaks:
            out.append(wire("conversation.item.truncated", item_id=reply.item_id, content_index=0,
                            audio_end_ms=event.played_ms))  # fmt: skip
        return out

    def _call_started(self, data: dict[str, Any]) -> list[Wire]:
        """A response whose output is one function call: its item, as soon as the LLM named the function."""
        reply = Reply(data["response_id"], new_id("item"), data["speaks"], data["turn_id"], self.config.voice,
                      self.config.output_format.to_wire(), self.config.max_output_tokens,
                      input_tokens=data["input_tokens"], done=True)  # fmt: skip
        self.replies[reply.id] = reply
        item = {"id": reply.item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "name": data["name"], "call_id": data["call_id"], "arguments": ""}  # fmt: skip
        reply.item = item
        return [
            wire("response.created", response=self._response(reply, "in_progress")),
            wire(
                "response.output_item.added", response_id=reply.id, output_index=0, item=copy.deepcopy(item)
            ),
            self.add_item(item),  # the same dict: its updates below show in the log
        ]

    def _call_where(self, reply: Reply) -> Wire:
        assert reply.item is not None
        return {"response_id": reply.id, "item_id": reply.item_id, "output_index": 0,
                "call_id": reply.item["call_id"]}  # fmt: skip

    def _call_delta(self, data: dict[str, Any]) -> list[Wire]:
        reply = self.replies.get(data["response_id"])
        if reply is None or reply.item is None:
            return []
        reply.parts.append(data["delta"])
        return [
            wire("response.function_call_arguments.delta", **self._call_where(reply), delta=data["delta"])
        ]

    def _call_done(self, data: dict[str, Any]) -> list[Wire]:
        reply = self.replies.get(data["response_id"])
        if reply is None or reply.item is None:
            return []
        item, arguments = reply.item, data["arguments"]
        reply.text = arguments
        self.history[reply.item_id] = data["history"]
        out = [wire("response.function_call_arguments.done", **self._call_where(reply), name=data["name"],
                    arguments=arguments)]  # fmt: skip
        item.update(status="completed" if data["complete"] else "incomplete", arguments=arguments)
        out += [
            wire("response.output_item.done", response_id=reply.id, output_index=0, item=copy.deepcopy(item)),
            self.item_done(reply.item_id),
        ]
        if data.get("failed"):  # the LLM failed mid-call (its error event went out before)
            error = {"type": "server_error", "code": "response_failed", "message": data["failed"]}
            out.append(wire("response.done", response=self._response(reply, "failed", {"type": "failed",
                                                                                        "error": error})))  # fmt: skip
        elif data["complete"]:
            out.append(wire("response.done", response=self._response(reply, "completed")))
        else:  # the arguments did not close within the call's token budget
            details = {"type": "incomplete", "reason": "max_output_tokens"}
            out.append(wire("response.done", response=self._response(reply, "incomplete", details)))
        out.append(rate_limits(data["token_limit"], data["output_tokens"]))
        return out

    def open_reply(self) -> Reply | None:
        return next((r for r in reversed(self.replies.values()) if not r.done), None)


def rate_limits(limit: int, used: int) -> Wire:
    """``rate_limits.updated`` after a response: the one limit voxgate enforces per response, its output
    tokens (``max_output_tokens``, or the service's ``llm_max_tokens`` for ``"inf"``). It is a per-response
    budget, whole again for the next response, so it resets at once; voxgate has no request or token rate
    limits across responses to report."""
    entry = {"name": "tokens", "limit": limit, "remaining": max(0, limit - used), "reset_seconds": 0.0}
    return wire("rate_limits.updated", rate_limits=[entry])


def count_tokens(session: RealtimeSession, text: str) -> int:
    """Tokens of ``text`` by the LLM's own tokenizer when it has one, else about four characters each."""
    if not text:
        return 0
    llm = session.rt.llm
    # An unloaded LLM would load on its first call, here on the event loop: its count is then an estimate.
    counter = None if is_unloaded(llm) else getattr(llm, "count_tokens", None)
    if counter is not None:
        try:
            return int(counter(text))
        except Exception:  # a remote engine's count may fail; usage is an estimate either way
            pass
    return max(1, len(text) // 4)
