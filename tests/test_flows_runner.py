"""The flow runner in text mode: every node type, silence, deadlines, determinism (scripted host and LLM)."""

from __future__ import annotations

from typing import Any

import pytest

from flows.runner import FlowRunner
from flows.schema import Flow
from tests.flows_helpers import Clock, FakeLLM, flow, make_runner

END = {"id": "bye", "type": "end", "text": "Goodbye.", "reason": "done"}


def collect(kind: str, **extra: Any) -> dict[str, Any]:
    node = {
        "id": "ask",
        "type": "collect",
        "prompt": "Your answer?",
        "variable": "answer",
        "kind": kind,
        "next": "bye",
        "on_failure": "fail",
        "llm_fallback": False,
    }
    node.update(extra)
    return node


FAIL = {"id": "fail", "type": "end", "reason": "failed"}


async def test_say_and_end() -> None:
    runner, host = make_runner(
        flow(
            [{"id": "hi", "type": "say", "text": "Hello {{ who }}!", "next": "bye"}, END],
            variables={"who": "Ada"},
        )
    )
    assert not runner.ended and runner.current_node is None
    await runner.start()
    assert host.said == ["Hello Ada!", "Goodbye."]
    assert host.ended == "done" and runner.ended and runner.end_reason == "done"
    assert host.nodes_entered() == ["hi", "bye"]
    assert host.events[-1] == ("flow.ended", {"reason": "done"})
    assert runner.transcript == [
        {"role": "agent", "text": "Hello Ada!"},
        {"role": "agent", "text": "Goodbye."},
    ]
    with pytest.raises(RuntimeError):
        await runner.start()


@pytest.mark.parametrize(
    ("kind", "extra", "answer", "value"),
    [
        ("number", {}, "four please", 4),
        ("yes_no", {}, "yeah", True),
        ("date", {}, "tomorrow", "2026-11-24"),
        ("time", {}, "half past seven in the evening", "19:30"),
        ("choice", {"choices": ["patio", {"value": "indoors", "synonyms": ["inside"]}]}, "inside", "indoors"),
        ("text", {}, "  Ada Lovelace ", "Ada Lovelace"),
        ("regex", {"pattern": r"\b(\d{5})\b"}, "it's 90210", "90210"),
    ],
)
async def test_collect_kinds(kind: str, extra: dict[str, Any], answer: str, value: Any) -> None:
    runner, host = make_runner(flow([collect(kind, **extra), END, FAIL]))
    await runner.start()
    assert host.said == ["Your answer?"] and runner.awaiting_input and runner.current_node == "ask"
    await runner.on_user_text(answer)
    assert runner.variables["answer"] == value
    assert host.of_type("flow.variable_set") == [{"name": "answer", "value": value}]
    assert host.ended == "done"


async def test_collect_retries_then_failure() -> None:
    runner, host = make_runner(
        flow([collect("number", retry_prompt="A number, please.", max_retries=2), END, FAIL])
    )
    await runner.start()
    await runner.on_user_text("lots")
    await runner.on_user_text("many")
    assert host.said == ["Your answer?", "A number, please.", "A number, please."]
    assert not runner.ended
    await runner.on_user_text("no idea")
    assert host.ended == "failed" and "answer" not in runner.variables


async def test_collect_dtmf_digit() -> None:
    runner, host = make_runner(flow([collect("number"), END, FAIL]))
    await runner.start()
    await runner.on_dtmf("7")
    assert runner.variables["answer"] == 7


async def test_collect_llm_fallback() -> None:
    llm = FakeLLM([{"value": "5"}])
    runner, host = make_runner(flow([collect("number", llm_fallback=True), END, FAIL]), complete=llm)
    await runner.start()
    await runner.on_user_text("the whole family")
    assert runner.variables["answer"] == 5
    messages, schema, max_tokens = llm.calls[0]
    assert schema == {
        "type": "object",
        "properties": {"value": {"type": "string", "maxLength": 40}},
        "required": ["value"],
    }
    assert "the whole family" in messages[-1]["content"] and max_tokens <= 64


async def test_collect_llm_fallback_is_checked_by_the_parser() -> None:
    # The model's answer must still parse; "none" or nonsense means a retry, not a made-up value.
    llm = FakeLLM([{"value": "none"}, "not json at all", RuntimeError("model down")])
    runner, host = make_runner(
        flow([collect("yes_no", llm_fallback=True, max_retries=5), END, FAIL]), complete=llm
    )
    await runner.start()
    for text in ("hmm", "well", "uh"):
        await runner.on_user_text(text)
    assert "answer" not in runner.variables and not runner.ended
    assert llm.calls[0][1]["properties"]["value"]["enum"] == ["yes", "no", "none"]
    assert host.of_type("flow.error")[0]["message"].startswith("LLM fallback failed")


LLM_FLOW = flow(
    [
        {
            "id": "chat",
            "type": "llm",
            "instructions": "You help callers of {{ shop }}.",
            "opening": "What can I do for you?",
            "exits": [
                {"name": "wants_human", "description": "caller wants a person", "next": "human"},
                {
                    "name": "booking",
                    "description": "caller wants to book",
                    "next": "book",
                    "phrases": ["book a table"],
                },
            ],
            "max_turns": 3,
            "on_max_turns": "bye",
        },
        {"id": "human", "type": "transfer", "target": "+15555550100", "handoff": "Connecting you."},
        {"id": "book", "type": "end", "reason": "booking"},
        END,
    ],
    variables={"shop": "Bikes"},
)


async def test_llm_phrase_exit_skips_the_model() -> None:
    llm = FakeLLM()
    runner, host = make_runner(LLM_FLOW, complete=llm)
    await runner.start()
    assert host.said == ["What can I do for you?"]
    await runner.on_user_text("Can I talk to a person please?")
    assert llm.calls == []
    assert host.of_type("flow.llm_exit") == [{"node": "chat", "exit": "wants_human"}]
    assert host.transfers == [("+15555550100", "Connecting you.")]
    assert host.of_type("flow.transfer") == [{"target": "+15555550100"}]
    assert runner.ended and runner.end_reason == "transfer" and host.ended is None  # transferred, not hung up


async def test_llm_model_exit_and_stay() -> None:
    llm = FakeLLM(
        [{"say": "We open at nine.", "exit": "stay"}, {"say": "Let's book that.", "exit": "booking"}]
    )
    runner, host = make_runner(LLM_FLOW, complete=llm)
    await runner.start()
    await runner.on_user_text("When do you open?")
    assert host.said[-1] == "We open at nine." and runner.current_node == "chat"
    await runner.on_user_text("Great, I'd like to come by tomorrow")
    assert host.said[-1] == "Let's book that." and host.ended == "booking"
    messages, schema, max_tokens = llm.calls[1]
    assert messages[0]["role"] == "system" and "You help callers of Bikes." in messages[0]["content"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "user"]
    assert schema["properties"]["exit"]["enum"] == ["wants_human", "booking", "stay"]
    assert max_tokens == 160


async def test_llm_bad_output_and_errors() -> None:
    llm = FakeLLM(["Just prose, no JSON.", {"say": "ok", "exit": "teleport"}, RuntimeError("boom")])
    runner, host = make_runner(LLM_FLOW, complete=llm)
    await runner.start()
    await runner.on_user_text("one")
    await runner.on_user_text("two")
    assert host.said[1:] == ["Just prose, no JSON.", "ok"] and not runner.ended  # unknown exit = stay
    await runner.on_user_text("three")  # third turn: error reply, then max_turns -> on_max_turns
    assert host.of_type("flow.error")[0]["message"] == "LLM failed: boom"
    assert host.ended == "done"


async def test_llm_max_turns_without_target_ends() -> None:
    doc = flow([{"id": "chat", "type": "llm", "instructions": "Chat.", "max_turns": 1}])
    runner, host = make_runner(doc, complete=FakeLLM())
    await runner.start()
    assert host.said == []  # no opening: waits for the caller
    await runner.on_user_text("hi")
    assert host.ended == "max_turns"


def test_llm_flow_needs_complete() -> None:
    with pytest.raises(ValueError, match="complete"):
        make_runner(LLM_FLOW)


BRANCH_FLOW = flow(
    [
        collect("number", next="route"),
        {
            "id": "route",
            "type": "branch",
            "cases": [
                {"when": {">": [{"var": "answer"}, 10]}, "next": "big"},
                {"when": {"bogus_op": [1]}, "next": "big"},
                {"when": {"==": [{"%": [{"var": "answer"}, 2]}, 0]}, "next": "even"},
            ],
            "default": "bye",
        },
        {"id": "big", "type": "end", "reason": "big"},
        {"id": "even", "type": "end", "reason": "even"},
        END,
        FAIL,
    ]
)


@pytest.mark.parametrize(("answer", "reason"), [("twelve", "big"), ("4", "even"), ("3", "done")])
async def test_branch(answer: str, reason: str) -> None:
    runner, host = make_runner(BRANCH_FLOW)
    await runner.start()
    await runner.on_user_text(answer)
    assert host.ended == reason
    assert "route" in host.nodes_entered()
    if reason != "big":  # the bad case was evaluated, reported, and treated as false
        assert host.of_type("flow.error")[0]["message"].startswith("cases[1].when")


MENU_FLOW = flow(
    [
        {
            "id": "menu",
            "type": "dtmf_menu",
            "prompt": "Press 1 for sales, 2 for support.",
            "options": [
                {"digit": "1", "label": "sales, buy something", "next": "sales"},
                {"digit": "2", "label": "support or help", "next": "support"},
            ],
            "max_retries": 1,
            "on_failure": "bye",
        },
        {"id": "sales", "type": "end", "reason": "sales"},
        {"id": "support", "type": "end", "reason": "support"},
        END,
    ]
)


@pytest.mark.parametrize(
    ("action", "value", "reason"),
    [
        ("dtmf", "1", "sales"),
        ("dtmf", "2", "support"),
        ("text", "I need help", "support"),
        ("text", "sales please", "sales"),
        ("text", "two", "support"),
        ("text", "press 1", "sales"),
    ],
)
async def test_dtmf_menu(action: str, value: str, reason: str) -> None:
    runner, host = make_runner(MENU_FLOW)
    await runner.start()
    await (runner.on_dtmf(value) if action == "dtmf" else runner.on_user_text(value))
    assert host.ended == reason


async def test_dtmf_menu_invalid_then_failure() -> None:
    runner, host = make_runner(MENU_FLOW)
    await runner.start()
    await runner.on_dtmf("9")
    assert host.said == ["Press 1 for sales, 2 for support."] * 2 and not runner.ended
    await runner.on_user_text("what?")
    assert host.ended == "done"


async def test_transfer_node() -> None:
    doc = flow(
        [
            {
                "id": "x",
                "type": "transfer",
                "target": "sip:desk@pbx.example.com",
                "handoff": "Hold on, {{ n }}.",
            }
        ],
        variables={"n": "Ada"},
    )
    runner, host = make_runner(doc)
    await runner.start()
    assert host.transfers == [("sip:desk@pbx.example.com", "Hold on, Ada.")]
    assert [t for t, _ in host.events] == ["flow.node_entered", "flow.transfer", "flow.ended"]
    assert host.said == []  # the host speaks the handoff


async def test_silence_reprompts_then_no_input() -> None:
    doc = flow([collect("number"), END, FAIL], settings={"max_reprompts": 2, "silence_reprompt_s": 5})
    runner, host = make_runner(doc)
    assert runner.silence_timeout_s == 5
    await runner.start()
    await runner.on_silence()
    await runner.on_silence()
    assert host.said == ["Your answer?"] * 3 and not runner.ended
    await runner.on_silence()
    assert host.ended == "no_input"


async def test_speech_resets_the_silence_count() -> None:
    doc = flow([collect("number", max_retries=5), END, FAIL], settings={"max_reprompts": 1})
    runner, host = make_runner(doc)
    await runner.start()
    await runner.on_silence()
    await runner.on_user_text("hmm")  # not a number, but the caller is there
    await runner.on_silence()
    assert not runner.ended


async def test_llm_silence_prompt() -> None:
    runner, host = make_runner(LLM_FLOW, complete=FakeLLM())
    await runner.start()
    await runner.on_silence()
    assert host.said[-1] == "Are you still there?"


async def test_max_call_duration() -> None:
    clock = Clock()
    doc = flow([collect("number"), END, FAIL], settings={"max_call_s": 60})
    runner, host = make_runner(doc, clock=clock)
    await runner.start()
    assert runner.deadline is not None and (runner.deadline - clock.now).total_seconds() == 60
    clock.advance(30)
    assert await runner.check_deadline() is False
    clock.advance(31)
    await runner.on_user_text("4")  # too late: the call ends instead
    assert host.ended == "max_duration" and "answer" not in runner.variables
    assert await runner.check_deadline() is True


async def test_loop_guard() -> None:
    doc = flow(
        [
            {"id": "a", "type": "say", "text": "again", "next": "b"},
            {
                "id": "b",
                "type": "branch",
                "cases": [{"when": {"var": "stop"}, "next": "bye"}],
                "default": "a",
            },
            END,
        ],
        variables={"stop": False},
    )
    runner, host = make_runner(doc)
    await runner.start()
    assert host.ended == "error"
    assert "without waiting" in host.of_type("flow.error")[0]["message"]


async def test_template_error_at_run_time_ends_the_call() -> None:
    # "answer" is only set after "ask"; the say node before it cannot render.
    doc = flow(
        [
            {"id": "early", "type": "say", "text": "You said {{ answer }}", "next": "ask"},
            collect("text"),
            END,
            FAIL,
        ]
    )
    runner, host = make_runner(doc)
    await runner.start()
    assert host.ended == "error" and "undefined" in host.of_type("flow.error")[0]["message"]


async def test_input_ignored_when_not_waiting_or_ended() -> None:
    runner, host = make_runner(flow([collect("number"), END, FAIL]))
    await runner.on_user_text("4")  # before start
    await runner.start()
    await runner.on_user_text("   ")  # blank
    await runner.on_user_text("4")
    events = len(host.events)
    await runner.on_user_text("5")
    await runner.on_dtmf("1")
    await runner.on_silence()
    assert len(host.events) == events and runner.variables["answer"] == 4


async def test_cancel() -> None:
    runner, host = make_runner(flow([collect("number"), END, FAIL]))
    await runner.start()
    await runner.cancel()
    assert runner.ended and runner.end_reason == "caller_hangup" and host.ended is None
    assert host.events[-1] == ("flow.ended", {"reason": "caller_hangup"})


async def test_initial_variables_and_now() -> None:
    doc = flow(
        [
            {
                "id": "hi",
                "type": "say",
                "text": "Hi {{ name }}, it is {{ now.strftime('%H:%M %Z') }}",
                "next": "bye",
            },
            END,
        ],
        variables={"name": "x"},
        settings={"timezone": "Europe/Berlin"},
    )
    runner, host = make_runner(doc, variables={"name": "Ada"})
    await runner.start()
    assert host.said[0] == "Hi Ada, it is 16:00 CET"


async def run_script(doc: dict[str, Any], inputs: list[str]) -> tuple[list[Any], list[str]]:
    runner, host = make_runner(doc)
    await runner.start()
    for text in inputs:
        await runner.on_user_text(text)
    return host.events, host.said


async def test_deterministic() -> None:
    from flows.examples import example_flows

    doc = next(d for d in example_flows() if d["id"] == "appointment-reminder")
    script = ["no", "yes please", "next friday", "ten in the morning", "no", "next monday", "9:30", "yes"]
    first = await run_script(doc, script)
    second = await run_script(doc, script)
    assert first == second
    events, said = first
    assert events[-1] == ("flow.ended", {"reason": "rescheduled"})
    assert said[-1] == "Done. We'll send you a confirmation for 2026-11-30 at 09:30. Goodbye!"


def test_runner_accepts_flow_model() -> None:
    doc = flow([END])
    runner = FlowRunner(Flow.model_validate(doc), host=None)  # type: ignore[arg-type]
    assert runner.variables == {} and runner.deadline is None


async def test_retry_prompt_template_error_ends_the_call() -> None:
    doc = flow(
        [
            collect("number", retry_prompt="Sorry {{ later }}"),
            END,
            FAIL,
            {
                "id": "x",
                "type": "collect",
                "prompt": "?",
                "variable": "later",
                "kind": "text",
                "next": "bye",
                "on_failure": "bye",
            },
        ]
    )
    doc["nodes"][0]["next"] = "x"
    runner, host = make_runner(doc)
    await runner.start()
    await runner.on_user_text("lots")  # the retry prompt cannot render: later is not set yet
    assert host.ended == "error" and "undefined" in host.of_type("flow.error")[0]["message"]


async def test_unvalidated_flow_with_a_dangling_edge() -> None:
    runner, host = make_runner(flow([{"id": "a", "type": "say", "text": "hi", "next": "ghost"}]))
    await runner.start()
    assert host.ended == "error" and host.of_type("flow.error")[0]["message"] == "no node with id 'ghost'"
