"""Which signal tells best whether a caller has finished at a pause: the words, the sound, or a mix?

Each case is the audio a caller gave up to a pause, labelled finished or unfinished:
- synthesized (Piper and espeak-ng): sentences whose first part, up to a comma, is spoken and paused after
  (unfinished), and the whole sentences and everyday questions (finished);
- real recordings from ../shared/audio: FLEURS read sentences and the JFK clip cut at each pause inside them
  (unfinished), the whole clips (finished), and the OSR phone clip cut after each of its ten sentences
  (finished, 8 kHz).
Words: the default STT engine's transcript of the case, through ``pipeline.turn_words``. Sound: Smart Turn v3.
LM (``--lm``): LiveKit's idea with the embedded LLM (SmolLM2-135M): the log-probability of the end-of-message
token right after the caller's words in the chat template, one forward pass over the user message.
Prints, per source and signal, how many finished turns were judged finished (a miss costs a long wait) and how
many unfinished ones were judged unfinished (a miss splits the caller's sentence), and for the graded signals
the AUC (how often a finished case scores above an unfinished one: 0.5 is chance). Writes JSON.

    .venv/bin/python bench/turn_end.py
    .venv/bin/python bench/turn_end.py --lm
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engines.stt_whisper import WhisperSTT  # noqa: E402
from engines.turn_smart import SmartTurn  # noqa: E402
from engines.vad_silero import SileroVAD  # noqa: E402
from pipeline.audio import load_audio, pcm16_to_float, resample  # noqa: E402
from pipeline.turn_judge import judge_pause  # noqa: E402
from pipeline.turn_words import unfinished_reason  # noqa: E402

AUDIO = ROOT.parent / "shared" / "audio"
# Sentences whose first part cannot stand alone, and questions and statements that can; none is in a test.
SPLIT_SENTENCES = [
    ("When the bakery on the corner opens,", "I want to buy fresh bread."),
    ("If my flight gets delayed again,", "please call my sister."),
    ("Although the museum is closed today,", "the garden is still open."),
    ("Before you book the hotel,", "check the cancellation policy."),
    ("While the pasta is cooking,", "chop the garlic and the parsley."),
    ("Once the paint has dried,", "we can hang the pictures."),
    ("My brother and", "my cousin are visiting next week."),
    ("I would like to order a pizza with", "mushrooms and olives."),
    ("Could you remind me to", "water the plants tomorrow?"),
    ("Unless it rains this afternoon,", "we will have lunch in the park."),
    ("After I finish this report,", "I need a long walk."),
    ("The thing I keep forgetting is", "where I parked the car."),
]
WHOLE = [
    "What is the tallest mountain in Africa?",
    "Please turn off the lights in the kitchen.",
    "How long should I boil an egg?",
    "I need a taxi to the train station.",
    "Thanks, that was really helpful.",
    "Yes, I do.",
    "Can you set a timer for ten minutes?",
    "My order number is four five seven two.",
    "What's a good movie for a rainy evening?",
    "No, that's all for today.",
    "Which bus goes to the airport?",
    "I think so.",
]
_TAIL_S = 0.064  # a pause is noticed on its first silent 32 ms chunk; the judge gets the audio up to then


def espeak(text: str, rate: int = 16000) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "--stdout", text], capture_output=True, check=True).stdout
    pcm = wav[44:]
    return pcm16_to_float(resample(pcm, 22050, rate))


def piper_voice() -> Callable[[str], np.ndarray]:
    from engines.tts_piper import PiperTTS

    tts = PiperTTS()

    def speak(text: str) -> np.ndarray:
        pcm = b"".join(chunk.tobytes() for chunk in tts.synthesize(text))
        return pcm16_to_float(resample(pcm, tts.sample_rate, 16000))

    return speak


def with_tail(audio: np.ndarray, seconds: float = _TAIL_S) -> np.ndarray:
    return np.concatenate([audio, np.zeros(int(seconds * 16000), np.float32)])


def synthesized(name: str, speak: Callable[[str], np.ndarray]) -> list[dict]:
    cases = []
    for first, second in SPLIT_SENTENCES:
        cases.append({"source": name, "text": first, "finished": False, "audio": with_tail(speak(first))})
        whole = f"{first} {second}"
        cases.append({"source": name, "text": whole, "finished": True, "audio": with_tail(speak(whole))})
    for text in WHOLE:
        cases.append({"source": name, "text": text, "finished": True, "audio": with_tail(speak(text))})
    return cases


def pauses(vad: SileroVAD, audio: np.ndarray, rate: int, min_gap_ms: int = 160) -> list[int]:
    """Sample offsets where speech stops for at least ``min_gap_ms`` inside ``audio`` (not at its end)."""
    chunk = 512 if rate == 16000 else 256
    state = vad.new_state(rate)
    probs = [
        float(vad.speech_probs([state], audio[i : i + chunk][np.newaxis])[0])
        for i in range(0, len(audio) - chunk + 1, chunk)
    ]
    cuts, silent, spoke = [], 0, False
    for i, p in enumerate(probs):
        if p >= 0.5:
            if spoke and silent * 32 >= min_gap_ms:
                cuts.append((i - silent) * chunk)
            silent, spoke = 0, True
        elif spoke:
            silent += 1
    return cuts


def recorded(vad: SileroVAD) -> list[dict]:
    cases = []
    clips = sorted(AUDIO.glob("fleurs-en-*.ogg")) + [AUDIO / "jfk.flac"]
    for path in clips:
        audio = load_audio(str(path), 16000)
        for cut in pauses(vad, audio, 16000):
            piece = audio[: cut + int(_TAIL_S * 16000)]
            cases.append(
                {
                    "source": "recorded",
                    "text": f"{path.name}@{cut / 16000:.2f}s",
                    "finished": False,
                    "audio": piece,
                }
            )
        cases.append({"source": "recorded", "text": path.name, "finished": True, "audio": audio})
    phone = load_audio(str(AUDIO / "OSR_us_000_0034_8k.wav"), 8000)
    for cut in pauses(vad, phone, 8000, min_gap_ms=500):  # the gaps between its read sentences
        piece = phone[: cut + int(_TAIL_S * 8000)]
        cases.append(
            {
                "source": "phone",
                "text": f"OSR@{cut / 8000:.2f}s",
                "finished": True,
                "audio": pcm16_to_float(resample((piece * 32767).astype("<i2").tobytes(), 8000, 16000)),
            }
        )
    return cases


class EndOfMessageLM:
    """log10 P(<|im_end|> | "<|im_start|>user\n" + words) from the embedded GGUF model, one thread."""

    def __init__(self) -> None:
        from llama_cpp import Llama

        from engines.models import smollm2_gguf_path

        self.llm = Llama(
            model_path=smollm2_gguf_path(), n_ctx=512, n_threads=1, logits_all=True, verbose=False
        )
        self.end = self.llm.tokenize(b"<|im_end|>", add_bos=False, special=True)[0]

    def score(self, words: str) -> float:
        # The words as Whisper wrote them, closing punctuation and all: stripping it measured no better.
        tokens = self.llm.tokenize(f"<|im_start|>user\n{words.strip()}".encode(), add_bos=False, special=True)
        self.llm.reset()
        self.llm.eval(tokens)
        logits = np.asarray(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float64)
        logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        return float(logp[self.end] / np.log(10))


def auc(cases: list[dict], key: str) -> float:
    """P(a finished case scores above an unfinished one), ties half: 0.5 is no better than chance."""
    done = [c[key] for c in cases if c["finished"]]
    open_ = [c[key] for c in cases if not c["finished"]]
    if not done or not open_:
        return float("nan")
    return sum((d > o) + 0.5 * (d == o) for d in done for o in open_) / len(done) / len(open_)


def judge(cases: list[dict], stt: WhisperSTT, turn: SmartTurn, lm: EndOfMessageLM | None = None) -> None:
    for case in cases:
        start = time.perf_counter()
        case["transcript"] = stt.transcribe(case["audio"]).text.strip()
        case["stt_ms"] = (time.perf_counter() - start) * 1000
        case["words_unfinished"] = unfinished_reason(case["transcript"])
        start = time.perf_counter()
        case["sound_prob"] = turn.complete_prob(case["audio"][-8 * 16000 :])
        case["sound_ms"] = (time.perf_counter() - start) * 1000
        if lm is not None:
            case["lm_logp"] = lm.score(case["transcript"])


MIXES: dict[str, Callable[[dict], bool]] = {
    # True: judged finished.
    "words": lambda c: c["words_unfinished"] is None,
    "sound>=0.5": lambda c: c["sound_prob"] >= 0.5,
    "words+sound>=0.5": lambda c: c["words_unfinished"] is None and c["sound_prob"] >= 0.5,
    "words+sound>=0.2": lambda c: c["words_unfinished"] is None and c["sound_prob"] >= 0.2,
    "words+sound>=0.05": lambda c: c["words_unfinished"] is None and c["sound_prob"] >= 0.05,
    # What the listener does by default (pipeline.turn_judge): words, then the sound below 0.1 for statements.
    "default": lambda c: judge_pause(c["transcript"], c["sound_prob"], 0.1)[0],
}


def score(cases: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    table: dict[str, dict[str, dict[str, float]]] = {}
    for source in sorted({c["source"] for c in cases}):
        group = [c for c in cases if c["source"] == source]
        done = [c for c in group if c["finished"]]
        open_ = [c for c in group if not c["finished"]]
        table[source] = {
            name: {
                "finished_ok": sum(mix(c) for c in done) / len(done) if done else float("nan"),
                "unfinished_ok": sum(not mix(c) for c in open_) / len(open_) if open_ else float("nan"),
                "n_finished": len(done),
                "n_unfinished": len(open_),
            }
            for name, mix in MIXES.items()
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--lm", action="store_true", help="also score the embedded LLM's end-of-message token"
    )
    args = parser.parse_args()
    vad, stt, turn = SileroVAD(), WhisperSTT(), SmartTurn()
    cases = synthesized("piper", piper_voice()) + synthesized("espeak", espeak) + recorded(vad)
    judge(cases, stt, turn, EndOfMessageLM() if args.lm else None)
    table = score(cases)
    print(f"{'source':9} {'signal':18} {'finished judged finished':>25} {'unfinished judged unfinished':>29}")
    for source, rows in table.items():
        for name, r in rows.items():
            print(
                f"{source:9} {name:18} {r['finished_ok']:>18.0%} of {r['n_finished']:3} "
                f"{r['unfinished_ok']:>21.0%} of {r['n_unfinished']:3}"
            )
    graded = ["sound_prob"] + (["lm_logp"] if args.lm else [])
    aucs = {
        source: {key: auc([c for c in cases if c["source"] == source], key) for key in graded}
        for source in table
    }
    for source, row in aucs.items():
        print(f"{source:9} AUC " + "  ".join(f"{key} {value:.2f}" for key, value in row.items()))
    sound_ms = sorted(c["sound_ms"] for c in cases)
    print(f"Smart Turn per call: p50 {sound_ms[len(sound_ms) // 2]:.0f} ms, max {sound_ms[-1]:.0f} ms")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"turn-end-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record = {
        "machine": platform.processor() or platform.machine(),
        "table": table,
        "auc": aucs,
        "sound_ms_p50": sound_ms[len(sound_ms) // 2],
        "cases": [{k: v for k, v in c.items() if k != "audio"} for c in cases],
    }
    path.write_text(json.dumps(record, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
