"""Validation of workflow definitions: every error carries a loc and names its node or edge."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from vr3ai.workflows.definition import (
    DefinitionError,
    OpenAICompatLLM,
    RulesLLM,
    check_definition,
    example_definition,
    validate_definition,
)


def minimal() -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "hello", "type": "start", "greeting": "Hello!"},
            {"id": "ask", "type": "agent", "say": "How can I help?", "prompt": "Help the caller."},
            {"id": "bye", "type": "end", "say": "Goodbye."},
        ],
        "edges": [
            {"id": "e1", "from": "hello", "to": "ask"},
            {"id": "e2", "from": "ask", "to": "bye", "keywords": ["bye"], "condition": "The caller is done."},
        ],
    }


def llm(defn: dict[str, Any]) -> dict[str, Any]:
    defn["settings"] = {"llm": {"provider": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
                                "model": "m"}}
    return defn


def errors_of(defn: Any) -> list[dict[str, str]]:
    with pytest.raises(DefinitionError) as info:
        validate_definition(defn)
    errs = info.value.errors
    for e in errs:
        assert set(e) == {"loc", "msg"} and isinstance(e["loc"], str) and isinstance(e["msg"], str) and e["msg"]
    return errs


def error_at(defn: Any, loc: str) -> str:
    errs = errors_of(defn)
    matching = [e["msg"] for e in errs if e["loc"] == loc]
    assert matching, f"no error at {loc}: {errs}"
    return matching[0]


def warnings_of(defn: Any) -> list[dict[str, str]]:
    return validate_definition(defn).warnings


# -- the happy path --


def test_example_is_valid_without_warnings() -> None:
    d = validate_definition(example_definition())
    assert d.warnings == []
    assert d.mode == "rules"
    assert d.start.id == "greeting"


def test_example_survives_a_dump_round_trip() -> None:
    d = validate_definition(example_definition())
    dumped = d.dump()
    assert dumped["edges"][0]["from"] == "greeting" and "from_" not in dumped["edges"][0]
    assert validate_definition(json.loads(json.dumps(dumped))).dump() == dumped
    assert d.model_dump()["edges"][0]["from"] == "greeting"  # serialize_by_alias


def test_json_text_is_accepted() -> None:
    assert validate_definition(json.dumps(minimal())).start.greeting == "Hello!"


def test_defaults_are_filled() -> None:
    s = validate_definition(minimal()).settings
    assert isinstance(s.llm, RulesLLM)
    assert (s.stt.provider, s.tts.provider) == ("offline", "offline")
    assert (s.max_call_duration_s, s.idle_timeout_s, s.barge_in, s.turn_end_silence_ms, s.language) == (
        600, 15.0, True, 200, "en")
    assert s.max_idle_prompts == 2 and s.match_threshold == 0.5


def test_full_settings_are_accepted() -> None:
    d = minimal()
    d["settings"] = {
        "llm": {"provider": "openai_compatible", "base_url": "https://api.example.com/v1", "model": "gpt-x",
                "api_key_secret": "openai_key", "temperature": 0.2, "max_tokens": 200, "timeout_s": 10},
        "stt": {"provider": "deepgram", "model": "nova-3", "api_key_secret": "deepgram"},
        "tts": {"provider": "elevenlabs", "voice": "Rachel", "api_key_secret": "eleven.labs-key"},
        "max_call_duration_s": 1200, "idle_timeout_s": 8, "barge_in": False, "turn_end_silence_ms": 400,
        "language": "en-GB", "phrases": {"no_match": "Pardon?"},
    }
    s = validate_definition(d).settings
    assert isinstance(s.llm, OpenAICompatLLM) and s.llm.api_key_secret == "openai_key"
    assert s.phrases.no_match == "Pardon?" and s.phrases.still_there == "Are you still there?"


# -- DefinitionError itself --


def test_str_is_one_line_with_loc_and_count() -> None:
    d = minimal()
    d["edges"][1]["to"] = "nowhere"
    d["nodes"][0]["greeting"] = ""
    with pytest.raises(DefinitionError) as info:
        validate_definition(d)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(info.value.errors[0]["loc"] + ": ")
    assert "(and 1 more error)" in text
    assert isinstance(info.value, ValueError)


def test_not_an_object() -> None:
    assert "JSON object" in errors_of([1, 2])[0]["msg"]
    assert "not valid JSON" in errors_of("{nope")[0]["msg"]


def test_check_definition_returns_instead_of_raising() -> None:
    result = check_definition({"nodes": []})
    assert result.definition is None and result.errors
    ok = check_definition(minimal())
    assert ok.definition is not None and ok.errors == []


# -- structure --


def test_missing_nodes() -> None:
    assert "start node" in error_at({"edges": []}, "nodes")


def test_no_start_node() -> None:
    d = minimal()
    d["nodes"][0] = {"id": "hello", "type": "agent", "say": "Hi"}
    assert "no start node" in error_at(d, "nodes")


def test_two_start_nodes() -> None:
    d = minimal()
    d["nodes"].append({"id": "hello2", "type": "start", "greeting": "Hi again"})
    msg = error_at(d, "nodes[3].type")
    assert "'hello2'" in msg and "'hello'" in msg


def test_duplicate_node_id() -> None:
    d = minimal()
    d["nodes"].append({"id": "ask", "type": "end", "say": "x"})
    msg = error_at(d, "nodes[3].id")
    assert "'ask'" in msg and "nodes[1]" in msg


def test_duplicate_edge_id() -> None:
    d = minimal()
    d["edges"].append({"id": "e1", "from": "ask", "to": "bye", "dtmf": "9"})
    assert "'e1'" in error_at(d, "edges[2].id")


def test_edges_as_originally_specified_need_no_id() -> None:
    """Edges were specified as from/to/condition/keywords/dtmf: the id is derived, unique, and a
    given id is kept (even when it is what a derived one would have been)."""
    d = minimal()
    d["nodes"].append({"id": "op", "type": "end", "say": "Connecting you."})
    d["edges"] = [
        {"from": "hello", "to": "ask"},
        {"from": "ask", "to": "bye", "keywords": ["bye"], "condition": "The caller is done."},
        {"id": "ask-op", "from": "ask", "to": "op", "dtmf": "0"},
        {"from": "ask", "to": "op", "keywords": ["operator"]},
        {"from": "ask", "to": "op", "dtmf": "9"},
    ]
    wf = validate_definition(d)
    assert [e.id for e in wf.edges] == ["hello-ask", "ask-bye", "ask-op", "ask-op-2", "ask-op-3"]
    assert d["edges"][0] == {"from": "hello", "to": "ask"}  # the caller's dict is not rewritten
    # Same definition, same ids: a stored definition parses the same way at every call.
    assert [e.id for e in validate_definition(d).edges] == [e.id for e in wf.edges]
    assert [e.dtmf for e in wf.edges] == [None, None, "0", None, "9"]


def test_edge_without_id_still_needs_its_ends() -> None:
    d = minimal()
    d["edges"].append({"to": "bye", "dtmf": "9"})
    assert "from" in error_at(d, "edges[2].from")


def test_edge_to_unknown_node() -> None:
    d = minimal()
    d["edges"][1]["to"] = "x"
    assert error_at(d, "edges[1].to") == "edge 'e2' points to unknown node 'x'"


def test_edge_from_unknown_node() -> None:
    d = minimal()
    d["edges"].append({"id": "e3", "from": "ghost", "to": "bye"})
    assert error_at(d, "edges[2].from") == "edge 'e3' starts at unknown node 'ghost'"


def test_end_node_with_outgoing_edge() -> None:
    d = minimal()
    d["edges"].append({"id": "loop", "from": "bye", "to": "ask"})
    msg = error_at(d, "edges[2].from")
    assert "'loop'" in msg and "end node 'bye'" in msg


def test_edge_back_to_start() -> None:
    d = minimal()
    d["edges"].append({"id": "again", "from": "ask", "to": "hello", "keywords": ["again"]})
    msg = error_at(d, "edges[2].to")
    assert "'again'" in msg and "start node 'hello'" in msg


def test_start_without_edges_is_an_error() -> None:
    d = minimal()
    d["edges"] = []
    assert "start node 'hello' has no outgoing edge" in error_at(d, "nodes[0]")


def test_unknown_node_type_and_missing_type() -> None:
    d = minimal()
    d["nodes"][1]["type"] = "transfer"
    assert "unknown type 'transfer'" in error_at(d, "nodes[1].type")
    d = minimal()
    del d["nodes"][1]["type"]
    assert "node 'ask' needs a 'type'" in error_at(d, "nodes[1].type")


def test_broken_node_does_not_cascade_into_edge_errors() -> None:
    d = minimal()
    d["nodes"][1]["colour"] = "blue"
    errs = errors_of(d)
    assert [e["loc"] for e in errs] == ["nodes[1].colour"]


def test_unknown_field_is_named() -> None:
    d = minimal()
    d["nodes"][0]["greting"] = "typo"
    assert error_at(d, "nodes[0].greting") == "start node 'hello' has an unknown field 'greting'"
    d = minimal()
    d["surprise"] = 1
    assert "unknown top-level field" in error_at(d, "surprise")


def test_dashboard_fields_are_allowed() -> None:
    d = minimal()
    d["nodes"][1].update({"name": "Main menu", "position": {"x": 10, "y": 20}, "meta": {"color": "red"}})
    d["edges"][1]["meta"] = {"curve": 1}
    d["meta"] = {"zoom": 1.5}
    assert validate_definition(d).nodes[1].name == "Main menu"


def test_missing_required_field_names_the_node() -> None:
    d = minimal()
    del d["nodes"][2]["say"]
    assert error_at(d, "nodes[2].say") == "end node 'bye' is missing 'say'"


def test_missing_edge_endpoint() -> None:
    d = minimal()
    del d["edges"][1]["from"]
    assert error_at(d, "edges[1].from") == "edge 'e2' is missing 'from'"


def test_from_underscore_spelling_rejected() -> None:
    d = minimal()
    d["edges"][1]["from_"] = d["edges"][1].pop("from")
    assert "write 'from'" in error_at(d, "edges[1].from_")


def test_bad_ids() -> None:
    d = minimal()
    d["nodes"][1]["id"] = "has space"
    assert "ids are" in error_at(d, "nodes[1].id")


# -- texts --


def test_empty_greeting() -> None:
    d = minimal()
    d["nodes"][0]["greeting"] = "   "
    assert "start node 'hello' has an empty 'greeting'" in error_at(d, "nodes[0].greeting")


def test_empty_end_say() -> None:
    d = minimal()
    d["nodes"][2]["say"] = ""
    assert "end node 'bye'" in error_at(d, "nodes[2].say")


def test_agent_needs_say_offline_and_prompt_with_llm() -> None:
    d = minimal()
    del d["nodes"][1]["say"]
    assert "agent node 'ask' needs a 'say'" in error_at(d, "nodes[1].say")
    validate_definition(llm(copy.deepcopy(d)))  # fine in LLM mode: the prompt drives it
    d = llm(minimal())
    del d["nodes"][1]["prompt"]
    assert "agent node 'ask' needs a 'prompt'" in error_at(d, "nodes[1].prompt")
    del d["settings"]
    validate_definition(d)  # fine offline


def test_empty_optional_text() -> None:
    d = minimal()
    d["nodes"][1]["reprompt"] = ""
    assert "empty 'reprompt'" in error_at(d, "nodes[1].reprompt")


def test_llm_edges_need_conditions_except_the_start_edge() -> None:
    d = llm(minimal())
    validate_definition(d)  # e1 (start's single edge) has no condition: fine
    del d["edges"][1]["condition"]
    msg = error_at(d, "edges[1].condition")
    assert "'e2'" in msg and "'ask'" in msg and "'bye'" in msg


def test_malformed_placeholder_is_an_error() -> None:
    d = minimal()
    d["nodes"][1]["say"] = "Hi {{first name}}"
    msg = error_at(d, "nodes[1].say")
    assert "agent node 'ask'" in msg and "{{first name}}" in msg


def test_unknown_variable_is_a_warning_and_fallback_silences_it() -> None:
    d = minimal()
    d["nodes"][1]["say"] = "Hi {{customer_name}}, from {{caller_number}}"
    warns = warnings_of(d)
    assert [w["loc"] for w in warns] == ["nodes[1].say"]
    assert "customer_name" in warns[0]["msg"] and "'ask'" in warns[0]["msg"]
    d["nodes"][1]["say"] = "Hi {{customer_name|there}}"
    assert warnings_of(d) == []


def test_workflow_variables_and_slots_are_known() -> None:
    d = minimal()
    d["variables"] = {"company": "Acme"}
    d["nodes"][1]["extract"] = [{"name": "when", "type": "time"}]
    d["nodes"][2]["say"] = "Thanks for calling {{company}}, see you at {{when}}."
    assert warnings_of(d) == []


# -- edges: dtmf, keywords, examples, requires --


@pytest.mark.parametrize("dtmf", ["1x", "12 ", "E", "+"])
def test_bad_dtmf(dtmf: str) -> None:
    d = minimal()
    d["edges"][1]["dtmf"] = dtmf
    msg = error_at(d, "edges[1].dtmf")
    assert "edge 'e2'" in msg and "0-9" in msg


def test_good_dtmf() -> None:
    d = minimal()
    d["edges"][1]["dtmf"] = "*9#"
    validate_definition(d)
    d["edges"][1]["dtmf"] = "a"  # A-D exist on the keypad spec; case-insensitive
    validate_definition(d)


def test_empty_dtmf() -> None:
    d = minimal()
    d["edges"][1]["dtmf"] = ""
    assert "empty 'dtmf'" in error_at(d, "edges[1].dtmf")


def test_duplicate_dtmf_on_one_node() -> None:
    d = minimal()
    d["edges"][1]["dtmf"] = "1"
    d["edges"].append({"id": "e3", "from": "ask", "to": "bye", "dtmf": "1"})
    msg = error_at(d, "edges[2].dtmf")
    assert "'e3'" in msg and "'e2'" in msg and "'ask'" in msg


def test_dtmf_prefix_conflict() -> None:
    d = minimal()
    d["edges"][1]["dtmf"] = "1"
    d["edges"].append({"id": "e3", "from": "ask", "to": "bye", "dtmf": "12"})
    msg = error_at(d, "edges[2].dtmf")
    assert "prefix" in msg and "'e3'" in msg


def test_same_dtmf_on_different_nodes_is_fine() -> None:
    d = minimal()
    d["nodes"].insert(2, {"id": "more", "type": "agent", "say": "More?"})
    d["edges"][1]["dtmf"] = "1"
    d["edges"].append({"id": "e3", "from": "ask", "to": "more", "dtmf": "2"})
    d["edges"].append({"id": "e4", "from": "more", "to": "bye", "dtmf": "1"})
    validate_definition(d)


def test_empty_keyword_and_example() -> None:
    d = minimal()
    d["edges"][1]["keywords"] = ["bye", " "]
    assert "edge 'e2' has an empty keyword" in error_at(d, "edges[1].keywords[1]")
    d = minimal()
    d["edges"][1]["examples"] = ["!!"]
    assert "edge 'e2' has an empty example" in error_at(d, "edges[1].examples[0]")


def test_keywords_must_be_strings() -> None:
    d = minimal()
    d["edges"][1]["keywords"] = "bye"
    assert error_at(d, "edges[1].keywords").startswith("edge 'e2':")


def test_requires_unknown_variable_is_a_warning() -> None:
    d = minimal()
    d["edges"][1]["requires"] = ["ticket"]
    warns = warnings_of(d)
    assert warns[0]["loc"] == "edges[1].requires[0]" and "'ticket'" in warns[0]["msg"]


def test_second_catch_all_warns() -> None:
    d = minimal()
    d["edges"].append({"id": "e3", "from": "ask", "to": "bye"})
    d["edges"].append({"id": "e4", "from": "ask", "to": "bye"})
    warns = warnings_of(d)
    assert any(w["loc"] == "edges[3]" and "'e4'" in w["msg"] for w in warns)


def test_single_start_edge_with_criteria_warns() -> None:
    d = minimal()
    d["edges"][0]["keywords"] = ["hi"]
    assert any(w["loc"] == "edges[0]" and "never used" in w["msg"] for w in warnings_of(d))


def test_same_keyword_on_two_edges_warns() -> None:
    d = minimal()
    d["edges"].append({"id": "e3", "from": "ask", "to": "bye", "keywords": ["Bye"]})
    assert any("keyword 'Bye'" in w["msg"] for w in warnings_of(d))


# -- reachability and dead ends (warnings) --


def test_unreachable_node_is_a_warning() -> None:
    d = minimal()
    d["nodes"].append({"id": "island", "type": "agent", "say": "Nobody comes here"})
    warns = warnings_of(d)
    assert any(w["loc"] == "nodes[3]" and "'island'" in w["msg"] and "cannot be reached" in w["msg"]
               for w in warns)


def test_agent_without_way_out_is_a_warning() -> None:
    d = minimal()
    d["edges"].pop()
    warns = warnings_of(d)
    assert any(w["loc"] == "nodes[1]" and "'ask'" in w["msg"] for w in warns)
    assert any(w["loc"] == "nodes" and "no end node" in w["msg"] for w in warns)


# -- slots --


def test_slot_errors() -> None:
    d = minimal()
    d["nodes"][1]["extract"] = [{"name": "when", "type": "time"}, {"name": "when", "type": "date"}]
    assert "extracts 'when' twice" in error_at(d, "nodes[1].extract[1].name")
    d["nodes"][1]["extract"] = [{"name": "caller_number", "type": "digits"}]
    assert "overwrite the call context" in error_at(d, "nodes[1].extract[0].name")
    d["nodes"][1]["extract"] = [{"name": "x", "type": "colour"}]
    msg = error_at(d, "nodes[1].extract[0].type")
    assert msg.startswith("agent node 'ask':") and "'digits'" in msg
    d["nodes"][1]["extract"] = [{"name": "2x", "type": "time"}]
    assert "variable name" in error_at(d, "nodes[1].extract[0].name")
    d["nodes"][1]["extract"] = [{"name": "pin", "type": "digits", "min_digits": 6, "max_digits": 4}]
    assert "min_digits" in error_at(d, "nodes[1].extract[0].min_digits")
    d["nodes"][1]["extract"] = [{"name": "pin", "type": "digits", "ask": ""}]
    assert "slot 'pin'" in error_at(d, "nodes[1].extract[0].ask")


def test_end_nodes_cannot_extract() -> None:
    d = minimal()
    d["nodes"][2]["extract"] = [{"name": "x", "type": "text"}]
    assert "unknown field 'extract'" in error_at(d, "nodes[2].extract")


# -- settings --


def test_bad_llm_provider() -> None:
    d = minimal()
    d["settings"] = {"llm": {"provider": "skynet"}}
    assert "'rules' or 'openai_compatible'" in error_at(d, "settings.llm.provider")


def test_openai_compatible_needs_model_and_http_url() -> None:
    d = minimal()
    d["settings"] = {"llm": {"provider": "openai_compatible", "base_url": "http://x/v1"}}
    assert error_at(d, "settings.llm.model") == "settings.llm is missing 'model'"
    d["settings"]["llm"].update({"model": "m", "base_url": "ftp://x"})
    assert "http(s) URL" in error_at(d, "settings.llm.base_url")


def test_api_key_in_definition_is_rejected_without_echoing_it() -> None:
    d = minimal()
    d["settings"] = {"llm": {"provider": "openai_compatible", "base_url": "http://x/v1", "model": "m",
                             "api_key": "sk-live-SECRET123"}}
    errs = errors_of(d)
    msg = next(e["msg"] for e in errs if e["loc"] == "settings.llm.api_key")
    assert "organization secret" in msg and "api_key_secret" in msg
    assert "SECRET123" not in json.dumps(errs)


def test_secret_name_that_looks_like_a_key() -> None:
    d = minimal()
    key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    d["settings"] = {"tts": {"provider": "openai", "api_key_secret": key}}
    errs = errors_of(d)
    assert any(e["loc"] == "settings.tts.api_key_secret" and "looks like an API key" in e["msg"] for e in errs)
    assert key not in json.dumps(errs)
    assert key not in str(DefinitionError(errs))


def test_cloud_services_need_a_secret_name() -> None:
    d = minimal()
    d["settings"] = {"stt": {"provider": "deepgram"}, "tts": {"provider": "cartesia"}}
    errs = errors_of(d)
    assert {e["loc"] for e in errs} == {"settings.stt.api_key_secret", "settings.tts.api_key_secret"}


@pytest.mark.parametrize(
    ("settings", "loc"),
    [
        ({"idle_timeout_s": 0}, "settings.idle_timeout_s"),
        ({"max_call_duration_s": 10**9}, "settings.max_call_duration_s"),
        ({"turn_end_silence_ms": 5}, "settings.turn_end_silence_ms"),
        ({"barge_in": "perhaps"}, "settings.barge_in"),
        ({"language": "English"}, "settings.language"),
        ({"tts": {"provider": "say"}}, "settings.tts.provider"),
        ({"stt": {"provider": "offline", "modle": "x"}}, "settings.stt.modle"),
        ({"phrases": {"no_match": ""}}, "settings.phrases.no_match"),
    ],
)
def test_settings_errors(settings: dict[str, Any], loc: str) -> None:
    d = minimal()
    d["settings"] = settings
    msg = error_at(d, loc)
    assert msg.startswith("settings")


def test_settings_errors_do_not_hide_graph_errors() -> None:
    d = minimal()
    d["settings"] = {"idle_timeout_s": -1}
    d["edges"][1]["to"] = "x"
    locs = {e["loc"] for e in errors_of(d)}
    assert {"settings.idle_timeout_s", "edges[1].to"} <= locs


def test_variables_must_be_scalars_with_valid_names() -> None:
    d = minimal()
    d["variables"] = {"ok": 1, "bad name": "x"}
    assert "bad name" in errors_of(d)[0]["msg"]
    d["variables"] = {"nested": {"a": 1}}
    assert error_at(d, "variables.nested")


def test_unsupported_version() -> None:
    d = minimal()
    d["version"] = 2
    assert "version" in error_at(d, "version")
