"""What one tenant's secrets cost the others, and what they remove from the logs.

The old redactor kept every value ever encrypted or decrypted (any tenant's ``POST /secrets``, every
new API key) in one process-wide set and rebuilt one regular expression over all of them on each
new value; every log line then ran through it. These tests pin the structure that replaced it:
nothing process-wide grows when secrets are stored, a request does the same work with 2,000
secrets stored as with none, a log line is only ever checked against the values of the object that
logged it, and a common word stored as a secret stays in everybody else's log lines.

No clocks: memory that stays allocated, and the number of Python calls a request makes, are
counted instead (both are deterministic where time is not).
"""

from __future__ import annotations

import logging
import secrets
import sys
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any

from tests.web.fakes import closed_port_url
from tests.web.platform import start_platform
from vr3ai.core.secrets import SecretBox, new_api_key
from vr3ai.logs import JsonFormatter, TextFormatter

N_SECRETS = 2000


def _retained_by_redaction() -> int:
    """Bytes still allocated with vr3ai/logs.py or vr3ai/core/secrets.py anywhere on the stack."""
    snap = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(True, "*/vr3ai/logs.py", all_frames=True),
            tracemalloc.Filter(True, "*/vr3ai/core/secrets.py", all_frames=True),
        ]
    )
    return sum(t.size for t in snap.traces)


def _record(logger: str, msg: str, *args: Any) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, args, None)


def test_storing_secrets_grows_nothing_process_wide() -> None:
    box = SecretBox("test-passphrase-" + secrets.token_hex(8))
    box.decrypt(box.encrypt("warm-up-value"))  # first-use caches of the crypto library
    tracemalloc.start(64)
    try:
        base = _retained_by_redaction()
        for i in range(N_SECRETS):
            value = f"tenant{i}-secret-{secrets.token_hex(8)}"
            box.decrypt(box.encrypt(value))
            new_api_key()
            if i % 100 == 99:
                grown = _retained_by_redaction() - base
                assert grown < 8 * 1024, f"{grown} bytes kept after {i + 1} secrets: a registry is growing"
    finally:
        tracemalloc.stop()


def _count_calls() -> tuple[list[int], Any]:
    count = [0]

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            count[0] += 1

    return count, profile


async def test_request_and_log_line_cost_do_not_depend_on_other_tenants_secrets(tmp_path: Path) -> None:
    async with start_platform(tmp_path) as p:
        a, b = await p.create_user(org_name="A"), await p.create_user(org_name="B")
        async with p.api(a) as api_a, p.api(b) as api_b:

            async def calls_for_one_post(name: str) -> int:
                count, profile = _count_calls()
                sys.setprofile(profile)
                try:
                    r = await api_b.post("/secrets", json={"name": name, "value": "b-" + secrets.token_hex(12)})
                finally:
                    sys.setprofile(None)
                assert r.status_code == 201, r.text
                return count[0]

            for i in range(3):  # warm the app's and SQLAlchemy's caches
                await calls_for_one_post(f"warm{i}")
            before = await calls_for_one_post("before")
            # 2,000 secrets of another tenant: a few through the API, the rest through the same box
            # the API uses (what ``POST /secrets`` and new API keys did to the old global set). The
            # cost is compared after every 200, so a growing cost shows long before the 2,000th.
            for i in range(20):
                r = await api_a.post("/secrets", json={"name": f"a{i}", "value": f"a-{i}-{secrets.token_hex(12)}"})
                assert r.status_code == 201
            others: list[str] = []
            while len(others) < N_SECRETS:
                batch = [f"other-tenant-{len(others) + i}-{secrets.token_hex(8)}" for i in range(200)]
                for value in batch:
                    p.services.box.decrypt(p.services.box.encrypt(value))
                others += batch
                after = await calls_for_one_post(f"after{len(others)}")
                assert after < before * 1.3, (
                    f"one POST /secrets made {before} Python calls, {after} with {len(others)} more secrets stored"
                )

    # A log line is only checked against the values of whoever logged it: other tenants' values
    # pass through untouched (they are no business of this line), the logger's own are redacted.
    own = "own-password-" + secrets.token_hex(6)
    line = " ".join(others[:50])
    for fmt in (JsonFormatter(), TextFormatter()):
        assert line in fmt.format(_record("vr3ai.telephony.ari.calls", "%s", line))
    from vr3ai.logs import RedactingLogger, Redactor

    for fmt in (JsonFormatter(), TextFormatter()):
        adapter = RedactingLogger(logging.getLogger("vr3ai.test"), Redactor([own]))
        msg, kwargs = adapter.process("%s %s", {})
        rec = _record("vr3ai.test", msg, line, own)
        rec.__dict__.update(kwargs["extra"])
        out = fmt.format(rec)
        assert own not in out and line in out


async def test_common_word_stored_as_a_secret_stays_in_other_logs(tmp_path: Path) -> None:
    async with start_platform(tmp_path, telephony=True) as p:
        a, b = await p.create_user(org_name="A"), await p.create_user(org_name="B")
        async with p.api(a) as api_a, p.api(b) as api_b:
            for word in ("welcome", "Goodbye!", "extension"):
                r = await api_a.post("/secrets", json={"name": f"w{len(word)}", "value": word})
                assert r.status_code == 201, r.text
            password_b = "tenantB-" + secrets.token_hex(6)
            r = await api_b.post(
                "/telephony-configurations",
                json={
                    "name": "B",
                    "ari_endpoint_url": closed_port_url(),
                    "stasis_app_name": "tenant_b",
                    "app_password": password_b,
                    "websocket_client_name": "tenant_b",
                },
            )
            assert r.status_code == 201, r.text
            conn = p.services.telephony.connection(r.json()["id"])  # type: ignore[union-attr]
            assert conn is not None
    text = "welcome to the line, dial an extension. Goodbye!"
    fmt = JsonFormatter()
    # Any module's line, and a line of tenant B's own connection: A's words stay; B's password goes.
    assert text in fmt.format(_record("vr3ai.agent.pipeline", text))
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    conn.log.logger.addHandler(keep)
    try:
        conn.log.warning("%s (password %s)", text, password_b)
    finally:
        conn.log.logger.removeHandler(keep)
    out = fmt.format(records[-1])
    assert text in out and password_b not in out and "***" in out
