"""Per-call checks over a provider's parsed events, and the caller's timeline kept true across skipped audio.

Providers may stop sending media while the caller is silent (Twilio has been seen doing so on some calls) and
carry on with a later timestamp. The VAD and STT count time in samples, so the silence they did not receive
has to be put back: `gap_ms` says how much silence belongs before each chunk, from the chunk timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping

from telephony.provider import (
    DUPLICATE_START,
    FRAME_BYTES,
    FRAME_MS,
    MEDIA_BEFORE_START,
    MULAW_BYTES_PER_MS,
    MULAW_SILENCE,
    STREAM_STOPPED,
    WRONG_STREAM,
    Connected,
    DtmfDigit,
    InboundEvent,
    MarkEchoed,
    MediaChunk,
    MediaStreamProvider,
    ProtocolError,
    StreamStarted,
    StreamStats,
    StreamStopped,
)


class StreamState:
    """One provider WebSocket's state: started or not, which stream, where the caller's audio timeline is.

    `receive(text)` parses and checks a frame (raising ProtocolError with a stable code); for each accepted
    MediaChunk call `gap_ms(chunk)` (or `caller_audio(chunk)`) exactly once, in arrival order.
    """

    def __init__(
        self,
        provider: MediaStreamProvider,
        *,
        min_gap_ms: int = FRAME_MS // 2,
        max_gap_fill_ms: int = 10_000,
    ) -> None:
        self.provider = provider
        # Jumps shorter than half a frame are timestamp jitter, not missing audio; they still accumulate
        # in the expected position, so many small ones add up to a fill instead of being lost.
        self.min_gap_ms = min_gap_ms
        # One jump longer than this is filled only up to it: a broken timestamp must not allocate hours of
        # silence. The rest is counted in stats.gap_fill_capped_ms.
        self.max_gap_fill_ms = max_gap_fill_ms
        self.connected: Connected | None = None
        self.start: StreamStarted | None = None
        self.stopped = False
        self.stats = StreamStats()
        self._expected_ms: float | None = None  # stream time where the next chunk should begin

    @property
    def started(self) -> bool:
        return self.start is not None

    @property
    def stream_id(self) -> str | None:
        return self.start.stream_id if self.start else None

    @property
    def call_id(self) -> str | None:
        return self.start.call_id if self.start else None

    @property
    def custom_parameters(self) -> Mapping[str, str]:
        return self.start.custom_parameters if self.start else {}

    def receive(self, text: str) -> InboundEvent:
        """Parse one inbound text frame and check it against the stream's state."""
        try:
            event = self.provider.parse(text)
        except ProtocolError as exc:
            self._count_error(exc.code)
            raise
        return self.check(event)

    def check(self, event: InboundEvent) -> InboundEvent:
        """Check an already parsed event: order (start first, nothing after stop) and stream identity."""
        try:
            return self._check(event)
        except ProtocolError as exc:
            self._count_error(exc.code)
            raise

    def _check(self, event: InboundEvent) -> InboundEvent:
        if isinstance(event, Connected):
            self.connected = event
            return event
        if isinstance(event, StreamStarted):
            if self.start is not None:
                if event.stream_id == self.start.stream_id:
                    raise ProtocolError(DUPLICATE_START, "the stream was already started")
                raise ProtocolError(
                    WRONG_STREAM, f"start for stream {event.stream_id!r:.40} on a started stream"
                )
            self.start = event
            return event
        kind = type(event).__name__
        if self.start is None:
            raise ProtocolError(MEDIA_BEFORE_START, f"{kind} before the stream's start")
        if event.stream_id is not None and event.stream_id != self.start.stream_id:
            raise ProtocolError(
                WRONG_STREAM, f"{kind} for stream {event.stream_id!r:.40}, not {self.start.stream_id!r}"
            )
        if self.stopped:
            raise ProtocolError(STREAM_STOPPED, f"{kind} after the stream's stop")
        if isinstance(event, StreamStopped):
            if event.call_id and event.call_id != self.start.call_id:
                raise ProtocolError(
                    WRONG_STREAM, f"stop for call {event.call_id!r:.40}, not {self.start.call_id!r}"
                )
            self.stopped = True
        elif isinstance(event, MediaChunk):
            self.stats.media_chunks += 1
            self.stats.media_bytes += len(event.payload)
            if len(event.payload) != FRAME_BYTES:
                self.stats.odd_size_chunks += 1
        elif isinstance(event, DtmfDigit):
            self.stats.dtmf_digits += 1
        elif isinstance(event, MarkEchoed):
            self.stats.marks_echoed += 1
        return event

    def gap_ms(self, chunk: MediaChunk) -> int:
        """Milliseconds of silence that belong before `chunk` so the caller's timing stays true.

        The first chunk is the baseline (nothing is inserted before it). A chunk without a timestamp, or one
        that starts before the audio already received ends (late or duplicated), gets no silence.
        """
        duration = chunk.duration_ms
        ts = chunk.timestamp_ms
        if ts is None:
            if self._expected_ms is not None:
                self._expected_ms += duration
            return 0
        if self._expected_ms is None:
            self._expected_ms = ts + duration
            return 0
        gap = ts - self._expected_ms
        if gap >= self.min_gap_ms:
            fill = int(min(gap, self.max_gap_fill_ms))  # whole ms; the fraction stays in _expected_ms
            self.stats.gaps += 1
            self.stats.gap_fill_ms += fill
            if gap > self.max_gap_fill_ms:
                self.stats.gap_fill_capped_ms += int(gap - fill)
                self._expected_ms = ts + duration  # re-anchor, or every later chunk would look like a gap
            else:
                self._expected_ms += fill + duration
            return fill
        if gap <= -self.min_gap_ms:
            self.stats.late_chunks += 1
        # Small jitter either way, or a late chunk: keep our own count so the timeline never runs backwards.
        self._expected_ms += duration
        return 0

    def caller_audio(self, chunk: MediaChunk) -> bytes:
        """The chunk's mu-law bytes preceded by the silence `gap_ms` asks for."""
        fill = self.gap_ms(chunk)
        return bytes([MULAW_SILENCE]) * (fill * MULAW_BYTES_PER_MS) + chunk.payload

    def _count_error(self, code: str) -> None:
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
