"""The Realtime API's audio formats (``audio/pcm`` at 24 kHz, ``audio/pcmu``, ``audio/pcma``) and voxgate's.

Caller audio is decoded here, in the transport, to 16 kHz PCM16 (the VAD's and Whisper's rate) before it
reaches the session: a ``session.update`` may change the input format at any time, and the session's own
decoder is fixed when it is built. Agent audio leaves the session's pacer already in the output rate and,
for mu-law, encoding (its ``WireEncoder`` reads the session config per response); A-law, which the
pipeline does not speak, is encoded from 8 kHz PCM16 here, one 20 ms frame at a time.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from pipeline.audio import StreamResampler

with warnings.catch_warnings():
    # Deprecated in 3.11-3.12 and provided by audioop-lts from 3.13 (as in pipeline/audio.py).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

LISTEN_RATE = 16000  # what the session is fed: the VAD's and STT's rate, so the listener resamples nothing


@dataclass(frozen=True)
class AudioFormat:
    """One Realtime audio format: its wire name, rate, and bytes per sample."""

    type: str
    rate: int
    sample_bytes: int

    def to_wire(self) -> dict[str, object]:
        if self.type == "audio/pcm":
            return {"type": self.type, "rate": self.rate}
        return {"type": self.type}

    @property
    def session_output(self) -> tuple[int, str]:
        """The session's output rate and encoding for this format (A-law leaves as PCM16, encoded here)."""
        return self.rate, "mulaw" if self.type == "audio/pcmu" else "pcm_s16le"

    def ms(self, nbytes: int) -> float:
        return nbytes / self.sample_bytes / self.rate * 1000


FORMATS: dict[str, AudioFormat] = {
    "audio/pcm": AudioFormat("audio/pcm", 24000, 2),
    "audio/pcmu": AudioFormat("audio/pcmu", 8000, 1),
    "audio/pcma": AudioFormat("audio/pcma", 8000, 1),
}
PCM24 = FORMATS["audio/pcm"]


class InputConverter:
    """Caller audio in a Realtime format -> 16 kHz PCM16, streaming (the resampler keeps its state)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._resampler = StreamResampler(fmt.rate, LISTEN_RATE)

    def convert(self, data: bytes) -> bytes:
        if self.format.type == "audio/pcmu":
            data = audioop.ulaw2lin(data, 2)
        elif self.format.type == "audio/pcma":
            data = audioop.alaw2lin(data, 2)
        return self._resampler.process(data)


def encode_output(fmt: AudioFormat, payload: bytes) -> bytes:
    """A frame the pacer released, as the client's format wants it (only A-law needs work here)."""
    return audioop.lin2alaw(payload, 2) if fmt.type == "audio/pcma" else payload
