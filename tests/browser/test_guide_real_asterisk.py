"""The guide's "Configuration in VR3 AI" steps in a headless Chromium, against the harness' real Asterisk.

The platform runs in-process with telephony on, listening on ``lab.media_port`` (where the lab's
``[vr3ai]`` websocket_client section dials), so what the browser shows comes from a real ARI
connection, a real call and the real offline voice agent — no fake telephony manager.

* ``test_inbound_call_walk``: sign in, add the Asterisk ARI configuration with the lab's values, see
  it connect, create a workflow, add extension 8000 with it, diagnostics all pass, a caller dials 8000
  and says a sentence, the run shows up with its transcript and an audio player for the recording.
* ``test_diagnostics_on_broken_configurations``: the same configuration edited the way people get it
  wrong — a wrong App Password (the badge shows the retrying state with the credentials message;
  diagnostics fail the credential check with the guide's fix), then a WebSocket Client Name Asterisk
  does not know (ARI connects, but the websocket-client check fails) — and finally fixed again.

Screenshots (desktop and phone) go to ``artifacts/screenshots/real-asterisk/``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.pages import AriFields, ConfigurationPage, Dashboard, RunPage, new_context, screenshot, screenshot_of
from tests.harness import MEDIA_PASSWORD, MEDIA_USER, AsteriskLab, audio
from tests.web.platform import DashboardUser, Platform, start_platform
from vr3ai.telephony.ari.diagnostics import FIX_CREDENTIALS, FIX_WS_NAME

pytestmark = [pytest.mark.asterisk]

SHOTS = "real-asterisk"
CALLER_SENTENCE = "What are your opening hours?"
# Checks that must pass on the healthy configuration; the media check proves Asterisk really opened
# a WebSocket to the platform, not just that the name exists.
HEALTHY_CHECKS = (
    "ari_reachable",
    "credentials",
    "res_ari",
    "chan_websocket",
    "res_websocket_client",
    "stasis_app",
    "ws_client_name",
    "ws_client_uri",
    "media",
    "phone_numbers",
    "quota",
)


def lab_fields(lab: AsteriskLab) -> AriFields:
    """Step 2's five fields as the lab's ari.conf / websocket_client.conf define them."""
    return AriFields(
        ari_endpoint_url=lab.ari_url.removesuffix("/ari"),
        stasis_app_name="vr3ai",
        app_password="vr3ai-secret",
        websocket_client_name="vr3ai",
        from_extensions="6001",
        # The pair the lab's [vr3ai] section presents (VR3 AI refuses media without credentials).
        media_username=MEDIA_USER,
        media_password=MEDIA_PASSWORD,
    )


@pytest.fixture
async def lab(clean_asterisk_lab: AsteriskLab) -> AsyncIterator[AsteriskLab]:
    await clean_asterisk_lab.warm_up()
    yield clean_asterisk_lab


def _page_errors(page: Page) -> list[str]:
    """JavaScript errors and failed sub-resources; 4xx documents (form errors) are not errors."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}") if r.status >= 400 and r.request.resource_type != "document" else None
        ),
    )
    return errors


async def _no_sideways_scroll(page: Page) -> None:
    overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, (page.url, overflow)


async def _checks_text(config: ConfigurationPage) -> str:
    return await config.page.locator("#diagnostics").inner_text()


async def _assert_healthy(config: ConfigurationPage, checks: dict[str, bool | None]) -> None:
    failed = [k for k, ok in checks.items() if ok is False]
    assert not failed, (failed, await _checks_text(config))
    for key in HEALTHY_CHECKS:
        assert checks.get(key) is True, (key, await _checks_text(config))
    await expect(config.page.locator("#diagnostics .diag-summary")).to_have_text("All checks passed.")


async def test_inbound_call_walk(lab: AsteriskLab, tmp_path: Path, browser: Browser) -> None:
    fields = lab_fields(lab)
    # Synthesised before the platform starts so flite's time does not eat into the call.
    sentence = audio.synth_speech(CALLER_SENTENCE)
    async with start_platform(
        tmp_path, port=lab.media_port, telephony=True, settings_overrides={"voice": True}
    ) as platform:
        user = await platform.create_user("operator@example.com")
        ctx = await new_context(browser, platform.base_url)
        page = await ctx.new_page()
        errors = _page_errors(page)
        ui = Dashboard(page)
        await ui.sign_in(user.email, user.password)

        # Steps 1-2: Add configuration → Asterisk ARI → the five fields → Save Configuration.
        config = await ui.add_configuration(fields)
        await config.wait_for_state("Connected")
        await expect(config.state_error()).to_be_hidden()
        facts = page.locator("#connection dl.facts")
        await expect(facts).to_contain_text(re.compile(r"Asterisk\s*22\."))  # the version ARI reported
        await expect(facts).to_contain_text(fields.ari_endpoint_url)
        await page.goto("/telephony-configurations")
        await expect(page.locator("a.list-item")).to_contain_text("Connected")
        config = await ui.open_configuration()
        config_id = config.config_id

        # Step 3: a test workflow (the dashboard's example receptionist) on extension 8000.
        await ui.create_workflow("Receptionist")
        config = await ui.open_configuration()
        await config.add_phone_number("8000", "Receptionist")
        await config.wait_for_state("Connected")
        await screenshot(page, f"{SHOTS}/desktop-01-configuration-connected")

        checks = await config.run_diagnostics()
        await _assert_healthy(config, checks)
        await expect(config.check("phone_numbers")).to_contain_text("8000 → Receptionist")
        await expect(config.check("media")).to_contain_text("Asterisk connected to VR3 AI's media WebSocket")
        await screenshot_of(page.locator("#diagnostics"), f"{SHOTS}/desktop-02-diagnostics-healthy")

        # "Place a call to one of the extensions you configured": the lab's caller dials 8000 in
        # [from-external] (→ Stasis(vr3ai)) and speaks after the greeting has started.
        call = await lab.call("8000", wav=sentence, wav_after_s=4, hold_s=10)
        run = await ui.open_latest_run()
        status = await run.wait_final(timeout_ms=60_000)
        await call.wait_hangup(30)
        assert status == "completed", await page.locator("main").inner_text()
        await _assert_run_page(run)
        run_url = page.url
        await screenshot(page, f"{SHOTS}/desktop-03-run")
        # The recording behind the player is a real WAV of the call.
        rec = await page.request.get(run_url + "/recording")
        assert rec.status == 200 and rec.headers["content-type"].startswith("audio/")
        assert len(await rec.body()) > 8000 * 2 * 3, "recording shorter than 3 s"
        assert not errors, errors
        await ctx.close()

        await _phone_walk(browser, platform, user, config_id, run_url)


async def test_test_call_button_dials_the_lab_sip_phone(lab: AsteriskLab, tmp_path: Path, browser: Browser) -> None:
    """Issue 14 items 1-2: the configuration keeps the default dial template (PJSIP/{to}); the Test call
    button dials extension 6100, the lab's PJSIP phone (a real SIP + RTP leg that answers), from the
    second From Extension; the callee is shown that caller ID and the run completes."""
    fields = dataclasses.replace(lab_fields(lab), from_extensions="PJSIP/6001, 6002")
    lab.set_callee("6100", hold_s=8)
    async with start_platform(
        tmp_path, port=lab.media_port, telephony=True, settings_overrides={"voice": True}
    ) as platform:
        user = await platform.create_user("operator@example.com")
        ctx = await new_context(browser, platform.base_url)
        page = await ctx.new_page()
        errors = _page_errors(page)
        ui = Dashboard(page)
        await ui.sign_in(user.email, user.password)
        await ui.create_workflow("Receptionist")
        config = await ui.add_configuration(fields)
        await config.wait_for_state("Connected")
        section = page.locator("#test-call")
        await expect(section).to_contain_text("PJSIP/{to}")
        await expect(section.get_by_label("From").locator("option")).to_have_text(["PJSIP/6001", "6002"])
        run = await config.place_test_call("Receptionist", "6100", from_="6002")
        status = await run.wait_final(timeout_ms=60_000)
        assert status == "completed", await page.locator("main").inner_text()
        head = page.locator(".page-head")
        await expect(head).to_contain_text("6100")
        assert await lab.callee_caller_id("6100") == "6002"  # the callee saw the chosen From
        assert lab.callee_recordings("6100"), "the SIP phone recorded nothing"
        transcript = await run.transcript()
        assert transcript and transcript[0][0] == "agent", transcript
        await screenshot(page, f"{SHOTS}/desktop-07-test-call-sip-phone")
        assert not errors, errors
        await ctx.close()
    assert not await lab.wait_no_channels(timeout_s=10)


async def _assert_run_page(run: RunPage) -> None:
    page = run.page
    head = page.locator(".page-head")
    await expect(head).to_contain_text("Inbound call")
    await expect(head).to_contain_text("8000")
    await expect(head).to_contain_text("Receptionist")
    context = page.locator("section.card", has=page.get_by_role("heading", name="Context"))
    await expect(context).to_contain_text("ari")
    await expect(context).to_contain_text("15551230001")  # the lab caller's number
    transcript = await run.transcript()
    assert transcript, "empty transcript"
    assert transcript[0][0] == "agent", transcript
    agent = " ".join(t for who, t in transcript if who == "agent").lower()
    caller = " ".join(t for who, t in transcript if who == "caller").lower()
    assert "acme dental" in agent, transcript
    # Whisper's words, not a fixture's: the caller's sentence as the agent understood it.
    assert re.search(r"\b(hours|open)\b", caller), transcript
    # The call-level summary the ARI handler appends is shown as facts, not as a squeezed table row.
    summary = page.locator("#latency dl.call-summary")
    await expect(summary).to_contain_text("Node path")
    await expect(summary).to_contain_text(re.compile(r"greeting → menu → hours"))
    await expect(summary).to_contain_text("answered")
    await expect(page.locator("#latency table")).not_to_contain_text("{")
    assert await run.has_recording()
    player = page.locator("#recording audio")
    await expect(player).to_have_attribute("controls", "")
    # The browser loaded the WAV's metadata (readyState >= HAVE_METADATA): playable audio with a
    # real duration, not just an <audio> tag pointing somewhere.
    await page.wait_for_function("() => document.querySelector('#recording audio').readyState >= 1", timeout=10_000)
    duration = await player.evaluate("a => a.duration")
    assert 3 < duration < 30, duration


async def _phone_walk(browser: Browser, platform: Platform, user: DashboardUser, config_id: str, run_url: str) -> None:
    """The same three pages on a phone-sized screen."""
    ctx = await new_context(browser, platform.base_url, phone=True)
    page = await ctx.new_page()
    errors = _page_errors(page)
    await Dashboard(page).sign_in(user.email, user.password)
    await page.goto(f"/telephony-configurations/{config_id}")
    config = ConfigurationPage(page)
    await config.wait_for_state("Connected")
    await _no_sideways_scroll(page)
    await screenshot(page, f"{SHOTS}/phone-01-configuration-connected", full_page=False)
    checks = await config.run_diagnostics()
    await _assert_healthy(config, checks)
    await _no_sideways_scroll(page)
    await screenshot_of(page.locator("#diagnostics"), f"{SHOTS}/phone-02-diagnostics-healthy")
    await page.goto(run_url)
    run = RunPage(page)
    assert await run.status() == "completed"
    assert await run.has_recording()
    await _no_sideways_scroll(page)
    await screenshot(page, f"{SHOTS}/phone-03-run")
    assert not errors, errors
    await ctx.close()


async def test_diagnostics_on_broken_configurations(lab: AsteriskLab, tmp_path: Path, browser: Browser) -> None:
    fields = lab_fields(lab)
    # No call is placed here, so the voice models stay unloaded (start_platform's default).
    async with start_platform(tmp_path, port=lab.media_port, telephony=True) as platform:
        user = await platform.create_user()
        desktop = await new_context(browser, platform.base_url)
        phone = await new_context(browser, platform.base_url, phone=True)
        page, ppage = await desktop.new_page(), await phone.new_page()
        errors, perrors = _page_errors(page), _page_errors(ppage)
        ui = Dashboard(page)
        await ui.sign_in(user.email, user.password)
        await Dashboard(ppage).sign_in(user.email, user.password)
        await ui.create_workflow("Receptionist")
        config = await ui.add_configuration(fields)
        await config.add_phone_number("8000", "Receptionist")
        await config.wait_for_state("Connected")
        phone_config = ConfigurationPage(ppage)

        # 1. A wrong App Password: ARI answers 401, the listener keeps retrying and says why.
        await config.edit(app_password="not-the-password")
        await config.wait_for_state("Retrying")
        await expect(config.state_badge()).to_have_class(re.compile(r"\btone-bad\b"))
        await expect(config.state_error()).to_contain_text("rejected the credentials")
        await expect(config.state_error()).to_contain_text("Stasis App Name matches the user section in ari.conf")
        await _assert_no_secret(page, "not-the-password")
        checks = await config.run_diagnostics()
        assert checks["ari_reachable"] is True, await _checks_text(config)
        assert checks["credentials"] is False, await _checks_text(config)
        # Dependent checks are "not checked" rather than piling up failures with one cause.
        for key in ("res_ari", "chan_websocket", "res_websocket_client", "ws_client_name", "media"):
            assert checks[key] is None, (key, await _checks_text(config))
        assert checks["stasis_app"] is False  # nothing holds the Stasis app while ARI refuses us
        cred = config.check("credentials")
        await expect(cred).to_contain_text("HTTP 401")
        await expect(cred.locator(".check-fix")).to_contain_text(FIX_CREDENTIALS)
        await expect(page.locator("#diagnostics .diag-summary")).to_have_text("2 checks failed.")
        await _assert_no_secret(page, "not-the-password")
        await screenshot_of(page.locator("#diagnostics"), f"{SHOTS}/desktop-04-diagnostics-wrong-password")
        await page.locator("#connection").scroll_into_view_if_needed()
        await screenshot(page, f"{SHOTS}/desktop-05-configuration-wrong-password", full_page=False)
        await ppage.goto(f"/telephony-configurations/{config.config_id}")
        await phone_config.wait_for_state("Retrying")
        await screenshot(ppage, f"{SHOTS}/phone-04-configuration-wrong-password", full_page=False)
        phone_checks = await phone_config.run_diagnostics()
        assert phone_checks["credentials"] is False
        await _no_sideways_scroll(ppage)
        await screenshot_of(ppage.locator("#diagnostics"), f"{SHOTS}/phone-05-diagnostics-wrong-password")

        # 2. The right password but a WebSocket Client Name with no websocket_client.conf section:
        # ARI connects fine (the name is only used per call), so only diagnostics reveal it.
        await config.edit(app_password=fields.app_password, websocket_client_name="nosuchclient")
        await config.wait_for_state("Connected")
        checks = await config.run_diagnostics()
        assert checks["credentials"] is True and checks["stasis_app"] is True, await _checks_text(config)
        assert checks["ws_client_name"] is False, await _checks_text(config)
        assert checks["media"] is None  # not probed: the name check above must pass first
        assert [k for k, ok in checks.items() if ok is False] == ["ws_client_name"], await _checks_text(config)
        ws = config.check("ws_client_name")
        await expect(ws).to_contain_text("Asterisk has no websocket_client section named 'nosuchclient'")
        await expect(ws.locator(".check-fix")).to_contain_text(FIX_WS_NAME)
        await expect(page.locator("#diagnostics .diag-summary")).to_have_text("1 check failed.")
        await screenshot_of(page.locator("#diagnostics"), f"{SHOTS}/desktop-06-diagnostics-unknown-websocket-client")
        await ppage.goto(f"/telephony-configurations/{config.config_id}")
        phone_checks = await phone_config.run_diagnostics()
        assert phone_checks["ws_client_name"] is False
        await _no_sideways_scroll(ppage)
        await screenshot_of(ppage.locator("#diagnostics"), f"{SHOTS}/phone-06-diagnostics-unknown-websocket-client")

        # 3. Following the fix: the section name from websocket_client.conf, and all is well again.
        await config.edit(websocket_client_name=fields.websocket_client_name)
        await config.wait_for_state("Connected")
        await _assert_healthy(config, await config.run_diagnostics())
        assert not errors and not perrors, (errors, perrors)
        await desktop.close()
        await phone.close()
        assert not await _leftover_channels(lab)


async def _assert_no_secret(page: Page, secret: str) -> None:
    assert secret not in await page.content()


async def _leftover_channels(lab: AsteriskLab) -> list[dict[str, Any]]:
    """Diagnostics' probe channels are hung up (a diag channel left behind would hold a media slot)."""
    return [c for c in await lab.wait_no_channels(timeout_s=3) if "-diag" in str(c.get("id", ""))]
