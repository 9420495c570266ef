// Tests of calls/static/calls/signaling.js with node's test runner: `node --test tests/js/`.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import {
  CallMesh,
  CLOSE_TOO_MANY_CONNECTIONS,
  CLOSE_UNAUTHENTICATED,
  jwtExpiresAt,
  SignalingClient,
  SignalingError,
} from '../../calls/static/calls/signaling.js';
import { FakeServer, fakeFetch, fakeJwt, fakePeerConnectionClass, manualWebSocket, settle } from './fakes.mjs';

const URL_ = 'ws://calls.test/ws/calls/';
const BACKOFF = { initialMs: 500, maxMs: 4000, factor: 2 };

/** A client on a hand-driven socket that has received `webrtc:connected` (no tickets: see below). */
function connectedClient(options = {}) {
  const WebSocket = manualWebSocket();
  const client = new SignalingClient({ url: URL_, token: 'tok', tickets: false, WebSocket, backoff: BACKOFF, ...options });
  const ws = WebSocket.instances[0];
  ws.open();
  ws.receive({ event: 'webrtc:connected', data: { socketId: 's-1', userId: '7' } });
  return { client, ws, WebSocket };
}

describe('SignalingClient', () => {
  test('with tickets: false, connects to the endpoint with the access token as ?token=', async () => {
    const WebSocket = manualWebSocket();
    new SignalingClient({ url: URL_, token: async () => 'fresh-token', tickets: false, WebSocket });
    await settle(1);
    assert.equal(WebSocket.instances.length, 1);
    assert.equal(WebSocket.instances[0].url.toString(), `${URL_}?token=fresh-token`);
  });

  test('exposes socketId and userId from webrtc:connected and fires connect', () => {
    const WebSocket = manualWebSocket();
    const client = new SignalingClient({ url: URL_, token: 'tok', tickets: false, WebSocket });
    const connects = [];
    client.on('connect', (info) => connects.push(info));
    const ws = WebSocket.instances[0];
    ws.open();
    assert.equal(client.connected, false);
    ws.receive({ event: 'webrtc:connected', data: { socketId: 'abc', userId: '42' } });
    assert.equal(client.socketId, 'abc');
    assert.equal(client.userId, '42');
    assert.equal(client.connected, true);
    assert.deepEqual(connects, [{ socketId: 'abc', userId: '42', resumed: false }]);
  });

  test('emit sends one JSON frame; frames emitted before webrtc:connected wait for it', () => {
    const WebSocket = manualWebSocket();
    const client = new SignalingClient({ url: URL_, token: 'tok', tickets: false, WebSocket });
    client.emit('webrtc:join-room', { callRoomId: 'call_123' });
    const ws = WebSocket.instances[0];
    ws.open();
    assert.deepEqual(ws.sent, [], 'nothing is sent before the server says connected');
    ws.receive({ event: 'webrtc:connected', data: { socketId: 's', userId: '1' } });
    client.emit('webrtc:leave-room', { callRoomId: 'call_123' });
    assert.deepEqual(ws.sent, [
      { event: 'webrtc:join-room', data: { callRoomId: 'call_123' } },
      { event: 'webrtc:leave-room', data: { callRoomId: 'call_123' } },
    ]);
  });

  test('on passes each server event to its handlers with data and frame; off removes a handler', () => {
    const { client, ws } = connectedClient();
    const seen = [];
    const handler = (data, frame) => seen.push([data, frame.event]);
    client.on('webrtc:offer', handler);
    ws.receive({ event: 'webrtc:offer', data: { fromSocketId: 'x' } });
    client.off('webrtc:offer', handler);
    ws.receive({ event: 'webrtc:offer', data: { fromSocketId: 'y' } });
    assert.deepEqual(seen, [[{ fromSocketId: 'x' }, 'webrtc:offer']]);
  });

  test('a throwing handler does not stop the others', (t) => {
    t.mock.method(console, 'error', () => {});
    const { client, ws } = connectedClient();
    const seen = [];
    client.on('webrtc:answer', () => {
      throw new Error('boom');
    });
    client.on('webrtc:answer', (data) => seen.push(data));
    ws.receive({ event: 'webrtc:answer', data: { n: 1 } });
    assert.deepEqual(seen, [{ n: 1 }]);
  });

  test('request resolves with the reply that carries its id, whatever the order of replies', async () => {
    const { client, ws } = connectedClient();
    const first = client.request('webrtc:join-room', { callRoomId: 'a' });
    const second = client.request('webrtc:leave-room', { callRoomId: 'a' });
    const [joinFrame, leaveFrame] = ws.sent;
    assert.equal(typeof joinFrame.id, 'string');
    assert.notEqual(joinFrame.id, leaveFrame.id);
    ws.receive({ event: 'webrtc:room-left', data: { callRoomId: 'a' }, id: leaveFrame.id });
    ws.receive({ event: 'webrtc:room-joined', data: { callRoomId: 'a', participantCount: 1 }, id: joinFrame.id });
    assert.deepEqual(await first, { callRoomId: 'a', participantCount: 1 });
    assert.deepEqual(await second, { callRoomId: 'a' });
  });

  test('request rejects with the signaling-error that carries its id', async () => {
    const { client, ws } = connectedClient();
    const joining = client.request('webrtc:join-room', { callRoomId: 'group-1', metadata: { groupId: 1 } });
    ws.receive({ event: 'webrtc:signaling-error', data: { error: 'room-full', message: 'Other.' }, id: 'c-999' });
    ws.receive({
      event: 'webrtc:signaling-error',
      data: { error: 'forbidden', message: 'Not a member.', event: 'webrtc:join-room', timestamp: 't' },
      id: ws.sent[0].id,
    });
    await assert.rejects(joining, (error) => {
      assert.ok(error instanceof SignalingError);
      assert.equal(error.code, 'forbidden');
      assert.equal(error.message, 'Not a member.');
      assert.equal(error.event, 'webrtc:join-room');
      return true;
    });
  });

  test('request rejects when the connection drops before its reply', async () => {
    const { client, ws } = connectedClient();
    const joining = client.request('webrtc:join-room', { callRoomId: 'a' });
    ws.serverClose(1006);
    await assert.rejects(joining, { code: 'disconnected' });
    client.close();
  });

  test('request times out, and a frame still queued then is never sent', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const client = new SignalingClient({ url: URL_, token: 'tok', tickets: false, WebSocket, requestTimeoutMs: 1000 });
    const joining = client.request('webrtc:join-room', { callRoomId: 'a' });
    t.mock.timers.tick(1000);
    await assert.rejects(joining, { code: 'timeout' });
    const ws = WebSocket.instances[0];
    ws.open();
    ws.receive({ event: 'webrtc:connected', data: { socketId: 's', userId: '1' } });
    assert.deepEqual(ws.sent, []);
  });

  test('reconnects with exponential backoff and jitter, capped, and starts over after a success', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    t.mock.method(Math, 'random', () => 1); // the top of each jitter range
    // Its sockets close before they open, which asks the origin check first: tested below.
    const { client, WebSocket } = connectedClient({ originCheckUrl: null });
    const delays = [];
    client.on('reconnecting', ({ delayMs }) => delays.push(delayMs));
    for (const expected of [500, 1000, 2000, 4000, 4000]) {
      WebSocket.instances.at(-1).serverClose(1006);
      const sockets = WebSocket.instances.length;
      t.mock.timers.tick(expected - 1);
      assert.equal(WebSocket.instances.length, sockets, `no attempt before ${expected} ms`);
      t.mock.timers.tick(1);
      assert.equal(WebSocket.instances.length, sockets + 1, `an attempt at ${expected} ms`);
    }
    assert.deepEqual(delays, [500, 1000, 2000, 4000, 4000]);

    const ws = WebSocket.instances.at(-1);
    ws.open();
    ws.receive({ event: 'webrtc:connected', data: { socketId: 's-2', userId: '7' } });
    Math.random.mock.mockImplementation(() => 0); // the bottom: half the step
    ws.serverClose(1006);
    assert.deepEqual(delays.at(-1), 250);
    client.close();
  });

  test('does not reconnect after close code 4401, and rejects what waits', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const client = new SignalingClient({ url: URL_, token: 'expired', tickets: false, WebSocket });
    const ready = client.ready();
    const joining = client.request('webrtc:join-room', { callRoomId: 'a' });
    const disconnects = [];
    client.on('disconnect', (info) => disconnects.push(info));
    WebSocket.instances[0].open();
    WebSocket.instances[0].serverClose(4401);
    t.mock.timers.tick(60_000);
    assert.equal(WebSocket.instances.length, 1);
    assert.deepEqual(disconnects, [{ code: 4401, reason: '', willReconnect: false }]);
    await assert.rejects(ready, { code: 'unauthenticated' });
    await assert.rejects(joining, { code: 'unauthenticated' });
    await assert.rejects(client.request('webrtc:join-room', { callRoomId: 'a' }), { code: 'closed' });
  });

  test('close stops for good: the socket is closed with 1000 and nothing reconnects', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { client, ws, WebSocket } = connectedClient();
    const disconnects = [];
    client.on('disconnect', (info) => disconnects.push(info));
    client.close();
    assert.equal(ws.closedWith, 1000);
    assert.equal(disconnects[0].willReconnect, false);
    t.mock.timers.tick(60_000);
    assert.equal(WebSocket.instances.length, 1);
  });

  test('a resume token from webrtc:connected is presented on reconnect, and the same socketId means resumed', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const client = new SignalingClient({ url: URL_, token: 'tok', tickets: false, WebSocket, backoff: BACKOFF });
    const connects = [];
    client.on('connect', (info) => connects.push(info.resumed));
    WebSocket.instances[0].open();
    WebSocket.instances[0].receive({ event: 'webrtc:connected', data: { socketId: 's', userId: '1', resumeToken: 'r1' } });
    WebSocket.instances[0].serverClose(1006);
    t.mock.timers.tick(BACKOFF.maxMs);
    const again = WebSocket.instances[1];
    assert.equal(again.url.searchParams.get('resume'), 'r1');
    again.open();
    again.receive({ event: 'webrtc:connected', data: { socketId: 's', userId: '1' } });
    assert.deepEqual(connects, [false, true]);
    client.close();
  });
});

describe('SignalingClient after a socket closed before it opened', () => {
  /** A client whose first socket closes 1006 before opening, as a refused handshake does in a browser. */
  async function closedBeforeOpen(t, answer, options = {}) {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const fetch = fakeFetch(answer);
    const options_ = { url: URL_, token: 'tok', tickets: false, WebSocket, fetch, backoff: BACKOFF, ...options };
    const client = new SignalingClient(options_);
    const seen = [];
    for (const event of ['error', 'disconnect', 'reconnecting']) client.on(event, (data) => seen.push([event, data]));
    const ready = client.ready();
    ready.catch(() => {});
    const joining = client.request('webrtc:join-room', { callRoomId: 'a' }, { timeoutMs: 600_000 });
    joining.catch(() => {});
    WebSocket.instances[0].serverClose(1006);
    await settle();
    return { client, WebSocket, fetch, seen, ready, joining };
  }

  test('asks the origin check on the websocket host, without cookies, before telling of the disconnect', async (t) => {
    const { fetch, seen } = await closedBeforeOpen(t, { allowed: true }, { url: 'wss://calls.test:8443/ws/calls/' });
    assert.equal(fetch.calls.length, 1);
    assert.equal(fetch.calls[0].url, 'https://calls.test:8443/api/calls/origin-check/');
    assert.equal(fetch.calls[0].init.credentials, 'omit');
    assert.equal(seen[0][0], 'disconnect');
  });

  test('a refused origin stops it: an origin-refused error, no reconnect, and what waits is rejected', async (t) => {
    t.after(() => delete globalThis.location);
    globalThis.location = { origin: 'https://app.example', protocol: 'https:', host: 'app.example' };
    const { WebSocket, seen, ready, joining } = await closedBeforeOpen(t, { allowed: false });
    assert.deepEqual(seen.map(([event]) => event), ['error', 'disconnect']);
    const [, error] = seen[0];
    assert.ok(error instanceof SignalingError);
    assert.equal(error.code, 'origin-refused');
    assert.match(error.message, /refuses websockets from this page's origin \(https:\/\/app\.example\)/);
    assert.deepEqual(seen[1][1], { code: 1006, reason: error.message, willReconnect: false });
    await assert.rejects(ready, { code: 'origin-refused', message: error.message });
    await assert.rejects(joining, { code: 'origin-refused' });
    t.mock.timers.tick(600_000);
    await settle();
    assert.equal(WebSocket.instances.length, 1);
  });

  test('an allowed origin means the network: the usual backoff, and no error', async (t) => {
    const { WebSocket, seen } = await closedBeforeOpen(t, { allowed: true });
    assert.deepEqual(seen.map(([event]) => event), ['disconnect', 'reconnecting']);
    assert.equal(seen[0][1].willReconnect, true);
    t.mock.timers.tick(seen[1][1].delayMs);
    assert.equal(WebSocket.instances.length, 2);
  });

  for (const [what, answer] of [
    ['fails (the network)', new TypeError('Failed to fetch')],
    ['answers an HTTP error (a server without the check)', { status: 404 }],
    ['answers something else', { allowed: 'no' }],
  ]) {
    test(`when the check ${what}, it retries as usual`, async (t) => {
      const { WebSocket, seen, joining } = await closedBeforeOpen(t, answer);
      assert.deepEqual(seen.map(([event]) => event), ['disconnect', 'reconnecting']);
      assert.equal(seen[0][1].willReconnect, true);
      t.mock.timers.tick(BACKOFF.maxMs);
      assert.equal(WebSocket.instances.length, 2);
      const ws = WebSocket.instances[1];
      ws.open();
      ws.receive({ event: 'webrtc:connected', data: { socketId: 's', userId: '1' } });
      assert.equal(ws.sent[0].event, 'webrtc:join-room', 'the queued request goes out on the next socket');
      ws.receive({ event: 'webrtc:room-joined', data: { callRoomId: 'a' }, id: ws.sent[0].id });
      assert.deepEqual(await joining, { callRoomId: 'a' });
    });
  }

  test('a check that hangs is given up after 5 s, and it retries', async (t) => {
    const { WebSocket, seen } = await closedBeforeOpen(t, 'hang');
    assert.deepEqual(seen, []);
    t.mock.timers.tick(5000);
    await settle();
    assert.deepEqual(seen.map(([event]) => event), ['disconnect', 'reconnecting']);
    t.mock.timers.tick(BACKOFF.maxMs);
    assert.equal(WebSocket.instances.length, 2);
  });

  test('a socket that had opened is a lost connection: no check', async (t) => {
    const fetch = fakeFetch({ allowed: false });
    const { client, ws } = connectedClient({ fetch });
    ws.serverClose(1006);
    await settle();
    assert.equal(fetch.calls.length, 0);
    client.close();
  });

  test('close() while the check runs ends it: no reconnect, one disconnect', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const fetch = fakeFetch({ allowed: true });
    const client = new SignalingClient({ url: URL_, token: 'tok', tickets: false, WebSocket, fetch });
    const disconnects = [];
    client.on('disconnect', (info) => disconnects.push(info));
    WebSocket.instances[0].serverClose(1006);
    client.close();
    await settle();
    t.mock.timers.tick(60_000);
    assert.equal(WebSocket.instances.length, 1);
    assert.deepEqual(disconnects, [{ code: 1006, reason: '', willReconnect: false }]);
  });

  test('against a server that refuses the origin, and then allows it: connect() starts over', async () => {
    const server = new FakeServer();
    server.originAllowed = false;
    const client = new SignalingClient({ url: URL_, token: 'alice', WebSocket: server.WebSocket, fetch: server.fetch });
    await assert.rejects(client.ready(), { code: 'origin-refused' });
    assert.deepEqual(server.originChecks, ['http://calls.test/api/calls/origin-check/']);
    server.originAllowed = true;
    client.connect();
    assert.equal((await client.ready()).socketId, 'alice-1');
    client.close();
  });
});

/** Users in one fake server, each with a client and a mesh on `room`. */
function meshWorld({ room = 'call_1' } = {}) {
  const server = new FakeServer();
  const PeerConnection = fakePeerConnectionClass();
  const stream = { getTracks: () => [{ kind: 'audio' }, { kind: 'video' }] };
  const users = {};
  const add = (name, options = {}) => {
    const client = new SignalingClient({
      url: URL_,
      token: name,
      WebSocket: server.WebSocket,
      fetch: server.fetch,
      backoff: { initialMs: 1, maxMs: 1 },
    });
    const mesh = new CallMesh(client, { roomId: room, localStream: stream, RTCPeerConnection: PeerConnection, ...options });
    const events = [];
    for (const event of ['participant', 'track', 'connection-state', 'participant-left', 'error']) {
      mesh.on(event, (data) => events.push([event, data]));
    }
    users[name] = { client, mesh, events };
    return users[name];
  };
  const pcOf = (name, other) => users[name].mesh.peers.get(users[other].client.socketId).pc;
  return { server, PeerConnection, users, add, pcOf };
}

/** A mesh world in which `names` have joined in turn, each join settled before the next. */
async function joinedWorld(names = ['alice', 'bob']) {
  const world = meshWorld();
  for (const name of names) {
    await world.add(name).mesh.join();
    await settle();
  }
  return world;
}

function errorsOf(user) {
  return user.events.filter(([event]) => event === 'error');
}

describe('CallMesh', () => {
  test('the newcomer offers to every existing participant, who answer; all end stable', async () => {
    const { server, users, pcOf } = await joinedWorld(['alice', 'bob', 'carol']);
    const offers = server.relayed.filter((r) => r.event === 'webrtc:offer').map((r) => `${r.from}→${r.to}`);
    assert.deepEqual(offers.sort(), ['bob-2→alice-1', 'carol-3→alice-1', 'carol-3→bob-2']);
    const answers = server.relayed.filter((r) => r.event === 'webrtc:answer').map((r) => `${r.from}→${r.to}`);
    assert.deepEqual(answers.sort(), ['alice-1→bob-2', 'alice-1→carol-3', 'bob-2→carol-3']);
    for (const [name, others] of [['alice', ['bob', 'carol']], ['bob', ['alice', 'carol']], ['carol', ['alice', 'bob']]]) {
      assert.equal(users[name].mesh.peers.size, 2);
      for (const other of others) {
        const pc = pcOf(name, other);
        assert.equal(pc.signalingState, 'stable');
        assert.ok(pc.senders.every((sender) => sender.negotiated));
        assert.equal(pc.addedCandidates.length, 1, `${name} got ${other}'s candidate`);
      }
      assert.deepEqual(errorsOf(users[name]), []);
    }
  });

  test('uses the iceServers of room-joined and relays candidates with sdpMid and sdpMLineIndex', async () => {
    const { server, PeerConnection, add } = meshWorld();
    server.iceServers = [{ urls: 'turn:turn.example.org', username: 'u', credential: 'c' }];
    await add('alice', { rtcConfig: { bundlePolicy: 'max-bundle' } }).mesh.join();
    await settle();
    await add('bob').mesh.join();
    await settle();
    for (const pc of PeerConnection.instances) {
      assert.deepEqual(pc.config.iceServers, server.iceServers);
    }
    assert.equal(PeerConnection.instances.filter((pc) => pc.config.bundlePolicy === 'max-bundle').length, 1);
    const candidates = server.relayed.filter((r) => r.event === 'webrtc:ice-candidate').map((r) => r.data);
    assert.equal(candidates.length, 2);
    for (const data of candidates) {
      assert.equal(data.sdpMid, '0');
      assert.equal(data.sdpMLineIndex, 0);
      assert.equal(data.candidate.sdpMid, '0');
      assert.match(data.candidate.candidate, /^candidate:/);
    }
  });

  test('tells the UI of participants, their tracks and connection states, with names', async () => {
    const { users, pcOf } = await joinedWorld();
    pcOf('alice', 'bob').reportConnectionState('connected');
    const seen = users.alice.events.map(([event, data]) => [event, data.participant?.username, data.state]);
    assert.deepEqual(seen, [
      ['participant', 'bob', undefined],
      ['track', 'bob', undefined],
      ['connection-state', 'bob', 'connected'],
    ]);
    assert.equal(users.bob.events[0][1].participant.displayName, 'ALICE');
  });

  test('glare: the polite peer rolls back and answers, the impolite one ignores the colliding offer', async () => {
    const { users, pcOf } = await joinedWorld();
    // socketIds "alice-1" < "bob-2": bob is polite.
    assert.equal(users.bob.mesh.peers.get('alice-1').polite, true);
    assert.equal(users.alice.mesh.peers.get('bob-2').polite, false);
    const alicePc = pcOf('alice', 'bob');
    const bobPc = pcOf('bob', 'alice');
    alicePc.log.length = bobPc.log.length = 0;

    // Both add a track at the same moment (say, both start sharing a screen): both offer.
    alicePc.addTrack({ kind: 'video' }, {});
    bobPc.addTrack({ kind: 'video' }, {});
    await settle();

    assert.ok(bobPc.log.includes('setLocalDescription rollback'), bobPc.log.join(', '));
    assert.ok(!alicePc.log.includes('setLocalDescription rollback'), alicePc.log.join(', '));
    for (const pc of [alicePc, bobPc]) {
      assert.equal(pc.signalingState, 'stable');
      assert.ok(pc.senders.every((sender) => sender.negotiated), 'both new tracks were negotiated in the end');
    }
    assert.deepEqual(errorsOf(users.alice), []);
    assert.deepEqual(errorsOf(users.bob), []);
  });

  test('a participant who leaves has its connection closed and its departure told', async () => {
    const { users } = await joinedWorld(['alice', 'bob', 'carol']);
    const carolId = users.carol.client.socketId;
    const alicePcToCarol = users.alice.mesh.peers.get(carolId).pc;
    await users.carol.mesh.leave();
    await settle();
    assert.equal(users.carol.mesh.peers.size, 0);
    for (const name of ['alice', 'bob']) {
      const { mesh, events } = users[name];
      assert.equal(mesh.peers.size, 1);
      assert.ok(!mesh.participants.has(carolId));
      const left = events.filter(([event]) => event === 'participant-left').map(([, data]) => data);
      assert.deepEqual(left.map((data) => [data.participant.username, data.reason]), [['carol', 'left']]);
    }
    assert.equal(alicePcToCarol.signalingState, 'closed');
  });

  test('a refused join rejects with the server error and keeps no peer', async () => {
    const { server, users, add } = meshWorld({ room: 'group-1' });
    server.forbidden.set('group-1', ['dave']);
    await add('alice').mesh.join();
    await settle();
    await assert.rejects(add('dave').mesh.join(), { name: 'SignalingError', code: 'forbidden' });
    await settle();
    assert.equal(users.dave.mesh.peers.size, 0);
    assert.equal(users.alice.mesh.peers.size, 0);
  });

  test('after a reconnect with a new socketId the mesh rejoins as a newcomer', async () => {
    const { server, users } = await joinedWorld();
    const reconnected = new Promise((resolve) => users.alice.client.once('connect', resolve));
    server.drop('alice-1');
    await reconnected;
    await settle();
    assert.equal(users.alice.client.socketId, 'alice-3');
    const offers = server.relayed.filter((r) => r.event === 'webrtc:offer').map((r) => `${r.from}→${r.to}`);
    assert.deepEqual(offers, ['bob-2→alice-1', 'alice-3→bob-2']);
    assert.deepEqual([...users.alice.mesh.peers.keys()], ['bob-2']);
    assert.deepEqual([...users.bob.mesh.peers.keys()], ['alice-3']);
    assert.equal(users.bob.mesh.peers.get('alice-3').pc.signalingState, 'stable');
    for (const name of ['alice', 'bob']) users[name].client.close();
  });

  test('relay errors: a target gone is no error, any other failure of a relay is', async () => {
    const { server, users } = await joinedWorld();
    const alice = users.alice.client.socketId;
    const relayError = (error) => ({ event: 'webrtc:signaling-error', data: { error, message: error, event: 'webrtc:offer' } });
    for (const error of ['participant-not-found', 'not-in-room', 'room-not-found']) server.push(alice, relayError(error));
    server.push(alice, relayError('internal-error'));
    server.push(alice, { event: 'webrtc:signaling-error', data: { error: 'internal-error', message: 'x', event: 'webrtc:join-room' } });
    await settle();
    assert.deepEqual(errorsOf(users.alice).map(([, data]) => data.error.code), ['internal-error']);
  });

  test('ignores frames of another room', async () => {
    const { server, users } = await joinedWorld();
    const alice = users.alice.client.socketId;
    const stranger = { socketId: 'zed-9', userId: 'zed', username: 'zed', displayName: 'ZED' };
    server.push(alice, { event: 'webrtc:participant-joined', data: { callRoomId: 'elsewhere', participant: stranger } });
    server.push(alice, { event: 'webrtc:offer', data: { callRoomId: 'elsewhere', fromSocketId: 'zed-9', fromUserId: 'zed', offer: { type: 'offer', sdp: 'v=0' } } });
    await settle();
    assert.deepEqual([...users.alice.mesh.participants.keys()], [users.bob.client.socketId]);
    assert.equal(users.alice.mesh.peers.has('zed-9'), false);
  });

  test('restarts ICE when a connection fails', async () => {
    const { pcOf } = await joinedWorld();
    pcOf('alice', 'bob').reportConnectionState('failed');
    assert.equal(pcOf('alice', 'bob').restarts, 1);
  });
});

describe('SignalingClient replies', () => {
  test('request resolves on the webrtc:ack of a relay; emit sends no id and waits for nothing', async () => {
    const { client, ws } = connectedClient();
    const offer = { type: 'offer', sdp: 'v=0' };
    const sent = client.request('webrtc:offer', { callRoomId: 'a', targetSocketId: 'x', offer });
    client.emit('webrtc:answer', { callRoomId: 'a', targetSocketId: 'x', answer: { type: 'answer', sdp: 'v=0' } });
    const [offerFrame, answerFrame] = ws.sent;
    assert.equal(typeof offerFrame.id, 'string');
    assert.equal('id' in answerFrame, false);
    const acks = [];
    client.on('webrtc:ack', (data) => acks.push(data));
    ws.receive({ event: 'webrtc:ack', data: { event: 'webrtc:offer' }, id: 'c-999' }); // not ours: only told
    ws.receive({ event: 'webrtc:ack', data: { event: 'webrtc:offer' }, id: offerFrame.id });
    assert.deepEqual(await sent, { event: 'webrtc:offer' });
    assert.equal(acks.length, 2);
    client.close();
  });

  test('against the fake server: a relay request is acked, refresh-auth too, a foreign token is forbidden', async () => {
    const server = new FakeServer();
    const options = { url: URL_, WebSocket: server.WebSocket, fetch: server.fetch };
    const alice = new SignalingClient({ ...options, token: 'alice' });
    const bob = new SignalingClient({ ...options, token: 'bob' });
    await Promise.all([alice.ready(), bob.ready()]);
    await alice.request('webrtc:join-room', { callRoomId: 'r' });
    await bob.request('webrtc:join-room', { callRoomId: 'r' });
    const offer = { type: 'offer', sdp: 'v=0' };
    assert.deepEqual(await bob.request('webrtc:offer', { callRoomId: 'r', targetSocketId: alice.socketId, offer }), {
      event: 'webrtc:offer',
    });
    assert.deepEqual(await alice.request('webrtc:refresh-auth', { token: 'alice' }), { event: 'webrtc:refresh-auth' });
    await assert.rejects(alice.request('webrtc:refresh-auth', { token: 'bob' }), { code: 'forbidden' });
    alice.close();
    bob.close();
  });
});

/** A fetch that gives ticket `T<n>` for the n-th ticket request (or what `ticket(n, init)` picks), and answers the origin check with `allowed`. */
function ticketFetch({ ticket = (n) => ({ ticket: `T${n}`, expiresIn: 30 }), allowed = true } = {}) {
  let n = 0;
  return fakeFetch((url, init) => (url.endsWith('/api/auth/ws-ticket/') ? ticket(++n, init) : { allowed }));
}

const ticketCalls = (fetch) => fetch.calls.filter(({ url }) => url.endsWith('/api/auth/ws-ticket/'));

describe('SignalingClient tickets', () => {
  test('connects with ?ticket= from POST /api/auth/ws-ticket/ on the websocket host, the token only in its header', async () => {
    const WebSocket = manualWebSocket();
    const fetch = ticketFetch();
    new SignalingClient({ url: 'wss://calls.test:8443/ws/calls/', token: async () => 'fresh-token', WebSocket, fetch });
    await settle();
    assert.equal(fetch.calls.length, 1);
    const [{ url, init }] = fetch.calls;
    assert.equal(url, 'https://calls.test:8443/api/auth/ws-ticket/');
    assert.equal(init.method, 'POST');
    assert.equal(init.headers.Authorization, 'Bearer fresh-token');
    assert.equal(init.credentials, 'omit');
    assert.equal(init.cache, 'no-store');
    assert.equal(WebSocket.instances.length, 1);
    assert.equal(WebSocket.instances[0].url.toString(), 'wss://calls.test:8443/ws/calls/?ticket=T1');
    assert.doesNotMatch(WebSocket.instances[0].url.toString(), /fresh-token|token=/);
  });

  test('ws: gives http:, and ticketUrl overrides the endpoint', async () => {
    const WebSocket = manualWebSocket();
    const fetch = fakeFetch({ ticket: 'T' });
    const clients = [
      new SignalingClient({ url: URL_, token: 'tok', WebSocket, fetch }),
      new SignalingClient({ url: URL_, token: 'tok', WebSocket, fetch, ticketUrl: 'https://auth.test/tickets/' }),
    ];
    await settle();
    assert.deepEqual(fetch.calls.map(({ url }) => url), ['http://calls.test/api/auth/ws-ticket/', 'https://auth.test/tickets/']);
    assert.equal(WebSocket.instances.length, 2);
    for (const client of clients) client.close();
  });

  test('asks for a new ticket, with a fresh token, before every reconnection', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const fetch = ticketFetch();
    let tokens = 0;
    const client = new SignalingClient({ url: URL_, token: () => `tok-${++tokens}`, WebSocket, fetch, backoff: BACKOFF });
    await settle();
    WebSocket.instances[0].open();
    WebSocket.instances[0].receive({ event: 'webrtc:connected', data: { socketId: 's-1', userId: '7' } });
    WebSocket.instances[0].serverClose(1006);
    t.mock.timers.tick(BACKOFF.maxMs);
    await settle();
    assert.deepEqual(ticketCalls(fetch).map(({ init }) => init.headers.Authorization), ['Bearer tok-1', 'Bearer tok-2']);
    assert.deepEqual(WebSocket.instances.map((ws) => ws.url.search), ['?ticket=T1', '?ticket=T2']);
    client.close();
  });

  test('without a token, the ticket is asked for with the session cookie and the csrftoken cookie in X-CSRFToken', async (t) => {
    t.after(() => delete globalThis.document);
    globalThis.document = { cookie: 'theme=dark; csrftoken=abc%3D123; other=1' };
    const WebSocket = manualWebSocket();
    const fetch = ticketFetch();
    new SignalingClient({ url: URL_, WebSocket, fetch });
    await settle();
    const [{ init }] = fetch.calls;
    assert.equal(init.credentials, 'same-origin');
    assert.equal(init.headers['X-CSRFToken'], 'abc=123');
    assert.equal('Authorization' in init.headers, false);
    assert.equal(WebSocket.instances[0].url.search, '?ticket=T1');
  });

  test('against the fake server: a session ticket, and a ticket is good once', async () => {
    const server = new FakeServer();
    server.sessionUser = 'erin';
    const client = new SignalingClient({ url: URL_, WebSocket: server.WebSocket, fetch: server.fetch });
    assert.equal((await client.ready()).userId, 'erin');
    const replay = new server.WebSocket(server.urls[0].toString()); // the same ticket again
    const closed = new Promise((resolve) => (replay.onclose = resolve));
    assert.equal((await closed).code, 4401);
    client.close();
  });

  test('a ticket request that fails (the network, a 5xx, no ticket) is an error and goes through the backoff', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const answers = [new TypeError('Failed to fetch'), { status: 502 }, { nothing: true }, { ticket: 'T4' }];
    const fetch = ticketFetch({ ticket: (n) => answers[n - 1] });
    const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket, fetch, backoff: BACKOFF });
    const seen = [];
    for (const event of ['error', 'disconnect', 'reconnecting']) client.on(event, (data) => seen.push([event, data]));
    for (let attempt = 1; attempt <= 3; attempt += 1) {
      await settle();
      assert.equal(WebSocket.instances.length, 0);
      t.mock.timers.tick(BACKOFF.maxMs);
    }
    await settle();
    assert.deepEqual(
      seen.map(([event, data]) => [event, event === 'error' ? data.code : undefined]),
      [
        ['error', 'ticket-failed'],
        ['reconnecting', undefined],
        ['error', 'ticket-failed'],
        ['reconnecting', undefined],
        ['error', 'ticket-failed'],
        ['reconnecting', undefined],
      ],
    );
    assert.equal(seen[2][1].details.status, 502);
    assert.equal(fetch.calls.filter(({ url }) => url.includes('origin-check')).length, 1, 'asked after the network failure only');
    assert.equal(WebSocket.instances.length, 1);
    assert.equal(WebSocket.instances[0].url.search, '?ticket=T4');
    client.close();
  });

  test('a ticket request that hangs is given up after 10 s, and retried', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const fetch = ticketFetch({ ticket: (n) => (n === 1 ? 'hang' : { ticket: 'T2' }) });
    const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket, fetch, backoff: BACKOFF });
    const errors = [];
    client.on('error', (error) => errors.push(error));
    await settle();
    t.mock.timers.tick(9999);
    await settle();
    assert.deepEqual(errors, []);
    t.mock.timers.tick(1);
    await settle();
    assert.equal(errors[0].code, 'ticket-failed');
    t.mock.timers.tick(BACKOFF.maxMs);
    await settle();
    assert.equal(WebSocket.instances[0].url.search, '?ticket=T2');
    client.close();
  });

  for (const status of [401, 403]) {
    test(`a ticket request answered ${status} stops it as a close 4401 does`, async (t) => {
      t.mock.timers.enable({ apis: ['setTimeout'] });
      const WebSocket = manualWebSocket();
      const fetch = ticketFetch({ ticket: () => ({ status }) });
      const client = new SignalingClient({ url: URL_, token: 'expired', WebSocket, fetch, backoff: BACKOFF });
      const disconnects = [];
      client.on('disconnect', (info) => disconnects.push(info));
      const ready = client.ready();
      const joining = client.request('webrtc:join-room', { callRoomId: 'a' });
      for (const waiting of [ready, joining]) waiting.catch(() => {});
      await settle();
      assert.equal(disconnects.length, 1);
      assert.equal(disconnects[0].code, CLOSE_UNAUTHENTICATED);
      assert.equal(disconnects[0].willReconnect, false);
      assert.match(disconnects[0].reason, new RegExp(`\\(${status}\\)`));
      await assert.rejects(ready, { code: 'unauthenticated' });
      await assert.rejects(joining, { code: 'unauthenticated' });
      t.mock.timers.tick(600_000);
      await settle();
      assert.equal(WebSocket.instances.length, 0);
      assert.equal(fetch.calls.length, 1);
    });
  }

  test('a ticket request refused as by CORS, from an origin the server refuses: origin-refused, no retry', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const fetch = ticketFetch({ ticket: () => new TypeError('Failed to fetch'), allowed: false });
    const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket, fetch, backoff: BACKOFF });
    const seen = [];
    for (const event of ['error', 'disconnect', 'reconnecting']) client.on(event, (data) => seen.push([event, data]));
    const ready = client.ready();
    ready.catch(() => {});
    await settle();
    assert.deepEqual(seen.map(([event]) => event), ['error', 'disconnect']);
    assert.equal(seen[0][1].code, 'origin-refused');
    assert.equal(seen[1][1].willReconnect, false);
    await assert.rejects(ready, { code: 'origin-refused' });
    t.mock.timers.tick(600_000);
    await settle();
    assert.equal(ticketCalls(fetch).length, 1);
  });

  test('tickets without a fetch implementation is a TypeError, never a silent ?token=', () => {
    assert.throws(
      () => new SignalingClient({ url: URL_, token: 'tok', WebSocket: manualWebSocket(), fetch: null, autoConnect: false }),
      TypeError,
    );
  });
});

/**
 * A connected client (manual socket, no tickets) whose token function hands out fake JWTs
 * living `lifetimeMs` (or whatever `token` gives), its first connection told `authExpiresAt`.
 */
async function refreshingClient(t, { lifetimeMs = 600_000, authExpiresAt, token, ...options } = {}) {
  // Date too: the client times refreshes from the clock. (A mocked tick moves the clock to its
  // end before it runs the timers due, and a timer they set waits for the next tick.)
  t.mock.timers.enable({ apis: ['setTimeout', 'Date'] });
  const tokens = [];
  const nextToken = () => {
    const fresh = token ? token(tokens.length) : fakeJwt({ user: '7', exp: (Date.now() + lifetimeMs) / 1000, n: tokens.length });
    tokens.push(fresh);
    return fresh;
  };
  const WebSocket = manualWebSocket();
  const client = new SignalingClient({ url: URL_, token: async () => nextToken(), tickets: false, WebSocket, backoff: BACKOFF, ...options });
  const seen = [];
  for (const event of ['error', 'disconnect', 'reconnecting']) client.on(event, (data) => seen.push([event, data]));
  await settle();
  const ws = WebSocket.instances[0];
  ws.open();
  const expires = authExpiresAt === undefined ? new Date(Date.now() + lifetimeMs).toISOString() : authExpiresAt;
  ws.receive({ event: 'webrtc:connected', data: { socketId: 's-1', userId: '7', authExpiresAt: expires } });
  /** Let `ms` pass on the mocked clock, and what it started run. */
  const wait = async (ms) => {
    t.mock.timers.tick(ms);
    await settle();
  };
  const refreshes = (socket = ws) => socket.sent.filter((frame) => frame.event === 'webrtc:refresh-auth');
  return { client, ws, WebSocket, tokens, seen, wait, refreshes };
}

const ack = (frame) => ({ event: 'webrtc:ack', data: { event: frame.event }, id: frame.id });

describe('SignalingClient authentication refresh', () => {
  test('jwtExpiresAt reads the exp claim (base64url, no padding) or gives null', () => {
    assert.equal(jwtExpiresAt(fakeJwt({ exp: 1700000000, name: 'ü?>' })), 1700000000 * 1000);
    for (const token of ['opaque', 'a.b.c', fakeJwt({ exp: 'soon' }), fakeJwt({}), null, '', 'x.' + btoa('[1]') + '.y']) {
      assert.equal(jwtExpiresAt(token), null, String(token));
    }
  });

  test('refreshes 60 s before authExpiresAt with a fresh token, then 60 s before that token\'s exp', async (t) => {
    const { client, ws, tokens, seen, wait, refreshes } = await refreshingClient(t, { lifetimeMs: 600_000 });
    assert.equal(Math.round((client.authExpiresAt - Date.now()) / 1000), 600);
    await wait(539_000);
    assert.deepEqual(refreshes(), []);
    await wait(1000);
    assert.equal(refreshes().length, 1);
    assert.deepEqual(refreshes()[0].data, { token: tokens[1] });
    assert.equal(typeof refreshes()[0].id, 'string', 'sent as a request');
    ws.receive(ack(refreshes()[0]));
    await settle();
    assert.equal(client.authExpiresAt.getTime(), jwtExpiresAt(tokens[1]));
    await wait(539_000);
    assert.equal(refreshes().length, 1);
    await wait(1000);
    assert.equal(refreshes().length, 2);
    assert.deepEqual(refreshes()[1].data, { token: tokens[2] });
    assert.deepEqual(seen, []);
    client.close();
  });

  for (const [lifetimeMs, expectedMs] of [
    [30_000, 15_000],
    [100_000, 50_000],
    [8_000, 5_000],
    [2_000, 5_000],
    [-60_000, 5_000],
  ]) {
    test(`a lifetime of ${lifetimeMs / 1000} s is refreshed after ${expectedMs / 1000} s (halfway, never sooner than 5 s)`, async (t) => {
      const { client, wait, refreshes } = await refreshingClient(t, { lifetimeMs });
      await wait(expectedMs - 50);
      assert.equal(refreshes().length, 0);
      await wait(50);
      assert.equal(refreshes().length, 1);
      client.close();
    });
  }

  test('an expiry beyond setTimeout\'s limit does not fire at once', async (t) => {
    const { client, wait, refreshes } = await refreshingClient(t, { lifetimeMs: 40 * 86_400_000 });
    await wait(25 * 86_400_000); // the first step (24.8 days) has run
    assert.equal(refreshes().length, 0);
    await wait(16 * 86_400_000);
    assert.equal(refreshes().length, 1);
    client.close();
  });

  test('no refresh without authExpiresAt, or with a fixed token', async (t) => {
    const { client, tokens, wait, refreshes } = await refreshingClient(t, { authExpiresAt: null });
    await wait(86_400_000);
    assert.deepEqual(refreshes(), []);
    assert.equal(tokens.length, 1);
    assert.equal(client.authExpiresAt, null);
    client.close();

    const fixed = connectedClient();
    fixed.ws.receive({ event: 'webrtc:connected', data: { socketId: 's-1', authExpiresAt: new Date(Date.now() + 60_000).toISOString() } });
    await wait(86_400_000);
    assert.deepEqual(fixed.ws.sent, []);
    fixed.client.close();
  });

  test('a fresh token without a readable exp: the next refresh within 60 s', async (t) => {
    const { client, ws, wait, refreshes } = await refreshingClient(t, { token: (n) => `opaque-${n}` });
    await wait(540_000);
    ws.receive(ack(refreshes()[0]));
    await settle();
    assert.equal(client.authExpiresAt, null);
    await wait(59_000);
    assert.equal(refreshes().length, 1);
    await wait(1000);
    assert.equal(refreshes().length, 2);
    ws.receive(ack(refreshes()[1]));
    await settle();
    await wait(60_000);
    assert.equal(refreshes().length, 3);
    client.close();
  });

  test('a refused refresh is a refresh-failed error, not retried; the 4401 that follows reconnects once, with a fresh token', async (t) => {
    const { client, ws, WebSocket, tokens, seen, wait, refreshes } = await refreshingClient(t);
    await wait(540_000);
    ws.receive({ event: 'webrtc:signaling-error', data: { error: 'forbidden', message: 'No.', event: 'webrtc:refresh-auth' }, id: refreshes()[0].id });
    await settle();
    assert.deepEqual(seen.map(([event]) => event), ['error']);
    const [, error] = seen[0];
    assert.ok(error instanceof SignalingError);
    assert.equal(error.code, 'refresh-failed');
    assert.equal(error.details.code, 'forbidden');
    await wait(59_000);
    assert.equal(refreshes().length, 1, 'a refused token is not tried again');

    ws.serverClose(CLOSE_UNAUTHENTICATED);
    assert.deepEqual(seen[1], ['disconnect', { code: 4401, reason: '', willReconnect: true }]);
    assert.equal(seen[2][0], 'reconnecting');
    await wait(BACKOFF.maxMs);
    assert.equal(WebSocket.instances.length, 2);
    assert.equal(WebSocket.instances[1].url.searchParams.get('token'), tokens.at(-1));
    assert.equal(tokens.length, 3, 'the connection, the refresh, the reconnection');

    // That one is refused at connect: the fresh credential did not help, so it stops.
    const ready = client.ready();
    WebSocket.instances[1].open();
    WebSocket.instances[1].serverClose(CLOSE_UNAUTHENTICATED);
    assert.deepEqual(seen.at(-1), ['disconnect', { code: 4401, reason: '', willReconnect: false }]);
    await assert.rejects(ready, { code: 'unauthenticated' });
    await wait(600_000);
    assert.equal(WebSocket.instances.length, 2);
  });

  test('after a reconnect for an expiry: another expiry stops, unless a refresh succeeded in between', async (t) => {
    const { client, WebSocket, seen, wait, refreshes } = await refreshingClient(t);
    const expireAndReconnect = async (socket, n) => {
      socket.serverClose(CLOSE_UNAUTHENTICATED);
      await wait(BACKOFF.maxMs);
      const next = WebSocket.instances[n];
      next.open();
      next.receive({ event: 'webrtc:connected', data: { socketId: `s-${n + 1}`, authExpiresAt: new Date(Date.now() + 600_000).toISOString() } });
      return next;
    };
    const second = await expireAndReconnect(WebSocket.instances[0], 1);
    await wait(540_000);
    second.receive(ack(refreshes(second)[0])); // a refresh succeeded: the next expiry may reconnect again
    await settle();
    const third = await expireAndReconnect(second, 2);
    third.serverClose(CLOSE_UNAUTHENTICATED); // no refresh since the last reconnect: stop
    assert.deepEqual(
      seen.filter(([event]) => event === 'disconnect').map(([, data]) => data.willReconnect),
      [true, true, false],
    );
    assert.equal(client.connected, false);
  });

  test('a fixed token: a 4401 after connected stops (the same token cannot be fresher)', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { client, ws, WebSocket } = connectedClient();
    const ready = new Promise((resolve) => client.on('disconnect', resolve));
    ws.serverClose(CLOSE_UNAUTHENTICATED);
    assert.equal((await ready).willReconnect, false);
    t.mock.timers.tick(600_000);
    assert.equal(WebSocket.instances.length, 1);
  });

  test('a token function that throws at refresh time: its error, and another try halfway to the expiry', async (t) => {
    let fail = false;
    const { client, ws, seen, wait, refreshes } = await refreshingClient(t, {
      token: (n) => {
        if (fail) throw new Error('offline');
        return fakeJwt({ user: '7', exp: (Date.now() + 600_000) / 1000, n });
      },
    });
    fail = true;
    await wait(540_000); // 60 s left
    assert.deepEqual(seen.map(([event, data]) => [event, data.message]), [['error', 'offline']]);
    fail = false;
    await wait(29_000);
    assert.equal(refreshes().length, 0);
    await wait(1000); // 30 s left
    assert.equal(refreshes().length, 1);
    ws.receive(ack(refreshes()[0]));
    await settle();
    assert.ok(client.authExpiresAt - Date.now() > 590_000);
    client.close();
  });

  test('a refresh with no answer: refresh-failed (timeout), and another try while there is time', async (t) => {
    const { client, seen, wait, refreshes } = await refreshingClient(t, { requestTimeoutMs: 10_000 });
    await wait(540_000);
    await wait(10_000); // 50 s left
    assert.deepEqual(seen.map(([event, data]) => [event, data.code, data.details?.code]), [['error', 'refresh-failed', 'timeout']]);
    await wait(25_000); // halfway: 25 s left
    assert.equal(refreshes().length, 2);
    client.close();
  });

  test('close() and a lost connection clear the refresh timer', async (t) => {
    const closed = await refreshingClient(t);
    closed.client.close();
    await closed.wait(600_000);
    assert.deepEqual(closed.refreshes(), []);
    assert.equal(closed.tokens.length, 1);
    t.mock.timers.reset();

    const lost = await refreshingClient(t);
    lost.ws.serverClose(1006);
    await lost.wait(600_000); // reconnected (a token), but never told connected: no refresh
    assert.equal(lost.WebSocket.instances.length, 2);
    assert.equal(lost.tokens.length, 2);
    assert.deepEqual(lost.refreshes(), []);
    lost.client.close();
  });

  test('a refresh whose connection drops meanwhile is dropped silently; the new connection has its own schedule', async (t) => {
    const { client, ws, WebSocket, seen, wait, refreshes } = await refreshingClient(t);
    await wait(540_000);
    assert.equal(refreshes().length, 1);
    ws.serverClose(1006);
    await settle();
    assert.deepEqual(seen.map(([event]) => event), ['disconnect', 'reconnecting']);
    await wait(BACKOFF.maxMs);
    const next = WebSocket.instances[1];
    next.open();
    next.receive({ event: 'webrtc:connected', data: { socketId: 's-2', authExpiresAt: new Date(Date.now() + 120_000).toISOString() } });
    await wait(60_000);
    assert.equal(refreshes(next).length, 1);
    client.close();
  });

  test('against the fake server: tickets carry the token\'s expiry, and the refresh is accepted', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const server = new FakeServer();
    const token = () => fakeJwt({ user: 'alice', exp: (Date.now() + 300_000) / 1000 });
    const client = new SignalingClient({ url: URL_, token, WebSocket: server.WebSocket, fetch: server.fetch });
    await client.ready();
    assert.match(server.urls[0].search, /^\?ticket=/);
    assert.equal(Math.round((client.authExpiresAt - Date.now()) / 1000), 300);
    t.mock.timers.tick(240_000);
    await settle();
    assert.deepEqual(server.refreshes.map(({ socketId, accepted }) => [socketId, accepted]), [['alice-1', true]]);
    assert.equal(Math.round((client.authExpiresAt - Date.now()) / 1000), 300);
    client.close();
  });
});

describe('SignalingClient and too many connections (4409)', () => {
  test('a close 4409 stops it: a too-many-connections error, no retry, and what waits is rejected', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const WebSocket = manualWebSocket();
    const client = new SignalingClient({ url: URL_, token: () => 'tok', tickets: false, WebSocket });
    const seen = [];
    for (const event of ['error', 'disconnect', 'reconnecting']) client.on(event, (data) => seen.push([event, data]));
    const ready = client.ready();
    const joining = client.request('webrtc:join-room', { callRoomId: 'a' });
    for (const waiting of [ready, joining]) waiting.catch(() => {});
    await settle();
    WebSocket.instances[0].open();
    WebSocket.instances[0].serverClose(CLOSE_TOO_MANY_CONNECTIONS);
    assert.deepEqual(seen.map(([event]) => event), ['error', 'disconnect']);
    const [, error] = seen[0];
    assert.ok(error instanceof SignalingError);
    assert.equal(error.code, 'too-many-connections');
    assert.match(error.message, /too many open connections/);
    assert.equal(seen[1][1].code, 4409);
    assert.equal(seen[1][1].willReconnect, false);
    await assert.rejects(ready, { code: 'too-many-connections' });
    await assert.rejects(joining, { code: 'too-many-connections' });
    t.mock.timers.tick(600_000);
    await settle();
    assert.equal(WebSocket.instances.length, 1);
  });

  test('against the fake server: the connection past the limit is refused, the others live on', async () => {
    const server = new FakeServer();
    server.maxConnectionsPerUser = 2;
    const options = { url: URL_, token: 'alice', WebSocket: server.WebSocket, fetch: server.fetch };
    const clients = [new SignalingClient(options), new SignalingClient(options)];
    await Promise.all(clients.map((client) => client.ready()));
    const third = new SignalingClient(options);
    await assert.rejects(third.ready(), { code: 'too-many-connections' });
    assert.ok(clients.every((client) => client.connected));
    for (const client of clients) client.close();
  });
});

describe('server data and prototypes', () => {
  // JSON.parse makes "__proto__" an own key (an object literal would set the prototype instead),
  // so these come as JSON text, as they would off the wire.
  const HOSTILE = `{
    "groupId": 1,
    "__proto__": {"polluted": true},
    "nested": {"__proto__": {"polluted": true}, "list": [{"__proto__": {"polluted": true}}]},
    "constructor": {"prototype": {"polluted": true}},
    "prototype": {"polluted": true}
  }`;

  /** Nothing inherited: `polluted` nowhere on the prototype chain, and plain prototypes. */
  function assertClean(value, where) {
    assert.equal(Object.getPrototypeOf(value), Array.isArray(value) ? Array.prototype : Object.prototype, where);
    assert.equal('polluted' in value, false, where);
    assert.equal(Object.hasOwn(value, '__proto__'), false, `${where} kept a __proto__ key`);
  }

  function assertNothingPolluted() {
    assert.equal({}.polluted, undefined);
    assert.equal(Object.hasOwn(Object.prototype, 'polluted'), false);
    assert.equal(Object.prototype.constructor, Object);
    assert.equal({}.constructor, Object);
    assert.equal(Object.hasOwn(Array.prototype, 'polluted'), false);
  }

  test('room-joined metadata and participants with __proto__, constructor and prototype keys, through the client and CallMesh', async () => {
    const server = new FakeServer();
    server.metadata = JSON.parse(HOSTILE);
    assert.match(JSON.stringify(server.metadata), /"__proto__"/, 'the frame on the wire carries the keys');
    const PeerConnection = fakePeerConnectionClass();
    const client = new SignalingClient({ url: URL_, token: 'alice', WebSocket: server.WebSocket, fetch: server.fetch });
    const fromClient = [];
    client.on('webrtc:room-joined', (data) => fromClient.push(data));
    client.on('webrtc:participant-joined', (data) => fromClient.push(data));
    const mesh = new CallMesh(client, { roomId: 'r', RTCPeerConnection: PeerConnection });
    const told = [];
    mesh.on('joined', (data) => told.push(data));
    mesh.on('participant', ({ participant }) => told.push(participant));
    const joined = await mesh.join();
    const participant = JSON.parse(
      `{"socketId": "zed-9", "userId": "zed", "username": "zed", "__proto__": {"polluted": true, "socketId": "x"},
        "constructor": {"prototype": {"polluted": true}}}`,
    );
    server.push(client.socketId, { event: 'webrtc:participant-joined', data: { callRoomId: 'r', participant } });
    await settle();

    assertNothingPolluted();
    const { metadata } = joined;
    for (const [value, where] of [
      [joined, 'room-joined'],
      [metadata, 'metadata'],
      [metadata.nested, 'metadata.nested'],
      [metadata.nested.list, 'metadata.nested.list'],
      [metadata.nested.list[0], 'metadata.nested.list[0]'],
      [mesh.participants.get('zed-9'), 'the participant'],
    ]) {
      assertClean(value, where);
    }
    assert.equal(metadata.groupId, 1);
    // "constructor" and "prototype" stay plain data: harmless unless something merges deeply, which nothing does.
    assert.deepEqual(metadata.constructor, { prototype: { polluted: true } });
    // A copy the application makes is as clean as what it got.
    assertClean(Object.assign({}, metadata), 'Object.assign({}, metadata)');
    assertClean({ ...metadata }, '{...metadata}');
    assert.equal(mesh.participants.get('zed-9').socketId, 'zed-9');
    // The application saw the very objects checked above.
    assert.equal(told[0], joined);
    assert.equal(fromClient[0], joined);
    assert.equal(told[1], mesh.participants.get('zed-9'));
    assertNothingPolluted();
    await mesh.leave();
    client.close();
  });

  test('a frame, a reply and an error with __proto__ keys, straight into the client', async () => {
    const { client, ws } = connectedClient();
    const joining = client.request('webrtc:join-room', { callRoomId: 'r' });
    const refused = client.request('webrtc:join-room', { callRoomId: 's' });
    const [joinFrame, refusedFrame] = ws.sent;
    const seen = [];
    client.on('webrtc:room-updated', (data, frame) => seen.push(data, frame));
    ws.receiveText(`{"event": "webrtc:room-updated", "__proto__": {"polluted": true}, "data": ${HOSTILE}}`);
    ws.receiveText(`{"event": "webrtc:room-joined", "id": "${joinFrame.id}", "data": {"callRoomId": "r", "metadata": ${HOSTILE}, "existingParticipants": []}}`);
    ws.receiveText(
      `{"event": "webrtc:signaling-error", "id": "${refusedFrame.id}",
        "data": {"error": "forbidden", "message": "No.", "details": ${HOSTILE}, "__proto__": {"polluted": true}}}`,
    );
    const { metadata } = await joining;
    const error = await refused.catch((caught) => caught);
    assert.equal(error.code, 'forbidden');
    for (const [value, where] of [
      [seen[0], 'event data'],
      [seen[1], 'frame'],
      [seen[0].nested, 'event data.nested'],
      [metadata, 'reply metadata'],
      [metadata.nested.list[0], 'reply metadata.nested.list[0]'],
      [error.details, 'error details'],
    ]) {
      assertClean(value, where);
    }
    assertNothingPolluted();
    client.close();
  });

  test('relayed descriptions and candidates reach the peer connection as their named fields only', async () => {
    const { server, users, pcOf } = await joinedWorld();
    const alice = users.alice.client.socketId;
    const bob = users.bob.client.socketId;
    const pc = pcOf('alice', 'bob');
    const candidate = JSON.parse(
      '{"candidate": "candidate:9 1 udp 1 10.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u", "extra": 1, "__proto__": {"polluted": true}}',
    );
    server.push(alice, { event: 'webrtc:ice-candidate', data: { callRoomId: 'call_1', fromSocketId: bob, fromUserId: 'bob', candidate } });
    // Malformed relays (no description, an unknown type, no candidate string) are dropped without an error.
    for (const offer of [null, 'v=0', { type: 'rollback', sdp: '' }, { type: 'offer' }]) {
      server.push(alice, { event: 'webrtc:offer', data: { callRoomId: 'call_1', fromSocketId: bob, fromUserId: 'bob', offer } });
    }
    server.push(alice, { event: 'webrtc:ice-candidate', data: { callRoomId: 'call_1', fromSocketId: bob, fromUserId: 'bob', candidate: { sdpMid: '0' } } });
    await settle();
    assert.deepEqual(pc.addedCandidates.at(-1), {
      candidate: 'candidate:9 1 udp 1 10.0.0.1 9 typ host',
      sdpMid: '0',
      sdpMLineIndex: 0,
      usernameFragment: 'u',
    });
    assert.equal(pc.addedCandidates.length, 2);
    assert.deepEqual(Object.keys(pc.remoteDescription), ['type', 'sdp']);
    assert.deepEqual(errorsOf(users.alice), []);
    assertNothingPolluted();
  });
});
