"""One real daphne process for the end-to-end tests, on a fresh database with the demo
users (alice, bob and carol in "Demo team"; dave in no group); Chromium; loopback-only
candidates for the aiortc peers; and what the browser tests share of the call page:
signing in, joining the demo group's call, waiting for its mesh."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aioice.ice
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.servers import Server, demo_server

PASSWORD = "demo-pass-123"
DEMO_GROUP = "Demo team"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # Keep media on this machine: loopback candidates too (a CI box may have nothing else),
    # and plain host addresses rather than mDNS names, which would need multicast look-ups.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
LOOPBACK = "127.0.0.1"
DESKTOP = {"width": 1280, "height": 720}
STEP_TIMEOUT_MS = 30_000  # generous for two loaded cores; every wait ends on its condition
JOIN_BUTTON = "Join with camera and microphone"

# True when the page's mesh has `count` peer connections, all connected.
MESH_CONNECTED = """count => {
    const mesh = window.callApp.mesh;
    if (!mesh || mesh.peers.size !== count) return false;
    return [...mesh.peers.values()].every(peer => peer.pc.connectionState === 'connected');
}"""
# True when `count` remote videos play real frames.
REMOTE_VIDEOS_PLAYING = """count => {
    const videos = [...document.querySelectorAll('.tile.remote video')];
    return videos.length === count && videos.every(video => video.videoWidth > 0 && !video.paused);
}"""


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("e2e")) as server:
        yield server


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def loopback_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the aiortc peers: aioice offers host candidates on every interface except
    loopback; offer loopback only, so that the peers' traffic stays on 127.0.0.1 whatever
    interfaces the machine has."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [LOOPBACK])


async def sign_in(page: Page, base_url: str, username: str) -> None:
    """Sign ``page`` in as ``username`` on the call page at ``base_url``; it shows the lobby."""
    await page.goto(f"{base_url}/")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Join a call")).to_be_visible()


async def join_demo_group(page: Page) -> None:
    """From the lobby into the demo group's call."""
    await page.get_by_label("Call", exact=True).select_option(label=DEMO_GROUP)
    await page.get_by_role("button", name=JOIN_BUTTON).click()
    await expect(page.locator("#call")).to_be_visible()


async def mesh_of(pages: list[Page]) -> None:
    """Every page connected to every other one, their videos playing."""
    for page in pages:
        await page.wait_for_function(MESH_CONNECTED, arg=len(pages) - 1)
        await page.wait_for_function(REMOTE_VIDEOS_PLAYING, arg=len(pages) - 1)


async def remote_names(page: Page) -> list[str]:
    return sorted(await page.locator(".tile.remote .name").all_inner_texts())
