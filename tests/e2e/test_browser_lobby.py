"""The call page's lobby list of live calls (``GET /api/calls/live/``, docs/protocol.md §11)
through a real daphne process: Debian's Chromium driven by Playwright, one browser context per
page, fake camera and microphone. Nothing here downloads a browser.

The module has a daphne process of its own (a fresh database with the demo users: alice, bob
and carol in "Demo team"), so that no other module's call shows in the list. Every wait ends on
a condition of the page, within ``STEP_TIMEOUT_MS`` (tests/e2e/conftest.py); the list is polled
every 5 s, well within it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Request, expect

from tests.e2e.conftest import DEMO_GROUP, DESKTOP, join_demo_group, mesh_of, remote_names
from tests.e2e.test_browser_call import PageErrors, signed_in_page
from tests.servers import Server, demo_server

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
NAMES = {"alice": "Alice Liddell", "bob": "Bob Builder", "carol": "Carol Danvers"}
EMPTY_TEXT = "No calls are live in your groups right now."
LIVE_API = "/api/calls/live/"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("lobby-e2e"), CALLS_JOINS_PER_MINUTE="1000") as server:
        yield server


class LiveRequests:
    """The page's requests of the live calls: how many, and the most ever out at once.
    Only requests sent once this watches count: one already out when it starts (the
    lobby's first) would finish without having been seen to start."""

    def __init__(self, page: Page) -> None:
        self.count = 0
        self.out: set[Request] = set()
        self.most_out = 0
        page.on("request", self._sent)
        page.on("requestfinished", self._done)
        page.on("requestfailed", self._done)

    @staticmethod
    def _is_live(request: Request) -> bool:
        return request.url.split("?", 1)[0].endswith(LIVE_API)

    def _sent(self, request: Request) -> None:
        if self._is_live(request):
            self.count += 1
            self.out.add(request)
            self.most_out = max(self.most_out, len(self.out))

    def _done(self, request: Request) -> None:
        self.out.discard(request)


async def in_call(browser: Browser, server: Server, username: str, errors: PageErrors, **context: Any) -> Page:
    page = await signed_in_page(browser, server, username, errors, **(context or {"viewport": DESKTOP}))
    await join_demo_group(page)
    return page


async def test_the_lobby_lists_a_live_call_with_its_people_joins_it_and_drops_it_when_it_ends(
    browser: Browser, server: Server
) -> None:
    errors = PageErrors()
    # Carol's lobby first: nothing is live yet, and it says so.
    carol = await signed_in_page(browser, server, "carol", errors, **PHONE)
    requests = LiveRequests(carol)
    calls = carol.locator(".live-call")
    await expect(carol.get_by_text(EMPTY_TEXT)).to_be_visible()
    await expect(calls).to_have_count(0)

    # Alice and bob start the group's call: carol's lobby shows it by itself (it polls), with both names.
    alice = await in_call(browser, server, "alice", errors)
    bob = await in_call(browser, server, "bob", errors)
    await mesh_of([alice, bob])
    await expect(calls).to_have_count(1)
    listed = calls.first
    await expect(listed.locator(".live-name")).to_have_text(DEMO_GROUP)
    await expect(listed.locator(".live-people")).to_have_text(f"{NAMES['alice']}, {NAMES['bob']}")
    await expect(listed.locator(".live-meta")).to_contain_text("2 people")
    await expect(carol.get_by_text(EMPTY_TEXT)).to_be_hidden()
    join = carol.get_by_role("button", name=f"Join {DEMO_GROUP}", exact=True)
    await expect(join).to_have_text("Join")
    await expect(join).to_be_in_viewport()
    # At phone width nothing overflows sideways.
    assert await carol.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # She joins from the list: the three-way call forms.
    await join.click()
    await expect(carol.locator("#call")).to_be_visible()
    await expect(carol.locator("#call-title")).to_have_text(DEMO_GROUP)
    pages = {"alice": alice, "bob": bob, "carol": carol}
    await mesh_of(list(pages.values()))
    for name, page in pages.items():
        assert await remote_names(page) == sorted(full for user, full in NAMES.items() if user != name)
    assert await carol.evaluate("window.callApp.call.metadata.groupId") == await alice.evaluate(
        "window.callApp.mesh.joined.metadata.groupId"
    )

    # Carol leaves: her lobby lists the call again at once, with the two still in it.
    await carol.get_by_role("button", name="Leave").click()
    await expect(carol.get_by_role("heading", name="Join a call")).to_be_visible()
    await expect(calls).to_have_count(1)
    await expect(listed.locator(".live-people")).to_have_text(f"{NAMES['alice']}, {NAMES['bob']}")

    # Everyone leaves: the call ends, and no lobby lists it any more: not carol's (at its next
    # poll), not alice's (asked as she left, last), not a fresh page's.
    for page in (bob, alice):
        await page.get_by_role("button", name="Leave").click()
        await expect(page.get_by_role("heading", name="Join a call")).to_be_visible()
    for page in (carol, alice):
        await expect(page.locator(".live-call")).to_have_count(0)
        await expect(page.get_by_text(EMPTY_TEXT)).to_be_visible()
    fresh = await signed_in_page(browser, server, "bob", errors, viewport=DESKTOP)
    await expect(fresh.get_by_text(EMPTY_TEXT)).to_be_visible()
    await expect(fresh.locator(".live-call")).to_have_count(0)

    # Polled, never more than one request at a time.
    assert requests.count >= 3, requests.count
    assert requests.most_out == 1, requests.most_out
    assert errors == []
