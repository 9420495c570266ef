// Tests of calls/static/calls/signaling.js with node's test runner: `node --test tests/js/`.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { CallMesh, SignalingClient, SignalingError } from '../../calls/static/calls/signaling.js';
import { FakeServer, fakeFetch, fakePeerConnectionClass, manualWebSocket, settle } from './fakes.mjs';

const URL_ = 'ws://calls.test/ws/calls/';
const BACKOFF = { initialMs: 500, maxMs: 4000, factor: 2 };

/** A client on a hand-driven socket that has received `webrtc:connected`. */
function connectedClient(options = {}) {
  const WebSocket = manualWebSocket();
  const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket, backoff: BACKOFF, ...options });
  const ws = WebSocket.instances[0];
  ws.open();
  ws.receive({ event: 'webrtc:connected', data: { socketId: 's-1', userId: '7' } });
  return { client, ws, WebSocket };
}

describe('SignalingClient', () => {
  test('connects to the endpoint with the access token as ?token=', async () => {
    const WebSocket = manualWebSocket();
    new SignalingClient({ url: URL_, token: async () => 'fresh-token', WebSocket });
    await settle(1);
    assert.equal(WebSocket.instances.length, 1);
    assert.equal(WebSocket.instances[0].url.toString(), `${URL_}?token=fresh-token`);
  });

  test('exposes socketId and userId from webrtc:connected and fires connect', () => {
    const WebSocket = manualWebSocket();
    const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket });
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
    const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket });
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
    const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket, requestTimeoutMs: 1000 });
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
    const client = new SignalingClient({ url: URL_, token: 'expired', WebSocket });
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
    const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket, backoff: BACKOFF });
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
    const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket, fetch, backoff: BACKOFF, ...options });
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
    const client = new SignalingClient({ url: URL_, token: 'tok', WebSocket, fetch: fakeFetch({ allowed: true }) });
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
