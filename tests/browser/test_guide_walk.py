"""The guide's "Configuration in VR3 AI" steps, clicked through in a real (headless) Chromium.

Sign in → /telephony-configurations → Add configuration → Asterisk ARI → the five fields → Save
Configuration → see it listed → open it → create a test workflow → add extension 8000 with its
Inbound workflow → the Asterisk setup snippets name this configuration. Screenshots of every main
page, desktop and phone-sized, go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from tests.browser.pages import AriFields, ConfigurationPage, Dashboard, new_context, screenshot
from tests.web.fakes import FakeTelephony
from tests.web.platform import Platform, start_platform
from vr3ai.core.runs import RunOutcome
from vr3ai.services import Services
from vr3ai.settings import Settings

GUIDE_FIELDS = AriFields(
    ari_endpoint_url="http://asterisk.example.com:8088",
    stasis_app_name="vr3ai",
    app_password="your_secure_password",
    websocket_client_name="vr3ai",
    from_extensions="PJSIP/6001",
)


async def _page_errors(page: Page) -> list[str]:
    """JavaScript errors and failed sub-resources (CSS, JS, fetches). Pages answering 4xx on purpose
    (a form with validation errors is a 422) are not errors."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}") if r.status >= 400 and r.request.resource_type != "document" else None
        ),
    )
    return errors


async def test_walk_the_guide(platform: Platform, browser: Browser) -> None:
    user = await platform.create_user("operator@example.com")
    ctx = await new_context(browser, platform.base_url)
    page = await ctx.new_page()
    errors = await _page_errors(page)
    await page.goto("/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await screenshot(page, "desktop-01-login")

    ui = Dashboard(page)
    await ui.sign_in(user.email, user.password)
    await expect(page).to_have_url(platform.base_url + "/telephony-configurations")
    await screenshot(page, "desktop-02-telephony-empty")

    # Step 1: Add configuration → Asterisk ARI. Step 2: the five fields with the guide's help text.
    await page.get_by_role("link", name="Add configuration").first.click()
    await expect(page.get_by_role("link", name="Asterisk ARI")).to_be_visible()
    await screenshot(page, "desktop-03-select-provider")
    await page.get_by_role("link", name="Asterisk ARI").click()
    for text in (
        "HTTP base URL of your Asterisk ARI server",
        "The ARI username configured in ari.conf",
        "The ARI password configured in ari.conf",
        "The connection name from websocket_client.conf",
        "Optional SIP extensions or trunk numbers for outbound calls",
        "PJSIP/6001 or 6001",
    ):
        await expect(page.get_by_text(text, exact=False).first).to_be_visible()
    await screenshot(page, "desktop-04-ari-form")

    # A mistake first: the validation message appears next to its field.
    await page.get_by_label("ARI Endpoint URL").fill("asterisk.example.com:8088")
    await page.get_by_label("Stasis App Name").fill("vr3ai ")
    await page.get_by_label("App Password").fill(GUIDE_FIELDS.app_password)
    await page.get_by_label("WebSocket Client Name").fill("vr3ai")
    await page.get_by_role("button", name="Save Configuration").click()
    await expect(page.locator("#e-ari_endpoint_url")).to_contain_text("http://")
    await expect(page.locator("#e-stasis_app_name")).to_contain_text("extra spaces")
    await screenshot(page, "desktop-05-ari-form-errors")

    config = await ui.add_configuration(GUIDE_FIELDS)
    assert isinstance(config, ConfigurationPage)
    await page.goto("/telephony-configurations")
    await expect(page.locator("a.list-item")).to_contain_text("Asterisk asterisk.example.com")
    await expect(page.locator("a.list-item")).to_contain_text("Not running")
    await screenshot(page, "desktop-06-telephony-list")

    # Step 3: create a test workflow, add extension 8000 with it as Inbound workflow.
    await ui.create_workflow("Receptionist")
    await screenshot(page, "desktop-07-workflow-editor")
    config = await ui.open_configuration()
    config_id = config.config_id
    await config.add_phone_number("8000", "Receptionist")
    await expect(config.number_row("8000").locator("select")).to_have_value(await _workflow_id(platform))
    extensions = await config.snippet("extensions.conf")
    assert "exten => 8000,1,NoOp(Incoming call to 8000)" in extensions
    assert "Stasis(vr3ai)" in extensions
    ws_conf = await config.snippet("websocket_client.conf")
    assert f"uri = ws://127.0.0.1:{platform.settings.server.port}/api/v1/telephony/ws/ari" in ws_conf
    assert "protocols = media" in ws_conf
    assert "your_secure_password" in await config.snippet("ari.conf")
    await screenshot(page, "desktop-08-configuration")
    await page.locator("#asterisk-setup").scroll_into_view_if_needed()
    await screenshot(page, "desktop-09-asterisk-setup", full_page=False)

    # Diagnostics against an Asterisk that does not exist explain what to fix.
    checks = await config.run_diagnostics()
    assert checks["ari_reachable"] is False
    assert checks["phone_numbers"] is True
    await page.locator("#diagnostics").scroll_into_view_if_needed()
    await screenshot(page, "desktop-10-diagnostics", full_page=False)

    run_id = await _finished_run(platform, user.organization_id)
    await page.goto("/runs")
    await expect(page.locator("table.runs")).to_contain_text("completed")
    await screenshot(page, "desktop-11-runs")
    await page.goto(f"/runs/{run_id}")
    await expect(page.locator("#transcript")).to_contain_text("How can I help")
    await expect(page.locator("#recording audio")).to_have_count(1)
    await screenshot(page, "desktop-12-run")
    await page.goto("/account")
    await screenshot(page, "desktop-13-account")
    await page.goto("/workflows")
    await screenshot(page, "desktop-14-workflows")

    await ui.sign_out()
    await page.goto("/telephony-configurations")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert not errors, errors
    await ctx.close()

    # The same pages on a phone-sized screen.
    phone = await new_context(browser, platform.base_url, phone=True)
    p = await phone.new_page()
    perrors = await _page_errors(p)
    await p.goto("/login")
    await screenshot(p, "phone-01-login")
    await Dashboard(p).sign_in(user.email, user.password)
    await screenshot(p, "phone-02-telephony-list")
    await p.goto("/telephony-configurations/new?provider=ari")
    await screenshot(p, "phone-03-ari-form")
    config_page = await Dashboard(p).open_configuration()
    await screenshot(p, "phone-04-configuration")
    await config_page.page.goto("/workflows/new")
    await screenshot(p, "phone-05-workflow-editor")
    await p.goto("/runs")
    await screenshot(p, "phone-06-runs")
    await p.goto(f"/runs/{run_id}")
    await screenshot(p, "phone-07-run")
    # Nothing wider than the screen: the page never scrolls sideways.
    for path in ("/telephony-configurations", f"/telephony-configurations/{config_id}", "/runs", "/account"):
        await p.goto(path)
        overflow = await p.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, (path, overflow)
    assert not perrors, perrors
    await phone.close()


async def test_live_state_and_test_call(tmp_path: Path, browser: Browser) -> None:
    """With a (fake) running telephony manager: the badge follows the listener's state without a
    reload, and a test call lands on the run's page."""
    fake: dict[str, FakeTelephony] = {}

    def build(settings: Settings) -> Services:
        svc = Services.build(settings)
        fake["t"] = FakeTelephony(svc)
        svc.telephony = fake["t"]  # type: ignore[assignment]
        return svc

    async with start_platform(tmp_path, services_factory=build) as platform:
        user = await platform.create_user()
        ctx = await new_context(browser, platform.base_url)
        page = await ctx.new_page()
        ui = Dashboard(page)
        await ui.sign_in(user.email, user.password)
        await ui.create_workflow("Receptionist")
        config = await ui.add_configuration(GUIDE_FIELDS)
        assert fake["t"].changed == [config.config_id]
        await config.wait_for_state("Connected")

        fake["t"].states[config.config_id] = {
            "state": "replaced",
            "since": "2026-01-01T00:00:00+00:00",
            "last_error": "another client subscribed the Stasis app 'vr3ai'",
        }
        await config.wait_for_state("Replaced", timeout_ms=10_000)
        await expect(page.locator("#connection [data-role=state-error]")).to_contain_text("another client")

        run = await config.place_test_call("Receptionist", "6001")
        assert await run.status() == "initialized"
        assert fake["t"].calls[0]["to"] == "6001"
        await screenshot(page, "desktop-15-test-call-run")
        await ctx.close()


async def _workflow_id(platform: Platform) -> str:
    from sqlalchemy import select

    from vr3ai.db.models import Workflow

    async with platform.services.db.session() as s:
        return str(await s.scalar(select(Workflow.id).limit(1)))


async def _finished_run(platform: Platform, org_id: str) -> str:
    """A completed inbound run with transcript, latency, a warning and a short recording."""
    from sqlalchemy import select

    from vr3ai.db.models import TelephonyConfiguration, Workflow

    svc = platform.services
    async with svc.db.session() as s:
        wf_id = await s.scalar(select(Workflow.id).where(Workflow.organization_id == org_id))
        cfg_id = await s.scalar(
            select(TelephonyConfiguration.id).where(TelephonyConfiguration.organization_id == org_id)
        )
    run = await svc.runs.create(
        organization_id=org_id,
        workflow_id=wf_id,
        telephony_configuration_id=cfg_id,
        direction="inbound",
        context={
            "caller_number": "15551230001",
            "called_number": "8000",
            "direction": "inbound",
            "call_id": "1795663512.7",
            "provider": "ari",
        },
        call_id="1795663512.7",
    )
    await svc.runs.mark_running(run.id)
    rec = Path(svc.settings.storage.data_dir) / "recordings" / f"{run.id}.wav"
    rec.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(rec), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"".join(struct.pack("<h", int(3000 * math.sin(i / 8))) for i in range(8000)))
    await svc.runs.finish(
        run.id,
        RunOutcome(
            status="completed",
            end_reason="caller hung up",
            transcript=[
                {
                    "role": "agent",
                    "text": "Hello, thanks for calling Acme Dental. How can I help you today?",
                    "start_ms": 300,
                    "end_ms": 3900,
                },
                {"role": "caller", "text": "What are your opening hours?", "start_ms": 4800, "end_ms": 6400},
                {
                    "role": "agent",
                    "text": "We're open Monday to Friday from 9 AM to 5 PM. Thanks for calling, goodbye!",
                    "start_ms": 6900,
                    "end_ms": 11200,
                },
            ],
            metrics=[
                {
                    "turn": 1,
                    "node": "menu",
                    "stt_ms": 212.4,
                    "responder_ms": 3.1,
                    "tts_ms": 148.9,
                    "first_audio_ms": 498.2,
                },
            ],
            events=[{"level": "warning", "message": "caller audio was silent for 4.2 s", "at_ms": 12000}],
            recording_path=str(rec),
        ),
    )
    return run.id
