"""A real WebRTC call between two Chromium pages that use the unchanged socket.io-client
browser bundle (the one ``npm ci --prefix tests/js`` installs) against a real daphne process,
with the client's default transports: long-polling first, then the upgrade to a websocket.

The test serves the page itself (``page.route`` on a made-up URL of the server's origin, so
that the server's Origin check passes); the page's script connects, joins a room, and the
later joiner offers to the earlier one with a data channel; offers, answers and ICE
candidates go through the server.
"""

from __future__ import annotations

from playwright.async_api import Browser, Page, Route
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from tests.e2e.conftest import PASSWORD, STEP_TIMEOUT_MS
from tests.servers import PROJECT_DIR, Server

BUNDLE = PROJECT_DIR / "tests" / "js" / "node_modules" / "socket.io-client" / "dist" / "socket.io.esm.min.js"
PAGE_PATH = "/socketio-test-page"
BUNDLE_PATH = "/socketio-test-page/socket.io.esm.min.js"
ROOM = "sio-e2e"
MESSAGE = "hello over the data channel"

PAGE_HTML = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>socket.io call</title></head>
<body>
<script type="module">
import {{ io }} from '{BUNDLE_PATH}';

const ROOM = {ROOM!r};
const state = {{ errors: [], pc: null, received: [], socketId: null, joined: false }};
window.state = state;

// One queue of peer-connection operations, so that a candidate never overtakes a description.
let chain = Promise.resolve();
const queue = (step) => {{
  chain = chain.then(step).catch((error) => state.errors.push(String(error && error.stack || error)));
  return chain;
}};

function newPeer(socket, targetSocketId) {{
  const pc = new RTCPeerConnection({{ iceServers: [] }});
  state.pc = pc;
  pc.onicecandidate = ({{ candidate }}) => {{
    if (candidate) {{
      socket.emit('webrtc:ice-candidate', {{ callRoomId: ROOM, targetSocketId, candidate: candidate.toJSON() }});
    }}
  }};
  return pc;
}}

function watchChannel(channel) {{
  channel.onmessage = ({{ data }}) => state.received.push(data);
}}

window.joinCall = (token) => {{
  const socket = io(location.origin, {{ auth: {{ token }} }});
  window.socket = socket;
  socket.on('connect_error', (error) => state.errors.push(`connect_error: ${{error.message}}`));
  socket.on('webrtc:signaling-error', (data) => state.errors.push(`signaling-error: ${{JSON.stringify(data)}}`));

  socket.on('webrtc:room-joined', (data) => {{
    state.joined = true;
    for (const {{ socketId }} of data.existingParticipants) {{
      const pc = newPeer(socket, socketId);
      const channel = pc.createDataChannel('chat');
      state.channel = channel;
      watchChannel(channel);
      channel.onopen = () => channel.send({MESSAGE!r} + ' from the offerer');
      queue(async () => {{
        await pc.setLocalDescription();
        const offer = pc.localDescription.toJSON();
        socket.emit('webrtc:offer', {{ callRoomId: ROOM, targetSocketId: socketId, offer }});
      }});
    }}
  }});
  socket.on('webrtc:offer', (data) => {{
    const pc = newPeer(socket, data.fromSocketId);
    pc.ondatachannel = ({{ channel }}) => {{
      state.channel = channel;
      watchChannel(channel);
      channel.onopen = () => channel.send({MESSAGE!r} + ' from the answerer');
    }};
    queue(async () => {{
      await pc.setRemoteDescription(data.offer);
      await pc.setLocalDescription();
      const answer = pc.localDescription.toJSON();
      socket.emit('webrtc:answer', {{ callRoomId: ROOM, targetSocketId: data.fromSocketId, answer }});
    }});
  }});
  socket.on('webrtc:answer', (data) => queue(() => state.pc.setRemoteDescription(data.answer)));
  socket.on('webrtc:ice-candidate', (data) => queue(() => state.pc.addIceCandidate(data.candidate)));

  socket.on('connect', () => {{
    state.socketId = socket.id;
    socket.emit('webrtc:join-room', {{ callRoomId: ROOM, callType: 'video' }});
  }});
}};
window.pageReady = true;
</script>
</body></html>
"""

CONNECTED = "() => window.state.pc !== null && window.state.pc.connectionState === 'connected'"
RECEIVED = "() => window.state.received.length > 0"
SNAPSHOT = """() => ({
    socketId: window.state.socketId,
    joined: window.state.joined,
    connected: window.socket && window.socket.connected,
    transport: window.socket && window.socket.io.engine && window.socket.io.engine.transport.name,
    connectionState: window.state.pc && window.state.pc.connectionState,
    iceConnectionState: window.state.pc && window.state.pc.iceConnectionState,
    received: window.state.received,
    errors: window.state.errors,
})"""
UPGRADED = "() => window.socket.connected && window.socket.io.engine.transport.name === 'websocket'"


async def open_page(browser: Browser, server: Server, name: str, errors: list[str]) -> Page:
    # A document that page.route fulfils has no address of its own, so Chromium's Local Network
    # Access checks count it as public and block its websocket to the loopback server (polling
    # gets through, the upgrade never happens); a page the server sends itself is loopback.
    context = await browser.new_context(permissions=["local-network-access"])
    page = await context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    page.on("pageerror", lambda error: errors.append(f"{name}: {error}"))

    async def fulfil_page(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=PAGE_HTML)

    async def fulfil_bundle(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/javascript; charset=utf-8", body=BUNDLE.read_text())

    await page.route(f"{server.http}{PAGE_PATH}", fulfil_page)
    await page.route(f"{server.http}{BUNDLE_PATH}", fulfil_bundle)
    await page.goto(f"{server.http}{PAGE_PATH}")
    await page.wait_for_function("() => window.pageReady === true", timeout=STEP_TIMEOUT_MS)
    return page


async def wait_for(page: Page, condition: str) -> None:
    """Wait until ``condition`` holds on ``page``; on a timeout, say what the page saw."""
    try:
        await page.wait_for_function(condition, timeout=STEP_TIMEOUT_MS)
    except PlaywrightTimeoutError:
        seen = await page.evaluate(SNAPSHOT)
        raise AssertionError(f"{condition} did not hold within {STEP_TIMEOUT_MS} ms; the page saw {seen}") from None


async def test_two_pages_call_through_the_socketio_client_bundle(browser: Browser, server: Server) -> None:
    assert BUNDLE.is_file(), f"{BUNDLE} is missing: run `npm ci --prefix tests/js --no-audit --no-fund`"
    errors: list[str] = []
    alice = await open_page(browser, server, "alice", errors)
    bob = await open_page(browser, server, "bob", errors)

    # alice joins first; bob, the later joiner, then offers to her.
    await alice.evaluate("token => window.joinCall(token)", server.token("alice", PASSWORD))
    await alice.wait_for_function("() => window.state.joined", timeout=STEP_TIMEOUT_MS)
    await bob.evaluate("token => window.joinCall(token)", server.token("bob", PASSWORD))

    for page in (alice, bob):
        for condition in (CONNECTED, RECEIVED, UPGRADED):
            await wait_for(page, condition)

    assert await alice.evaluate("window.state.received") == [f"{MESSAGE} from the offerer"]
    assert await bob.evaluate("window.state.received") == [f"{MESSAGE} from the answerer"]
    for page in (alice, bob):
        assert await page.evaluate("window.socket.io.engine.transport.name") == "websocket"
        assert await page.evaluate("window.state.pc.connectionState") == "connected"
        assert await page.evaluate("window.state.errors") == []
    assert errors == []
