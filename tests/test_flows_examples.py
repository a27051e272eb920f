"""The example flows as whole conversations in text mode (the booking POSTs to a real local server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flows import HttpTool, example_flows, load_flow
from flows.runner import FlowRunner
from tests.flows_helpers import Clock, FakeLLM, LocalApi, ScriptedHost, serve_local_api


@pytest.fixture(scope="module")
def api() -> Iterator[LocalApi]:
    with serve_local_api() as server:
        yield server


def example(flow_id: str) -> dict[str, Any]:
    return next(d for d in example_flows() if d["id"] == flow_id)


def booking_runner(api: LocalApi) -> tuple[FlowRunner, ScriptedHost]:
    host = ScriptedHost()
    runner = FlowRunner(
        load_flow(example("restaurant-booking")),
        host,
        http=HttpTool(["127.0.0.1"], trust_env=False),
        clock=Clock(),
        variables={"booking_url": f"{api.url}/bookings"},
    )
    return runner, host


async def test_restaurant_booking_conversation(api: LocalApi) -> None:
    api.requests.clear()
    runner, host = booking_runner(api)
    await runner.start()
    assert host.said == [
        "Hi, thanks for calling Luigi's. I can book a table for you.",
        "How many people is the booking for?",
    ]
    await runner.on_user_text("There will be four of us")
    assert host.said[-1] == "Great, a table for 4. Which day would you like to come?"
    await runner.on_user_text("hmm, let me think")  # not a date: retry prompt
    assert host.said[-1] == "Sorry, which day? For example, tomorrow or Friday."
    await runner.on_user_text("next friday")
    await runner.on_user_text("seven thirty in the evening")
    assert host.said[-1] == "So that's a table for 4 on 2026-11-27 at 19:30. Shall I book it?"
    await runner.on_user_text("yes, that's right")

    assert runner.ended and host.ended == "booked"
    variables = runner.variables
    assert {k: variables[k] for k in ("party_size", "date", "time", "confirmed")} == {
        "party_size": 4,
        "date": "2026-11-27",
        "time": "19:30",
        "confirmed": True,
    }
    assert variables["booking_id"] == "BK-0001"
    assert host.said[-1] == "You're booked. Your reference is BK-0001. See you then, goodbye!"
    assert api.requests == [
        {
            "method": "POST",
            "path": "/bookings",
            "headers": api.requests[0]["headers"],
            "json": {"party_size": 4, "date": "2026-11-27", "time": "19:30", "restaurant": "Luigi's"},
        }
    ]
    assert api.requests[0]["headers"]["x-source"] == "voxgate-flow"
    assert host.nodes_entered() == [
        "greet", "ask_party", "check_party", "ask_date", "ask_time", "confirm", "check_confirmed", "book", "booked",
    ]  # fmt: skip
    assert [e["name"] for e in host.of_type("flow.variable_set")] == [
        "party_size", "date", "time", "confirmed", "booking_id",
    ]  # fmt: skip


async def test_restaurant_booking_start_over_and_large_group(api: LocalApi) -> None:
    runner, host = booking_runner(api)
    await runner.start()
    for text in ("two", "tomorrow", "8pm", "no"):
        await runner.on_user_text(text)
    assert host.said[-2:] == ["No problem, let's start again.", "How many people is the booking for?"]
    await runner.on_user_text("twenty")
    assert host.ended == "large_group"


async def test_restaurant_booking_api_down(api: LocalApi) -> None:
    host = ScriptedHost()
    runner = FlowRunner(
        load_flow(example("restaurant-booking")),
        host,
        http=HttpTool(["127.0.0.1"], trust_env=False, retry_backoff_s=0.01),
        clock=Clock(),
        variables={"booking_url": f"{api.url}/fail"},
    )
    await runner.start()
    for text in ("3", "december 3rd", "noon", "yes"):
        await runner.on_user_text(text)
    assert host.ended == "booking_failed"


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (["yes"], "confirmed"),
        (["no", "no"], "cancelled"),
        (["nope", "sure", "friday", "3 pm", "yes"], "rescheduled"),
    ],
)
async def test_appointment_reminder(script: list[str], reason: str) -> None:
    host = ScriptedHost()
    runner = FlowRunner(
        load_flow(example("appointment-reminder")), host, clock=Clock(), variables={"customer_name": "Ada"}
    )
    await runner.start()
    assert host.said[0].startswith("Hello Ada, this is Riverside Dental")
    for text in script:
        await runner.on_user_text(text)
    assert host.ended == reason


async def test_phone_menu() -> None:
    host = ScriptedHost()
    runner = FlowRunner(load_flow(example("phone-menu")), host, clock=Clock())
    await runner.start()
    await runner.on_dtmf("1")
    assert host.said[-2] == "We're open Monday to Saturday, eight in the morning to six in the evening."
    await runner.on_user_text("main menu")
    await runner.on_user_text("I'd like to speak to someone")
    assert host.transfers == [("sip:frontdesk@pbx.example.com", "Please hold while I connect you.")]


async def test_faq_agent() -> None:
    llm = FakeLLM([{"say": "Helmets are free.", "exit": "stay"}])
    host = ScriptedHost()
    runner = FlowRunner(load_flow(example("faq-agent")), host, complete=llm, clock=Clock())
    await runner.start()
    await runner.on_user_text("Do I need to pay for a helmet?")
    assert host.said[-1] == "Helmets are free."
    await runner.on_user_text("Can I talk to a human?")
    assert host.transfers == [("+15555550199", "Sure, I'll connect you with someone from Sunny Bikes now.")]
    assert len(llm.calls) == 1
