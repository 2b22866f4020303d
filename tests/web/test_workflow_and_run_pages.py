"""Workflows (structured editor, raw JSON, validation errors), runs (filters, detail, recording), account."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tests.web.platform import DashboardClient, Platform
from vr3ai.core.runs import RunOutcome
from vr3ai.db.models import Workflow


def _form_fields(page: str) -> dict[str, str]:
    """The editor's inputs as a browser would submit them (text inputs, selects, textareas, hidden)."""
    out: dict[str, str] = {}
    for m in re.finditer(r'<input[^>]*\bname="([^"]+)"[^>]*>', page):
        tag = m.group(0)
        if 'type="checkbox"' in tag:
            continue
        v = re.search(r'\bvalue="([^"]*)"', tag)
        out[m.group(1)] = html.unescape(v.group(1)) if v else ""
    for m in re.finditer(r'<textarea[^>]*\bname="([^"]+)"[^>]*>(.*?)</textarea>', page, re.S):
        out[m.group(1)] = html.unescape(m.group(2))
    for m in re.finditer(r'<select[^>]*\bname="([^"]+)"[^>]*>(.*?)</select>', page, re.S):
        sel = re.search(r"<option(?: value=\"([^\"]*)\")? selected>([^<]*)</option>", m.group(2))
        out[m.group(1)] = html.unescape(
            sel.group(1) if sel and sel.group(1) is not None else sel.group(2) if sel else ""
        )
    out.pop("csrf_token", None)
    return out


async def _workflows(platform: Platform) -> list[Workflow]:
    async with platform.services.db.session() as s:
        return list((await s.scalars(select(Workflow))).all())


async def _create_example(web: DashboardClient, name: str = "Receptionist") -> Any:
    fields = _form_fields((await web.get("/workflows/new")).text)
    fields["name"] = name
    return await web.post_form("/workflows", {**fields, "mode": "form"})


async def test_create_from_the_prefilled_example(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        page = (await web.get("/workflows/new")).text
        assert 'value="Receptionist"' in page and "greeting" in page and "Save workflow" in page
        r = await _create_example(web)
        assert r.status_code == 303, r.text[:2000]
        [wf] = await _workflows(platform)
        assert r.headers["location"] == f"/workflows/{wf.id}"
        from vr3ai.workflows.definition import example_definition

        # The structured form round-trips the example without losing settings, slots or examples.
        assert wf.definition["settings"] == example_definition()["settings"]
        booking = next(n for n in wf.definition["nodes"] if n["id"] == "booking")
        assert booking["extract"][1]["name"] == "time"
        edge = next(e for e in wf.definition["edges"] if e["id"] == "to_booking")
        assert edge["examples"] == ["I need to see the dentist", "can I come in next week"]
        assert edge["dtmf"] == "1" and "appointment" in edge["keywords"]
        listing = (await web.get("/workflows")).text
        assert "Receptionist" in listing and "8 nodes" in listing


async def test_edit_nodes_and_edges_in_the_form(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        await _create_example(web)
        [wf] = await _workflows(platform)
        fields = _form_fields((await web.get(f"/workflows/{wf.id}")).text)
        i = next(
            k.split("-")[1] for k, v in fields.items() if k.endswith("-id") and k.startswith("node-") and v == "hours"
        )
        fields[f"node-{i}-text"] = "We're open every day from 8 to 8. Goodbye!"
        # A new node and an edge to it, through the blank rows.
        n_new = max(int(k.split("-")[1]) for k in fields if k.startswith("node-"))
        fields.update(
            {f"node-{n_new}-id": "faq", f"node-{n_new}-type": "end", f"node-{n_new}-text": "See our website."}
        )
        e_new = max(int(k.split("-")[1]) for k in fields if k.startswith("edge-"))
        fields.update(
            {
                f"edge-{e_new}-id": "to_faq",
                f"edge-{e_new}-from": "menu",
                f"edge-{e_new}-to": "faq",
                f"edge-{e_new}-keywords": "website, faq",
                f"edge-{e_new}-dtmf": "4",
            }
        )
        r = await web.post_form(f"/workflows/{wf.id}", {**fields, "mode": "form"})
        assert r.status_code == 303, html.unescape(r.text)[:3000]
        [wf] = await _workflows(platform)
        nodes = {n["id"]: n for n in wf.definition["nodes"]}
        assert nodes["hours"]["say"] == "We're open every day from 8 to 8. Goodbye!"
        assert nodes["faq"] == {"id": "faq", "type": "end", "say": "See our website."}
        edge = next(e for e in wf.definition["edges"] if e["id"] == "to_faq")
        assert edge == {"id": "to_faq", "from": "menu", "to": "faq", "keywords": ["website", "faq"], "dtmf": "4"}

        # Removing a node: the checkbox.
        fields = _form_fields((await web.get(f"/workflows/{wf.id}")).text)
        i = next(
            k.split("-")[1] for k, v in fields.items() if k.startswith("node-") and k.endswith("-id") and v == "faq"
        )
        j = next(
            k.split("-")[1] for k, v in fields.items() if k.startswith("edge-") and k.endswith("-id") and v == "to_faq"
        )
        r = await web.post_form(
            f"/workflows/{wf.id}", {**fields, f"node-{i}-remove": "on", f"edge-{j}-remove": "on", "mode": "form"}
        )
        assert r.status_code == 303
        [wf] = await _workflows(platform)
        assert "faq" not in {n["id"] for n in wf.definition["nodes"]}


async def test_validation_errors_are_shown_next_to_the_row(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        await _create_example(web)
        [wf] = await _workflows(platform)
        before = wf.definition
        fields = _form_fields((await web.get(f"/workflows/{wf.id}")).text)
        j = next(
            k.split("-")[1]
            for k, v in fields.items()
            if k.startswith("edge-") and k.endswith("-id") and v == "to_hours"
        )
        fields[f"edge-{j}-to"] = "nowhere"
        r = await web.post_form(f"/workflows/{wf.id}", {**fields, "mode": "form"})
        assert r.status_code == 422
        page = html.unescape(r.text)
        row = page[page.index(f'name="edge-{j}-to"') :]
        row = row[: row.index("</fieldset>")]
        assert '<span class="error">' in row and "nowhere" in row
        # What was typed stays in the form; nothing was saved.
        assert 'value="nowhere"' in page
        [wf] = await _workflows(platform)
        assert wf.definition == before


async def test_raw_json_save_and_errors(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        definition = {
            "version": 1,
            "nodes": [{"id": "hello", "type": "start", "greeting": "Hi!"}, {"id": "bye", "type": "end", "say": "Bye"}],
            "edges": [{"id": "e1", "from": "hello", "to": "bye"}],
        }
        r = await web.post_form(
            "/workflows", {"name": "Tiny", "definition_json": json.dumps(definition), "base_json": "{}", "mode": "json"}
        )
        assert r.status_code == 303
        [wf] = await _workflows(platform)
        assert [n["id"] for n in wf.definition["nodes"]] == ["hello", "bye"]

        r = await web.post_form(
            f"/workflows/{wf.id}", {"name": "Tiny", "definition_json": "{not json", "base_json": "{}", "mode": "json"}
        )
        assert r.status_code == 422 and "Not valid JSON" in r.text and "line 1" in r.text
        bad = {**definition, "nodes": [{"id": "hello", "type": "start", "greting": "Hi!"}]}
        r = await web.post_form(
            f"/workflows/{wf.id}",
            {"name": "Tiny", "definition_json": json.dumps(bad), "base_json": "{}", "mode": "json"},
        )
        assert r.status_code == 422
        assert "nodes[0]" in html.unescape(r.text) and "The workflow was not saved" in r.text
        r = await web.post_form(
            f"/workflows/{wf.id}",
            {"name": "", "definition_json": json.dumps(definition), "base_json": "{}", "mode": "json"},
        )
        assert r.status_code == 422 and "must not be empty" in r.text


async def test_delete_workflow(platform: Platform) -> None:
    user = await platform.create_user()
    async with platform.dashboard(user) as web:
        await _create_example(web)
        [wf] = await _workflows(platform)
        assert (await web.post_form(f"/workflows/{wf.id}/delete")).status_code == 303
        assert await _workflows(platform) == []


async def _run(
    platform: Platform, org_id: str, workflow_id: str | None, status: str, *, recording: bool = False, to: str = "8000"
) -> str:
    svc = platform.services
    run = await svc.runs.create(
        organization_id=org_id,
        workflow_id=workflow_id,
        telephony_configuration_id=None,
        direction="inbound",
        context={
            "caller_number": "15551230001",
            "called_number": to,
            "direction": "inbound",
            "call_id": "c1",
            "provider": "ari",
        },
    )
    if status == "initialized":
        return run.id
    await svc.runs.mark_running(run.id)
    if status == "running":
        return run.id
    path = None
    if recording:
        rec = Path(svc.settings.storage.data_dir) / "recordings" / f"{run.id}.wav"
        rec.parent.mkdir(parents=True, exist_ok=True)
        rec.write_bytes(b"RIFF" + b"\0" * 40)
        path = str(rec)
    await svc.runs.finish(
        run.id,
        RunOutcome(
            status=status,
            end_reason="caller hung up" if status == "completed" else "could not reach the callee",
            transcript=[
                {"role": "agent", "text": "Hello <b>there</b>", "start_ms": 100, "end_ms": 900},
                {"role": "caller", "text": "Hi", "start_ms": 1500, "end_ms": 1900},
            ],
            metrics=[{"turn": 1, "stt_ms": 210.2, "tts_ms": 150.0, "first_audio_ms": 480.7}],
            events=[{"level": "error", "message": "media connection dropped", "at_ms": 2000}],
            recording_path=path,
        ),
    )
    return run.id


async def test_runs_list_filters_and_detail(platform: Platform) -> None:
    user = await platform.create_user()
    other = await platform.create_user()
    async with platform.dashboard(user) as web:
        await _create_example(web, "Receptionist")
        await _create_example(web, "Sales")
        wfs = {w.name: w.id for w in await _workflows(platform)}
        done = await _run(platform, user.organization_id, wfs["Receptionist"], "completed", recording=True)
        failed = await _run(platform, user.organization_id, wfs["Sales"], "failed", to="8001")
        live = await _run(platform, user.organization_id, wfs["Sales"], "running", to="8002")
        foreign = await _run(platform, other.organization_id, None, "completed")

        page = (await web.get("/runs")).text
        for rid in (done, failed, live):
            assert f'data-run="{rid}"' in page
        assert foreign not in page
        page = (await web.get(f"/runs?workflow_id={wfs['Sales']}")).text
        assert failed in page and live in page and done not in page
        page = (await web.get("/runs?status=failed")).text
        assert failed in page and done not in page and live not in page
        page = (await web.get(f"/runs?status=completed&workflow_id={wfs['Sales']}")).text
        assert "No run matches these filters" in page

        detail = (await web.get(f"/runs/{done}")).text
        assert "Hello &lt;b&gt;there&lt;/b&gt;" in detail  # transcript text is escaped
        assert f'<audio controls preload="metadata" src="/runs/{done}/recording">' in detail
        assert ">210<" in detail and ">481<" in detail  # latency table
        assert "media connection dropped" in detail and "caller hung up" in detail
        assert "15551230001" in detail and "data-run-status-url" not in detail
        rec = await web.get(f"/runs/{done}/recording")
        assert rec.status_code == 200 and rec.headers["content-type"] == "audio/wav"
        assert (await web.get(f"/runs/{failed}/recording")).status_code == 404

        live_page = (await web.get(f"/runs/{live}")).text
        assert "data-run-status-url" in live_page
        status = (await web.get(f"/runs/{live}/status.json")).json()
        assert status == {"status": "running", "final": False, "transcript_lines": 0, "events": 0}

        for path in (f"/runs/{foreign}", f"/runs/{foreign}/recording", f"/runs/{foreign}/status.json"):
            assert (await web.get(path)).status_code == 404, path
    # The owner of the foreign run can hear it; nobody else can (checked above).
    async with platform.dashboard(other) as web:
        assert (await web.get(f"/runs/{foreign}")).status_code == 200


async def test_account_shows_quota_and_usage(platform: Platform) -> None:
    user = await platform.create_user(max_concurrent_calls=3, minutes_per_month=500)
    await _run(platform, user.organization_id, None, "running")
    async with platform.dashboard(user) as web:
        page = (await web.get("/account")).text
        assert "Concurrent calls" in page and "1 of 3" in page
        assert "Minutes this month" in page and "of 500" in page
        assert "1/3 calls" in page  # the header pill on every page
        assert user.email in page
