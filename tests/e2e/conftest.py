"""One real daphne process for the end-to-end tests, on a fresh database with the demo
users (alice, bob and carol in "Demo team"; dave in no group)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from playwright.async_api import Browser, async_playwright

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
DESKTOP = {"width": 1280, "height": 720}
STEP_TIMEOUT_MS = 30_000  # generous for two loaded cores; every wait ends on its condition


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
