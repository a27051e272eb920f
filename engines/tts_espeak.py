"""espeak-ng text-to-speech: the fallback engine when Piper (or its voice) is unavailable.

Formant synthesis from the system's ``espeak-ng`` binary, one subprocess per sentence so the first sentence
plays while later ones are made. Robotic, but tiny, fast and understood by Whisper.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from engines.base import Capabilities, Needs, Voice
from engines.tts_piper import UnknownVoice

__all__ = ["LANGUAGE_PROSODY", "EspeakTTS", "Prosody", "parse_wav"]

ESPEAK_LICENCE = "GPL-3.0 (espeak-ng)"
_NATIVE_RATE = 22050
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_SPEAKABLE = re.compile(r"\w")


@dataclass(frozen=True)
class Prosody:
    """How espeak-ng speaks one language's voices: its rate, pitch (0-99, espeak-ng's default 50) and voice
    variant (``m2``: espeak-ng's ``-v fr+m2``)."""

    words_per_minute: int
    pitch: int = 50
    variant: str | None = None


# Languages whose espeak-ng voices speak otherwise than the engine's rate and pitch, and why. Whisper base (what
# language routing and a multilingual caller's client hear with) names the language of espeak-ng's French at
# its defaults (175 words a minute, pitch 50) for 39 of 72 varied sentences, mostly hearing Thai otherwise; with
# the male2 variant (its echo blurs the formant buzz), pitch 15 and 200 words a minute for 67 of 72, and writes it
# with fewer errors (WER 0.66 against 1.05, on 24 of them). docs/voices.md has every candidate measured.
LANGUAGE_PROSODY: dict[str, Prosody] = {"fr": Prosody(words_per_minute=200, pitch=15, variant="m2")}


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """int16 mono samples and rate from a PCM WAV; tolerates the bogus sizes espeak-ng writes to a pipe."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a WAV stream")
    pos, rate, channels = 12, 0, 1
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = pos + 8
        if tag == b"fmt ":
            _fmt, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHIIHH", data[body : body + 16])
            if bits != 16:
                raise ValueError(f"expected 16-bit PCM, got {bits}-bit")
        elif tag == b"data":
            # A pipe can't be seeked back to fix the header, so the size is a placeholder: read to the end.
            pcm = data[body:]
            samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % (2 * channels)], dtype="<i2")
            if channels > 1:
                samples = samples.reshape(-1, channels)[:, 0]
            return samples.astype(np.int16), rate
        pos = body + size + (size & 1)
    raise ValueError("WAV stream has no data chunk")


class EspeakTTS:
    """TTS by running ``espeak-ng --stdout``; voices are espeak-ng's language ids (``en-us``, ``en``, ...).

    The default 140 words a minute is slower than espeak-ng's 175: formant speech at full speed was misheard by
    Whisper tiny about half again as often (mean WER 0.10 vs 0.16 over six sentences). ``prosody`` sets the rate,
    pitch and variant of one language's voices (default ``LANGUAGE_PROSODY``); ``speed`` scales either rate.
    """

    def __init__(
        self,
        binary: str = "espeak-ng",
        sample_rate: int = _NATIVE_RATE,
        default_voice: str = "en-us",
        words_per_minute: int = 140,
        timeout_s: float = 10.0,
        prosody: Mapping[str, Prosody] | None = None,
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise FileNotFoundError(f"{binary} not found; install it (Debian: apt-get install espeak-ng)")
        self.binary = path
        self.sample_rate = sample_rate
        self.words_per_minute = words_per_minute
        self.timeout_s = timeout_s
        self.prosody = dict(LANGUAGE_PROSODY if prosody is None else prosody)
        self._voices = self._list_voices()
        if default_voice not in self._voices:
            raise UnknownVoice(default_voice, sorted(self._voices))
        self.default_voice = default_voice
        self.capabilities = Capabilities(
            streaming=True,
            languages=tuple(sorted({v.split("-")[0] for v in self._voices})),
            device="cpu",
            needs=Needs(concurrency=1, cpu_heavy=True),  # the espeak-ng process runs on this machine's cores
            extra={"engine": "espeak-ng"},
        )

    def _list_voices(self) -> dict[str, str]:
        """Voice id -> voice file, from ``espeak-ng --voices``; aliases in "Other Languages" count too."""
        out = subprocess.run(
            [self.binary, "--voices"], capture_output=True, text=True, check=True, timeout=self.timeout_s
        ).stdout
        best: dict[str, tuple[int, str]] = {}
        for line in out.splitlines()[1:]:
            cols = line.split()
            if len(cols) < 5 or not cols[0].isdigit():
                continue
            lang, file = cols[1], cols[4]
            # mbrola voices need a separately installed mbrola binary; "variant" rows are not languages.
            if file.startswith("mb/") or lang == "variant":
                continue
            # Lower numbers win, as when espeak-ng itself resolves "-v en".
            names = [(lang, int(cols[0]))] + [(a, int(p)) for a, p in re.findall(r"\(([\w-]+) (\d+)\)", line)]
            for name, priority in names:
                if name not in best or priority < best[name][0]:
                    best[name] = (priority, file)
        return {name: file for name, (_, file) in best.items()}

    def voices(self) -> list[Voice]:
        """Every espeak-ng language, as a voice."""
        return [
            Voice(
                id=v,
                engine="espeak-ng",
                language=v.split("-")[0],
                sample_rate=self.sample_rate,
                path=f,
                licence=ESPEAK_LICENCE,
            )
            for v, f in sorted(self._voices.items())
        ]

    def language_of(self, voice: str | None) -> str | None:
        """The language family of ``voice`` (None: the default voice); None for a voice it does not have."""
        vid = voice or self.default_voice
        return vid.split("-")[0] if vid in self._voices else None

    def synthesize(self, text: str, voice: str | None = None, speed: float = 1.0) -> Iterator[np.ndarray]:
        """Yield int16 mono audio at ``sample_rate``, one chunk per sentence; speed scales words per minute."""
        vid = voice or self.default_voice
        if vid not in self._voices:
            raise UnknownVoice(vid, sorted(self._voices))
        return self._stream(text, self.voice_args(vid, speed))

    def voice_args(self, voice: str, speed: float = 1.0) -> list[str]:
        """espeak-ng's voice, rate and pitch options for ``voice`` (a known voice id) at ``speed``."""
        tuned = self.prosody.get(voice.split("-")[0])
        wpm = tuned.words_per_minute if tuned else self.words_per_minute
        # espeak-ng accepts 80-450 words per minute; beyond them it clamps silently, so say it here.
        args = ["-v", voice, "-s", str(max(80, min(450, round(wpm * speed))))]
        if tuned is not None:
            if tuned.variant:
                args[1] = f"{voice}+{tuned.variant}"
            args += ["-p", str(tuned.pitch)]
        return args

    def _stream(self, text: str, args: list[str]) -> Iterator[np.ndarray]:
        for sentence in _SENTENCE_END.split(text.strip()):
            if _SPEAKABLE.search(sentence):
                audio = self._speak(sentence, args)
                if audio.size:
                    yield audio

    def _speak(self, sentence: str, args: list[str]) -> np.ndarray:
        # Text goes through stdin, so a sentence starting with "-" can't be read as an option.
        proc = subprocess.run(
            [self.binary, "--stdout", "--stdin", "-b", "1", *args],
            input=sentence.encode("utf-8"),
            capture_output=True,
            timeout=self.timeout_s,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"espeak-ng failed ({proc.returncode}): {proc.stderr.decode(errors='replace').strip()}"
            )
        audio, rate = parse_wav(proc.stdout)
        if rate != self.sample_rate:
            import soxr

            audio = soxr.resample(audio, rate, self.sample_rate)
        return audio
