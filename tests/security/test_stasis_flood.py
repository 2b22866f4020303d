"""A hostile "Asterisk" flooding StasisStart creates a bounded number of rows (item 5 of issue 12).

Whoever answers at a configuration's ARI URL can send StasisStart events as fast as it likes; each
one used to become a call (a database lookup and a run row, refused or not). The ARI events rig
(tests/fuzz/ari_rig.py) drives the real ``AriConnection``/``Call`` code against a real SQLite
database; only the ARI REST client, the media registry and the agent are doubles.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fuzz.ari_gen import Gen
from tests.fuzz.ari_rig import GOOD_EXTEN, AriRig
from vr3ai.telephony.ari.connection import MAX_REFUSING

RATE = 5.0
BURST = 10
FLOOD = 1000


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[AriRig]:
    rig = await AriRig.build(tmp_path, 1205, fail_rate=0.0, call_starts_per_s=RATE, call_starts_burst=BURST)
    rig.client.yield_rate = 0.0
    rig.force_agent_mode = "quick"
    rig.asterisk_is_fast(random.Random(7), connect_rate=1.0, refuse_rate=0.0)
    try:
        yield rig
    finally:
        await rig.conn.stop("test over")
        await rig.services.db.dispose()


async def wait_for(predicate: object, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_stasis_start_flood_creates_bounded_rows(rig: AriRig) -> None:
    gen = Gen(random.Random(3))
    ids: list[str] = []
    t0 = time.monotonic()
    for _ in range(FLOOD // 50):
        for _ in range(50):
            cid = gen.new_caller_id()
            ids.append(cid)
            rig.feed(gen.stasis_start(cid, exten=GOOD_EXTEN, state="Ring"))
        # Let the hang-ups of the refused calls go out (at most MAX_REFUSING are in flight; beyond
        # that a refused channel is left to Asterisk, test_refusal_hangups_in_flight_are_bounded).
        await wait_for(lambda: not rig.conn._refusing)
    elapsed = time.monotonic() - t0
    await wait_for(lambda: not rig.conn.live)
    await rig.drain_background()
    await wait_for(lambda: not rig.conn._refusing)

    runs = await rig.run_rows()
    admitted = len(rig.all_calls)
    bound = BURST + math.ceil(RATE * elapsed)
    assert 1 <= admitted <= bound, (admitted, bound, elapsed)
    assert len(runs) == admitted, "a refused flood call must not create a run"
    assert all(r.status == "completed" for r in runs), [(r.status, r.end_reason) for r in runs]
    assert rig.conn.flood_refused == FLOOD - admitted

    # Every refused channel was hung up cleanly (congestion), nothing else was asked of Asterisk.
    admitted_ids = {c.channel_id for c in rig.all_calls}
    refused_ids = [cid for cid in ids if cid not in admitted_ids]
    hangups = {r.target: r.args.get("reason") for r in rig.client.requests if r.method == "hangup"}
    assert all(hangups.get(cid) == "congestion" for cid in refused_ids)
    for cid in refused_ids[:50]:
        assert [r.method for r in rig.client.requests if r.target == cid] == ["hangup"]

    # The operator sees why, once per second rather than once per refused call.
    await wait_for(lambda: any("VR3AI_CALL_STARTS_PER_S" in e["message"] for e in rig.conn.recent_events), 3.0)
    reports = [e for e in rig.conn.recent_events if "VR3AI_CALL_STARTS_PER_S" in e["message"]]
    assert 1 <= len(reports) <= math.ceil(elapsed) + 1
    assert await rig.invariants() == []
    assert not rig.problems, [p.detail for p in rig.problems]

    # The limit is a rate, not a ban: once the flood stops, calls are taken again.
    await asyncio.sleep(1.0 / RATE + 0.05)
    cid = gen.new_caller_id()
    rig.feed(gen.stasis_start(cid, exten=GOOD_EXTEN, state="Ring"))
    assert cid in rig.conn.calls


async def test_refusal_hangups_in_flight_are_bounded(rig: AriRig) -> None:
    """A server that never answers our hang-ups cannot make us pile up requests."""
    never = asyncio.Event()

    async def hangup_never_answered(channel_id: str, reason: str = "normal") -> bool:
        await never.wait()
        return True

    rig.client.hangup = hangup_never_answered  # type: ignore[method-assign]
    gen = Gen(random.Random(4))
    for _ in range(FLOOD):
        rig.feed(gen.stasis_start(gen.new_caller_id(), exten=GOOD_EXTEN, state="Ring"))
    await asyncio.sleep(0.01)
    assert len(rig.conn._refusing) <= MAX_REFUSING
    assert rig.conn.flood_refused >= FLOOD - BURST - 1
    never.set()
    await wait_for(lambda: not rig.conn._refusing)
    for call in list(rig.conn.live):
        call.request_end("test over", "completed")
    await wait_for(lambda: not rig.conn.live)


async def test_orphan_flood_is_bounded_too(rig: AriRig) -> None:
    """StasisStart of channels that look like our own leftovers ('vr3m-...') cost a hang-up each; a
    flood of them shares the new-call rate, so pending requests stay bounded."""
    never = asyncio.Event()

    async def hangup_never_answered(channel_id: str, reason: str = "normal") -> bool:
        await never.wait()
        return True

    rig.client.hangup = hangup_never_answered  # type: ignore[method-assign]
    gen = Gen(random.Random(5))
    for i in range(FLOOD):
        rig.feed(gen.stasis_start(f"vr3m-{rig.conn.tag}-{i:012x}", exten="s", state="Up"))
    await asyncio.sleep(0.01)
    assert len(rig.conn._background) + len(rig.conn._refusing) <= BURST + 1 + MAX_REFUSING
    assert rig.conn.flood_refused >= FLOOD - BURST - 1
    assert await rig.run_rows() == []
    never.set()
    await wait_for(lambda: not rig.conn._refusing and not rig.conn._background)
