"""Mark bookkeeping: what the caller has actually heard of each response, and how far ahead the gateway is.

The gateway sends agent audio to the provider in 20 ms mu-law frames and a mark after each group of frames,
named `{response_id}:{cumulative_ms}`. The provider plays its buffer in order and echoes each mark when the
audio sent before it has finished playing, so an echo means "this response was heard up to cumulative_ms".

On `clear` (barge-in) Twilio drops its buffer and echoes every pending mark at once
(https://www.twilio.com/docs/voice/media-streams/websocket-messages: clear "empties all buffered audio and
causes any mark messages to be sent back"). Those echoes do not mean the audio was played, so `clear()` drops
the pending marks first and their late echoes are ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.outbox import OutAudio

if TYPE_CHECKING:
    from pipeline.session import Session
    from telephony.provider import MediaStreamProvider

MARK_EVERY_MS = 100  # one mark per 100 ms of audio: "heard" is known to within 100 ms
MARK_WAIT_S = 1.0  # a provider that stops echoing marks must not stall the call


@dataclass
class _Progress:
    sent_ms: int = 0  # cumulative ms of this response covered by a mark sent
    played_ms: int = 0  # cumulative ms confirmed played by an echoed mark


class MarkTracker:
    """Pending marks of one stream, in the order they were sent, and per-response progress."""

    def __init__(self) -> None:
        # name -> (response_id, cumulative ms, ms of audio this mark newly covers)
        self._pending: OrderedDict[str, tuple[str, int, int]] = OrderedDict()
        self._progress: dict[str, _Progress] = {}
        self._outstanding_ms = 0  # audio covered by pending marks and not yet confirmed played

    def sent(self, response_id: str, ms: int) -> str:
        """Record a mark sent after the response's audio up to `ms` (cumulative); returns the mark's name.

        `ms` must grow from one mark of a response to the next: equal names could not be told apart.
        """
        progress = self._progress.setdefault(response_id, _Progress())
        if ms <= progress.sent_ms:
            raise ValueError(
                f"mark for {response_id!r} at {ms} ms does not advance past {progress.sent_ms} ms"
            )
        name = f"{response_id}:{ms}"
        covered = ms - progress.sent_ms
        self._outstanding_ms += covered
        progress.sent_ms = ms
        self._pending[name] = (response_id, ms, covered)
        return name

    def echoed(self, name: str) -> tuple[str, int] | None:
        """An echoed mark: returns (response_id, played_ms), or None for a mark not pending (cleared, unknown).

        Providers echo in order, so an echo also confirms any earlier pending mark that was not echoed.
        """
        if name not in self._pending:
            return None
        while self._pending:
            pending_name, (response_id, ms, covered) = self._pending.popitem(last=False)
            self._outstanding_ms -= covered
            progress = self._progress[response_id]
            progress.played_ms = max(progress.played_ms, ms)
            if pending_name == name:
                return response_id, ms
        return None  # unreachable: name was pending

    def played_ms(self, response_id: str) -> int:
        """How much of the response the caller has heard, as far as echoed marks tell."""
        progress = self._progress.get(response_id)
        return progress.played_ms if progress else 0

    def pending_ms(self, response_id: str) -> int:
        """Audio of this response sent (and marked) but not yet confirmed played."""
        marks = [ms for rid, ms, _ in self._pending.values() if rid == response_id]
        return max(marks) - self.played_ms(response_id) if marks else 0

    def outstanding(self) -> int:
        """All marked audio not yet confirmed played: how far the gateway is ahead of the caller's ear.

        Pacing waits while this exceeds lead_ms. Audio sent after the last mark is not counted; the gateway
        marks every group of frames, so that is at most one group.
        """
        return self._outstanding_ms

    def pending_marks(self) -> list[str]:
        """Names of the marks sent and not yet echoed, oldest first."""
        return list(self._pending)

    def clear(self) -> list[str]:
        """Barge-in: the provider's buffer is dropped. Forget the pending marks; returns their names.

        Their echoes (which the provider sends for cleared audio too) then return None from `echoed`.
        `played_ms` keeps what was confirmed before the clear.
        """
        dropped = list(self._pending)
        self._pending.clear()
        self._outstanding_ms = 0
        return dropped

    def forget(self, response_id: str) -> None:
        """Drop a finished response's progress (long calls should not keep every response forever)."""
        if not self._has_pending(response_id):
            self._progress.pop(response_id, None)

    def _has_pending(self, response_id: str) -> bool:
        return any(rid == response_id for rid, _, _ in self._pending.values())


class MarkedAudio:
    """A media stream's audio sink: media frames, a mark after every ``MARK_EVERY_MS`` of them, ``clear`` on
    a barge-in. Echoed marks are its played position: the session hears what the caller heard, and the
    pacer (the only clock) hears how far playback has got."""

    def __init__(self, ws: Any, provider: MediaStreamProvider, stream_id: str, session: Session) -> None:
        self.ws = ws
        self.provider = provider
        self.stream_id = stream_id
        self.session = session
        self.marks = MarkTracker()
        self._sent_ms: dict[str, float] = {}
        self._unmarked_ms = 0.0
        self._last_response: str | None = None
        # The pacer lets one mark group run past lead_ms before it waits for an echo (as the writer once did).
        session.pacer.follow_playback(session.config.lead_ms + 2 * MARK_EVERY_MS, MARK_WAIT_S)

    async def send(self, frame: OutAudio) -> None:
        await self.ws.send_text(self.provider.media(self.stream_id, frame.payload))
        self._last_response = frame.response_id
        self._sent_ms[frame.response_id] = self._sent_ms.get(frame.response_id, 0.0) + frame.ms
        self._unmarked_ms += frame.ms
        if self._unmarked_ms >= MARK_EVERY_MS:
            await self._send_mark(frame.response_id)

    async def flush(self) -> None:
        # The session already stopped its own audio; the provider must drop what it buffered too.
        await self.ws.send_text(self.provider.clear(self.stream_id))
        self.marks.clear()
        self._unmarked_ms = 0.0

    async def audio_done(self) -> None:
        """An answer's audio is complete: mark its tail, so the whole of it is known to be heard."""
        if self._unmarked_ms > 0 and self._last_response:
            await self._send_mark(self._last_response)

    def echoed(self, name: str) -> None:
        before = self.marks.outstanding()
        confirmed = self.marks.echoed(name)
        self.session.pacer.played(before - self.marks.outstanding())
        if confirmed is not None:
            response_id, played_ms = confirmed
            self.session.ack_played(response_id, played_ms)

    async def _send_mark(self, response_id: str) -> None:
        name = self.marks.sent(response_id, int(self._sent_ms[response_id]))
        self._unmarked_ms = 0.0
        await self.ws.send_text(self.provider.mark(self.stream_id, name))
