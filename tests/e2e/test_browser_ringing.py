"""Ringing, media state and moderation on the call page (docs/protocol.md §9, §10, §5 rule 11)
through a real daphne process: Debian's Chromium driven by Playwright, one browser context per
page, fake camera and microphone. Nothing here downloads a browser.

The module has a daphne process of its own (a fresh database with the demo users: alice owns
"Demo team", bob and carol are members), so that a ban made here never reaches another test
module's calls. Every wait ends on a condition of the page, within ``STEP_TIMEOUT_MS`` (tests/e2e/conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, expect

from tests.e2e.conftest import (
    DEMO_GROUP,
    DESKTOP,
    JOIN_BUTTON,
    MESH_CONNECTED,
    join_demo_group,
    mesh_of,
    remote_names,
)
from tests.e2e.test_browser_call import PageErrors, signed_in_page
from tests.servers import Server, demo_server

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
NAMES = {"alice": "Alice Liddell", "bob": "Bob Builder", "carol": "Carol Danvers"}
BAN_SECS = 600

# True when the page's signaling connection is up (it is from the lobby on, to hear rings).
SIGNALING_UP = "() => Boolean(window.callApp.client && window.callApp.client.connected)"
# Keep what the page's signaling client hears of these events (its connection lasts from the lobby on).
RECORD_EVENTS = """events => {
    window.__heard = [];
    for (const event of events) window.callApp.client.on(event, data => window.__heard.push({event, data}));
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("ringing-e2e"), CALLS_JOINS_PER_MINUTE="1000") as server:
        yield server


async def lobby_page(browser: Browser, server: Server, username: str, errors: PageErrors, **context: Any) -> Page:
    """A page signed in as ``username`` in the lobby, its signaling connection up."""
    page = await signed_in_page(browser, server, username, errors, **(context or {"viewport": DESKTOP}))
    await page.wait_for_function(SIGNALING_UP)
    return page


async def in_call(browser: Browser, server: Server, username: str, errors: PageErrors, **context: Any) -> Page:
    page = await lobby_page(browser, server, username, errors, **context)
    await join_demo_group(page)
    return page


async def heard(page: Page, event: str) -> list[dict[str, Any]]:
    return [item["data"] for item in await page.evaluate("() => window.__heard") if item["event"] == event]


def instant(iso: str) -> datetime:
    """An ISO 8601 UTC time of the protocol (``…Z``)."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def tile(page: Page, username: str) -> Locator:
    return page.locator(f'.tile[data-username="{username}"]')


async def test_a_ring_reaches_the_lobby_and_accepting_makes_a_three_way_call_with_media_badges(
    browser: Browser, server: Server
) -> None:
    errors = PageErrors()
    alice = await in_call(browser, server, "alice", errors)
    bob = await in_call(browser, server, "bob", errors)
    await mesh_of([alice, bob])
    carol = await lobby_page(browser, server, "carol", errors, **PHONE)

    # Alice calls the group: bob is in the call already, so carol alone is rung.
    await alice.get_by_role("button", name="Call the group").click()
    await expect(alice.locator("#call-note")).to_have_text(f"Calling {NAMES['carol']}…")
    banner = carol.locator(".ring")
    await expect(banner).to_have_count(1)
    await expect(banner.locator(".ring-from")).to_have_text(NAMES["alice"])
    await expect(banner.locator(".ring-what")).to_contain_text(DEMO_GROUP)
    await expect(banner.get_by_role("button", name="Accept")).to_be_in_viewport()
    assert await carol.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    await banner.get_by_role("button", name="Accept").click()
    await expect(carol.locator("#call")).to_be_visible()
    await expect(carol.locator(".ring")).to_have_count(0)
    await expect(alice.locator("#call-note")).to_have_text(f"{NAMES['carol']} answered.")
    await expect(alice.get_by_role("button", name="Call the group")).to_be_visible()
    pages = {"alice": alice, "bob": bob, "carol": carol}
    await mesh_of(list(pages.values()))
    for name, page in pages.items():
        assert await remote_names(page) == sorted(full for user, full in NAMES.items() if user != name)

    # Carol mutes: the others' pages show it on her tile; with her camera off, her name instead of black.
    await carol.get_by_role("button", name="Mute").click()
    for page in (alice, bob):
        await expect(tile(page, "carol").locator(".badge.muted")).to_be_visible()
        await expect(tile(page, "carol").locator(".badge.camera")).to_be_hidden()
    await carol.get_by_role("button", name="Camera off").click()
    for page in (alice, bob):
        await expect(tile(page, "carol").locator(".badge.camera")).to_be_visible()
        await expect(tile(page, "carol").locator(".placeholder-name")).to_have_text(NAMES["carol"])
        await expect(tile(page, "carol").locator(".placeholder-name")).to_be_visible()
        await expect(tile(page, "carol").locator("video")).to_be_hidden()
    await carol.get_by_role("button", name="Unmute").click()
    for page in (alice, bob):
        await expect(tile(page, "carol").locator(".badge.muted")).to_be_hidden()
        await expect(tile(page, "alice" if page is bob else "bob").locator(".badge.muted")).to_be_hidden()
    assert errors == []


async def test_a_decline_on_one_device_takes_the_ring_off_the_other(browser: Browser, server: Server) -> None:
    errors = PageErrors()
    alice = await in_call(browser, server, "alice", errors)
    await expect(alice.get_by_text("Waiting for others to join…")).to_be_visible()
    phone = await lobby_page(browser, server, "bob", errors, **PHONE)
    laptop = await lobby_page(browser, server, "bob", errors)

    await alice.get_by_role("button", name="Call the group").click()
    note = alice.locator("#call-note")
    await expect(note).to_contain_text(NAMES["bob"])
    await expect(note).to_contain_text(NAMES["carol"])  # (not connected: rung all the same)
    for page in (phone, laptop):
        await expect(page.locator(".ring .ring-from")).to_have_text(NAMES["alice"])

    await phone.get_by_role("button", name="Decline").click()
    for page in (phone, laptop):
        await expect(page.locator(".ring")).to_have_count(0)
        await expect(page.get_by_role("heading", name="Join a call")).to_be_visible()
        await expect(page.get_by_role("alert")).to_be_hidden()
    await expect(note).to_have_text(f"{NAMES['bob']} declined. Calling {NAMES['carol']}…")

    # Alice stops calling carol, who never answered.
    await alice.get_by_role("button", name="Stop calling").click()
    await expect(alice.get_by_role("button", name="Call the group")).to_be_visible()
    await expect(note).to_have_text("")
    await expect(alice.get_by_text("Waiting for others to join…")).to_be_visible()
    assert errors == []


async def test_the_owner_locks_the_call_and_ends_it_for_all(browser: Browser, server: Server) -> None:
    errors = PageErrors()
    alice = await in_call(browser, server, "alice", errors)
    bob = await in_call(browser, server, "bob", errors)
    await mesh_of([alice, bob])
    # Bob, a member, has no moderator controls; alice, the owner, has.
    for name in ("Lock call", "End for all"):
        await expect(bob.get_by_role("button", name=name)).to_be_hidden()
        await expect(alice.get_by_role("button", name=name)).to_be_visible()
    await expect(bob.locator(".tile.remote .moderate-toggle")).to_be_hidden()

    await alice.get_by_role("button", name="Lock call").click()
    for page in (alice, bob):
        await expect(page.locator("#call-locked")).to_be_visible()
    await expect(alice.get_by_role("button", name="Unlock call")).to_have_attribute("aria-pressed", "true")
    await expect(bob.locator("#call-note")).to_have_text(f"{NAMES['alice']} locked the call.")

    carol = await lobby_page(browser, server, "carol", errors)
    await carol.get_by_label("Call", exact=True).select_option(label=DEMO_GROUP)
    await carol.get_by_role("button", name=JOIN_BUTTON).click()
    await expect(carol.get_by_role("alert")).to_have_text("This call is locked: only its moderators can join it now.")
    await expect(carol.locator("#call")).to_be_hidden()

    await alice.get_by_role("button", name="End for all").click()
    await expect(bob.get_by_role("heading", name="Join a call")).to_be_visible()
    await expect(bob.get_by_role("alert")).to_have_text(f"{NAMES['alice']} ended the call for everyone.")
    await expect(alice.get_by_role("heading", name="Join a call")).to_be_visible()
    await expect(alice.get_by_role("alert")).to_have_text("You ended the call for everyone.")
    for page in (alice, bob):
        assert await page.evaluate("window.callApp.mesh === null && window.callApp.localStream === null")
    # The lock ended with the call: carol may start the next one.
    await join_demo_group(carol)
    assert errors == []


async def test_a_kick_with_a_ban_says_why_and_until_when_and_the_rejoin_is_refused(
    browser: Browser, server: Server
) -> None:
    """Last in the module: carol stays banned from the demo group's call for ten minutes."""
    errors = PageErrors()
    alice = await in_call(browser, server, "alice", errors)
    bob = await in_call(browser, server, "bob", errors)
    carol = await lobby_page(browser, server, "carol", errors, **PHONE)
    await carol.evaluate(RECORD_EVENTS, ["webrtc:kicked", "webrtc:signaling-error"])
    await join_demo_group(carol)
    await mesh_of([alice, bob, carol])

    kicked_at = datetime.now(UTC)
    carol_tile = tile(alice, "carol")
    await carol_tile.get_by_role("button", name="Moderate").click()
    await carol_tile.get_by_role("menuitem", name="Remove and ban for 10 minutes").click()

    await expect(carol.get_by_role("heading", name="Join a call")).to_be_visible()
    alert = carol.get_by_role("alert")
    await expect(alert).to_have_text(
        re.compile(rf"^{NAMES['alice']} removed you from the call\. You cannot join it again until .*\d:\d\d.*\.$")
    )
    [kicked] = await heard(carol, "webrtc:kicked")
    assert kicked["by"]["userId"] == str(await alice.evaluate("window.callApp.me.id")), kicked
    banned_until = instant(kicked["bannedUntil"])
    assert abs(banned_until - (kicked_at + timedelta(seconds=BAN_SECS))) < timedelta(seconds=30), kicked
    for page in (alice, bob):
        await expect(tile(page, "carol")).to_have_count(0)
        await expect(page.locator("#call-note")).to_have_text(f"{NAMES['carol']} was removed from the call.")
        await page.wait_for_function(MESH_CONNECTED, arg=1)

    # She cannot come back: the server refuses the join, and the page says until when.
    await carol.get_by_role("button", name=JOIN_BUTTON).click()
    await expect(alert).to_have_text(
        re.compile(r"^You were removed from this call and cannot join it again until .*\d:\d\d.*\.$")
    )
    await expect(carol.locator("#call")).to_be_hidden()
    errors_heard = await heard(carol, "webrtc:signaling-error")
    refusals = [data for data in errors_heard if data.get("event") == "webrtc:join-room"]
    assert [data["error"] for data in refusals] == ["forbidden"], refusals
    assert abs(instant(refusals[0]["details"]["bannedUntil"]) - banned_until) < timedelta(seconds=1), refusals
    await expect(alice.locator(".tile.remote")).to_have_count(1)
    assert errors == []
