"""Templating: placeholders, fallbacks, missing-variable reporting, malformed placeholders."""

from __future__ import annotations

from vr3ai.workflows.templating import (
    format_value,
    malformed_placeholders,
    render,
    required_variables_in,
    variables_in,
)

CTX = {
    "caller_number": "+15550100",
    "called_number": "8000",
    "direction": "inbound",
    "call_id": "1700000000.42",
    "provider": "ari",
}


def test_context_variables_render() -> None:
    r = render("{{caller_number}} called {{called_number}} ({{direction}}, {{provider}}, {{call_id}})", CTX)
    assert r.text == "+15550100 called 8000 (inbound, ari, 1700000000.42)"
    assert r.used == ("caller_number", "called_number", "direction", "provider", "call_id")
    assert r.missing == ()


def test_spaces_inside_braces() -> None:
    assert render("Hi {{ caller_number }}!", CTX).text == "Hi +15550100!"


def test_fallback_used_when_missing_none_or_empty() -> None:
    for variables in ({}, {"name": None}, {"name": ""}):
        r = render("Hello {{name|there}}.", variables)
        assert r.text == "Hello there."
        assert r.missing == ()
        assert r.used == ("name",)


def test_fallback_ignored_when_value_present() -> None:
    assert render("Hello {{name|there}}.", {"name": "Ada"}).text == "Hello Ada."


def test_fallback_with_spaces_and_quotes() -> None:
    assert render("Hello {{ name | dear caller }}.", {}).text == "Hello dear caller."
    assert render('A{{x|" - "}}B', {}).text == "A - B"


def test_empty_fallback_is_silent() -> None:
    r = render("You're booked for {{day|}} at {{time}}.", {"time": "3 PM"})
    assert r.text == "You're booked for at 3 PM."
    assert r.missing == ()


def test_missing_without_fallback_is_empty_and_reported() -> None:
    r = render("Hello {{name}}, welcome to {{company}}.", {"company": "Acme"})
    assert r.text == "Hello, welcome to Acme."  # tidied: no "Hello , welcome"
    assert r.missing == ("name",)


def test_missing_reported_once() -> None:
    assert render("{{a}} {{a}} {{b}}", {}).missing == ("a", "b")


def test_dotted_names_walk_nested_values() -> None:
    variables = {"customer": {"name": "Ada", "tier": {"level": 2}}, "flat.key": "F"}
    assert render("{{customer.name}} {{customer.tier.level}} {{flat.key}}", variables).text == "Ada 2 F"
    assert render("{{customer.nope|?}}", variables).text == "?"


def test_value_formatting() -> None:
    assert format_value(True) == "yes"
    assert format_value(False) == "no"
    assert format_value(3.0) == "3"
    assert format_value(2.5) == "2.5"
    assert format_value([1, "b"]) == "1, b"
    assert format_value(None) == ""


def test_values_are_not_rendered_again() -> None:
    # A caller who says "{{caller_number}}" must not get template expansion of their words.
    assert render("You said {{text}}", {"text": "{{caller_number}}", **CTX}).text == "You said {{caller_number}}"


def test_text_without_placeholders_is_verbatim() -> None:
    text = "Hello,  this   stays exactly as written ."
    assert render(text, {}).text == text


def test_variables_in_and_required() -> None:
    t = "{{a}} {{b|x}} {{a}} {{c.d}}"
    assert variables_in(t) == ["a", "b", "c.d"]
    assert required_variables_in(t) == ["a", "c.d"]


def test_malformed_placeholders() -> None:
    assert malformed_placeholders("Hi {{name}} and {{name|x}}") == []
    assert malformed_placeholders("Hi {{first name}}") == ["{{first name}}"]
    assert malformed_placeholders("Hi {{1abc}}") == ["{{1abc}}"]
    assert malformed_placeholders("Hi {{name") == ["{{name"]
    assert malformed_placeholders("Hi {caller_number}}") != []
    assert malformed_placeholders("Braces { like } this are fine") == []
