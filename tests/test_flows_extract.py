"""Deterministic value parsers: tables of utterances and the values they must give."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from flows.extract import (
    extract,
    match_choice,
    match_exit,
    parse_date,
    parse_number,
    parse_time,
    parse_yes_no,
)
from flows.schema import LlmExit

NOW = datetime(2026, 11, 23, 15, 0)  # a Monday


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4", 4),
        ("four", 4),
        ("Four people, please.", 4),
        ("twenty two", 22),
        ("twenty-two", 22),
        ("a table for 12", 12),
        ("a dozen", 12),
        ("half a dozen of us", 6),
        ("a couple of us", 2),
        ("one hundred and five", 105),
        ("1,200", 1200),
        ("2.5", 2.5),
        ("thirteen", 13),
        ("we are eight", 8),
        ("five or six", 5),
        ("zero", 0),
        ("no idea", None),
        ("", None),
        ("someone", None),
        # Whisper's homophones, only before a counted noun
        ("We are for people.", 4),
        ("a table to people", 2),
        ("for of us", 4),
        ("a table for dinner", None),
        ("I want to book", None),
    ],
)
def test_number(text: str, value: float | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("yes", True),
        ("Yeah, sure.", True),
        ("yep", True),
        ("that's right", True),
        ("That\u2019s correct", True),
        ("absolutely", True),
        ("sounds good", True),
        ("uh huh", True),
        ("no problem", True),
        ("sure, why not", True),
        ("no", False),
        ("Nope.", False),
        ("nah", False),
        ("not really", False),
        ("that's not right", False),
        ("absolutely not", False),
        ("I don't think so", False),
        ("that's wrong", False),
        ("maybe", None),
        ("I'm not sure", None),
        ("what?", None),
        ("", None),
    ],
)
def test_yes_no(text: str, value: bool | None) -> None:
    assert parse_yes_no(text) is value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("today", "2026-11-23"),
        ("tonight", "2026-11-23"),
        ("tomorrow", "2026-11-24"),
        ("tomorrow evening please", "2026-11-24"),
        ("the day after tomorrow", "2026-11-25"),
        ("friday", "2026-11-27"),
        ("next friday", "2026-11-27"),
        ("this monday", "2026-11-23"),
        ("next monday", "2026-11-30"),
        ("monday next week", "2026-11-30"),
        ("on Sat", "2026-11-28"),
        ("december 3rd", "2026-12-03"),
        ("December the third", "2026-12-03"),
        ("the 3rd of December", "2026-12-03"),
        ("december twenty-first", "2026-12-21"),
        ("dec 3 2027", "2027-12-03"),
        ("march 1st", "2027-03-01"),  # already past this year: next year
        ("november 23", "2026-11-23"),
        ("3/12", "2027-03-12"),
        ("12/24", "2026-12-24"),
        ("12/24/2027", "2027-12-24"),
        ("2027-01-05", "2027-01-05"),
        ("in 3 days", "2026-11-26"),
        ("in two weeks", "2026-12-07"),
        ("a week from today", "2026-11-30"),
        ("on the 15th", "2026-12-15"),
        ("the twenty-fifth", "2026-11-25"),
        ("may 5", "2027-05-05"),
        ("may I come on friday", "2026-11-27"),
        ("february 30", None),
        ("whenever", None),
    ],
)
def test_date(text: str, value: str | None) -> None:
    assert parse_date(text, NOW) == value


def test_date_day_first_and_plain_date_now() -> None:
    assert parse_date("3/12", NOW, day_first=True) == "2026-12-03"
    assert parse_date("tomorrow", date(2026, 12, 31)) == "2027-01-01"
    assert parse_date("feb 29", date(2027, 3, 1)) == "2028-02-29"  # the next leap day


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("7 pm", "19:00"),
        ("7pm", "19:00"),
        ("7 p.m.", "19:00"),
        ("7:30pm", "19:30"),
        ("19:30", "19:30"),
        ("7.30 pm", "19:30"),
        ("seven thirty in the evening", "19:30"),
        ("seven thirty", "07:30"),
        ("half past seven tonight", "19:30"),
        ("quarter to eight in the evening", "19:45"),
        ("ten past nine", "09:10"),
        ("at 8 in the morning", "08:00"),
        ("8 o'clock", "08:00"),
        ("seven oh five pm", "19:05"),
        ("noon", "12:00"),
        ("around midday", "12:00"),
        ("midnight", "00:00"),
        ("12 am", "00:00"),
        ("12 pm", "12:00"),
        ("table for 4 at 7 pm", "19:00"),
        ("at seven", "07:00"),
        ("1930", "19:30"),
        ("730 in the evening", "19:30"),
        ("At seven thirty in the evening.", "19:30"),
        ("six in the afternoon", "18:00"),
        ("whenever you like", None),
        ("at 25", None),
    ],
)
def test_time(text: str, value: str | None) -> None:
    assert parse_time(text) == value


CHOICES = [("patio", ["outside", "terrace"]), ("indoors", ["inside", "dining room"]), ("bar", [])]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("patio", "patio"),
        ("PATIO", "patio"),
        ("outside please", "patio"),
        ("the dining room would be nice", "indoors"),
        ("at the bar", "bar"),
        ("pattio", "patio"),  # a transcription slip
        ("inside or outside, I don't mind", None),  # two choices: ambiguous
        ("the kitchen", None),
    ],
)
def test_choice(text: str, value: str | None) -> None:
    assert match_choice(text, CHOICES) == value


EXITS = [
    LlmExit(name="wants_human", description="caller wants a person", next="x"),
    LlmExit(name="booking", next="y", phrases=["make a booking", "book a table"]),
    LlmExit(name="goodbye", next="z"),
]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("can I talk to a person", "wants_human"),
        ("Let me speak to someone please", "wants_human"),
        ("representative", "wants_human"),
        ("I'd like to book a table", "booking"),
        ("ok bye", "goodbye"),
        ("that's all, thanks", "goodbye"),
        ("what time do you open?", None),
        ("humane society", None),  # whole words only
    ],
)
def test_exit_phrases(text: str, value: str | None) -> None:
    assert match_exit(text, EXITS) == value
    assert match_exit(text, [e.model_dump() for e in EXITS]) == value


@pytest.mark.parametrize(
    ("kind", "text", "kwargs", "value"),
    [
        ("text", "  John Smith ", {}, "John Smith"),
        ("text", "   ", {}, None),
        ("regex", "my code is AB-1234", {"pattern": r"[A-Z]{2}-\d{4}"}, "AB-1234"),
        ("regex", "zip is nine oh two one oh", {"pattern": r"\b(\d{5})\b"}, "90210"),
        ("regex", "no code", {"pattern": r"\d{4}"}, None),
        ("choice", "terrace", {"choices": CHOICES}, "patio"),
        ("date", "tomorrow", {"now": NOW}, "2026-11-24"),
        ("time", "9pm", {}, "21:00"),
        ("number", "three", {}, 3),
        ("yes_no", "yup", {}, True),
    ],
)
def test_extract_dispatch(kind: str, text: str, kwargs: dict, value: object) -> None:
    assert extract(kind, text, **kwargs) == value


def test_extract_unknown_kind() -> None:
    with pytest.raises(ValueError):
        extract("colour", "red")
