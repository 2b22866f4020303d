"""The called-number rule of vr3ai.telephony.numbers: exact, digits only, optional country code."""

from __future__ import annotations

import pytest

from vr3ai.core.numbers import digits_only, match_number

NANP = ["+15551234567", "15551234567", "5551234567"]


@pytest.mark.parametrize("stored", NANP)
@pytest.mark.parametrize("called", NANP)
def test_every_trunk_form_reaches_every_stored_form(called: str, stored: str) -> None:
    m = match_number(called, ["8000", stored, "+442079460000"])
    assert m.address == stored, m
    assert m.step == (
        "exact" if called == stored else "digits" if called.lstrip("+") == stored.lstrip("+") else "country code"
    )


def test_exact_wins_over_normalised() -> None:
    # Both stored: the delivered form is the one meant.
    assert match_number("15551234567", ["5551234567", "15551234567"]).address == "15551234567"
    assert match_number("5551234567", ["+15551234567", "5551234567"]).address == "5551234567"


def test_separators_and_plus() -> None:
    assert match_number("+1 (555) 123-4567", ["5551234567"]).address == "5551234567"
    assert match_number("15551234567", ["+1 555.123.4567"]).address == "+1 555.123.4567"
    assert digits_only("+1 (555) 123-4567") == "15551234567"
    assert digits_only("8000a") is None and digits_only("s") is None and digits_only("+") is None


def test_what_never_matches() -> None:
    # Extensions match exactly only; a different country code is another number.
    assert match_number("18000", ["8000"]).address is None
    assert match_number("25551234567", ["15551234567"]).address is None
    # A 7-digit local number is not a 10-digit one with "555" as a country code.
    assert match_number("1234567", ["5551234567"]).address is None
    assert match_number("5551234567", ["1234567"]).address is None
    # More than 3 extra digits is not a country code.
    assert match_number("99995551234567", ["5551234567"]).address is None
    assert match_number("s", ["s2"]).address is None and match_number("", ["8000"]).address is None


def test_ambiguous_is_refused_and_named() -> None:
    m = match_number("5551234567", ["15551234567", "445551234567"])
    assert m.address is None and m.ambiguous == ["15551234567", "445551234567"]
    m = match_number("15551234567", ["+15551234567", "1-555-123-4567"])
    assert m.address is None and m.ambiguous == ["+15551234567", "1-555-123-4567"]


def test_tried_forms_are_listed() -> None:
    m = match_number("+15551234567", ["8000"])
    assert m.address is None
    text = m.tried_text()
    for part in ("exact '+15551234567'", "digits only '15551234567'", "'5551234567'", "country code before"):
        assert part in text, text
    assert (
        match_number("8123", ["8000"]).tried_text()
        == "exact '8123', digits only '8123', without a country code (too short)"
    )
