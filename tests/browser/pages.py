"""Page objects for the dashboard, written in the guide's words (labels and button texts).

The real-Asterisk browser tests reuse these unchanged: ``ConfigurationPage.wait_for_state("Connected")``,
``place_test_call(...)`` then ``RunPage.wait_final()``, ``run_diagnostics()`` → ``{check key: ok}``.
Every method waits through Playwright's auto-waiting locators, so no fixed sleeps.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from playwright.async_api import Browser, BrowserContext, Locator, Page, expect

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


async def new_context(browser: Browser, base_url: str, *, phone: bool = False) -> BrowserContext:
    if phone:
        return await browser.new_context(
            base_url=base_url, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
        )
    return await browser.new_context(base_url=base_url, viewport=DESKTOP)


async def screenshot(page: Page, name: str, *, full_page: bool = True) -> Path:
    path = SCREENSHOTS / f"{name}.png"
    # ``name`` may contain a sub-folder ("real-asterisk/desktop-01-…").
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def screenshot_of(locator: Locator, name: str) -> Path:
    """One element (a card) only: the long configuration page would bury it in a full-page shot."""
    path = SCREENSHOTS / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    await locator.scroll_into_view_if_needed()
    await locator.screenshot(path=str(path))
    return path


@dataclass
class AriFields:
    """The five fields of the guide, Step 2."""

    ari_endpoint_url: str
    stasis_app_name: str
    app_password: str
    websocket_client_name: str
    from_extensions: str = ""
    name: str = ""
    media_username: str = ""
    """More options: left empty, VR3 AI generates the media credentials (shown in the snippet)."""
    media_password: str = ""


class Dashboard:
    def __init__(self, page: Page) -> None:
        self.page = page

    async def sign_in(self, email: str, password: str) -> None:
        await self.page.goto("/login")
        await self.page.get_by_label("Email").fill(email)
        await self.page.get_by_label("Password").fill(password)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.get_by_role("navigation", name="Main")).to_be_visible()

    async def sign_out(self) -> None:
        await self.page.get_by_role("button", name="Sign out").click()
        await expect(self.page.get_by_role("heading", name="Sign in")).to_be_visible()

    # --- Step 1 and 2 of the guide -------------------------------------------------------------------
    async def add_configuration(self, fields: AriFields) -> ConfigurationPage:
        """Navigate to /telephony-configurations, click Add configuration, select Asterisk ARI, fill the
        five fields, click Save Configuration, then open the configuration from the list."""
        page = self.page
        await page.goto("/telephony-configurations")
        await page.get_by_role("link", name="Add configuration").first.click()
        await page.get_by_role("link", name=re.compile("Asterisk ARI")).click()
        await page.get_by_label("ARI Endpoint URL").fill(fields.ari_endpoint_url)
        await page.get_by_label("Stasis App Name").fill(fields.stasis_app_name)
        await page.get_by_label("App Password").fill(fields.app_password)
        await page.get_by_label("WebSocket Client Name").fill(fields.websocket_client_name)
        await page.get_by_label("From Extensions").fill(fields.from_extensions)
        if fields.name or fields.media_username or fields.media_password:
            await page.get_by_text("More options").click()
        if fields.name:
            await page.get_by_label("Configuration name").fill(fields.name)
        if fields.media_username:
            await page.get_by_label("Media username").fill(fields.media_username)
        if fields.media_password:
            await page.get_by_label("Media password").fill(fields.media_password)
        await page.get_by_role("button", name="Save Configuration").click()
        await expect(page.get_by_role("status")).to_contain_text("Configuration saved")
        return await self.open_configuration(fields.name or None)

    async def open_configuration(self, name: str | None = None) -> ConfigurationPage:
        page = self.page
        if not page.url.rstrip("/").endswith("/telephony-configurations"):
            await page.goto("/telephony-configurations")
        items = page.locator("a.list-item")
        item = items.filter(has_text=name).first if name else items.last
        await item.click()
        await expect(page.get_by_role("heading", name="Phone numbers")).to_be_visible()
        return ConfigurationPage(page)

    async def create_workflow(self, name: str, *, json_definition: str | None = None) -> str:
        """Create a workflow (the example receptionist unless a JSON definition is given); returns its id."""
        page = self.page
        await page.goto("/workflows/new")
        await page.get_by_label("Name", exact=True).fill(name)
        if json_definition is not None:
            await page.get_by_role("tab", name="JSON").click()
            await page.locator("textarea[name=definition_json]").fill(json_definition)
            await page.get_by_role("button", name="Save from JSON").click()
        else:
            await page.get_by_role("button", name="Save workflow").click()
        await expect(page.get_by_role("status")).to_contain_text("Workflow saved")
        m = re.search(r"/workflows/([0-9a-f-]{36})", page.url)
        assert m, page.url
        return m.group(1)

    async def open_latest_run(self, timeout_ms: float = 30_000) -> RunPage:
        """/runs, reloaded until a run is listed (the list does not refresh itself), then the newest."""
        page = self.page
        rows = page.locator("table.runs tr[data-run]")
        await page.goto("/runs")
        deadline = asyncio.get_running_loop().time() + timeout_ms / 1000
        while await rows.count() == 0:
            assert asyncio.get_running_loop().time() < deadline, "no run appeared on /runs"
            await asyncio.sleep(0.25)
            await page.reload()
        await rows.first.get_by_role("link").first.click()
        await page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
        return RunPage(page)


class ConfigurationPage:
    def __init__(self, page: Page) -> None:
        self.page = page

    @property
    def config_id(self) -> str:
        m = re.search(r"/telephony-configurations/([0-9a-f-]{36})", self.page.url)
        assert m, self.page.url
        return m.group(1)

    def state_badge(self):
        return self.page.locator("#connection [data-role=state-label]")

    async def wait_for_state(self, label: str, timeout_ms: float = 30_000) -> None:
        """Wait until the live badge shows ``label`` ("Connected", "Retrying", "Replaced", ...)."""
        await expect(self.state_badge()).to_have_text(label, timeout=timeout_ms)

    def state_error(self) -> Locator:
        return self.page.locator("#connection [data-role=state-error]")

    async def edit(self, **fields: str) -> None:
        """Edit → change the given fields (AriFields names: ``app_password``, ``websocket_client_name``,
        ...) → Save Configuration; back on the configuration's page."""
        page = self.page
        config_id = self.config_id
        await page.get_by_role("link", name="Edit", exact=True).click()
        labels = {
            "ari_endpoint_url": "ARI Endpoint URL",
            "stasis_app_name": "Stasis App Name",
            "app_password": "App Password",
            "websocket_client_name": "WebSocket Client Name",
            "from_extensions": "From Extensions",
        }
        for key, value in fields.items():
            await page.get_by_label(labels[key]).fill(value)
        await page.get_by_role("button", name="Save Configuration").click()
        await expect(page.get_by_role("status")).to_contain_text("Configuration saved")
        await expect(page).to_have_url(re.compile(rf"/telephony-configurations/{config_id}$"))

    def check(self, key: str) -> Locator:
        """One diagnostics result (``credentials``, ``ws_client_name``, ...) after run_diagnostics()."""
        return self.page.locator(f"#diagnostics li.check[data-check='{key}']")

    async def add_phone_number(self, extension: str, workflow_name: str | None) -> None:
        """The guide's Phone numbers section: add the extension, set its Inbound workflow, save."""
        page = self.page
        section = page.locator("#phone-numbers")
        await section.get_by_label("Extension", exact=True).fill(extension)
        await section.get_by_label("Inbound workflow", exact=True).select_option(
            label=workflow_name if workflow_name else "— no Inbound workflow —"
        )
        await section.get_by_role("button", name="Add phone number").click()
        await expect(page.get_by_role("status")).to_contain_text(f"Phone number {extension} added")

    def number_row(self, extension: str):
        return self.page.locator(f"#phone-numbers form.number-row[data-number='{extension}']")

    async def set_inbound_workflow(self, extension: str, workflow_name: str | None) -> None:
        row = self.number_row(extension)
        await row.locator("select").select_option(label=workflow_name or "— no Inbound workflow —")
        await row.get_by_role("button", name="Save").click()
        await expect(self.page.get_by_role("status")).to_contain_text(f"Phone number {extension} saved")

    async def remove_phone_number(self, extension: str) -> None:
        self.page.once("dialog", lambda d: d.accept())
        await self.number_row(extension).get_by_role("button", name="Remove").click()
        await expect(self.page.get_by_role("status")).to_contain_text("Phone number removed")

    async def run_diagnostics(self, timeout_ms: float = 60_000) -> dict[str, bool | None]:
        """Click Run diagnostics; returns ``{check key: True | False | None}``."""
        page = self.page
        await page.get_by_role("button", name="Run diagnostics").click()
        await expect(page.locator("#diagnostics .diag-summary")).to_be_visible(timeout=timeout_ms)
        out: dict[str, bool | None] = {}
        for item in await page.locator("#diagnostics li.check").all():
            key = await item.get_attribute("data-check") or ""
            cls = await item.get_attribute("class") or ""
            out[key] = True if "pass" in cls.split() else False if "fail" in cls.split() else None
        return out

    async def place_test_call(self, workflow_name: str, to: str, from_: str | None = None) -> RunPage:
        page = self.page
        section = page.locator("#test-call")
        await section.get_by_label("Workflow").select_option(label=workflow_name)
        await section.get_by_label("Call").fill(to)
        if from_ is not None:
            await section.get_by_label("From").select_option(label=from_)
        await section.get_by_role("button", name="Place test call").click()
        await page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
        return RunPage(page)

    async def snippet(self, filename: str) -> str:
        return await self.page.locator(f"pre[data-snippet='{filename}']").inner_text()


class RunPage:
    def __init__(self, page: Page) -> None:
        self.page = page

    async def status(self) -> str:
        return (await self.page.locator(".page-head h1 .badge").inner_text()).strip()

    async def wait_final(self, timeout_ms: float = 60_000) -> str:
        """Wait until the page (which reloads itself while live) shows a final status."""
        await expect(self.page.locator(".page-head h1 .badge")).to_have_text(
            re.compile(r"completed|failed|busy|no answer"), timeout=timeout_ms
        )
        return await self.status()

    async def transcript(self) -> list[tuple[str, str]]:
        lines = []
        for li in await self.page.locator("#transcript li.turn").all():
            who = (await li.locator(".who").inner_text()).strip().lower()
            text = (await li.locator(".bubble").inner_text()).strip()
            lines.append((who, text))
        return lines

    async def has_recording(self) -> bool:
        return await self.page.locator("#recording audio").count() > 0
