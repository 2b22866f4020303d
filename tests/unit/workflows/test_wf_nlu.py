"""The offline language helpers: normalisation, keyword/example matching and slot extraction."""

from __future__ import annotations

import pytest

from vr3ai.workflows import nlu


def test_normalize_numbers_plurals_apostrophes() -> None:
    assert nlu.normalize("I'd like 3 Appointments for twenty-three people") == [
        "id", "like", "3", "appointment", "for", "23", "people",
    ]
    assert nlu.normalize("one two three") == ["1", "2", "3"]
    assert nlu.normalize("one hundred and five") == ["105"]
    assert nlu.normalize("Don't") == nlu.normalize("dont")


@pytest.mark.parametrize(
    ("utterance", "keywords", "expected"),
    [
        ("I want to BOOK something", ["book"], 1),
        ("I know", ["no"], 0),  # word boundary, not substring
        ("press three", ["3"], 1),  # number normalisation both ways
        ("option 3 please", ["option three"], 2),
        ("what are your opening hours", ["open", "opening hours"], 2),  # longest wins
        ("appointments", ["appointment"], 1),
        ("", ["x"], 0),
    ],
)
def test_keyword_match(utterance: str, keywords: list[str], expected: int) -> None:
    assert nlu.keyword_match(nlu.normalize(utterance), keywords) == expected


def test_example_score() -> None:
    tokens = nlu.normalize("could I make an appointment for tomorrow")
    score, hits = nlu.example_score(tokens, "I'd like to book an appointment")
    assert (score, hits) == (0.5, 1)  # content words: book, appointment
    assert nlu.example_score(tokens, "what are your hours")[0] == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("option three", "3"), ("press 3", "3"), ("two", "2"), ("star", "*"), ("one two", "12"),
     ("three people", None), ("hello", None)],
)
def test_spoken_keypad(text: str, expected: str | None) -> None:
    assert nlu.spoken_keypad(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("555-0199", "5550199"),
        ("five five five oh one nine nine", "5550199"),
        ("double five one", "551"),
        ("my number is +1 (555) 123-4567", "15551234567"),
        ("twelve thirty four", "1234"),
        ("oh I see", None),
        ("no digits here", None),
    ],
)
def test_extract_digits(text: str, expected: str | None) -> None:
    assert nlu.extract_digits(text) == expected


def test_extract_digits_length_limits() -> None:
    assert nlu.extract_digits("12", min_digits=4) is None
    assert nlu.extract_digits("123456", max_digits=5) is None
    assert nlu.extract_digits("1234", min_digits=4, max_digits=4) == "1234"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("two tickets", 2), ("twenty three", 23), ("2.5 kilos", 2.5), ("one hundred and five", 105), ("none", None)],
)
def test_extract_number(text: str, expected: float | None) -> None:
    assert nlu.extract_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("yes please", "yes"), ("Yeah, sure", "yes"), ("nope", "no"), ("that's not right", "no"),
     ("no, wait, yes", "no"), ("I don't know", None), ("maybe", None), ("the sky is blue", None)],
)
def test_extract_yes_no(text: str, expected: str | None) -> None:
    assert nlu.extract_yes_no(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("three pm", "3 PM"),
        ("3pm", "3 PM"),
        ("3:30 p.m.", "3:30 PM"),
        ("15:30", "3:30 PM"),
        ("half past two in the afternoon", "2:30 PM"),
        ("quarter to four", "3:45"),
        ("noon", "12 PM"),
        ("midnight", "12 AM"),
        ("three thirty", "3:30"),
        ("three oh five pm", "3:05 PM"),
        ("at four", "4 o'clock"),
        ("five o'clock please", "5 o'clock"),
        ("tomorrow at 9am", "9 AM"),
        ("two people", None),
        ("I have 15 questions", None),
    ],
)
def test_extract_time(text: str, expected: str | None) -> None:
    assert nlu.extract_time(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tomorrow", "tomorrow"),
        ("the day after tomorrow", "the day after tomorrow"),
        ("today please", "today"),
        ("next friday", "next Friday"),
        ("on Monday", "Monday"),
        ("this weekend", "this weekend"),
        ("march fifth", "March 5"),
        ("the 5th of march", "March 5"),
        ("march the 21st", "March 21"),
        ("the twenty first", "the 21st"),
        ("may I come in", None),
        ("the 5 of us", None),
    ],
)
def test_extract_date(text: str, expected: str | None) -> None:
    assert nlu.extract_date(text) == expected


def test_extract_text_remainder() -> None:
    after = ["my name is", "this is"]
    assert nlu.extract_text("um, my name is John Smith.", after) == "John Smith"
    assert nlu.extract_text("John Smith", after) == "John Smith"
    assert nlu.extract_text("Well, this is Mary O'Neil", after) == "Mary O'Neil"
    assert nlu.extract_text("   ", after) is None


def test_extract_slot_dispatch_and_unknown_type() -> None:
    assert nlu.extract_slot("number", "four") == 4
    with pytest.raises(ValueError, match="unknown slot type"):
        nlu.extract_slot("colour", "red")
