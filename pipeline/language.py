"""Language routing: a caller who speaks another language is answered in it, with a voice for it.

With a multilingual STT (Whisper ``base``), each turn's transcript says its language. When it is not the
session's current language, the session switches to a voice for that language (the TTS engine's
``default_voice_for``, see engines/tts_voices.py) and tells the LLM to answer in it ("Answer in German.", after
the instructions). A voice the client chose itself is kept: only the voice routing gave the session is routed.
Back in the session's first language, the first voice and the plain instructions return.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from engines.base import STTEngine, TTSEngine
from engines.voice_map import base_language
from pipeline.conversation import Conversation
from pipeline.events import ServerEvent, SessionUpdated
from pipeline.session_config import SessionConfig

log = logging.getLogger("voxgate.session")

# Whisper's languages, by code, as a sentence to the LLM names them.
# fmt: off
LANGUAGE_NAMES = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "ba": "Bashkir", "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "bo": "Tibetan",
    "br": "Breton", "bs": "Bosnian", "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian", "eu": "Basque",
    "fa": "Persian", "fi": "Finnish", "fo": "Faroese", "fr": "French", "gl": "Galician", "gu": "Gujarati",
    "ha": "Hausa", "haw": "Hawaiian", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole",
    "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "is": "Icelandic", "it": "Italian",
    "ja": "Japanese", "jw": "Javanese", "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "kn": "Kannada",
    "ko": "Korean", "la": "Latin", "lb": "Luxembourgish", "ln": "Lingala", "lo": "Lao", "lt": "Lithuanian",
    "lv": "Latvian", "mg": "Malagasy", "mi": "Maori", "mk": "Macedonian", "ml": "Malayalam",
    "mn": "Mongolian", "mr": "Marathi", "ms": "Malay", "mt": "Maltese", "my": "Burmese", "ne": "Nepali",
    "nl": "Dutch", "nn": "Norwegian Nynorsk", "no": "Norwegian", "oc": "Occitan", "pa": "Punjabi",
    "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sa": "Sanskrit",
    "sd": "Sindhi", "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian", "sn": "Shona", "so": "Somali",
    "sq": "Albanian", "sr": "Serbian", "su": "Sundanese", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil",
    "te": "Telugu", "tg": "Tajik", "th": "Thai", "tk": "Turkmen", "tl": "Tagalog", "tr": "Turkish",
    "tt": "Tatar", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese", "yi": "Yiddish",
    "yo": "Yoruba", "yue": "Cantonese", "zh": "Chinese",
}
# fmt: on

# Whisper guesses a language from any sound; a word or two ("Okay.", "Ja.") is too little to switch on.
MIN_WORDS = 3


def answer_in(language: str) -> str:
    """The instruction that makes the LLM answer in ``language``."""
    return f"Answer in {LANGUAGE_NAMES.get(language, language)}."


def voice_for_language(tts: TTSEngine, language: str) -> str | None:
    """The engine's voice for ``language``: its own choice when it has one (``default_voice_for``), else its
    first voice of that language; None when it has none."""
    choose = getattr(tts, "default_voice_for", None)
    if callable(choose):
        voice: str | None = choose(language)
        return voice
    return next((v.id for v in tts.voices() if base_language(v.language) == language), None)


class LanguageRouter:
    """Follows the caller's language for one session (see the module docstring)."""

    def __init__(
        self,
        stt: STTEngine,
        tts: TTSEngine,
        config: SessionConfig,
        conversation: Conversation,
        emit: Callable[[ServerEvent], Awaitable[None]],
    ) -> None:
        self.stt = stt
        self.tts = tts
        self.config = config
        self.conversation = conversation
        self.emit = emit
        self.home_voice = config.voice  # the voice the session started with
        self._routed_voice = config.voice  # the voice routing last gave the session
        self._language: str | None = None  # what the session speaks now; None: not asked yet
        self.home_language = "en"  # the first voice's language, once looked up

    @property
    def language(self) -> str:
        """The language the session answers in: at first its first voice's (looked up only when routing
        needs it, as listing a remote engine's voices may cost a request)."""
        if self._language is None:
            voice = self.home_voice
            home = next((v for v in self.tts.voices() if v.id == voice), None) if voice else None
            self._language = self.home_language = base_language(home.language) if home else "en"
        return self._language

    def would_switch(self, language: str | None, text: str) -> bool:
        """Whether a transcript ``text`` in ``language`` changes the session's language."""
        config = self.config
        if not (
            config.language_routing and config.language is None and self.stt.capabilities.detects_language
        ):
            return False
        if not language or len(text.split()) < MIN_WORDS:
            return False
        return base_language(language) != self.language

    async def follow(self, language: str | None, text: str) -> bool:
        """Switch to ``language`` if the turn ``text`` calls for it; says so with a ``session.updated``."""
        if language is None or not self.would_switch(language, text):
            return False
        self._language = new = base_language(language)
        home = new == self.home_language
        self.conversation.set_language_note("" if home else answer_in(new))
        if self.config.voice == self._routed_voice:  # the client has not chosen a voice of its own
            voice = self.home_voice if home else voice_for_language(self.tts, new)
            if voice is not None:
                self.config.voice = self._routed_voice = voice
        log.info("language routing: the caller speaks %s; voice %s", new, self.config.voice)
        await self.emit(
            SessionUpdated({"language": new, "voice": self.config.voice, "reason": "language_routing"})
        )
        return True
