// Resume after a dropped connection (docs/protocol.md §6) in signaling.js: the resume token
// kept across a page reload, the reconnecting that every unexpected close starts, and what
// CallMesh does with its peer connections after a resume, a failed one, and a reload.
// `node --test tests/js/`.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { CallMesh, SignalingClient } from '../../calls/static/calls/signaling.js';
import { FakeServer, fakePeerConnectionClass, manualWebSocket, settle } from './fakes.mjs';

const URL_ = 'ws://calls.test/ws/calls/';
const KEY = 'calls.signaling.resume:ws://calls.test/ws/calls/';
const BACKOFF = { initialMs: 500, maxMs: 4000, factor: 2 };

/** A Storage of `entries` in a Map (`map`), with every call written to `calls`. */
function memoryStorage(entries = []) {
  const map = new Map(entries);
  const calls = [];
  return {
    map,
    calls,
    getItem: (key) => (calls.push(['get', key]), map.get(key) ?? null),
    setItem: (key, value) => (calls.push(['set', key]), map.set(key, String(value))),
    removeItem: (key) => (calls.push(['remove', key]), map.delete(key)),
  };
}

const saved = (storage) => JSON.parse(storage.map.get(KEY) ?? 'null');

/** Replace a global for one test. */
function setGlobal(t, name, value) {
  const previous = Object.getOwnPropertyDescriptor(globalThis, name);
  Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
  t.after(() => (previous ? Object.defineProperty(globalThis, name, previous) : delete globalThis[name]));
}

/** A client on hand-driven sockets (no tickets), with mocked timers and its events recorded. */
function manualClient(t, options = {}) {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  t.mock.method(Math, 'random', () => 1); // the top of each jitter range: delays are the steps
  const WebSocket = manualWebSocket();
  const client = new SignalingClient({
    url: URL_,
    token: 'tok',
    tickets: false,
    WebSocket,
    backoff: BACKOFF,
    originCheckUrl: null,
    ...options,
  });
  const seen = [];
  for (const event of ['connect', 'disconnect', 'reconnecting']) client.on(event, (data) => seen.push([event, data]));
  /** The last socket opened and told `webrtc:connected` with `data` (and then `more` frames). */
  const connect = (data, ...more) => {
    const ws = WebSocket.instances.at(-1);
    ws.open();
    ws.receive({ event: 'webrtc:connected', data: { userId: '7', ...data } });
    for (const frame of more) ws.receive(frame);
    return ws;
  };
  return { client, WebSocket, seen, connect };
}

const resumeFailed = { event: 'webrtc:signaling-error', data: { error: 'resume-failed', message: 'No.', timestamp: 't' } };

describe('SignalingClient resume token', () => {
  test('is kept in resumeStorage under a key of the endpoint, rewritten at every webrtc:connected, and presented', (t) => {
    const storage = memoryStorage();
    const { client, WebSocket, seen, connect } = manualClient(t, { resumeStorage: storage, url: `${URL_}?v=2` });
    connect({ socketId: 's-1', resumeToken: 'r1' });
    assert.deepEqual(saved(storage), { socketId: 's-1', resumeToken: 'r1' });
    WebSocket.instances[0].serverClose(1006);
    t.mock.timers.tick(BACKOFF.initialMs);
    assert.equal(WebSocket.instances[1].url.searchParams.get('resume'), 'r1');
    assert.equal(WebSocket.instances[1].url.searchParams.get('v'), '2', 'the URL keeps its own query');
    connect({ socketId: 's-1', resumeToken: 'r2' });
    assert.deepEqual(saved(storage), { socketId: 's-1', resumeToken: 'r2' });
    assert.deepEqual(seen.filter(([event]) => event === 'connect').map(([, data]) => data.resumed), [false, true]);
    client.close();
  });

  test('a page loaded with a saved token presents it at once, and getting its socketId back is a resume', (t) => {
    const storage = memoryStorage([[KEY, JSON.stringify({ socketId: 's-old', resumeToken: 'r-old' })]]);
    const { client, WebSocket, seen, connect } = manualClient(t, { resumeStorage: storage });
    assert.equal(client.socketId, null, 'no socketId before webrtc:connected');
    assert.equal(WebSocket.instances[0].url.searchParams.get('resume'), 'r-old');
    connect({ socketId: 's-old', resumeToken: 'r-new' });
    assert.deepEqual(seen.at(-1), ['connect', { socketId: 's-old', userId: '7', resumed: true }]);
    assert.deepEqual(saved(storage), { socketId: 's-old', resumeToken: 'r-new' });
    client.close();
  });

  test('a saved entry that is not ours to read is ignored; a storage that throws breaks nothing', (t) => {
    for (const text of ['{not json', '"a string"', '{"resumeToken": 5, "socketId": "s"}', '{"__proto__": {"resumeToken": "x"}}']) {
      const storage = memoryStorage([[KEY, text]]);
      const { client, WebSocket } = manualClient(t, { resumeStorage: storage });
      assert.equal(WebSocket.instances[0].url.searchParams.has('resume'), false, text);
      client.close();
      t.mock.timers.reset();
      Math.random.mock.restore();
    }
    const throwing = {
      getItem() {
        throw new Error('SecurityError');
      },
      setItem() {
        throw new Error('QuotaExceededError');
      },
      removeItem() {
        throw new Error('SecurityError');
      },
    };
    const { client, WebSocket, connect } = manualClient(t, { resumeStorage: throwing });
    connect({ socketId: 's-1', resumeToken: 'r1' });
    WebSocket.instances[0].serverClose(1006);
    t.mock.timers.tick(BACKOFF.initialMs);
    assert.equal(WebSocket.instances[1].url.searchParams.get('resume'), 'r1', 'still resumes within the page');
    client.close();
  });

  test('close() forgets it, in memory and in the storage: the server has let our place go', (t) => {
    const storage = memoryStorage();
    const { client, WebSocket, connect } = manualClient(t, { resumeStorage: storage });
    connect({ socketId: 's-1', resumeToken: 'r1' });
    client.close();
    assert.equal(storage.map.has(KEY), false);
    client.connect();
    assert.equal(WebSocket.instances[1].url.searchParams.has('resume'), false);
    client.close();
  });

  for (const code of [4401, 4409]) {
    test(`a stop (a close ${code} the client does not retry) forgets it`, (t) => {
      const storage = memoryStorage();
      // A fixed token: a 4401 after connected cannot be retried with a fresher one.
      const { client, WebSocket, connect } = manualClient(t, { resumeStorage: storage });
      connect({ socketId: 's-1', resumeToken: 'r1' });
      WebSocket.instances[0].serverClose(code);
      assert.equal(storage.map.has(KEY), false);
      t.mock.timers.tick(60_000);
      assert.equal(WebSocket.instances.length, 1);
      client.close();
    });
  }

  test('resume-failed: the fresh connection\'s token replaces the refused one, which is never presented again', (t) => {
    const storage = memoryStorage();
    const { client, WebSocket, seen, connect } = manualClient(t, { resumeStorage: storage });
    connect({ socketId: 's-1', resumeToken: 'r1' });
    WebSocket.instances[0].serverClose(1006);
    t.mock.timers.tick(BACKOFF.initialMs);
    connect({ socketId: 's-2', resumeToken: 'r2' }, resumeFailed);
    assert.deepEqual(seen.at(-1), ['connect', { socketId: 's-2', userId: '7', resumed: false }]);
    assert.deepEqual(saved(storage), { socketId: 's-2', resumeToken: 'r2' });
    WebSocket.instances[1].serverClose(1006);
    t.mock.timers.tick(BACKOFF.initialMs);
    assert.equal(WebSocket.instances[2].url.searchParams.get('resume'), 'r2');
    client.close();
  });

  test('resume-failed from a server that sent no new token: nothing is left to present', (t) => {
    const storage = memoryStorage([[KEY, JSON.stringify({ socketId: 's-old', resumeToken: 'r-old' })]]);
    const { client, WebSocket, connect } = manualClient(t, { resumeStorage: storage });
    connect({ socketId: 's-1' }, resumeFailed);
    assert.equal(storage.map.has(KEY), false);
    WebSocket.instances[0].serverClose(1006);
    t.mock.timers.tick(BACKOFF.initialMs);
    assert.equal(WebSocket.instances[1].url.searchParams.has('resume'), false);
    client.close();
  });

  test('by default the tab\'s sessionStorage, when there is one; resumeStorage: null keeps it in memory', (t) => {
    const session = memoryStorage();
    setGlobal(t, 'sessionStorage', session);
    const first = manualClient(t);
    first.connect({ socketId: 's-1', resumeToken: 'r1' });
    assert.deepEqual(saved(session), { socketId: 's-1', resumeToken: 'r1' });
    first.client.close();
    t.mock.timers.reset();
    Math.random.mock.restore();

    session.calls.length = 0;
    const second = manualClient(t, { resumeStorage: null });
    second.connect({ socketId: 's-2', resumeToken: 'r2' });
    second.WebSocket.instances[0].serverClose(1006);
    t.mock.timers.tick(BACKOFF.initialMs);
    assert.equal(second.WebSocket.instances[1].url.searchParams.get('resume'), 'r2');
    second.client.close();
    assert.deepEqual(session.calls, [], 'sessionStorage untouched');
  });

  test('where sessionStorage cannot be used (a sandbox throws on access), the client still works', (t) => {
    const previous = Object.getOwnPropertyDescriptor(globalThis, 'sessionStorage');
    Object.defineProperty(globalThis, 'sessionStorage', {
      configurable: true,
      get() {
        throw new Error('SecurityError');
      },
    });
    t.after(() => (previous ? Object.defineProperty(globalThis, 'sessionStorage', previous) : delete globalThis.sessionStorage));
    const { client, connect } = manualClient(t);
    connect({ socketId: 's-1', resumeToken: 'r1' });
    assert.equal(client.connected, true);
    client.close();
  });
});

describe('SignalingClient reconnecting', () => {
  for (const code of [1001, 1006, 1011, 1012, 4000]) {
    test(`a close ${code} of a connection that was up: disconnect, then reconnecting after the first delay`, (t) => {
      const { client, WebSocket, seen, connect } = manualClient(t);
      connect({ socketId: 's-1', resumeToken: 'r1' });
      seen.length = 0;
      WebSocket.instances[0].serverClose(code);
      assert.deepEqual(seen, [
        ['disconnect', { code, reason: '', willReconnect: true }],
        ['reconnecting', { attempt: 1, delayMs: BACKOFF.initialMs }],
      ]);
      t.mock.timers.tick(BACKOFF.initialMs - 1);
      assert.equal(WebSocket.instances.length, 1);
      t.mock.timers.tick(1);
      assert.equal(WebSocket.instances.length, 2, 'reconnects at the first delay');
      assert.equal(WebSocket.instances[1].url.searchParams.get('resume'), 'r1');
      client.close();
    });
  }

  test('each connection that was up starts the backoff over: a second 1001 is again the first delay', (t) => {
    const { client, WebSocket, seen, connect } = manualClient(t);
    connect({ socketId: 's-1', resumeToken: 'r1' });
    for (let round = 0; round < 3; round += 1) {
      WebSocket.instances.at(-1).serverClose(1001);
      t.mock.timers.tick(BACKOFF.initialMs);
      connect({ socketId: 's-1', resumeToken: `r${round + 2}` });
    }
    const delays = seen.filter(([event]) => event === 'reconnecting').map(([, data]) => data.delayMs);
    assert.deepEqual(delays, [500, 500, 500]);
    client.close();
  });

  test('against the fake server: a drop is resumed, with webrtc:resumed and the missed frames in order', async () => {
    const server = new FakeServer();
    server.resumes = true;
    const options = { url: URL_, WebSocket: server.WebSocket, fetch: server.fetch, backoff: { initialMs: 1, maxMs: 1 } };
    const alice = new SignalingClient({ ...options, token: 'alice', resumeStorage: null });
    const bob = new SignalingClient({ ...options, token: 'bob', resumeStorage: null });
    await alice.request('webrtc:join-room', { callRoomId: 'r' });
    await bob.request('webrtc:join-room', { callRoomId: 'r' });
    const seen = [];
    for (const event of ['connect', 'disconnect', 'reconnecting', 'webrtc:resumed', 'webrtc:ice-candidate']) {
      alice.on(event, (data) => seen.push([event, data]));
    }
    const resumed = new Promise((resolve) => alice.once('webrtc:resumed', resolve));
    const reopen = server.hold(); // alice's reconnection waits until bob has sent what she is to miss
    server.drop(alice.socketId);
    for (const n of [1, 2, 3]) {
      await bob.request('webrtc:ice-candidate', { callRoomId: 'r', targetSocketId: 'alice-1', candidate: `c${n}` });
    }
    assert.equal(server.isParked('alice-1'), true);
    reopen();
    await resumed;
    await settle();
    assert.deepEqual(
      seen.map(([event, data]) => [event, data.resumed ?? data.missed ?? data.candidate ?? data.willReconnect ?? data.attempt]),
      [
        ['disconnect', true],
        ['reconnecting', 1],
        ['connect', true],
        ['webrtc:resumed', 3],
        ['webrtc:ice-candidate', 'c1'],
        ['webrtc:ice-candidate', 'c2'],
        ['webrtc:ice-candidate', 'c3'],
      ],
    );
    assert.equal(alice.socketId, 'alice-1');
    alice.close();
    bob.close();
  });
});

/**
 * Users in one room of a resuming fake server, each with a client and a CallMesh; each user
 * has a storage of its own (its tab's sessionStorage), so that its page can be reloaded.
 */
function resumeWorld({ room = 'call_1' } = {}) {
  const server = new FakeServer();
  server.resumes = true;
  const PeerConnection = fakePeerConnectionClass();
  const stream = { getTracks: () => [{ kind: 'audio' }, { kind: 'video' }] };
  const users = {};
  /** A page of `name` (again, for a reload: with the storage its last page left). */
  const open = (name, { storage = memoryStorage() } = {}) => {
    const client = new SignalingClient({
      url: URL_,
      token: name,
      WebSocket: server.WebSocket,
      fetch: server.fetch,
      backoff: { initialMs: 1, maxMs: 1 },
      resumeStorage: storage,
    });
    const mesh = new CallMesh(client, { roomId: room, localStream: stream, RTCPeerConnection: PeerConnection });
    const events = [];
    for (const event of ['participant', 'track', 'connection-state', 'participant-left', 'error']) {
      mesh.on(event, (data) => events.push([event, data]));
    }
    const connects = [];
    client.on('connect', (info) => connects.push(info));
    users[name] = { client, mesh, events, connects, storage };
    return users[name];
  };
  const join = async (...names) => {
    for (const name of names) {
      await open(name).mesh.join();
      await settle();
    }
  };
  /** Every peer connection of `name`, by remote socketId. */
  const pcsOf = (name) => new Map([...users[name].mesh.peers].map(([socketId, peer]) => [socketId, peer.pc]));
  const eventsOf = (name, event) => users[name].events.filter(([type]) => type === event).map(([, data]) => data);
  const offersSince = (count) => server.relayed.slice(count).filter((r) => r.event === 'webrtc:offer').map((r) => `${r.from}→${r.to}`);
  const closeAll = () => Object.values(users).forEach(({ client }) => client.close());
  return { server, PeerConnection, users, open, join, pcsOf, eventsOf, offersSince, closeAll };
}

/** Resolve at the next `connect` of `client`. */
const nextConnect = (client) => new Promise((resolve) => client.once('connect', resolve));

describe('CallMesh across a dropped connection', () => {
  test('a resume keeps every peer connection, nobody sees a leave or a join, and what was missed is negotiated', async () => {
    const world = resumeWorld();
    await world.join('alice', 'bob', 'carol');
    const before = Object.fromEntries(['alice', 'bob', 'carol'].map((name) => [name, world.pcsOf(name)]));
    const relayedBefore = world.server.relayed.length;

    const reopen = world.server.hold();
    world.server.drop('alice-1');
    // While alice is away, bob renegotiates with her (say he shares a screen): his offer waits for her.
    before.bob.get('alice-1').addTrack({ kind: 'video' }, {});
    await settle();
    assert.equal(world.server.isParked('alice-1'), true);
    assert.equal(before.bob.get('alice-1').signalingState, 'have-local-offer');
    const back = nextConnect(world.users.alice.client);
    reopen();
    assert.deepEqual(await back, { socketId: 'alice-1', userId: 'alice', resumed: true });
    await settle();

    for (const name of ['alice', 'bob', 'carol']) {
      assert.deepEqual(world.pcsOf(name), before[name], `${name} has the same peer connections`);
      assert.deepEqual(world.eventsOf(name, 'participant-left'), [], `${name} saw nobody leave`);
      assert.equal(world.eventsOf(name, 'participant').length, 2, `${name} saw nobody new`);
      assert.deepEqual(world.eventsOf(name, 'error'), []);
      for (const pc of world.pcsOf(name).values()) {
        assert.equal(pc.signalingState, 'stable');
        assert.equal(pc.restarts, 0, 'no ICE restart for a connection that has not failed');
      }
    }
    assert.deepEqual(world.offersSince(relayedBefore), ['bob-2→alice-1'], 'only the renegotiation; no rejoin');
    const bobPc = before.bob.get('alice-1');
    assert.ok(bobPc.senders.every((sender) => sender.negotiated), 'the offer missed during the gap was answered');
    world.closeAll();
  });

  test('after a resume only a connection that has failed, with no negotiation under way, restarts ICE', async () => {
    const world = resumeWorld();
    await world.join('alice', 'bob', 'carol');
    const alice = world.pcsOf('alice');
    const [toBob, toCarol] = [alice.get('bob-2'), alice.get('carol-3')];
    toBob.reportConnectionState('failed'); // restarts at once, negotiated through the server: still failed
    await settle();
    assert.equal(toBob.restarts, 1);
    assert.equal(toBob.signalingState, 'stable');
    toCarol.reportConnectionState('connected');
    const relayedBefore = world.server.relayed.length;

    world.server.drop('alice-1');
    await nextConnect(world.users.alice.client);
    await settle();

    assert.equal(toBob.restarts, 2, 'the failed connection tries ICE again now that we are back');
    assert.equal(toCarol.restarts, 0);
    assert.deepEqual(world.offersSince(relayedBefore), ['alice-1→bob-2'], 'one restart offer, on the same connection');
    assert.deepEqual(world.pcsOf('alice'), alice);
    assert.equal(toBob.signalingState, 'stable');
    assert.match(world.pcsOf('bob').get('alice-1').remoteDescription.sdp, /a=ice-ufrag:u\d+g2/);
    world.closeAll();
  });

  test('a connection that fails while we are away restarts once, when the restart offer can be sent', async () => {
    const world = resumeWorld();
    await world.join('alice', 'bob');
    const toBob = world.pcsOf('alice').get('bob-2');
    const relayedBefore = world.server.relayed.length;
    const reopen = world.server.hold();
    world.server.drop('alice-1');
    await settle();
    assert.equal(world.users.alice.client.connected, false);
    toBob.reportConnectionState('failed');
    await settle();
    assert.equal(toBob.signalingState, 'have-local-offer', 'the restart offer waits for the connection');
    const back = nextConnect(world.users.alice.client);
    reopen();
    await back;
    await settle();
    assert.equal(toBob.restarts, 1, 'its offer was queued and sent after the resume; no second restart');
    assert.deepEqual(world.offersSince(relayedBefore), ['alice-1→bob-2']);
    assert.equal(toBob.signalingState, 'stable');
    world.closeAll();
  });

  test('a resume that fails (the grace is over) rejoins as a newcomer with new peer connections', async () => {
    const world = resumeWorld();
    await world.join('alice', 'bob', 'carol');
    const before = world.pcsOf('alice');
    const bobToAlice = world.pcsOf('bob').get('alice-1');
    const reopen = world.server.hold();
    world.server.drop('alice-1');
    await settle();
    world.server.expire('alice-1'); // the grace ends before she is back: the room sees her go
    await settle();
    const back = nextConnect(world.users.alice.client);
    reopen();
    await back;
    await settle();

    assert.deepEqual(world.server.resumeAttempts.map(({ resumed }) => resumed), [false]);
    const { socketId } = world.users.alice.client;
    assert.equal(socketId, 'alice-4');
    assert.deepEqual(world.users.alice.connects.at(-1), { socketId, userId: 'alice', resumed: false });
    assert.deepEqual(JSON.parse(world.users.alice.storage.map.get(KEY)).socketId, socketId, 'the fresh token is kept');
    const after = world.pcsOf('alice');
    assert.deepEqual([...after.keys()].sort(), ['bob-2', 'carol-3']);
    for (const [id, pc] of after) {
      assert.notEqual(pc, before.get(id), 'a new connection');
      assert.equal(before.get(id).signalingState, 'closed', 'the old one is closed');
      assert.equal(pc.signalingState, 'stable');
    }
    assert.equal(bobToAlice.signalingState, 'closed');
    for (const name of ['bob', 'carol']) {
      assert.deepEqual(world.eventsOf(name, 'participant-left').map((data) => [data.participant.socketId, data.reason]), [
        ['alice-1', 'disconnected'],
      ]);
      assert.ok(world.users[name].mesh.peers.has(socketId));
    }
    for (const name of ['alice', 'bob', 'carol']) assert.deepEqual(world.eventsOf(name, 'error'), []);
    world.closeAll();
  });

  test('a page reloaded within the grace resumes its socketId, joins again and offers; the others replace its connections', async () => {
    const world = resumeWorld();
    await world.join('alice', 'bob', 'carol');
    const old = world.users.alice;
    const bobBefore = world.pcsOf('bob');
    const carolBefore = world.pcsOf('carol');
    const relayedBefore = world.server.relayed.length;

    // The reload: the tab's storage outlives the page; its socket goes without a close frame.
    const storage = memoryStorage(old.storage.map);
    world.server.drop('alice-1');
    old.client.close(); // (the old page is gone: it sends nothing more)
    const page = world.open('alice', { storage });
    const joined = await page.mesh.join();
    await settle();

    assert.deepEqual(page.connects, [{ socketId: 'alice-1', userId: 'alice', resumed: true }]);
    assert.deepEqual(world.server.resumeAttempts.map(({ resumed }) => resumed), [true]);
    assert.deepEqual(joined.existingParticipants.map((p) => p.socketId), ['bob-2', 'carol-3']);
    assert.deepEqual(world.offersSince(relayedBefore).sort(), ['alice-1→bob-2', 'alice-1→carol-3']);
    for (const [name, before, otherId] of [['bob', bobBefore, 'carol-3'], ['carol', carolBefore, 'bob-2']]) {
      const now = world.pcsOf(name);
      assert.notEqual(now.get('alice-1'), before.get('alice-1'), `${name} has a new connection to the reloaded page`);
      assert.equal(before.get('alice-1').signalingState, 'closed', `${name}'s old one is closed`);
      assert.equal(now.get('alice-1').signalingState, 'stable');
      assert.equal(now.get(otherId), before.get(otherId), `${name} keeps the connection it has with the third`);
      assert.deepEqual(world.eventsOf(name, 'participant-left'), [], `${name} saw nobody leave`);
      assert.equal(world.eventsOf(name, 'participant').length, 2, `${name} saw nobody new`);
      assert.deepEqual(world.eventsOf(name, 'error'), []);
    }
    for (const [id, pc] of world.pcsOf('alice')) {
      assert.equal(pc.signalingState, 'stable', id);
      assert.ok(pc.senders.every((sender) => sender.negotiated));
      assert.equal(world.pcsOf(id.split('-')[0]).get('alice-1').remoteDescription.sdp, pc.localDescription.sdp);
    }
    assert.deepEqual(world.eventsOf('alice', 'error'), []);
    world.closeAll();
  });

  test('an offer with the fingerprint of the connection we have is a renegotiation: the connection stays', async () => {
    const world = resumeWorld();
    await world.join('alice', 'bob');
    const bobToAlice = world.pcsOf('bob').get('alice-1');
    world.pcsOf('alice').get('bob-2').addTrack({ kind: 'video' }, {});
    await settle();
    assert.equal(world.pcsOf('bob').get('alice-1'), bobToAlice);
    assert.ok(bobToAlice.senders.every((sender) => sender.negotiated));
    world.closeAll();
  });

  test('an answer from another connection than the one we have: ours is replaced and offers afresh', async () => {
    const world = resumeWorld();
    await world.join('alice', 'bob');
    const bobToAlice = world.pcsOf('bob').get('alice-1');
    const aliceToBob = world.pcsOf('alice').get('bob-2');
    // (As when our restart offer reached a page of alice's that was reloaded meanwhile.)
    const sdp = 'answer 99\r\na=fingerprint:sha-256 OT:HE:R0\r\n';
    world.server.push('bob-2', {
      event: 'webrtc:answer',
      data: { callRoomId: 'call_1', fromSocketId: 'alice-1', fromUserId: 'alice', answer: { type: 'answer', sdp } },
    });
    await settle();
    const newBobToAlice = world.pcsOf('bob').get('alice-1');
    assert.notEqual(newBobToAlice, bobToAlice);
    assert.equal(bobToAlice.signalingState, 'closed');
    // Its offer has a fingerprint alice's connection has never seen: she replaces hers too.
    const newAliceToBob = world.pcsOf('alice').get('bob-2');
    assert.notEqual(newAliceToBob, aliceToBob);
    for (const pc of [newBobToAlice, newAliceToBob]) assert.equal(pc.signalingState, 'stable');
    assert.equal(newAliceToBob.remoteDescription.sdp, newBobToAlice.localDescription.sdp);
    assert.equal(newBobToAlice.remoteDescription.sdp, newAliceToBob.localDescription.sdp);
    for (const name of ['alice', 'bob']) assert.deepEqual(world.eventsOf(name, 'error'), []);
    world.closeAll();
  });

  test('a server shutting down (1001) is resumed like a drop', async () => {
    const world = resumeWorld();
    await world.join('alice', 'bob');
    const before = world.pcsOf('alice');
    world.server.closeWith('alice-1', 1001);
    const reconnecting = new Promise((resolve) => world.users.alice.client.once('reconnecting', resolve));
    assert.deepEqual(await reconnecting, { attempt: 1, delayMs: 1 });
    assert.equal((await nextConnect(world.users.alice.client)).resumed, true);
    await settle();
    assert.deepEqual(world.pcsOf('alice'), before);
    assert.deepEqual(world.eventsOf('bob', 'participant-left'), []);
    world.closeAll();
  });
});
