"""Tests that the call page holds a real three-person call through a real daphne process:
Debian's Chromium driven by Playwright, one browser context per user, fake camera and
microphone. Nothing here downloads a browser.

The three-person test prints the time from each Join click to the whole
mesh being connected and writes it to ``tests/e2e/artifacts/timing.json``; it also saves
the screenshot that the README shows (``docs/screenshot-call.png``, refreshed with ``UPDATE_SCREENSHOT=1``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import (
    DEMO_GROUP,
    DESKTOP,
    JOIN_BUTTON,
    MESH_CONNECTED,
    REMOTE_VIDEOS_PLAYING,
    STEP_TIMEOUT_MS,
    remote_names,
    sign_in,
)
from tests.servers import PROJECT_DIR, Server

PHONE = {"width": 390, "height": 844}
POLL_MS = 20  # resolution of the connection timing
ARTIFACTS = Path(__file__).parent / "artifacts"
SCREENSHOT = ARTIFACTS / "screenshot-call.png"
# The README's copy is refreshed from this test with UPDATE_SCREENSHOT=1 (or when missing),
# so that ordinary runs leave the work tree clean.
README_SCREENSHOT = PROJECT_DIR / "docs" / "screenshot-call.png"


class PageErrors(list[str]):
    """Uncaught errors of the pages a test opened; a test ends by asserting there were none."""

    def watch(self, page: Page, name: str) -> None:
        page.on("pageerror", lambda error: self.append(f"{name}: {error}"))


async def signed_in_page(
    browser: Browser, server: Server, username: str, errors: PageErrors, **context: object
) -> Page:
    """A new browser context on the call page, signed in as ``username``, showing the lobby."""
    page = await (await browser.new_context(**context)).new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    errors.watch(page, username)
    await sign_in(page, server.http, username)
    return page


async def connected_at(page: Page, peers: int) -> float:
    await page.wait_for_function(MESH_CONNECTED, arg=peers, polling=POLL_MS, timeout=STEP_TIMEOUT_MS)
    return time.perf_counter()


async def test_three_browsers_hold_a_call_and_see_a_leaver_go(browser: Browser, server: Server) -> None:
    errors = PageErrors()
    names = {"alice": "Alice Liddell", "bob": "Bob Builder", "carol": "Carol Danvers"}
    pages = {
        "alice": await signed_in_page(browser, server, "alice", errors, viewport=DESKTOP),
        "bob": await signed_in_page(browser, server, "bob", errors, viewport=PHONE, is_mobile=True, has_touch=True),
        "carol": await signed_in_page(browser, server, "carol", errors, viewport=DESKTOP),
    }
    # All three join back to back, as fast as the test can click. (The page's signaling
    # connection is open from the lobby on, so the join is timed from the click.)
    join_sent: dict[str, float] = {}
    for name, page in pages.items():
        await page.get_by_label("Call", exact=True).select_option(label=DEMO_GROUP)
        join_sent[name] = time.perf_counter()
        await page.get_by_role("button", name=JOIN_BUTTON).click()
    done = await asyncio.gather(*(connected_at(page, peers=2) for page in pages.values()))
    mesh_connected = max(done)

    for name, page in pages.items():
        await page.wait_for_function(REMOTE_VIDEOS_PLAYING, arg=2, timeout=STEP_TIMEOUT_MS)
        assert await remote_names(page) == sorted(full for user, full in names.items() if user != name)
        await expect(page.locator(".tile.local .name")).to_have_text(f"{names[name]} (you)")
    # At phone width nothing overflows sideways, and the controls stay reachable.
    assert await pages["bob"].evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await expect(pages["bob"].get_by_role("button", name="Leave")).to_be_in_viewport()

    SCREENSHOT.parent.mkdir(exist_ok=True)
    await pages["alice"].screenshot(path=SCREENSHOT)
    if os.environ.get("UPDATE_SCREENSHOT") == "1" or not README_SCREENSHOT.exists():
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(SCREENSHOT, README_SCREENSHOT)
    timing = {
        "browsers": len(pages),
        "first_join_room_to_mesh_connected_ms": round((mesh_connected - min(join_sent.values())) * 1000),
        "last_join_room_to_mesh_connected_ms": round((mesh_connected - max(join_sent.values())) * 1000),
        "own_join_room_to_connected_with_both_ms": {
            name: round((at - join_sent[name]) * 1000) for name, at in zip(pages, done, strict=True)
        },
        "resolution_ms": POLL_MS,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(f"\nthree-browser call, join-room → all peers connected: {json.dumps(timing)}")

    # Carol leaves: she is back in the lobby, and her tile goes from the others' pages.
    await pages["carol"].get_by_role("button", name="Leave").click()
    await expect(pages["carol"].get_by_role("heading", name="Join a call")).to_be_visible()
    for name in ("alice", "bob"):
        page = pages[name]
        await expect(page.locator('.tile[data-username="carol"]')).to_have_count(0)
        await expect(page.locator(".tile.remote")).to_have_count(1)
        await connected_at(page, peers=1)
        assert await remote_names(page) == [names["bob" if name == "alice" else "alice"]]
    assert errors == []


def demo_group_id(server: Server) -> int:
    request = urllib.request.Request(
        f"{server.http}/api/groups/", headers={"Authorization": f"Bearer {server.token('alice')}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return next(group["id"] for group in json.loads(response.read()) if group["name"] == DEMO_GROUP)


async def test_a_user_outside_the_group_is_refused_with_a_visible_message(browser: Browser, server: Server) -> None:
    errors = PageErrors()
    page = await signed_in_page(browser, server, "dave", errors, viewport=DESKTOP)
    # Dave belongs to no group: he can only type a room id, here the demo group's.
    await expect(page.get_by_label("Call", exact=True).locator("option")).to_have_count(1)
    await page.get_by_label("Room id").fill(f"group-{demo_group_id(server)}")
    await page.get_by_role("button", name=JOIN_BUTTON).click()

    await expect(page.get_by_role("alert")).to_have_text("You are not a member of this group's call.")
    await expect(page.get_by_role("heading", name="Join a call")).to_be_visible()
    await expect(page.locator("#call")).to_be_hidden()
    assert await page.evaluate("window.callApp.mesh === null && window.callApp.localStream === null")
    assert errors == []
