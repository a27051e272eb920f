"""Voice-sized answers (issue 11, item 4): an answer ends at a sentence end, within its sentence and word
budget, whatever the token cap did; barge-in and resume bookkeeping stay consistent with what was said;
fixed texts (flows) are never shaped; and the embedded model gives short, distinct answers over a long
conversation."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from typing import Any

from engines.base import GenerationOptions
from pipeline.conversation import TurnRecord
from pipeline.text import SentenceBudget, count_words, ends_at_sentence_end
from tests.test_session_core import (
    ANSWER,
    SHORT_ANSWER,
    FakeLLM,
    FakeSTT,
    FakeTTS,
    harness,
    is_word_prefix,
    speak_over_agent,
    wait_until,
)

# As if the token cap struck in the third sentence: the answer must end after "hotel."
CAPPED = SHORT_ANSWER + " India juliet kilo"


def shaped(text: str, deltas: list[str], **limits: Any) -> tuple[str, SentenceBudget, list[str]]:
    budget = SentenceBudget(**limits)
    said: list[str] = []
    for delta in deltas:
        said.append(budget.push(delta))
        if budget.done:
            break
    said.append(budget.finish())
    return "".join(said), budget, said


def words(text: str) -> list[str]:
    return [(" " if i else "") + w for i, w in enumerate(text.split(" "))]


# -- the budget alone ----------------------------------------------------------------------------------------


def test_first_sentence_streams_and_later_ones_go_whole() -> None:
    out, budget, said = shaped(ANSWER, words(ANSWER), max_sentences=3)
    assert out == "Alpha bravo charlie delta. Echo foxtrot golf hotel. India juliet kilo lima."
    # The first sentence word by word (speech starts early); each later one in one piece, once it ended.
    assert said[:4] == ["Alpha", " bravo", " charlie", " delta."]
    assert [s for s in said[4:] if s] == [" Echo foxtrot golf hotel.", " India juliet kilo lima."]
    assert budget.done and budget.sentences == 3


def test_a_stream_cut_mid_sentence_is_trimmed_to_the_last_sentence_end() -> None:
    out, budget, _ = shaped(CAPPED, words(CAPPED))
    assert out == SHORT_ANSWER
    assert budget.dropped.split() == ["India", "juliet", "kilo"]
    # A first sentence cut off has no earlier end to go back to: it is kept.
    out, _, _ = shaped("Alpha bravo charlie", words("Alpha bravo charlie"), max_words=30)
    assert out == "Alpha bravo charlie"


def test_word_budget_drops_a_sentence_that_would_go_past_it_and_stops_early() -> None:
    deltas = words(ANSWER)
    budget = SentenceBudget(max_words=6)
    out, pushed = "", 0
    for delta in deltas:
        pushed += 1
        out += budget.push(delta)
        if budget.done:
            break
    assert out == "Alpha bravo charlie delta."
    assert pushed == 7, "generation may stop as soon as the second sentence cannot fit"
    # A first sentence longer than the budget is still said whole, then the answer ends.
    out, budget, _ = shaped(ANSWER, words(ANSWER), max_words=2)
    assert out == "Alpha bravo charlie delta." and budget.done


def test_abbreviations_decimals_and_list_numbers_do_not_end_a_sentence() -> None:
    text = "Dr. Smith paid 3.5 dollars at 9 a.m. on Main St. today. Then he left. Bye now."
    deltas = [
        "Dr",
        ".",
        " Smith paid 3",
        ".",
        "5 dollars at 9 a",
        ".m",
        ". on Main St",
        ". today",
        ". Then",
        " he left. Bye now.",
    ]
    assert "".join(deltas) == text
    out, budget, _ = shaped(text, deltas, max_sentences=2)
    assert out == "Dr. Smith paid 3.5 dollars at 9 a.m. on Main St. today. Then he left."
    out, _, _ = shaped(
        "Steps:\n1. Boil water. Then", ["Steps:\n1.", " Boil water.", " Then"], max_sentences=2
    )
    assert out == "Steps:\n1. Boil water."


def test_any_split_of_the_stream_gives_the_same_answer_and_a_prefix_of_it() -> None:
    text = "Sure, it is 3.5 km away! Walk north, then turn left. Or take the bus number 12 which"
    for limits in ({"max_sentences": 2}, {"max_words": 12}, {"max_words": 30}):
        expected, _, _ = shaped(text, [text], **limits)
        assert text.startswith(expected) and ends_at_sentence_end(expected)
        for a, b in itertools.combinations(range(1, len(text)), 2):
            if (a * 7 + b) % 11:  # a spread of the splits, quickly
                continue
            out, _, _ = shaped(text, [text[:a], text[a:b], text[b:]], **limits)
            assert out == expected, (a, b, limits)
        chars, _, _ = shaped(text, list(text), **limits)
        assert chars == expected


def test_a_seeded_budget_counts_what_a_resumed_answer_already_said() -> None:
    budget = SentenceBudget(max_sentences=2)
    budget.seed("Alpha bravo charlie delta.")
    assert budget.sentences == 1 and not budget.done
    assert (
        budget.push(" Echo foxtrot") == ""
        and budget.push(" golf hotel. India") == " Echo foxtrot golf hotel."
    )
    assert budget.done
    budget = SentenceBudget(max_sentences=1)
    budget.seed("Alpha bra")  # mid-word, mid-first-sentence: it streams on from there
    assert budget.push("vo charlie delta. Echo") == "vo charlie delta."
    assert budget.done and budget.words == 4


def test_ends_at_sentence_end_and_count_words() -> None:
    assert ends_at_sentence_end("It is ten o'clock.") and ends_at_sentence_end('He said "hi!"')
    assert not ends_at_sentence_end("It is ten") and not ends_at_sentence_end("Ask Dr.")
    assert not ends_at_sentence_end("")
    assert count_words("Well - yes, 3 times.") == 4


# -- in a session (fake engines) -----------------------------------------------------------------------------


class CountingLLM(FakeLLM):
    """A FakeLLM that records each call's options and how many words it yielded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options: list[GenerationOptions] = []
        self.yielded = 0

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        self.options.append(options)
        for word in super().stream_chat(messages, options):
            self.yielded += 1
            yield word


def spoken_words(tts: FakeTTS) -> list[str]:
    return " ".join(tts.texts).split()


async def test_an_answer_cut_by_the_cap_is_said_shown_and_kept_to_its_last_sentence_end() -> None:
    tts = FakeTTS(ms_per_word=50)
    async with harness(llm=FakeLLM(CAPPED), tts=tts, mic=False, answer_max_words=30) as h:
        await h.session.submit_text("Read me the list")
        rid = (await h.rec.wait("response.started"))["response_id"]
        done = await h.rec.wait("response.audio.done", response_id=rid)
        deltas = [d["delta"] for d in h.rec.events("response.text.delta", response_id=rid)]
        assert "".join(deltas) == SHORT_ANSWER, "no delta shows the dropped words"
        assert h.rec.events("response.text.done")[0]["text"] == SHORT_ANSWER
        assert spoken_words(tts) == SHORT_ANSWER.split()
        assert done["audio_ms"] == 8 * 50
        assert h.session.history[-1] == {"role": "assistant", "content": SHORT_ANSWER}
        turn = h.session.snapshot()["turns"][0]
        assert turn["response_text"] == SHORT_ANSWER and turn["heard_text"] == SHORT_ANSWER
        assert h.session.answers.get(rid).response.dropped_text.split() == ["India", "juliet", "kilo"]  # type: ignore[union-attr]


async def test_the_sentence_budget_stops_generation_and_passes_the_sampling_knobs() -> None:
    llm = CountingLLM(ANSWER, delay_s=0.02)
    config = {"answer_max_sentences": 2, "repeat_penalty": 1.3, "presence_penalty": 0.5}
    async with harness(llm=llm, mic=False, **config) as h:
        await h.session.submit_text("Read me the list")
        done = await h.rec.wait("response.text.done")
        assert done["text"] == SHORT_ANSWER
        await h.rec.wait("response.audio.done")
        assert llm.yielded < 16, "generation stopped at the budget, not at the end of the model's answer"
        assert llm.options[0].extra == {"repeat_penalty": 1.3, "presence_penalty": 0.5}
        # The last clause of a sentence is spoken as soon as the sentence ends (not with the next one).
        assert spoken_words(h.rt.tts) == SHORT_ANSWER.split()  # type: ignore[attr-defined]


async def test_barge_in_on_a_trimmed_answer_keeps_what_was_heard() -> None:
    async with harness(stt=FakeSTT("stop please"), llm=FakeLLM(CAPPED), answer_max_words=30) as h:
        rid = await speak_over_agent(h, after_ms=300, speech_ms=500)
        interrupted = await h.rec.wait("response.interrupted")
        heard = interrupted["heard_text"]
        assert heard and heard != SHORT_ANSWER and is_word_prefix(heard, SHORT_ANSWER), heard
        await wait_until(lambda: len(h.rec.events("response.started")) == 2, 5, "the next response")
        turn = h.session.snapshot()["turns"][0]
        assert turn["interrupted"] and turn["heard_text"] == heard and turn["response_text"] == SHORT_ANSWER
        assert {"role": "assistant", "content": heard} in h.session.history
        assert "India" not in " ".join(h.rt.tts.texts)  # type: ignore[attr-defined]
        assert h.session.answers.get(rid).response.unheard_text(interrupted["played_ms"])  # type: ignore[union-attr]


async def test_false_interruption_resumes_a_trimmed_answer_without_the_dropped_words() -> None:
    async with harness(stt=FakeSTT(""), llm=FakeLLM(CAPPED), answer_max_words=30) as h:
        rid = await speak_over_agent(h, after_ms=400, speech_ms=500)
        interrupted = await h.rec.wait("response.interrupted")
        resumed = await h.rec.wait("response.started", resumed_from=rid, timeout=5)
        new_id = resumed["response_id"]
        text_done = await h.rec.wait("response.text.done", response_id=new_id)
        await h.rec.wait("response.audio.done", response_id=new_id)
        spoken = h.rec.events("response.text.delta", response_id=new_id)[0]["delta"]
        assert SHORT_ANSWER.endswith(spoken), "the cut clause and the rest, and none of the dropped words"
        assert is_word_prefix(interrupted["heard_text"], SHORT_ANSWER)
        assert text_done["text"] == SHORT_ANSWER
        assert [m for m in h.session.history if m["role"] == "assistant"] == [
            {"role": "assistant", "content": SHORT_ANSWER}
        ]


async def test_false_interruption_mid_generation_continues_within_the_budget() -> None:
    llm = CountingLLM(ANSWER, delay_s=0.4, continues=True)  # the second sentence is still being written
    async with harness(stt=FakeSTT(""), llm=llm, answer_max_sentences=2) as h:
        rid = await speak_over_agent(h, after_ms=400, speech_ms=400)
        interrupted = await h.rec.wait("response.interrupted")
        resumed = await h.rec.wait("response.started", resumed_from=rid, timeout=5)
        text_done = await h.rec.wait("response.text.done", response_id=resumed["response_id"], timeout=10)
        assert not h.rec.events("response.text.done", response_id=rid)
        assert len(llm.calls) == 2
        prefix = llm.calls[1][-1]
        assert prefix["prefix"] is True and prefix["content"] == "Alpha bravo charlie delta."
        assert is_word_prefix(interrupted["heard_text"], SHORT_ANSWER)
        assert text_done["text"] == SHORT_ANSWER
        await h.rec.wait("response.audio.done", response_id=resumed["response_id"], timeout=8)
        assert [m for m in h.session.history if m["role"] == "assistant"] == [
            {"role": "assistant", "content": SHORT_ANSWER}
        ]


async def test_fixed_text_is_said_whole_whatever_the_budget() -> None:
    text = "Your table is for two at seven. Is that right? Say yes or no. Or press one"
    tts = FakeTTS(ms_per_word=20)
    async with harness(tts=tts, mic=False, answer_max_sentences=1, answer_max_words=3) as h:
        turn = TurnRecord("turn_flow", "text", "book a table")
        response = await h.session.speak(turn, text)
        done = await h.rec.wait("response.text.done", response_id=response.id)
        await h.rec.wait("response.audio.done", response_id=response.id)
        assert done["text"] == text and spoken_words(tts) == text.split()
        assert h.session.rt.llm.calls == []  # type: ignore[attr-defined]


def test_settings_carry_the_answer_knobs_into_the_session(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gateway.settings import Settings, session_config

    defaults = session_config(Settings(data_dir=tmp_path))
    assert defaults.answer_max_sentences == 2 and defaults.answer_max_words == 30
    config = session_config(
        Settings(data_dir=tmp_path, llm_frequency_penalty=0.4, answer_max_words=0, answer_max_sentences=3)
    )
    assert config.answer_max_words is None and config.answer_max_sentences == 3
    assert config.sampling() == {**defaults.sampling(), "frequency_penalty": 0.4}


# -- the embedded model --------------------------------------------------------------------------------------

# Asked nowhere else in the tests, nor in bench/answers.py (the knobs were tuned there, not here).
QUESTIONS = [
    "What is the best way to store fresh strawberries?",
    "How do airplanes stay in the air?",
    "Can you recommend a board game for four players?",
    "Why do we get hiccups?",
    "What is the largest desert on Earth?",
    "How should I water a cactus?",
    "What makes a rainbow appear?",
    "Which planet has the most moons?",
    "How can I make my coffee less bitter?",
    "What is a good stretch for a stiff neck?",
    "Why do onions make people cry?",
    "How old is the universe?",
    "What should I name my new puppy?",
    "How do I remove a coffee stain from a shirt?",
    "What is the fastest land animal?",
    "Why does bread go stale?",
    "How do penguins keep warm?",
    "What is a quick breakfast idea?",
    "Why is the sky dark at night?",
    "How can I remember people's names better?",
]


def repeated_runs(answers: list[str], n: int = 6) -> list[tuple[int, str]]:
    """(index, run) for each answer holding a run of ``n`` words that an earlier answer holds."""
    seen: set[tuple[str, ...]] = set()
    out: list[tuple[int, str]] = []
    for index, answer in enumerate(answers):
        tokens = re.findall(r"[a-z0-9']+", answer.lower())
        grams = {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
        if grams & seen:
            out.append((index, " ".join(sorted(grams & seen)[0])))
        seen |= grams
    return out


class TokenCountingLLM:
    """The real LLM, counting each call's deltas (about one per token) against the cap it was given."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.capabilities = inner.capabilities
        self.capped: list[bool] = []

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        count = 0
        self.capped.append(False)
        for delta in self.inner.stream_chat(messages, options):
            count += 1
            self.capped[-1] = count >= options.max_tokens
            yield delta


_CONVERSATION: dict[str, Any] = {}


async def twenty_question_conversation(runtime: Any, settings: Any) -> tuple[list[str], list[bool], str]:
    """The 20 questions asked in one session with the service defaults (run once per test session)."""
    if not _CONVERSATION:
        from gateway.settings import session_config

        config = session_config(settings)  # the service defaults: instructions, limits, sampling
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "vad"}
        llm = TokenCountingLLM(runtime.llm)
        answers: list[str] = []
        tts = FakeTTS(ms_per_word=5, delay_s=0)
        async with harness(llm=llm, tts=tts, mic=False, **fields) as h:  # type: ignore[arg-type]
            for question in QUESTIONS:
                await h.session.submit_text(question)
                started = await h.rec.wait("response.started", turn_id=h.session.turns[-1].turn_id)
                rid = started["response_id"]
                done = await h.rec.wait("response.text.done", response_id=rid, timeout=30)
                answers.append(done["text"])
                await h.rec.wait("response.audio.done", response_id=rid, timeout=30)
        pairs = zip(QUESTIONS, answers, strict=True)
        report = "\n".join(f"{i + 1}. {q} -> {a}" for i, (q, a) in enumerate(pairs))
        _CONVERSATION.update(answers=answers, capped=llm.capped, report=report)
    return _CONVERSATION["answers"], _CONVERSATION["capped"], _CONVERSATION["report"]


async def test_twenty_questions_get_short_whole_answers(runtime, settings) -> None:  # type: ignore[no-untyped-def]
    answers, capped, report = await twenty_question_conversation(runtime, settings)
    assert all(answers), report
    # Every answer ends at a sentence end: the budget trims what the cap cut, and the embedded model may
    # neither stop inside a sentence ("The best way to") nor run into the cap (end_at_sentence).
    for answer, cut in zip(answers, capped, strict=True):
        assert ends_at_sentence_end(answer), f"{answer!r} ends mid-sentence\n{report}"
        assert not cut, f"{answer!r} was cut by the token cap\n{report}"
    long = [a for a in answers if count_words(a) > 40]
    assert not long, f"answers over 40 words: {long}\n{report}"


async def test_twenty_questions_get_distinct_answers(runtime, settings) -> None:  # type: ignore[no-untyped-def]
    answers, _, report = await twenty_question_conversation(runtime, settings)
    repeats = repeated_runs(answers)
    assert len(repeats) <= 2, f"answers repeating 6 words of an earlier one: {repeats}\n{report}"
