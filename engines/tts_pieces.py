"""Text cut into pieces of bounded length for a TTS model whose memory grows with its longest input.

onnxruntime's CPU arena keeps, for the life of the process, whatever the longest input it ever ran needed:
Piper's decoder tensors scale with the audio length, and one 100-word sentence left RSS 600 MB higher for
good (a 20-word one, 100 MB). Bounding every input, and running the bound once at load, makes that memory a
fixed cost paid at start-up rather than a step that arrives with whichever caller says the longest thing.
"""

from __future__ import annotations

import re

# Coarsest first: sentence ends, then clause marks, then before a conjunction, then any space.
_BREAKS = (
    re.compile(r"(?<=[.!?;:])\s+"),
    re.compile(r"(?<=[,\u2014\u2013)])\s+|\s+(?=[(\u2014\u2013-])"),
    re.compile(r"\s+(?=(?:and|but|or|so|because|which|while|when|then|that|where)\b)", re.IGNORECASE),
    re.compile(r"\s+"),
)


def bounded_pieces(text: str, limit: int) -> list[str]:
    """``text`` as consecutive pieces of at most ``limit`` characters, cut at the most natural place that
    keeps each piece within the limit (a word longer than the limit is cut inside)."""
    if limit < 1:
        raise ValueError("limit must be positive")
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    return _split(text, limit, 0)


def _split(text: str, limit: int, level: int) -> list[str]:
    if len(text) <= limit:
        return [text]
    if level == len(_BREAKS):
        return [text[i : i + limit] for i in range(0, len(text), limit)]
    pieces: list[str] = []
    current = ""
    for part in _BREAKS[level].split(text):
        if not part:
            continue
        for sub in _split(part, limit, level + 1) if len(part) > limit else (part,):
            joined = f"{current} {sub}" if current else sub
            if len(joined) <= limit:
                current = joined
            else:
                pieces.append(current)
                current = sub
    if current:
        pieces.append(current)
    return [p for p in pieces if p]
