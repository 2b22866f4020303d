"""Phone numbers (SIP extensions) of a telephony configuration and their inbound workflows."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures_platform import Platform, ok

# The app is served once per backend for the session (see tests/fixtures_platform.py).
pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_phone_number_crud(platform: Platform) -> None:
    t = await platform.tenant()
    wid = await platform.workflow(t)
    cid = await platform.configuration(t)
    base = f"/api/v1/telephony-configurations/{cid}/phone-numbers"

    n1 = ok(await t.http.post(base, json={"address": "8000", "inbound_workflow_id": wid}), 201)
    assert n1 == {
        "id": n1["id"],
        "telephony_configuration_id": cid,
        "address": "8000",
        "inbound_workflow_id": wid,
        "created_at": n1["created_at"],
    }
    n2 = ok(await t.http.post(base, json={"address": "*97#"}), 201)
    assert n2["inbound_workflow_id"] is None
    assert [n["address"] for n in ok(await t.http.get(base))["items"]] == ["*97#", "8000"]
    assert ok(await t.http.get(f"{base}/{n1['id']}")) == n1

    moved = ok(await t.http.patch(f"{base}/{n1['id']}", json={"address": "8001"}))
    assert moved["address"] == "8001" and moved["inbound_workflow_id"] == wid
    unassigned = ok(await t.http.patch(f"{base}/{n1['id']}", json={"inbound_workflow_id": None}))
    assert unassigned["inbound_workflow_id"] is None and unassigned["address"] == "8001"
    assigned = ok(await t.http.patch(f"{base}/{n2['id']}", json={"inbound_workflow_id": wid}))
    assert assigned["inbound_workflow_id"] == wid

    assert (await t.http.delete(f"{base}/{n1['id']}")).status_code == 204
    assert (await t.http.get(f"{base}/{n1['id']}")).status_code == 404
    assert [n["id"] for n in ok(await t.http.get(base))["items"]] == [n2["id"]]

    # Deleting the configuration takes its numbers with it.
    assert (await t.http.delete(f"/api/v1/telephony-configurations/{cid}")).status_code == 204
    assert (await t.http.get(base)).status_code == 404


async def test_extension_is_unique_within_its_configuration(platform: Platform) -> None:
    t = await platform.tenant()
    c1 = await platform.configuration(t)
    c2 = await platform.configuration(t)
    ok(await t.http.post(f"/api/v1/telephony-configurations/{c1}/phone-numbers", json={"address": "8000"}), 201)
    r = await t.http.post(f"/api/v1/telephony-configurations/{c1}/phone-numbers", json={"address": "8000"})
    assert r.status_code == 409 and "'8000' is already registered" in r.json()["message"]
    # The same extension on another Asterisk configuration is a different number.
    ok(await t.http.post(f"/api/v1/telephony-configurations/{c2}/phone-numbers", json={"address": "8000"}), 201)
    other = ok(await t.http.post(f"/api/v1/telephony-configurations/{c1}/phone-numbers", json={"address": "8001"}), 201)
    r = await t.http.patch(
        f"/api/v1/telephony-configurations/{c1}/phone-numbers/{other['id']}", json={"address": "8000"}
    )
    assert r.status_code == 409
    # Saving a number unchanged does not collide with itself.
    ok(
        await t.http.patch(
            f"/api/v1/telephony-configurations/{c1}/phone-numbers/{other['id']}", json={"address": "8001"}
        )
    )


async def test_invalid_phone_numbers_get_422_naming_the_field(platform: Platform) -> None:
    t = await platform.tenant()
    other_org = await platform.tenant("Other")
    foreign_wid = await platform.workflow(other_org)
    cid = await platform.configuration(t)
    base = f"/api/v1/telephony-configurations/{cid}/phone-numbers"
    cases: list[tuple[dict[str, Any], list[Any], str]] = [
        ({}, ["body", "address"], "field required"),
        ({"address": ""}, ["body", "address"], "must not be empty"),
        ({"address": " 8000"}, ["body", "address"], "no extra spaces"),
        ({"address": "80 00"}, ["body", "address"], "SIP extension"),
        ({"address": "8000/1"}, ["body", "address"], "SIP extension"),
        ({"address": 8000}, ["body", "address"], "must be a string"),
        ({"address": "8000", "workflow": "x"}, ["body", "workflow"], "unknown field"),
    ]
    for body, loc, text in cases:
        r = await t.http.post(base, json=body)
        assert r.status_code == 422, (body, r.text)
        assert any(d["loc"] == loc and text in d["msg"] for d in r.json()["detail"]), (body, r.text)
        assert loc[1] in r.json()["message"]

    # A workflow of another organization is answered exactly like one that does not exist: 422 on
    # the field (the URL is fine), with nothing revealing that the id exists elsewhere.
    answers = []
    for wid in (foreign_wid, "00000000-0000-4000-8000-00000000ffff"):
        r = await t.http.post(base, json={"address": "8000", "inbound_workflow_id": wid})
        assert r.status_code == 422
        answers.append(r.json())
    assert answers[0] == answers[1]
    assert answers[0]["detail"][0]["loc"] == ["body", "inbound_workflow_id"]
    assert "inbound_workflow_id" in answers[0]["message"]

    number = ok(await t.http.post(base, json={"address": "8000"}), 201)
    for body, loc in [
        ({"inbound_workflow_id": foreign_wid}, ["body", "inbound_workflow_id"]),
        ({"address": None}, ["body", "address"]),
        ({"address": "bad address"}, ["body", "address"]),
    ]:
        r = await t.http.patch(f"{base}/{number['id']}", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"][0]["loc"] == loc
    assert ok(await t.http.get(f"{base}/{number['id']}")) == number
