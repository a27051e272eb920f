"""The one typed settings object: env vars ``VOXGATE_*`` (nested with ``__``), an optional TOML file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engines.base import EngineOptions
from engines.registry import ROLES, lookup, resolve_options
from gateway.engine_settings import FlatEngineOptions
from gateway.media.settings import MediaSettings
from gateway.speech.settings import SpeechSettings
from pipeline.session import SessionConfig, VadConfig

# How a JSON schema constraint is spelled for an LLM server (see gateway.agent.llm.schema_constraint).
SchemaFormat = Literal["json_schema", "json_object", "guided_json"]


class VadSettings(BaseModel):
    """Turn-taking knobs; a session may override them with ``session.update``."""

    threshold: float = Field(0.5, ge=0.05, le=0.95, description="speech probability that starts speech")
    end_of_turn_ms: int = Field(
        300,
        ge=100,
        le=5000,
        description="silence that ends the caller's turn (with semantic_turns: a turn judged finished)",
    )
    semantic_turns: bool = Field(
        True,
        description="at each pause, judge from the words (and the turn engine's sound model) whether the caller "
        "has finished: a finished turn ends after end_of_turn_ms, an unfinished one waits up to unfinished_ms",
    )
    unfinished_ms: int = Field(
        1500,
        ge=100,
        le=10000,
        description="the longest silence a turn judged unfinished waits before it ends anyway",
    )
    min_interrupt_ms: int = Field(250, ge=0, le=5000, description="caller speech that interrupts the agent")
    min_speech_ms: int = Field(90, ge=0, le=2000, description="shorter speech is ignored as a click")
    continuation_ms: int = Field(
        1500,
        ge=0,
        le=10000,
        description="caller speech that starts this soon after their turn ended, before they heard "
        "continuation_heard_ms of the answer, continues that turn: the answer is cut, both parts are "
        "transcribed together and answered once (0: off)",
    )
    continuation_heard_ms: int = Field(
        1000, ge=0, le=5000, description="how much of the answer may have played for a turn to be continued"
    )


class Settings(BaseSettings, MediaSettings):
    """Everything voxgate can be told, with the embedded default needing none of it (the ``media_*`` settings
    come from :class:`MediaSettings`)."""

    model_config = SettingsConfigDict(env_prefix="VOXGATE_", env_nested_delimiter="__", extra="ignore")

    # service
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_DATA_HOME", "~/.local/share")).expanduser() / "voxgate"
        )
    )
    log_level: str = "info"
    otel_exporter: Literal["none", "otlp", "console"] = Field(
        "none",
        description="OpenTelemetry traces, one per turn with a span per stage: none, otlp (OTLP over HTTP to "
        "otel_endpoint) or console (stdout)",
    )
    otel_endpoint: str | None = Field(
        None,
        description="the OTLP HTTP traces URL, e.g. http://collector:4318/v1/traces (default: the "
        "exporter's, from OTEL_EXPORTER_OTLP_ENDPOINT or localhost:4318)",
    )
    api_key: str | None = Field(
        None,
        description="deprecated (use admin_token and API keys): a static key with every scope, sent as "
        "Authorization: Bearer; setting it turns auth on (auth=auto)",
    )
    admin_token: SecretStr | None = Field(
        None,
        description="the admin credential (Authorization: Bearer): creates API keys (POST /v1/keys), sees "
        "everything; required when auth is on",
    )
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="API keys and scopes: auto is on when host is not loopback (or admin_token/api_key is "
        "set), off on loopback; on refuses to start without admin_token",
    )
    metrics_public: bool | None = Field(
        None,
        description="/metrics without a key (else it needs the admin scope); default: true on loopback only",
    )

    # limits and browser safety (docs/security.md)
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="other origins whose web pages may call the API and open WebSockets, as JSON: "
        '["https://app.example.com"] ("*": any). Same-origin pages and clients that send no Origin always may',
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names to accept, as JSON; empty: on a loopback bind only localhost, "
        "127.0.0.1 and [::1] (a DNS-rebinding guard), elsewhere any",
    )
    max_json_body_bytes: int = Field(
        1 << 20, ge=1024, description="largest JSON request body; a larger one is refused with 413"
    )
    max_form_body_bytes: int = Field(
        64 << 10, ge=1024, description="largest form or SDP request body (Twilio webhooks, WebRTC offers)"
    )
    session_token_ttl_s: float = Field(
        60.0, gt=0, le=3600, description="life of a browser's one-use session token (POST /v1/sessions/token)"
    )
    max_outbox_bytes: int = Field(
        4 << 20, ge=64 << 10, description="bytes of events and audio a session may owe a slow client"
    )
    flow_check_timeout_s: float = Field(
        2.0, gt=0, le=60, description="time limit for validating one flow (runs off the event loop)"
    )
    flow_regex_timeout_ms: int = Field(
        20, ge=1, le=1000, description="time limit for one collect-node pattern match on a caller's answer"
    )
    flow_draft_max_tokens: int = Field(
        1500, ge=200, le=8000, description="most tokens one POST /v1/flows/generate may ask the LLM for"
    )
    twilio_start_timeout_s: float = Field(
        10.0, gt=0, le=120, description="a Twilio media socket that sends no start event by then is closed"
    )
    webrtc_connect_timeout_s: float = Field(
        10.0, gt=0, le=120, description="a WebRTC peer whose ICE and DTLS setup takes longer is dropped"
    )

    # storage
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL: postgresql://user@host/db for scale; default a SQLite file in data_dir",
    )
    storage_write_interval_s: float = Field(
        0.2, gt=0, le=1.0, description="batched writes go out this often (a crash loses at most this much)"
    )
    instance_id: str = Field(
        "",
        max_length=64,
        description="names this gateway among several sharing one database (stable across restarts, e.g. "
        "the pod name); at start-up it closes the sessions it left open when it was killed",
    )
    redis_url: str | None = Field(
        None,
        description="redis://host:6379/0 shared by the replicas: per-key limit counters live there "
        "(default: in this process, per replica)",
    )
    limits_redis_prefix: str = Field(
        "voxgate:limits", min_length=1, max_length=64, description="prefix of the limit counters' Redis keys"
    )
    retention_days: float | None = Field(
        None, gt=0, description="delete sessions and recordings older than this many days (off when unset)"
    )
    record_audio: bool = Field(
        False,
        description="write each session's caller and agent audio as WAV files under data_dir/recordings",
    )
    retention_interval_s: float = Field(3600.0, gt=0, description="how often the retention sweep runs")

    # flows
    flow_secrets: dict[str, str] = Field(
        default_factory=dict,
        description='values for {{ secrets.NAME }} in http nodes, as JSON: {"BOOKING_TOKEN": "..."}',
    )
    flow_http_allowlist: list[str] = Field(
        default_factory=list,
        description='hosts http nodes may call, as JSON: ["api.example.com", "*.example.org"] (empty: none)',
    )
    load_example_flows: bool = Field(
        True, description="store the shipped example flows when the database is new"
    )

    # webhooks (docs/platform.md#webhooks)
    webhook_max_attempts: int = Field(
        6, ge=1, le=50, description="tries per webhook delivery (errors, timeouts, 429 and 5xx are retried)"
    )
    webhook_retry_base_s: float = Field(
        2.0, gt=0, le=3600, description="wait before a delivery's first retry; each next wait doubles"
    )
    webhook_retry_max_s: float = Field(300.0, gt=0, le=86400, description="longest wait between two retries")
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="longest wait for a receiver's answer")
    webhook_allow_private: bool = Field(
        False,
        description="let webhooks go to loopback, private and other non-public addresses (tests, on-prem)",
    )

    # telephony (Twilio)
    public_url: str | None = Field(
        None,
        description="https://host the world reaches this server at (TwiML stream URLs, signature checks)",
    )
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = Field(
        None, description="checks X-Twilio-Signature; required for /twilio/*"
    )
    twilio_insecure: bool = Field(
        False, description="serve /twilio/* without signature checks (local testing only; logged loudly)"
    )
    twilio_api_base_url: str | None = Field(None, description="Twilio REST API base URL (tests, proxies)")
    twilio_number_flows: dict[str, str] = Field(
        default_factory=dict,
        description='which flow answers which called number, as JSON: {"+15551234567": "faq-agent"}',
    )
    twilio_default_flow: str | None = Field(
        None, description="flow for calls to numbers not in twilio_number_flows"
    )
    consent_announcement: str = Field(
        "",
        max_length=1000,
        description="spoken to every phone call before its flow or agent starts, and heard whole (the "
        "caller's audio is not listened to meanwhile), e.g. 'This call is recorded.'; empty: none",
    )

    # WebRTC
    webrtc_ice_servers: list[str] = Field(
        default_factory=list,
        description='STUN/TURN URLs as JSON, e.g. ["stun:stun.example.org:3478"]; none by default (no public STUN)',
    )
    webrtc_host_addresses: str | None = Field(
        None,
        description="comma list of addresses for ICE host candidates (default: the machine's interfaces)",
    )

    # sessions
    max_sessions: int = Field(
        32, ge=1, description="more WebSocket sessions are refused with close code 1013"
    )
    idle_timeout_s: float = Field(
        300.0, gt=0, description="a session with no inbound message for this long ends"
    )
    max_input_backlog_s: float = Field(30.0, gt=0, description="caller audio buffered before input_overrun")
    lead_ms: int = Field(200, ge=20, le=5000, description="how far agent audio may run ahead of real time")
    ws_ping_interval_s: float = Field(20.0, gt=0, description="WebSocket keepalive ping interval")
    ws_ping_timeout_s: float = Field(
        90.0, gt=0, description="close a socket whose pong is this late (a client may pause reading a while)"
    )
    max_message_bytes: int = Field(1 << 20, description="a larger WebSocket message closes the socket (1009)")
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="on SIGTERM, live sessions may go on this long (new ones are refused) before the goodbye",
    )
    drain_goodbye: str = Field(
        "This service is restarting now. Please call again in a moment. Goodbye.",
        max_length=500,
        description="what sessions still live at the end of a drain hear before they are closed (empty: none)",
    )
    instructions: str = Field(
        "You are a friendly voice assistant. Answer in one or two short sentences, starting with the answer "
        "itself. Do not use lists, markdown or emoji.",
        description="the system prompt of every new session (answer shape: bench/answers.py)",
    )
    unheard_reply: str = Field(
        "Sorry, I didn't catch that. Could you say it again?",
        description="what the agent says when transcription fails (an STT engine or node is down); '' = nothing",
    )
    failed_reply: str = Field(
        "Sorry, I can't answer that right now.",
        description="what the agent says when an answer fails (the LLM, or a TTS node, is down); '' = nothing",
    )
    vad: VadSettings = VadSettings()
    speech: SpeechSettings = SpeechSettings()

    # engines: each role names a registered engine (engines/registry.py); the engine's own options model says
    # which <role>_<option> settings it takes (VOXGATE_STT_MODEL, or nested: VOXGATE_STT_OPTIONS__MODEL)
    vad_engine: str = Field("silero", description="VAD engine")
    vad_options: dict[str, Any] = Field(default_factory=dict)
    stt_engine: str = Field("whisper", description="speech-to-text engine")
    stt_options: dict[str, Any] = Field(default_factory=dict)
    llm_engine: str = Field("llama", description="LLM engine")
    llm_options: dict[str, Any] = Field(default_factory=dict)
    llm_max_tokens: int = Field(
        60,
        ge=1,
        description="most tokens the LLM writes for one answer (a backstop: answer_max_words ends answers "
        "sooner, at a sentence end; an unfinished sentence at the cap is not said)",
    )
    llm_history_messages: int = Field(
        4,
        ge=0,
        description="past user/assistant messages the LLM sees. The embedded SmolLM2-135M copies the frame of the "
        "earlier answers it sees (16 messages: 14 of 30 spoken answers repeated a 6-word run, and answers "
        "decayed into one template); a larger LLM served by URL can take 16 or more (docs/engines.md)",
    )
    llm_temperature: float = Field(0.0, ge=0, description="sampling temperature (0: greedy, repeatable)")
    llm_repeat_penalty: float | None = Field(
        None,
        gt=0,
        description="penalise tokens seen in the last 64 of the context, answers' own and the previous "
        "answer's (llama.cpp; sent only when set, as OpenAI's API does not know it)",
    )
    llm_presence_penalty: float | None = Field(
        None,
        ge=-2,
        le=2,
        description="OpenAI-style presence penalty for answers (None: not sent; llama.cpp applies it to the "
        "last 64 tokens, the caller's own question included, so the embedded model uses no_repeat_ngram)",
    )
    llm_frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="OpenAI-style frequency penalty for answers (None: not sent)"
    )
    llm_no_repeat_ngram: int | None = Field(
        4,
        ge=2,
        description="the embedded LLM never writes a run of this many tokens that an earlier answer in its "
        "context, or the answer itself, already holds, so a small model cannot copy its last answer or loop "
        "(None: allowed; remote servers ignore it; bench/answers.py)",
    )
    llm_end_at_sentence: bool = Field(
        True,
        description="the embedded LLM ends an answer only at a sentence end and closes its sentence before "
        "llm_max_tokens (remote servers ignore it)",
    )
    answer_max_sentences: int = Field(
        2, ge=0, description="an answer stops after this many sentences (0: no limit; flows are not shaped)"
    )
    answer_max_words: int = Field(
        30,
        ge=0,
        description="an answer stops at the last sentence end within this many words (0: no limit; a first "
        "sentence longer than this is still said whole)",
    )
    llm_schema_format: SchemaFormat = Field(
        "json_schema",
        description="how flows send a JSON schema to an OpenAI-compatible server: json_schema (OpenAI, vLLM, "
        "llama.cpp llama-server), json_object (llama-cpp-python's server), guided_json (vLLM)",
    )
    tts_engine: str = Field("piper", description="text-to-speech engine")
    tts_options: dict[str, Any] = Field(default_factory=dict)
    turn_engine: str = Field(
        "smart_turn",
        description="turn-completion sound model asked at each pause with vad.semantic_turns (none: words only)",
    )
    turn_options: dict[str, Any] = Field(default_factory=dict)
    first_clause_words: int = Field(
        4,
        ge=0,
        description="speak the first clause after this many words even without punctuation (0 = wait)",
    )
    engine_queue_size: int = Field(
        64, ge=1, description="pending inference jobs per engine before callers wait"
    )

    @field_validator("vad_engine", "stt_engine", "llm_engine", "tts_engine", "turn_engine")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        lookup(str(info.field_name).removesuffix("_engine"), name)  # a clear error naming the known ones
        return name

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        # Checked here, not in a validator: pydantic would quote every setting in the error, secrets too.
        for role in ROLES:
            self.engine_options(role)

    def engine_name(self, role: str) -> str:
        """The engine selected for ``role`` (vad, stt, llm or tts)."""
        return str(getattr(self, f"{role}_engine"))

    def engine_options(self, role: str) -> EngineOptions:
        """The selected engine's options, validated by its own model (defaults filled in)."""
        return resolve_options(role, self.engine_name(role), getattr(self, f"{role}_options"))

    @property
    def default_voice(self) -> str | None:
        """The voice sessions start with; None leaves it to the TTS engine."""
        return self.engine_options("tts").default_voice()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments > environment > TOML file named by VOXGATE_CONFIG.
        # Engine options may come under their flat names (VOXGATE_STT_MODEL, stt_model = ...): each source's
        # are moved into <role>_options before the sources are merged, so precedence holds for them too.
        toml_file = os.environ.get("VOXGATE_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [
            FlatEngineOptions(settings_cls, init_settings),
            env_settings,
            FlatEngineOptions(settings_cls, None),
        ]
        if toml_file:
            if not Path(toml_file).is_file():
                raise FileNotFoundError(f"VOXGATE_CONFIG names no such file: {toml_file}")
            toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
            sources.append(FlatEngineOptions(settings_cls, toml))
        return tuple(sources)

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"

    @property
    def voices_dir(self) -> Path:
        return self.speech.voices_dir or self.data_dir / "voices"

    @property
    def outputs_dir(self) -> Path:
        return self.speech.output_dir or self.data_dir / "outputs"

    def storage_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'voxgate.db'}"


def session_config(
    settings: Settings,
    *,
    input_rate: int = 16000,
    output_rate: int = 16000,
    encoding: str = "pcm_s16le",
    transport: str = "websocket",
) -> SessionConfig:
    """A session's configuration from the service settings: the one place every transport gets it."""
    s = settings
    return SessionConfig(
        input_rate=input_rate,
        input_encoding=encoding,
        output_rate=output_rate,
        output_encoding=encoding,
        instructions=s.instructions,
        voice=s.default_voice,
        language_routing=s.speech.language_routing,
        vad=VadConfig(**s.vad.model_dump()),
        lead_ms=s.lead_ms,
        max_input_backlog_s=s.max_input_backlog_s,
        idle_timeout_s=s.idle_timeout_s,
        unheard_reply=s.unheard_reply,
        failed_reply=s.failed_reply,
        max_tokens=s.llm_max_tokens,
        temperature=s.llm_temperature,
        repeat_penalty=s.llm_repeat_penalty,
        presence_penalty=s.llm_presence_penalty,
        frequency_penalty=s.llm_frequency_penalty,
        no_repeat_ngram=s.llm_no_repeat_ngram,
        end_at_sentence=s.llm_end_at_sentence or None,
        answer_max_sentences=s.answer_max_sentences or None,
        answer_max_words=s.answer_max_words or None,
        eager_first_words=s.first_clause_words or None,
        history_messages=s.llm_history_messages,
        transport=transport,
        recording_dir=str(s.recordings_dir) if s.record_audio else None,
        max_outbox_bytes=s.max_outbox_bytes,
    )
