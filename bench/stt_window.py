"""Whisper's encoder window: accuracy and speed of short windows against the full 30 s, on short turns.

40 short questions (20 sentences, each spoken by the Piper voice and by espeak-ng) are transcribed with
tiny.en at several ``min_window_s`` settings. Prints mean WER and median latency; writes JSON.

    .venv/bin/python bench/stt_window.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.stt_whisper import WhisperSTT  # noqa: E402
from engines.tts_espeak import EspeakTTS  # noqa: E402
from engines.tts_piper import PiperTTS  # noqa: E402
from pipeline.audio import pcm16_to_float, resample  # noqa: E402

SENTENCES = [
    "Yes.", "No thanks.", "Hello?", "What time is it?", "Book a table for four people tomorrow at eight.",
    "My order number is three four seven two.", "I want to cancel my subscription.", "Can you repeat that?",
    "Transfer me to billing please.", "What's your refund policy?", "Sure, that works for me.",
    "Actually, make it Friday instead.", "How much does the premium plan cost per month?",
    "I'm calling about my flight to Chicago.", "Nope.", "Okay, thank you, goodbye.",
    "Is the pharmacy open on Sundays?", "Please send the invoice to my email address.", "Wait, stop.",
    "The quick brown fox jumps over the lazy dog.",
]  # fmt: skip
NORMALIZE = jiwer.Compose(
    [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
     jiwer.ReduceToListOfListOfWords()]
)  # fmt: skip


def speech() -> list[tuple[str, np.ndarray]]:
    clips = []
    for tts in (PiperTTS(), EspeakTTS()):
        for text in SENTENCES:
            pcm = b"".join(chunk.tobytes() for chunk in tts.synthesize(text))
            clips.append((text, pcm16_to_float(resample(pcm, tts.sample_rate, 16000))))
    return clips


def main() -> int:
    clips = speech()
    results = {}
    for name, window in (
        ("30 s (full)", None),
        ("20 s", 20.0),
        ("15 s (default)", 15.0),
        ("12 s", 12.0),
        ("10 s", 10.0),
    ):
        stt = WhisperSTT(min_window_s=window)
        stt.transcribe(clips[0][1])
        errors, times = [], []
        for text, audio in clips:
            start = time.perf_counter()
            hypothesis = stt.transcribe(audio).text
            times.append((time.perf_counter() - start) * 1000)
            errors.append(
                jiwer.wer(text, hypothesis, reference_transform=NORMALIZE, hypothesis_transform=NORMALIZE)
            )
        results[name] = {
            "mean_wer": round(float(np.mean(errors)), 3),
            "median_ms": round(float(np.median(times))),
        }
        print(f"{name:16} mean WER {results[name]['mean_wer']:.3f}   median {results[name]['median_ms']} ms")
    out = ROOT / "bench" / "results" / "stt_window.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "clips": len(clips), **results}, indent=2)
    )
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
