"""Tests that the admin's call list fits a 1280 px screen and tells sessions apart, and
that its two kinds of groups are told apart, in a real browser against a real server."""

from __future__ import annotations

import json
import re

import websockets
from playwright.async_api import Browser, expect

from tests.e2e.conftest import DEMO_GROUP, DESKTOP, PASSWORD, STEP_TIMEOUT_MS
from tests.e2e.test_browser_call import demo_group_id
from tests.servers import Server

RECEIVE_TIMEOUT_SECS = 5.0


async def hold_and_end_a_call(server: Server, room: str, group_id: int, usernames: list[str]) -> None:
    """The users join ``room`` of the group one after the other, then all leave."""
    sockets = []
    try:
        for username in usernames:
            ws = await websockets.connect(f"{server.ws}?token={server.token(username)}")
            sockets.append(ws)
            assert json.loads(await ws.recv(RECEIVE_TIMEOUT_SECS))["event"] == "webrtc:connected"
            join = {"callRoomId": room, "metadata": {"groupId": group_id}}
            await ws.send(json.dumps({"event": "webrtc:join-room", "data": join, "id": 1}))
            while (frame := json.loads(await ws.recv(RECEIVE_TIMEOUT_SECS)))["event"] != "webrtc:room-joined":
                pass
            assert frame["id"] == 1
    finally:
        for ws in sockets:
            await ws.close()


async def test_the_call_list_fits_1280_px_and_tells_sessions_apart(browser: Browser, server: Server) -> None:
    group_id = demo_group_id(server)
    await hold_and_end_a_call(server, "admin-list-room", group_id, ["alice", "bob", "carol"])

    page = await (await browser.new_context(viewport=DESKTOP)).new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    await page.goto(f"{server.http}/admin/login/")
    await page.get_by_label("Username").fill("admin")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    # django.contrib.auth's permission groups stay "Groups"; the product's are "Chat groups".
    await expect(page.locator("#chatgroups-group a")).to_have_text("Chat groups")
    await expect(page.locator("#auth-group a")).to_have_text("Groups")

    await page.goto(f"{server.http}/admin/calls/callroom/?q=admin-list-room")
    row = page.locator("#result_list tbody tr").first
    await expect(row).to_contain_text("admin-list-room")
    text = await row.inner_text()
    assert DEMO_GROUP in text
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text), text
    for name in ("Alice", "Bob", "Carol"):
        assert name in text, text
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= DESKTOP["width"], f"the call list is {width} px wide"
