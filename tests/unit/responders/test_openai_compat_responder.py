"""The OpenAI-compatible responder against a scripted local streaming server (no network)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from vr3ai.workflows.definition import example_definition, validate_definition
from vr3ai.workflows.factory import build_responder
from vr3ai.workflows.responder import CallerTurn, Hangup, ReplyPart, Responder, Say
from vr3ai.workflows.responders.openai_compat import (
    OpenAICompatResponder,
    SentenceSplitter,
    chat_completions_url,
    tool_names,
)
from vr3ai.workflows.responders.rules import RuleResponder

from .conftest import Script, ScriptedLLM, chunk, text_chunks, tool_call_chunks

CTX = {"caller_number": "+15550100", "called_number": "8000", "direction": "inbound", "call_id": "ch-1",
       "provider": "ari"}
API_KEY = "sk-test-DO-NOT-LEAK-1234567890"


def workflow(base_url: str, **llm: Any) -> dict[str, Any]:
    return {
        "settings": {
            "llm": {"provider": "openai_compatible", "base_url": base_url, "model": "test-model",
                    "api_key_secret": "llm_key", "system_prompt": "You work for {{company}}.", **llm},
            "max_idle_prompts": 1,
        },
        "variables": {"company": "Acme"},
        "nodes": [
            {"id": "greet", "type": "start", "greeting": "Hi, this is Acme. How can I help?"},
            {"id": "assist", "type": "agent", "prompt": "Help caller {{caller_number}} with general questions.",
             "say": "How can I help?"},
            {"id": "booking", "type": "agent", "prompt": "Book an appointment. Ask for a time.",
             "extract": [{"name": "time", "type": "time"}]},
            {"id": "bye", "type": "end", "say": "Thanks for calling Acme. Goodbye!"},
        ],
        "edges": [
            {"id": "e0", "from": "greet", "to": "assist"},
            {"id": "book", "from": "assist", "to": "booking", "dtmf": "1",
             "condition": "The caller wants to book an appointment."},
            {"id": "done", "from": "assist", "to": "bye", "condition": "The caller has nothing else."},
            {"id": "booked", "from": "booking", "to": "bye", "condition": "The appointment time is agreed.",
             "requires": ["time"]},
        ],
    }


async def collect(gen: Any) -> list[ReplyPart]:
    return [p async for p in gen]


def says(parts: list[ReplyPart]) -> list[str]:
    return [p.text for p in parts if isinstance(p, Say)]


async def make(server: ScriptedLLM, **llm: Any) -> OpenAICompatResponder:
    r = OpenAICompatResponder(workflow(server.base_url, **llm), CTX, api_key=API_KEY)
    await collect(r.opening())
    return r


def speech(text: str) -> CallerTurn:
    return CallerTurn("speech", text=text)


# -- helpers --


def test_chat_completions_url() -> None:
    assert chat_completions_url("https://api.openai.com/v1") == "https://api.openai.com/v1/chat/completions"
    assert chat_completions_url("http://h:8080/v1/") == "http://h:8080/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_sentence_splitter() -> None:
    s = SentenceSplitter()
    out = s.feed("Hello there! Dr. Smith is in at 3.30 today")
    assert out == ["Hello there!"]
    out += s.feed(". Shall I **book** it?\nOr not")
    assert out == ["Hello there!", "Dr. Smith is in at 3.30 today.", "Shall I book it?"]
    assert s.flush() == "Or not"
    assert s.flush() is None


def test_sentence_splitter_cuts_long_runs() -> None:
    s = SentenceSplitter(max_chars=40)
    out = s.feed("one two three four five, six seven eight nine ten eleven twelve")
    assert out and all(len(x) <= 40 for x in out)
    assert out[0] == "one two three four five,"


def test_tool_names_are_unique_and_valid() -> None:
    d = validate_definition(example_definition())
    names = tool_names(d.outgoing("menu"))
    assert list(names) == ["go_to_booking", "go_to_hours", "go_to_message"]
    d2 = workflow("http://x/v1")
    d2["edges"].append({"id": "alt done", "from": "assist", "to": "bye", "condition": "Caller hangs up."})
    d2["edges"][-1]["id"] = "alt_done"
    names = tool_names(validate_definition(d2).outgoing("assist"))
    assert set(names) == {"go_to_booking", "go_to_bye_via_done", "go_to_bye_via_alt_done"}


# -- the conversation --


async def test_opening_is_verbatim_without_a_model_call(llm_server: ScriptedLLM) -> None:
    r: Responder = OpenAICompatResponder(workflow(llm_server.base_url), CTX, api_key=API_KEY)
    parts = await collect(r.opening())
    assert parts == [Say("Hi, this is Acme. How can I help?", fixed=True)]
    assert r.state.node_path == ["greet", "assist"]
    assert llm_server.requests == []


async def test_streamed_reply_is_split_into_sentences(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script(text_chunks("Sure", ", we are open ", "until five. Anything", " else?")))
    r = await make(llm_server)
    parts = await collect(r.respond(speech("When do you close?")))
    assert parts == [Say("Sure, we are open until five.", fixed=False), Say("Anything else?", fixed=False)]
    req = llm_server.requests[0]
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {API_KEY}"
    body = req.json
    assert body["model"] == "test-model" and body["stream"] is True
    system = body["messages"][0]
    assert system["role"] == "system"
    assert "You work for Acme." in system["content"]
    assert "Help caller +15550100 with general questions." in system["content"]
    facts = body["messages"][1]
    assert facts["role"] == "user" and "<call_facts>" in facts["content"]
    assert "+15550100" not in system["content"].replace("Help caller +15550100", "")
    assert body["messages"][2:] == [
        {"role": "assistant", "content": "Hi, this is Acme. How can I help?"},
        {"role": "user", "content": "When do you close?"},
    ]
    tools = {t["function"]["name"]: t["function"]["description"] for t in body["tools"]}
    assert tools == {"go_to_booking": "The caller wants to book an appointment.",
                     "go_to_bye": "The caller has nothing else."}
    assert body["tool_choice"] == "auto"
    assert r.history[-1] == {"role": "assistant", "content": "Sure, we are open until five. Anything else?"}
    assert r.state.events == []


async def test_first_sentence_arrives_before_the_stream_ends(llm_server: ScriptedLLM) -> None:
    gate = asyncio.Event()
    llm_server.add(Script(text_chunks("First sentence. ", "Second sentence."), gate_after=3, gate=gate))
    r = await make(llm_server)
    got: list[str] = []
    async for part in r.respond(speech("hello")):
        assert isinstance(part, Say)
        got.append(part.text)
        if len(got) == 1:
            assert not gate.is_set()  # the server is still holding back the rest
            gate.set()
    assert got == ["First sentence.", "Second sentence."]


async def test_sse_lines_split_across_tcp_writes(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script(text_chunks("One. ", "Two."), split_lines=True))
    r = await make(llm_server)
    assert says(await collect(r.respond(speech("hi")))) == ["One.", "Two."]


async def test_tool_call_split_across_chunks_moves_and_asks_the_new_node(llm_server: ScriptedLLM) -> None:
    llm_server.add(
        Script(tool_call_chunks("go_to_booking", call_id="call_abc", args='{"reason": "cleaning"}')),
        Script(text_chunks("Happy to book that. What time suits you?")),
    )
    r = await make(llm_server)
    parts = await collect(r.respond(speech("I need a cleaning")))
    assert says(parts) == ["Happy to book that.", "What time suits you?"]
    assert r.state.node_path == ["greet", "assist", "booking"]
    second = llm_server.requests[1].json
    assert "Book an appointment. Ask for a time." in second["messages"][0]["content"]
    assert second["messages"][-2] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_abc", "type": "function",
                        "function": {"name": "go_to_booking", "arguments": '{"reason": "cleaning"}'}}],
    }
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_abc", "content": "Moved to 'booking'."}
    # booking's only edge requires {{time}}: not offered until the caller says one
    assert "tools" not in second


async def test_slot_gates_tools_and_end_node_hangs_up(llm_server: ScriptedLLM) -> None:
    llm_server.add(
        Script(tool_call_chunks("go_to_booking")),
        Script(text_chunks("What time?")),
        Script(tool_call_chunks("go_to_bye", text="Great, see you then.")),
    )
    r = await make(llm_server)
    await collect(r.respond(speech("book please")))
    parts = await collect(r.respond(speech("three pm works")))
    assert r.state.variables["time"] == "3 PM"
    assert [t["function"]["name"] for t in llm_server.requests[2].json["tools"]] == ["go_to_bye"]
    assert parts == [Say("Great, see you then."), Say("Thanks for calling Acme. Goodbye!", fixed=True),
                     Hangup("workflow reached end node 'bye'")]
    assert r.state.ended and r.state.node_path[-1] == "bye"
    assert await collect(r.respond(speech("hello?"))) == []
    assert len(llm_server.requests) == 3


async def test_dtmf_edge_moves_without_asking_the_model_first(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script(text_chunks("Let's book. What time?")))
    r = await make(llm_server)
    parts = await collect(r.respond(CallerTurn("dtmf", dtmf="1")))
    assert says(parts) == ["Let's book.", "What time?"]
    assert r.state.node_id == "booking"
    assert len(llm_server.requests) == 1  # one request, made at the new node
    assert llm_server.requests[0].json["messages"][-1] == {"role": "user",
                                                          "content": "[The caller pressed 1 on the keypad]"}


async def test_other_keys_go_to_the_model(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script(text_chunks("That key does nothing here.")))
    r = await make(llm_server)
    await collect(r.respond(CallerTurn("dtmf", dtmf="5")))
    assert llm_server.requests[0].json["messages"][-1]["content"] == "[The caller pressed 5 on the keypad]"


async def test_idle_is_handled_without_the_model(llm_server: ScriptedLLM) -> None:
    r = await make(llm_server)
    first = await collect(r.respond(CallerTurn("idle")))
    assert first == [Say("Are you still there? How can I help?", fixed=True)]
    second = await collect(r.respond(CallerTurn("idle")))
    assert isinstance(second[-1], Hangup) and r.state.ended
    assert llm_server.requests == []


async def test_fixed_texts(llm_server: ScriptedLLM) -> None:
    r = OpenAICompatResponder(workflow(llm_server.base_url), CTX, api_key=API_KEY)
    fixed = r.fixed_texts()
    assert "Hi, this is Acme. How can I help?" in fixed
    assert "Thanks for calling Acme. Goodbye!" in fixed
    assert "Sorry, I'm having a little trouble right now. Could you say that again?" in fixed
    assert "Are you still there? How can I help?" in fixed


async def test_text_and_tool_call_in_one_response(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script(tool_call_chunks("go_to_bye", text="Okay, goodbye for now.")))
    r = await make(llm_server)
    parts = await collect(r.respond(speech("that's all")))
    assert says(parts) == ["Okay, goodbye for now.", "Thanks for calling Acme. Goodbye!"]
    assert isinstance(parts[-1], Hangup)


async def test_non_streaming_json_answer_is_accepted(llm_server: ScriptedLLM) -> None:
    completion = {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Plain answer. Second."}, "finish_reason": "stop"}]}
    llm_server.add(Script(body=json.dumps(completion).encode(), content_type="application/json"))
    r = await make(llm_server)
    assert says(await collect(r.respond(speech("hi")))) == ["Plain answer.", "Second."]


# -- failures: an apology and an event, never an exception --

APOLOGY = "Sorry, I'm having a little trouble right now. Could you say that again?"


def assert_apology(r: OpenAICompatResponder, parts: list[ReplyPart], fragment: str) -> None:
    assert parts[-1] == Say(APOLOGY, fixed=True)
    errors = [e for e in r.state.events if e["level"] == "error"]
    assert errors and fragment in errors[-1]["message"], r.state.events
    assert API_KEY not in json.dumps(r.state.events)
    assert not r.state.ended


async def test_http_error_status(llm_server: ScriptedLLM) -> None:
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {API_KEY}"}}).encode()
    llm_server.add(Script(status=401, body=body, content_type="application/json"))
    r = await make(llm_server)
    parts = await collect(r.respond(speech("hello")))
    assert_apology(r, parts, "HTTP 401")
    # The status is kept, what the server said is not (it may be any internal service's page).
    assert "Incorrect API key" not in r.state.events[-1]["message"]
    assert r.state.node_id == "assist"
    # The call goes on: the next turn tries again.
    llm_server.add(Script(text_chunks("Back again.")))
    assert says(await collect(r.respond(speech("hello?")))) == ["Back again."]


async def test_timeout_while_waiting_for_the_stream(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script(text_chunks("too late"), stall_s=2.0))
    r = await make(llm_server, timeout_s=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    parts = await collect(r.respond(speech("hello")))
    assert loop.time() - started < 1.5
    assert_apology(r, parts, "timed out")


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    r = OpenAICompatResponder(workflow(f"http://127.0.0.1:{port}/v1"), CTX, api_key=API_KEY)
    await collect(r.opening())
    parts = await collect(r.respond(speech("hello")))
    assert_apology(r, parts, "no answer from the server")
    await r.aclose()


async def test_malformed_chunk(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script([chunk({"content": "Fine so far. "}), "{not json"]))
    r = await make(llm_server)
    parts = await collect(r.respond(speech("hello")))
    assert parts[0] == Say("Fine so far.")
    assert_apology(r, parts, "malformed")


async def test_error_object_in_stream(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script([{"error": {"message": "model overloaded"}}]))
    r = await make(llm_server)
    r_parts = await collect(r.respond(speech("hello")))
    assert_apology(r, r_parts, "the server sent an error instead of a completion")
    assert "model overloaded" not in json.dumps(r.state.events)


async def test_unknown_tool_is_a_warning(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script(tool_call_chunks("go_to_mars")))
    r = await make(llm_server)
    parts = await collect(r.respond(speech("hello")))
    assert says(parts) == ["Sorry, I didn't catch that. How can I help?"]
    assert r.state.node_id == "assist"
    assert any("go_to_mars" in e["message"] for e in r.state.events if e["level"] == "warning")
    assert r.history[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "Error: no such function."}


async def test_empty_reply_is_a_warning(llm_server: ScriptedLLM) -> None:
    llm_server.add(Script(text_chunks()))
    r = await make(llm_server)
    parts = await collect(r.respond(speech("hello")))
    assert says(parts) == ["Sorry, I didn't catch that. How can I help?"]
    assert any("empty" in e["message"] for e in r.state.events)


async def test_barge_in_closes_the_stream_and_keeps_what_was_said(llm_server: ScriptedLLM) -> None:
    gate = asyncio.Event()
    llm_server.add(Script(text_chunks("First part. ", "Never heard."), gate_after=3, gate=gate))
    r = await make(llm_server)
    gen = r.respond(speech("tell me everything"))
    first = await gen.__anext__()
    assert first == Say("First part.")
    await gen.aclose()  # the pipeline drops the rest of the reply
    for _ in range(100):
        if llm_server.disconnects:
            break
        await asyncio.sleep(0.02)
    assert llm_server.disconnects == 1  # the HTTP stream closed at once, not when garbage-collected
    gate.set()
    assert r.history[-1] == {"role": "assistant", "content": "First part. "}


def test_repr_and_vars_do_not_show_the_key() -> None:
    r = OpenAICompatResponder(workflow("http://127.0.0.1:9/v1"), CTX, api_key=API_KEY)
    assert API_KEY not in repr(r)
    assert API_KEY not in repr(r.state)


def test_needs_llm_settings() -> None:
    with pytest.raises(ValueError, match="openai_compatible"):
        OpenAICompatResponder(example_definition(), CTX)


# -- picking the responder --


async def test_build_responder(llm_server: ScriptedLLM) -> None:
    assert isinstance(build_responder(example_definition(), CTX), RuleResponder)
    r = build_responder(workflow(llm_server.base_url), CTX, {"llm_key": API_KEY})
    assert isinstance(r, OpenAICompatResponder)
    await collect(r.opening())
    llm_server.add(Script(text_chunks("Hi.")))
    await collect(r.respond(speech("hello")))
    assert llm_server.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    await r.aclose()


async def test_build_responder_without_the_secret(llm_server: ScriptedLLM) -> None:
    r = build_responder(workflow(llm_server.base_url), CTX, {})
    assert any("'llm_key'" in e["message"] for e in r.state.events)
    await collect(r.opening())
    llm_server.add(Script(text_chunks("Hi.")))
    await collect(r.respond(speech("hello")))
    assert "authorization" not in llm_server.requests[-1].headers
    assert isinstance(r, OpenAICompatResponder)
    await r.aclose()
