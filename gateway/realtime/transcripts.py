"""The caller's words as ``conversation.item.input_audio_transcription.delta`` events, from Whisper's partial
readings of the open utterance.

Whisper re-reads the whole utterance each time (every ``partial_interval_ms`` of speech, when the STT worker is
free), so a partial is a guess that the next one may change: its last word is often cut mid-word, and the
punctuation after a word changes as the sentence goes on. Deltas are append-only, so only text that two
partials in a row agree on is sent, without its last word and without trailing punctuation. When the turn's
final transcript starts with what was sent, the rest goes out as one last delta and the deltas joined are the
``completed`` transcript, exactly. When Whisper's final reading changed a word already sent (rare: the word was
read the same way twice), nothing can be taken back; ``completed`` carries the final transcript, which is what
the LLM reads, and the revision is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("voxgate.realtime")

TRAILING = ".,!?;:\u2026"  # punctuation that the next words may change ("Paris." -> "Paris, today?")


@dataclass
class TranscriptDeltas:
    """What was sent of one user item's transcript, and the last partial reading."""

    sent: str = ""
    previous: list[str] = field(default_factory=list)
    revised: bool = False

    def partial(self, text: str) -> str:
        """The delta a new partial reading allows ("" when it confirms nothing new)."""
        words = text.split()
        agreed: list[str] = []
        for mine, theirs in zip(self.previous[:-1], words[:-1], strict=False):
            if mine != theirs:
                break
            agreed.append(mine)
        self.previous = words
        if not agreed:
            return ""
        agreed[-1] = agreed[-1].rstrip(TRAILING)
        stable = " ".join(word for word in agreed if word)
        if not stable.startswith(self.sent) or len(stable) <= len(self.sent):
            return ""
        delta, self.sent = stable[len(self.sent) :], stable
        return delta

    def final(self, text: str) -> str:
        """The last delta before ``completed``: the final transcript past what was sent ("" if nothing is
        left, or if the final reading revised sent words)."""
        if text.startswith(self.sent):
            rest, self.sent = text[len(self.sent) :], text
            return rest
        self.revised = True
        log.info("the final transcript %r revised the deltas sent (%r)", text[:200], self.sent[:200])
        return ""
