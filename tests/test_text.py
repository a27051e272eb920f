"""Tests for pipeline.text: speech normalisation, streaming clause splitting and heard-text cutting."""

from __future__ import annotations

import random
import time

import pytest

from pipeline.normalize import normalize_for_speech
from pipeline.text import ClauseSplitter, cut_at_heard, only_fillers

# -- normalize_for_speech ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,spoken",
    [
        # money
        ("It costs $3.50.", "It costs three dollars and fifty cents."),
        ("$1,200", "one thousand two hundred dollars"),
        ("$1", "one dollar"),
        ("$0.99", "ninety-nine cents"),
        ("$1.01", "one dollar and one cent"),
        ("€5", "five euros"),
        ("£20", "twenty pounds"),
        ("£1.50", "one pound and fifty pence"),
        ("$2.5 million", "two point five million dollars"),
        ("$5k", "five thousand dollars"),
        # percentages
        ("15%", "fifteen percent"),
        ("2.5 %", "two point five percent"),
        # times
        ("3:30 pm", "three thirty p m"),
        ("15:45", "fifteen forty-five"),
        ("7am", "seven a m"),
        ("10:00", "ten o'clock"),
        ("9:05 AM", "nine oh five a m"),
        ("at 7 p.m. Then", "at seven p m. Then"),
        ("at 7 p.m. and", "at seven p m and"),
        # ordinals and numbers
        ("1st", "first"),
        ("22nd", "twenty-second"),
        ("the 3rd time", "the third time"),
        ("1,000", "one thousand"),
        ("2.5", "two point five"),
        ("2,000,000", "two million"),
        ("It is -5 outside", "It is minus five outside"),
        ("007", "zero zero seven"),
        ("3-4 cups", "three to four cups"),
        ("COVID-19", "COVID-nineteen"),
        ("5G", "five G"),
        ("call 555-1234", "call five five five, one two three four"),
        # years
        ("In 1999 we", "In nineteen ninety-nine we"),
        ("2005", "two thousand five"),
        ("the 1990s", "the nineteen nineties"),
        ("page 1050", "page one thousand fifty"),
        ("1999.5", "one thousand nine hundred ninety-nine point five"),
        # abbreviations and symbols
        ("Dr. Smith", "Doctor Smith"),
        ("Mr. and Mrs. Jones met Ms. Lee", "Mister and Missus Jones met Miz Lee"),
        ("St. Louis", "Saint Louis"),
        ("on Main St.", "on Main Street."),
        ("fruit, e.g. apples", "fruit, for example apples"),
        ("i.e., this", "that is, this"),
        ("apples, pears, etc.", "apples, pears, et cetera."),
        ("cats vs. dogs", "cats versus dogs"),
        ("approx. 5 km", "approximately five km"),
        ("Tom & Jerry", "Tom and Jerry"),
        ("20°C", "twenty degrees Celsius"),
        ("#1 hit", "number one hit"),
    ],
)
def test_normalize_examples(text, spoken):
    assert normalize_for_speech(text) == spoken


@pytest.mark.parametrize(
    "text,spoken",
    [
        ("**bold** and *italic* and __strong__ and _em_", "bold and italic and strong and em"),
        ("run `pip install` now", "run pip install now"),
        ("see [the docs](https://example.com/docs) now", "see the docs now"),
        ("# Title\nSome text.", "Title. Some text."),
        ("Steps:\n- mix\n- bake\n1. cool\n2) serve", "Steps: mix. bake. cool. serve"),
        ("> quoted line", "quoted line"),
        ("```python\nprint(x)\n```", "print(x)"),
        ("a\n\n---\n\nb", "a b"),
        ("my_var_name stays", "my_var_name stays"),
        ("2 * 3", "two three"),
        (
            "| Item | Price |\n|---|:--:|\n| Apple | $3 |\n| Pear | $4 |",
            "Item, Price. Apple, three dollars. Pear, four dollars",
        ),
        ("Done • ok → next\n* * *", "Done ok next"),
    ],
)
def test_normalize_markdown(text, spoken):
    assert normalize_for_speech(text) == spoken


def test_normalize_is_idempotent():
    samples = [
        "It costs $3.50.",
        "Meet Dr. Smith at 3:30 pm on the 22nd, i.e. in 1999!",
        "# Title\n- a\n- b",
        "2.5%",
    ]
    for text in samples:
        once = normalize_for_speech(text)
        assert normalize_for_speech(once) == once
        assert not any(ch.isdigit() for ch in once)


@pytest.mark.parametrize(
    "text,spoken",
    [
        ("Visit https://www.example.com/path?x=1.", "Visit example dot com."),
        ("Go to www.python.org today", "Go to python dot org today"),
        ("see example.com", "see example dot com"),
        ("mail bob.smith@gmail.com", "mail bob dot smith at gmail dot com"),
        ("(jane+news@mail.example.org)", "(jane+news at mail dot example dot org)"),
        ("See [the docs](http://x.io/a) and ![a chart](c.png).", "See the docs and a chart."),
    ],
)
def test_normalize_urls_and_emails(text, spoken):
    assert normalize_for_speech(text) == spoken


@pytest.mark.parametrize("unit", ["-1", "[", "a", "a.", "`a", "**a", "1,"])
def test_normalize_takes_linear_time_on_long_runs(unit):
    """The speech endpoints take texts of 5,000 characters: a run that no rule completes (an address's
    local part with no "@", link text with no "]") must not make a pattern retry from every position.
    Quadratic, the email rule took 180 ms for 4,000 characters: 50,000 would take about 30 s."""
    text = unit * (50_000 // len(unit))
    start = time.perf_counter()
    normalize_for_speech(text)
    assert time.perf_counter() - start < 2.0


def test_normalize_removes_emoji_and_pictographs():
    assert normalize_for_speech("Great job 👍🏽! 🎉 See you ❤️ soon ✅") == "Great job! See you soon"
    assert normalize_for_speech("family 👨‍👩‍👧 and flag 🇺🇸.") == "family and flag."


def test_normalize_collapses_whitespace_and_keeps_plain_text():
    assert normalize_for_speech("  Hello,\t\tworld \n\n how   are you?  ") == "Hello, world how are you?"
    assert normalize_for_speech("Plain words stay as they are.") == "Plain words stay as they are."
    assert normalize_for_speech("") == ""


def test_normalize_is_fast():
    text = "Dr. Smith paid $1,200 on the 22nd at 3:30 pm, i.e. 15% more than in 1999! 🎉 " * 5
    start = time.perf_counter()
    for _ in range(200):
        normalize_for_speech(text)
    assert time.perf_counter() - start < 2.0


# -- ClauseSplitter ------------------------------------------------------------------------------------------

SAMPLES = [
    "Sure, I can help with that. The price is $3.50, or 1,000 yen. Dr. Smith said e.g. apples are good! "
    "Really? Yes.",
    "Hello there, my friend; how are you — good? Well... I think so: yes.",
    "## Recipe\n1. Mix the flour\n2. Bake it\n\nDone. J. R. R. Tolkien wrote it, i.e. the book.",
    "Steps: \n1. Mix. 2. Bake. \n 3. Cool\n\n 4) Serve 42. Done",
    'He said "stop." Then he left (quickly!) and so on, etc. and more',
    "  leading and trailing spaces   with   runs \t of whitespace.  ",
    "Averyveryveryveryveryveryverylongwordwithoutanyspacesatall " * 3,
]


def _split(text: str, chunks: list[str], **kwargs) -> list[str]:
    splitter = ClauseSplitter(**kwargs)
    out = [clause for chunk in chunks for clause in splitter.push(chunk)]
    rest = splitter.flush()
    return out + ([rest] if rest is not None else [])


def _check_clauses(clauses: list[str], text: str) -> None:
    assert all(c and c == c.strip() for c in clauses)
    assert " ".join(clauses) == " ".join(text.split())


def test_splits_at_sentences_and_clauses():
    assert _split(SAMPLES[0], [SAMPLES[0]]) == [
        "Sure, I can help with that.",
        "The price is $3.50,",
        "or 1,000 yen.",
        "Dr. Smith said e.g. apples are good!",
        "Really?",
        "Yes.",
    ]


def test_soft_punctuation_needs_min_words():
    text = "Hello there, my friend; how are you — good? Yes, sir, of course, I will."
    assert _split(text, [text]) == [
        "Hello there,",  # first clause: first_min_words=2
        "my friend; how are you —",  # "my friend;" has only 2 < min_words=3
        "good?",
        "Yes, sir, of course,",
        "I will.",
    ]


def test_first_min_words_applies_only_to_first_clause():
    text = "Okay then, we go, and then, we stop."
    assert _split(text, [text], min_words=4, first_min_words=2) == [
        "Okay then,",
        "we go, and then,",
        "we stop.",
    ]


def test_does_not_split_numbers_abbreviations_or_initials():
    text = (
        "It costs 3.50 or 1,000 total, e.g. for Dr. Who and Mrs. Brown at 7 a.m. with J. R. R. Tolkien today"
    )
    assert _split(text, [text], min_words=100, first_min_words=100) == [text]


def test_splits_at_line_breaks():
    text = "## Recipe\n1. Mix the flour\n2. Bake it\n\nDone."
    assert _split(text, [text]) == ["## Recipe", "1. Mix the flour", "2. Bake it", "Done."]


def test_list_numbers_hold_only_at_line_start():
    text = "Options:\n1. Mix it\n2. Bake it. The answer? 42. That is all."
    assert _split(text, [text]) == [
        "Options:",
        "1. Mix it",
        "2. Bake it.",
        "The answer?",
        "42.",
        "That is all.",
    ]
    # The line break may arrive in its own delta, after the previous clause was already cut.
    assert _split(text, ["Options: ", "\n1. Mix it\n", "2. Bake it. The answer? 42. That is all."]) == _split(
        text, [text]
    )


def test_waits_for_whitespace_before_splitting():
    splitter = ClauseSplitter()
    assert splitter.push("The total is 3.") == []
    assert splitter.push("50 dollars. And") == ["The total is 3.50 dollars."]
    assert splitter.flush() == "And"


def test_max_chars_splits_at_last_word_boundary():
    text = "word " * 50
    clauses = _split(text, [text], max_chars=40)
    assert all(len(c) <= 40 for c in clauses)
    assert clauses[0] == " ".join(["word"] * 8)
    _check_clauses(clauses, text)


def test_max_chars_keeps_overlong_word_whole():
    text = "x" * 50 + " short tail"
    assert _split(text, [text], max_chars=20) == ["x" * 50, "short tail"]


def test_eager_first_words():
    text = "one two three four five six seven, eight nine ten eleven."
    assert _split(text, [text], eager_first_words=3) == [
        "one two three",
        "four five six seven,",
        "eight nine ten eleven.",
    ]
    # Punctuation that comes first still wins, and eagerness applies to the first clause only.
    assert _split(
        "Hi there, one two three four five", ["Hi there, one two three four five"], eager_first_words=3
    ) == [
        "Hi there,",
        "one two three four five",
    ]


def test_flush_resets_for_next_response():
    splitter = ClauseSplitter()
    assert splitter.push("Hi there, friend") == ["Hi there,"]
    assert splitter.flush() == "friend"
    assert splitter.flush() is None
    assert splitter.push("Ok now, go") == ["Ok now,"]  # first_min_words applies again


def test_empty_and_whitespace_only_input():
    splitter = ClauseSplitter()
    assert splitter.push("") == []
    assert splitter.push("   \n ") == []
    assert splitter.flush() is None


@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("kwargs", [{}, {"max_chars": 30}, {"eager_first_words": 2, "min_words": 1}])
def test_every_two_way_split_gives_same_clauses(text, kwargs):
    whole = _split(text, [text], **kwargs)
    _check_clauses(whole, text)
    for i in range(len(text) + 1):
        assert _split(text, [text[:i], text[i:]], **kwargs) == whole, i
    assert _split(text, list(text), **kwargs) == whole


def test_random_chunking_preserves_text():
    rng = random.Random(1234)
    vocab = "word 1. Dr. 3.50 1,000 e.g. yes. no! why? so, then; — x: a".split() + ["\n"]
    for _ in range(300):
        text = "".join(
            rng.choice(vocab) + rng.choice([" ", " ", "  ", "\n", "\t"]) for _ in range(rng.randint(0, 40))
        )
        kwargs = {"min_words": rng.randint(1, 4), "max_chars": rng.randint(10, 60)}
        whole = _split(text, [text], **kwargs)
        _check_clauses(whole, text)
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 8))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert _split(text, chunks, **kwargs) == whole


def test_rejects_bad_limits():
    with pytest.raises(ValueError):
        ClauseSplitter(max_chars=0)
    with pytest.raises(ValueError):
        ClauseSplitter(eager_first_words=0)


# -- cut_at_heard --------------------------------------------------------------------------------------------


def test_cut_at_heard_bounds():
    text = "hello wonderful world"
    assert cut_at_heard(text, 0.0) == ""
    assert cut_at_heard(text, -1.0) == ""
    assert cut_at_heard(text, float("nan")) == ""
    assert cut_at_heard(text, 1.0) == text
    assert cut_at_heard(text, 1.5) == text
    assert cut_at_heard("", 0.5) == ""


def test_cut_at_heard_rounds_down_to_whole_words():
    text = "hello wonderful world"  # 21 chars; words end at 5, 15, 21
    assert cut_at_heard(text, 4 / 21) == ""
    assert cut_at_heard(text, 5 / 21) == "hello"
    assert cut_at_heard(text, 0.5) == "hello"
    assert cut_at_heard(text, 15 / 21) == "hello wonderful"
    assert cut_at_heard(text, 0.99) == "hello wonderful"


def test_cut_at_heard_is_monotonic_prefix():
    text = "The quick brown fox jumps over the lazy dog."
    previous = ""
    for step in range(101):
        heard = cut_at_heard(text, step / 100)
        assert text.startswith(heard)
        assert heard == "" or heard == text or text[len(heard)] == " "
        assert len(heard) >= len(previous)
        previous = heard


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("Hmm.", True),
        ("HMMMM.", True),
        ("Mm-hmm", True),
        ("Uh-huh.", True),
        ("um, uh", True),
        ("Oh.", True),
        ("Hmm, what?", False),
        ("home", False),
        ("I", False),
        ("Mommy", False),
    ],
)
def test_only_fillers(text: str, expected: bool) -> None:
    assert only_fillers(text) is expected
