"""Conversations with the offline rule responder: keywords, examples, dtmf, slots, idle, end."""

from __future__ import annotations

import json
from typing import Any

import pytest

from vr3ai.workflows.definition import DefinitionError, example_definition, validate_definition
from vr3ai.workflows.responder import CallerTurn, Hangup, ReplyPart, Responder, Say
from vr3ai.workflows.responders.rules import RuleResponder

CTX = {"caller_number": "+15550100", "called_number": "8000", "direction": "inbound", "call_id": "ch-1",
       "provider": "ari"}


def speech(text: str) -> CallerTurn:
    return CallerTurn("speech", text=text)


def dtmf(keys: str) -> CallerTurn:
    return CallerTurn("dtmf", dtmf=keys)


IDLE = CallerTurn("idle")


async def opening(r: RuleResponder) -> list[ReplyPart]:
    return [p async for p in r.opening()]


async def turn(r: RuleResponder, t: CallerTurn) -> list[ReplyPart]:
    return [p async for p in r.respond(t)]


def texts(parts: list[ReplyPart]) -> list[str]:
    return [p.text for p in parts if isinstance(p, Say)]


async def receptionist() -> RuleResponder:
    r = RuleResponder(example_definition(), CTX)
    await opening(r)
    return r


MENU = ("I can book an appointment, tell you our opening hours, or take a message. Which would you like? "
        "You can also press 1, 2 or 3.")


def test_satisfies_the_protocol() -> None:
    r: Responder = RuleResponder(example_definition(), CTX)
    assert r.state.node_id == "greeting"


async def test_opening_says_greeting_verbatim_and_moves_on() -> None:
    r = RuleResponder(example_definition(), CTX)
    parts = await opening(r)
    assert parts == [Say("Hello, thanks for calling Acme Dental. How can I help you today?", fixed=True)]
    assert r.state.node_id == "menu"
    assert r.state.node_path == ["greeting", "menu"]


async def test_run_variables_override_workflow_defaults() -> None:
    r = RuleResponder(example_definition(), {**CTX, "company": "Bright Smiles"})
    assert texts(await opening(r)) == ["Hello, thanks for calling Bright Smiles. How can I help you today?"]


async def test_accepts_json_text_and_rejects_invalid() -> None:
    r = RuleResponder(json.dumps(example_definition()), CTX)
    assert len(await opening(r)) == 1
    with pytest.raises(DefinitionError):
        RuleResponder({"nodes": []}, CTX)


async def test_keyword_match_moves_and_says_target() -> None:
    r = await receptionist()
    parts = await turn(r, speech("What are your OPENING HOURS?"))
    assert texts(parts) == ["We're open Monday to Friday from 9 AM to 5 PM. Thanks for calling, goodbye!"]
    assert isinstance(parts[-1], Hangup)
    assert r.state.node_path == ["greeting", "menu", "hours"]
    assert r.state.ended


async def test_turns_after_hangup_are_ignored() -> None:
    r = await receptionist()
    await turn(r, dtmf("2"))
    assert await turn(r, speech("hello?")) == []
    assert await turn(r, IDLE) == []


async def test_example_match() -> None:
    r = await receptionist()
    parts = await turn(r, speech("Can someone ring me back later"))
    assert texts(parts) == ["Of course. Please tell me your name and your message."]
    assert r.state.node_id == "message"


async def test_keywords_beat_examples() -> None:
    r = await receptionist()
    # "see the dentist" is an example of booking, "message" a keyword of the message edge.
    await turn(r, speech("I need to see the dentist, can I leave a message"))
    assert r.state.node_id == "message"


async def test_no_match_reprompts_with_node_say() -> None:
    r = await receptionist()
    parts = await turn(r, speech("purple elephants"))
    assert parts == [Say("Sorry, I didn't catch that. " + MENU, fixed=True)]
    assert r.state.node_id == "menu"


async def test_keyword_needs_word_boundary() -> None:
    r = await receptionist()
    await turn(r, dtmf("1"))
    await turn(r, speech("at three pm"))
    assert r.state.node_id == "confirm"
    parts = await turn(r, speech("I know"))  # contains "no" only as a substring
    assert r.state.node_id == "confirm"
    assert texts(parts) == ["Sorry, please say yes to book 3 PM, or no to pick another time."]
    assert parts[0] == Say(texts(parts)[0], fixed=False)  # uses {{time}}, which the caller said


async def test_dtmf_edge() -> None:
    r = await receptionist()
    parts = await turn(r, dtmf("1"))
    assert parts == [Say("Sure. Which day and time would suit you?", fixed=True)]
    assert r.state.node_id == "booking"


async def test_unknown_dtmf_reprompts() -> None:
    r = await receptionist()
    parts = await turn(r, dtmf("7"))
    assert texts(parts) == ["Sorry, I didn't catch that. " + MENU]


async def test_spoken_keypad_choice() -> None:
    r = await receptionist()
    await turn(r, speech("option two"))
    assert r.state.node_path[-1] == "hours"


async def test_slots_chain_and_confirmation_flow() -> None:
    r = await receptionist()
    # One utterance: menu → booking (keyword) → confirm (its gated catch-all, filled by the same words).
    parts = await turn(r, speech("I'd like to book an appointment for tomorrow at three thirty pm"))
    assert parts == [Say("So that's tomorrow at 3:30 PM. Shall I book it?", fixed=False)]
    assert r.state.variables["day"] == "tomorrow"
    assert r.state.variables["time"] == "3:30 PM"
    assert r.state.node_path == ["greeting", "menu", "booking", "confirm"]
    # "No" goes back; the old time must not bounce us straight back to confirm.
    parts = await turn(r, speech("no"))
    assert texts(parts) == ["Sure. Which day and time would suit you?"]
    parts = await turn(r, speech("um"))
    assert r.state.node_id == "booking"
    assert texts(parts) == ["Sorry, I didn't catch that. Sure. Which day and time would suit you?"]
    parts = await turn(r, speech("make it four pm"))
    assert texts(parts) == ["So that's tomorrow at 4 PM. Shall I book it?"]
    parts = await turn(r, speech("yes please"))
    assert texts(parts) == ["Great, you're booked for tomorrow at 4 PM. We'll text a reminder to +15550100. Goodbye!"]
    assert isinstance(parts[-1], Hangup) and parts[0] == Say(texts(parts)[0], fixed=False)
    assert r.state.node_path == ["greeting", "menu", "booking", "confirm", "booking", "confirm", "booked"]


async def test_required_slot_is_asked_for() -> None:
    r = await receptionist()
    await turn(r, dtmf("1"))
    parts = await turn(r, speech("next friday"))
    assert texts(parts) == ["What time would suit you? For example, ten AM or three thirty PM."]
    assert r.state.variables["day"] == "next Friday" and "time" not in r.state.variables
    parts = await turn(r, speech("noon"))
    assert texts(parts) == ["So that's next Friday at 12 PM. Shall I book it?"]


async def test_partial_answer_on_arrival_asks_for_the_rest() -> None:
    r = await receptionist()
    parts = await turn(r, speech("can I book for monday"))
    assert texts(parts) == ["What time would suit you? For example, ten AM or three thirty PM."]
    assert r.state.node_id == "booking"


async def test_free_text_slot_is_not_filled_by_the_request_itself() -> None:
    r = await receptionist()
    await turn(r, speech("I'd like to leave a message"))
    assert r.state.node_id == "message" and "message" not in r.state.variables
    r = await receptionist()
    parts = await turn(r, speech("I want to leave a message, my message is the invoice is wrong"))
    assert texts(parts) == ["Thank you, I'll pass your message on. Goodbye!"]
    assert r.state.variables["message"] == "the invoice is wrong"


async def test_free_text_slot() -> None:
    r = await receptionist()
    await turn(r, dtmf("3"))
    parts = await turn(r, speech("Um, this is Ada, my message is please call me about my filling."))
    assert texts(parts) == ["Thank you, I'll pass your message on. Goodbye!"]
    assert r.state.variables["message"] == "please call me about my filling"


async def test_idle_reprompts_then_hangs_up() -> None:
    r = await receptionist()
    first = await turn(r, IDLE)
    assert first == [Say("Are you still there? " + MENU, fixed=True)]
    assert texts(await turn(r, IDLE)) == ["Are you still there? " + MENU]
    parts = await turn(r, IDLE)
    assert texts(parts) == ["I haven't heard anything for a while, so I'll hang up now. Goodbye."]
    assert isinstance(parts[-1], Hangup) and parts[-1].reason == "caller stayed silent"
    assert r.state.ended
    assert any(e["level"] == "info" and "silent" in e["message"] for e in r.state.events)


async def test_speech_resets_the_idle_count() -> None:
    r = await receptionist()
    await turn(r, IDLE)
    await turn(r, IDLE)
    await turn(r, speech("hmm"))
    parts = await turn(r, IDLE)
    assert not any(isinstance(p, Hangup) for p in parts)


def menu_workflow(**settings: Any) -> dict[str, Any]:
    """A start node that is itself a keypad menu (several outgoing edges), with a PIN entry."""
    return {
        "settings": settings,
        "nodes": [
            {"id": "ivr", "type": "start", "greeting": "Press 1 for sales, 22 for billing, or say operator."},
            {"id": "sales", "type": "end", "say": "Connecting you to sales."},
            {"id": "billing", "type": "agent", "say": "Please enter your account number, then hash.",
             "extract": [{"name": "account", "type": "digits", "min_digits": 4, "max_digits": 8,
                          "required": True, "ask": "Please enter or say your account number."}]},
            {"id": "account_ok", "type": "end", "say": "Thanks, account {{account}} noted."},
            {"id": "operator", "type": "end", "say": "One moment, {{caller_number|caller}}."},
        ],
        "edges": [
            {"id": "to_sales", "from": "ivr", "to": "sales", "dtmf": "1"},
            {"id": "to_billing", "from": "ivr", "to": "billing", "dtmf": "22"},
            {"id": "to_operator", "from": "ivr", "to": "operator", "keywords": ["operator", "human"], "dtmf": "0"},
            {"id": "got_account", "from": "billing", "to": "account_ok", "requires": ["account"]},
        ],
    }


async def test_start_menu_stays_at_start() -> None:
    r = RuleResponder(menu_workflow(), CTX)
    assert texts(await opening(r)) == ["Press 1 for sales, 22 for billing, or say operator."]
    assert r.state.node_id == "ivr"
    parts = await turn(r, speech("blah"))
    assert texts(parts) == ["Sorry, I didn't catch that. Press 1 for sales, 22 for billing, or say operator."]
    parts = await turn(r, speech("Operator please"))
    assert texts(parts) == ["One moment, +15550100."] and isinstance(parts[-1], Hangup)


async def test_multi_digit_dtmf_and_pin_entry() -> None:
    r = RuleResponder(menu_workflow(), CTX)
    await opening(r)
    assert await turn(r, dtmf("2")) == []  # a prefix of "22": wait for more
    parts = await turn(r, dtmf("2"))
    assert texts(parts) == ["Please enter your account number, then hash."]
    for key in "1234":
        assert await turn(r, dtmf(key)) == []
    parts = await turn(r, dtmf("#"))
    assert texts(parts) == ["Thanks, account 1234 noted."]
    assert r.state.variables["account"] == "1234"


async def test_pin_entry_without_hash_completes_on_idle_or_max_digits() -> None:
    r = RuleResponder(menu_workflow(), CTX)
    await opening(r)
    await turn(r, dtmf("22"))
    await turn(r, dtmf("98765"))
    parts = await turn(r, IDLE)
    assert texts(parts) == ["Thanks, account 98765 noted."]
    r = RuleResponder(menu_workflow(), CTX)
    await opening(r)
    await turn(r, dtmf("22"))
    parts = await turn(r, dtmf("123456789"))  # max_digits=8 ends the entry; the 9th key is dropped
    assert texts(parts) == ["Thanks, account 12345678 noted."]


async def test_spoken_account_number_and_too_short_entry() -> None:
    r = RuleResponder(menu_workflow(), CTX)
    await opening(r)
    await turn(r, dtmf("22"))
    parts = await turn(r, dtmf("12#"))  # too short for min_digits=4
    assert texts(parts) == ["Please enter or say your account number."]
    parts = await turn(r, speech("it's four four five six seven"))
    assert texts(parts) == ["Thanks, account 44567 noted."]


async def test_start_directly_to_end_plays_message_and_hangs_up() -> None:
    defn = {
        "nodes": [{"id": "s", "type": "start", "greeting": "We are closed today."},
                  {"id": "e", "type": "end", "say": "Please call back tomorrow. Goodbye."}],
        "edges": [{"id": "only", "from": "s", "to": "e"}],
    }
    r = RuleResponder(defn, CTX)
    parts = await opening(r)
    assert texts(parts) == ["We are closed today.", "Please call back tomorrow. Goodbye."]
    assert isinstance(parts[-1], Hangup) and r.state.ended
    assert r.state.node_path == ["s", "e"]


async def test_catch_all_and_yes_no_slot() -> None:
    defn = {
        "nodes": [
            {"id": "s", "type": "start", "greeting": "Would you like a callback?"},
            {"id": "q", "type": "agent", "say": "Would you like a callback?",
             "extract": [{"name": "callback", "type": "yes_no"}]},
            {"id": "done", "type": "end", "say": "Noted: {{callback}}. Bye."},
        ],
        "edges": [{"id": "a", "from": "s", "to": "q"}, {"id": "b", "from": "q", "to": "done"}],
    }
    r = RuleResponder(defn, CTX)
    await opening(r)
    parts = await turn(r, speech("Yeah, that'd be great"))
    assert texts(parts) == ["Noted: yes. Bye."]
    assert r.state.variables["callback"] == "yes"


async def test_example_threshold_is_a_setting() -> None:
    defn = {
        "settings": {"match_threshold": 1.0},
        "nodes": [
            {"id": "s", "type": "start", "greeting": "Hi"},
            {"id": "q", "type": "agent", "say": "What do you need?"},
            {"id": "done", "type": "end", "say": "Bye."},
        ],
        "edges": [{"id": "a", "from": "s", "to": "q"},
                  {"id": "b", "from": "q", "to": "done", "examples": ["cancel my subscription"]}],
    }
    r = RuleResponder(defn, CTX)
    await opening(r)
    await turn(r, speech("I want to cancel"))  # 1 of 2 content words: below 1.0
    assert r.state.node_id == "q"
    await turn(r, speech("please cancel the subscription"))
    assert r.state.node_id == "done"


async def test_missing_template_variable_renders_empty_and_is_reported_once() -> None:
    defn = {
        "nodes": [
            {"id": "s", "type": "start", "greeting": "Hello {{customer_name}}, welcome."},
            {"id": "q", "type": "agent", "say": "Anything else, {{customer_name}}?"},
        ],
        "edges": [{"id": "a", "from": "s", "to": "q"}],
    }
    d = validate_definition(defn)
    assert d.warnings  # the editor was told
    r = RuleResponder(d, CTX)
    assert texts(await opening(r)) == ["Hello, welcome."]
    await turn(r, IDLE)
    warnings = [e for e in r.state.events if e["level"] == "warning"]
    assert len(warnings) == 1 and "customer_name" in warnings[0]["message"]


def test_fixed_texts() -> None:
    r = RuleResponder(example_definition(), CTX)
    fixed = r.fixed_texts()
    assert fixed[0] == "Hello, thanks for calling Acme Dental. How can I help you today?"
    assert MENU in fixed
    assert "Sorry, I didn't catch that. " + MENU in fixed
    assert "Are you still there? " + MENU in fixed
    assert "We're open Monday to Friday from 9 AM to 5 PM. Thanks for calling, goodbye!" in fixed
    assert "What time would suit you? For example, ten AM or three thirty PM." in fixed
    assert "I haven't heard anything for a while, so I'll hang up now. Goodbye." in fixed
    # Texts with caller-derived variables ({{time}}, {{day}}) are not fixed.
    assert not any("Shall I book it" in t or "booked for" in t for t in fixed)
    assert len(fixed) == len(set(fixed))


def test_fixed_texts_render_context_variables() -> None:
    r = RuleResponder(menu_workflow(), CTX)
    assert "One moment, +15550100." in r.fixed_texts()
    assert not any("account" in t and "noted" in t for t in r.fixed_texts())


def test_static_texts_are_those_every_call_says() -> None:
    """What can be synthesised before any call: the workflow's own variables are fine, a call's
    (caller number) or a caller's (slots) are not, and nothing is rendered with a fallback."""
    from vr3ai.workflows.engine import WorkflowEngine

    static = WorkflowEngine(menu_workflow()).static_texts()
    assert static[0] == "Press 1 for sales, 22 for billing, or say operator."
    assert not any("One moment" in t or "noted" in t for t in static)
    assert len(static) == len(set(static))
    defn = example_definition()
    assert "Acme Dental" in WorkflowEngine(defn).static_texts()[0]  # {{company}} is a workflow variable
    assert set(WorkflowEngine(defn).static_texts()) <= set(RuleResponder(defn, CTX).fixed_texts())
