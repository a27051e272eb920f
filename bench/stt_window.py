"""Whisper's shortcuts: what a short encoder window and decoding without timestamps save, and what they cost.

The STT engine decodes as offline Whisper does (30 s window, timestamp tokens, the seek loop; see
engines/stt_whisper.py). This bench times it against the shortcuts it used to take, all greedy on the same
tiny.en, on two sets of short utterances:

- ``synth``: 40 short questions (20 sentences, each spoken by the Piper voice and by espeak-ng);
- ``real``: the utterances Silero and the turn detector cut from the recorded clips bench/wer_parity.py uses
  (FLEURS English, jfk, the OSR phone clip), each pause of ``end_of_turn_ms`` a cut.

Decoders, run in turn on every utterance (so a busy neighbour slows them all alike), ``--repeat`` times:

- ``engine``: ``WhisperSTT.transcribe`` (offline Whisper's decoding);
- ``15 s no-ts``: the engine's former default: a window of the audio + 2 s, at least 15 s, no timestamp
  tokens, at most 12 tokens a second, 30 s again when the text looks looped;
- ``30 s no-ts``: Whisper's window without timestamp tokens;
- ``15 s ts``: the short window with timestamp tokens (one decode, no seek loop).

Prints mean WER (per utterance), pooled WER and the median and mean ms per utterance; writes JSON.

    .venv/bin/python bench/stt_window.py [--repeat 3] [--sets synth,real]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.audio import pcm16_to_float, resample  # noqa: E402
from tests.speech import _NORMALIZE, wer  # noqa: E402

SENTENCES = [
    "Yes.", "No thanks.", "Hello?", "What time is it?", "Book a table for four people tomorrow at eight.",
    "My order number is three four seven two.", "I want to cancel my subscription.", "Can you repeat that?",
    "Transfer me to billing please.", "What's your refund policy?", "Sure, that works for me.",
    "Actually, make it Friday instead.", "How much does the premium plan cost per month?",
    "I'm calling about my flight to Chicago.", "Nope.", "Okay, thank you, goodbye.",
    "Is the pharmacy open on Sundays?", "Please send the invoice to my email address.", "Wait, stop.",
    "The quick brown fox jumps over the lazy dog.",
]  # fmt: skip


def synth() -> list[tuple[str, np.ndarray]]:
    from engines.tts_espeak import EspeakTTS
    from engines.tts_piper import PiperTTS

    clips = []
    for tts in (PiperTTS(), EspeakTTS()):
        for text in SENTENCES:
            pcm = b"".join(chunk.tobytes() for chunk in tts.synthesize(text))
            clips.append((text, pcm16_to_float(resample(pcm, tts.sample_rate, 16000))))
    return clips


def real() -> list[tuple[str, np.ndarray]]:
    """Each recorded clip's VAD-cut utterances, with the clip's reference for the joined text."""
    from bench.wer_parity import default_vad, load_clips, to_stt, vad_utterances

    vad = default_vad()
    out = []
    for clip in load_clips():
        for i, pcm in enumerate(vad_utterances(vad, clip.wire, clip.rate)):
            # Utterances have no reference of their own: the first carries the clip's, the rest "" (scored
            # pooled per clip below).
            out.append((f"{clip.name}#{i}\t{clip.reference if i == 0 else ''}", to_stt(pcm, clip.rate)))
    return out


def shortcut(
    stt, window_s: float | None, timestamps: bool, loop_fallback: bool
) -> Callable[[np.ndarray], str]:  # type: ignore[no-untyped-def]
    """One greedy decode from one encoder pass, as the engine did before it decoded like offline Whisper."""
    from faster_whisper.audio import pad_or_trim

    fw = stt.model
    tokenizer, options = stt._decoding_for("en")
    prompt = fw.get_prompt(tokenizer, [], without_timestamps=not timestamps)

    def decode(audio: np.ndarray, frames: int | None) -> str:
        features = fw.feature_extractor(audio)
        features = pad_or_trim(features) if frames is None else pad_or_trim(features, frames)
        encoder_output = fw.encode(features)
        max_new = min(int(len(audio) / 16000 * 12) + 16, fw.max_length - len(prompt))
        result = fw.model.generate(
            encoder_output,
            [prompt],
            beam_size=1,
            max_length=len(prompt) + max_new,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=options.suppress_tokens,
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        return tokenizer.decode(tokens).strip()

    def run(audio: np.ndarray) -> str:
        if window_s is None:
            return decode(audio, None)
        frames = len(audio) // 160
        text = decode(audio, min(3000, max(frames + 200, int(window_s * 100))))
        if loop_fallback and _looks_looped(text):
            return decode(audio, None)
        return text

    return run


def _looks_looped(text: str) -> bool:
    data = text.encode()
    return len(data) > 40 and len(data) / len(zlib.compress(data)) > 2.4


def measure(
    name: str,
    clips: list[tuple[str, np.ndarray]],
    decoders: dict[str, Callable[[np.ndarray], str]],
    repeat: int,
) -> dict[str, dict[str, float]]:
    texts: dict[str, list[str]] = {d: [] for d in decoders}
    times: dict[str, list[float]] = {d: [] for d in decoders}
    order = list(decoders)
    for i, (_, audio) in enumerate(clips):
        runs: dict[str, list[float]] = {d: [] for d in decoders}
        for r in range(repeat):
            for d in order[(i + r) % len(order) :] + order[: (i + r) % len(order)]:
                start = time.perf_counter()
                text = decoders[d](audio)
                runs[d].append((time.perf_counter() - start) * 1000)
                if r == 0:
                    texts[d].append(text)
        for d in decoders:
            times[d].append(float(np.median(runs[d])))
    results = {}
    for d in decoders:
        if name == "real":  # join each clip's utterances, score against the clip's reference
            refs: dict[str, str] = {}
            hyps: dict[str, list[str]] = {}
            for (label, _), text in zip(clips, texts[d], strict=True):
                key, ref = label.split("\t")
                clip = key.split("#")[0]
                refs[clip] = refs.get(clip) or ref
                hyps.setdefault(clip, []).append(text)
            pairs = [(refs[c], " ".join(hyps[c])) for c in refs]
        else:
            pairs = [(label, text) for (label, _), text in zip(clips, texts[d], strict=True)]
        per = [wer(r, h) for r, h in pairs]
        pooled = jiwer.process_words(
            [r for r, _ in pairs], [h for _, h in pairs],
            reference_transform=_NORMALIZE, hypothesis_transform=_NORMALIZE,
        ).wer  # fmt: skip
        results[d] = {
            "mean_wer": round(float(np.mean(per)), 4),
            "pooled_wer": round(float(pooled), 4),
            "median_ms": round(float(np.median(times[d])), 1),
            "mean_ms": round(float(np.mean(times[d])), 1),
        }
        r = results[d]
        print(f"{name:5} {d:12} mean WER {r['mean_wer']:.3f}  pooled {r['pooled_wer']:.3f}  "
              f"median {r['median_ms']:6.1f} ms  mean {r['mean_ms']:6.1f} ms", flush=True)  # fmt: skip
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per utterance and decoder (median kept)")
    parser.add_argument("--sets", default="synth,real")
    args = parser.parse_args()
    from bench.wer_parity import default_engine

    stt = default_engine()
    decoders = {
        "engine": lambda audio: stt.transcribe(audio).text,
        "15 s no-ts": shortcut(stt, 15.0, timestamps=False, loop_fallback=True),
        "30 s no-ts": shortcut(stt, None, timestamps=False, loop_fallback=False),
        "15 s ts": shortcut(stt, 15.0, timestamps=True, loop_fallback=False),
    }
    sets = {"synth": synth, "real": real}
    report: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M"), "repeat": args.repeat}
    for name in args.sets.split(","):
        clips = sets[name]()
        for decode in decoders.values():
            decode(clips[0][1])  # warm-up
        report[name] = {"utterances": len(clips), **measure(name, clips, decoders, args.repeat)}
    out = ROOT / "bench" / "results" / "stt_window.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
