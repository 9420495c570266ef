// Ringing, moderation and media state in calls/static/calls/signaling.js (docs/protocol.md §9,
// §10, §5 rule 11), against the fake server: `node --test tests/js/`.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { CallMesh, SignalingClient, SignalingError } from '../../calls/static/calls/signaling.js';
import { FakeServer, fakePeerConnectionClass, manualWebSocket, settle } from './fakes.mjs';

const URL_ = 'ws://calls.test/ws/calls/';
const ROOM = 'group-1';
const MESH_EVENTS = [
  'participant',
  'participant-left',
  'participant-updated',
  'room-updated',
  'kicked',
  'call-ended',
  'ring-updated',
  'incoming-call',
  'ring-ended',
  'left',
  'error',
];

/**
 * A fake server whose group 1 has alice (owner), bob and carol (members), and dave outside it;
 * `connect(name)` opens a client of that user (several for one user: several devices), whose
 * client events are recorded; `mesh(user)` puts a CallMesh on it.
 */
function world() {
  const server = new FakeServer();
  server.groups.set('1', { alice: 'owner', bob: 'member', carol: 'member' });
  const PeerConnection = fakePeerConnectionClass();
  const stream = { getTracks: () => [{ kind: 'audio' }, { kind: 'video' }] };
  const users = [];
  const connect = (name) => {
    const client = new SignalingClient({
      url: URL_,
      token: name,
      WebSocket: server.WebSocket,
      fetch: server.fetch,
      backoff: { initialMs: 1, maxMs: 1 },
      resumeStorage: null,
    });
    const heard = [];
    for (const event of ['webrtc:incoming-call', 'webrtc:ring-ended']) client.on(event, (data) => heard.push([event, data]));
    const user = {
      name,
      client,
      heard,
      mesh: null,
      events: [],
      /** The data of every `event` the mesh told. */
      told: (event) => user.events.filter(([name_]) => name_ === event).map(([, data]) => data),
      /** A mesh on `roomId` (a group's room carries its groupId). */
      meshOn(roomId = ROOM, options = {}) {
        const metadata = /^group-(\d+)$/.exec(roomId) ? { groupId: roomId.slice(6) } : undefined;
        user.mesh = new CallMesh(client, { roomId, metadata, localStream: stream, RTCPeerConnection: PeerConnection, ...options });
        for (const event of MESH_EVENTS) user.mesh.on(event, (data) => user.events.push([event, data]));
        return user.mesh;
      },
    };
    users.push(user);
    return user;
  };
  /** `name` connected and in `roomId`, settled. */
  const inCall = async (name, roomId = ROOM, options = {}) => {
    const user = connect(name);
    await user.meshOn(roomId, options).join();
    await settle();
    return user;
  };
  const closeAll = () => users.forEach(({ client }) => client.close());
  return { server, connect, inCall, closeAll };
}

describe('media state', () => {
  test('the join carries the media option; room-joined gives it back and the others see it', async () => {
    const { inCall, closeAll } = world();
    const alice = await inCall('alice', ROOM, { media: { audio: false } });
    assert.deepEqual(alice.mesh.media, { audio: false, video: true, screen: false });
    assert.deepEqual(alice.mesh.joined.participant.media, { audio: false, video: true, screen: false });
    const bob = await inCall('bob');
    assert.deepEqual(bob.mesh.media, { audio: true, video: true, screen: false }, 'the server default');
    assert.deepEqual(bob.mesh.participants.get(alice.client.socketId).media, { audio: false, video: true, screen: false });
    closeAll();
  });

  test('setMedia sends media-state and resolves on its ack; the others get participant-updated, later joiners the state', async () => {
    const { inCall, closeAll } = world();
    const alice = await inCall('alice');
    const bob = await inCall('bob');
    const reply = await alice.mesh.setMedia({ video: false });
    assert.deepEqual(reply, { event: 'webrtc:media-state' });
    assert.deepEqual(alice.mesh.media, { audio: true, video: false, screen: false }, 'what was not given kept its value');
    await settle();
    const [{ participant }] = bob.told('participant-updated');
    assert.equal(participant.socketId, alice.client.socketId);
    assert.deepEqual(participant.media, { audio: true, video: false, screen: false });
    assert.equal(bob.mesh.participants.get(alice.client.socketId), participant, 'the map holds the new object');
    assert.deepEqual(bob.told('participant').map(({ participant: p }) => p.username), ['alice'], 'not told as a newcomer');
    const carol = await inCall('carol');
    assert.deepEqual(carol.mesh.participants.get(alice.client.socketId).media, { audio: true, video: false, screen: false });
    closeAll();
  });

  test('setMedia before the join resolves null and the join carries it; a rejoin after a reconnect carries the latest', async () => {
    const { server, connect, inCall, closeAll } = world();
    const bob = await inCall('bob');
    const alice = connect('alice');
    const mesh = alice.meshOn();
    assert.equal(await mesh.setMedia({ audio: false }), null);
    await mesh.join();
    await settle();
    assert.deepEqual(bob.mesh.participants.get(alice.client.socketId).media.audio, false);

    await mesh.setMedia({ audio: true, video: false });
    const reconnected = new Promise((resolve) => alice.client.once('connect', resolve));
    server.drop(alice.client.socketId);
    assert.equal((await reconnected).resumed, false);
    await settle();
    const rejoined = bob.mesh.participants.get(alice.client.socketId);
    assert.deepEqual(rejoined.media, { audio: true, video: false, screen: false });
    closeAll();
  });

  test('participant-updated of another room is not this mesh\'s', async () => {
    const { server, inCall, closeAll } = world();
    const alice = await inCall('alice');
    const stranger = { socketId: 'zed-9', userId: 'zed', username: 'zed', media: { audio: false, video: false, screen: false } };
    server.push(alice.client.socketId, { event: 'webrtc:participant-updated', data: { callRoomId: 'elsewhere', participant: stranger } });
    await settle();
    assert.equal(alice.mesh.participants.has('zed-9'), false);
    assert.deepEqual(alice.told('participant-updated'), []);
    closeAll();
  });
});

describe('ringing', () => {
  test("ring rings every member not in the room, on every connection; a decline on one device ends the other's ring", async () => {
    const { connect, inCall, closeAll } = world();
    const alice = await inCall('alice');
    const phone = connect('bob');
    const laptop = connect('bob');
    const carol = connect('carol');
    const dave = connect('dave');
    await Promise.all([phone, laptop, carol, dave].map(({ client }) => client.ready()));

    const started = await alice.mesh.ring();
    assert.deepEqual(started.userIds, ['bob', 'carol'], 'not alice herself, not dave (no member)');
    assert.equal(started.callRoomId, ROOM);
    await settle();
    for (const device of [phone, laptop, carol]) {
      const [[event, call]] = device.heard;
      assert.equal(event, 'webrtc:incoming-call');
      assert.equal(call.ringId, started.ringId);
      assert.equal(call.callRoomId, ROOM);
      assert.equal(call.groupId, '1');
      assert.equal(call.from.username, 'alice');
    }
    assert.deepEqual(dave.heard, []);

    assert.deepEqual(await phone.client.replyToRing(started.ringId, 'decline'), { event: 'webrtc:ring-reply' });
    await settle();
    for (const device of [phone, laptop]) {
      assert.deepEqual(device.heard.at(-1), ['webrtc:ring-ended', { ringId: started.ringId, callRoomId: ROOM, reason: 'declined' }]);
    }
    assert.deepEqual(alice.told('ring-updated'), [{ ringId: started.ringId, callRoomId: ROOM, userId: 'bob', status: 'declined' }]);
    await assert.rejects(laptop.client.replyToRing(started.ringId, 'accept'), (error) => {
      assert.ok(error instanceof SignalingError);
      assert.equal(error.code, 'ring-not-found');
      assert.equal(error.event, 'webrtc:ring-reply');
      return true;
    });
    closeAll();
  });

  test('joining the room ends the ring as accepted; the ringer cancels the rest; a ring past its time is missed', async () => {
    const { server, connect, inCall, closeAll } = world();
    const alice = await inCall('alice');
    const bob = connect('bob');
    const carol = connect('carol');
    await Promise.all([bob, carol].map(({ client }) => client.ready()));
    const { ringId } = await alice.mesh.ring();
    await settle();

    await carol.meshOn().join();
    await settle();
    assert.deepEqual(carol.heard.at(-1)[1].reason, 'accepted');
    assert.deepEqual(alice.told('ring-updated').map(({ userId, status }) => [userId, status]), [['carol', 'accepted']]);

    await alice.mesh.cancelRing(ringId);
    await settle();
    assert.deepEqual(bob.heard.at(-1), ['webrtc:ring-ended', { ringId, callRoomId: ROOM, reason: 'cancelled' }]);
    await assert.rejects(alice.mesh.cancelRing(ringId), { code: 'ring-not-found' }, 'nobody left ringing');

    const again = await alice.mesh.ring(['bob']);
    assert.deepEqual(again.userIds, ['bob']);
    server.expireRings();
    await settle();
    assert.deepEqual(bob.heard.at(-1)[1], { ringId: again.ringId, callRoomId: ROOM, reason: 'missed' });
    closeAll();
  });

  test('a connection opened while its user is rung hears of the call; the mesh passes rings on', async () => {
    const { connect, inCall, closeAll } = world();
    const alice = await inCall('alice');
    const carol = await inCall('carol', 'elsewhere'); // in another call
    const { ringId } = await alice.mesh.ring(['bob', 'carol']);
    const late = connect('bob');
    await settle();
    assert.deepEqual(late.heard.map(([event, data]) => [event, data.ringId]), [['webrtc:incoming-call', ringId]]);
    const [call] = carol.told('incoming-call');
    assert.deepEqual(Object.keys(call).sort(), ['callRoomId', 'callType', 'expiresAt', 'from', 'groupId', 'ringId']);
    assert.equal(call.callRoomId, ROOM);
    await carol.client.replyToRing(ringId, 'decline');
    await settle();
    assert.deepEqual(carol.told('ring-ended'), [{ ringId, callRoomId: ROOM, reason: 'declined' }]);
    closeAll();
  });

  test('a room without a group cannot ring, nor can a user outside the group be rung', async () => {
    const { inCall, closeAll } = world();
    const alice = await inCall('alice');
    await assert.rejects(alice.mesh.ring(['dave']), { name: 'SignalingError', code: 'forbidden' });
    const solo = await inCall('bob', 'open-room');
    await assert.rejects(solo.mesh.ring(), { code: 'forbidden' });
    closeAll();
  });
});

describe('moderation', () => {
  test('kick with a ban: the target is told by whom and until when, stops, and cannot join again', async () => {
    const { server, inCall, closeAll } = world();
    const alice = await inCall('alice');
    const bob = await inCall('bob');
    const carol = await inCall('carol');
    const bobId = bob.client.socketId;
    const bobPeers = [...bob.mesh.peers.values()].map(({ pc }) => pc);
    const before = Date.now();

    assert.deepEqual(await alice.mesh.kick(bobId, { banSecs: 600 }), { event: 'webrtc:kick' });
    await settle();
    const [kicked] = bob.told('kicked');
    assert.equal(kicked.callRoomId, ROOM);
    assert.equal(kicked.by.username, 'alice');
    assert.ok(kicked.bannedUntil instanceof Date);
    assert.ok(Math.abs(kicked.bannedUntil.getTime() - (before + 600_000)) < 5000);
    assert.equal(bob.mesh.peers.size, 0);
    assert.equal(bob.mesh.participants.size, 0);
    assert.ok(bobPeers.every((pc) => pc.signalingState === 'closed'));
    assert.deepEqual(bob.told('left'), [], 'no left after a kick');
    for (const other of [alice, carol]) {
      assert.deepEqual(other.told('participant-left').map(({ participant, reason }) => [participant.socketId, reason]), [[bobId, 'kicked']]);
      assert.equal(other.mesh.peers.has(bobId), false);
    }

    // The mesh has stopped: a reconnect does not bring it back into the room.
    const reconnected = new Promise((resolve) => bob.client.once('connect', resolve));
    server.closeWith(bob.client.socketId, 1011);
    await reconnected;
    await settle();
    assert.equal(server.rooms.get(ROOM).some(({ participant }) => participant.userId === 'bob'), false);

    await assert.rejects(bob.meshOn().join(), (error) => {
      assert.equal(error.code, 'forbidden');
      assert.equal(error.details.bannedUntil, kicked.bannedUntil.toISOString());
      return true;
    });
    closeAll();
  });

  test('without a ban the target may come back; a member may not kick, nor may a group owner kick its admin', async () => {
    const { server, inCall, closeAll } = world();
    server.groups.get('1').carol = 'admin';
    const alice = await inCall('alice');
    const bob = await inCall('bob');
    const carol = await inCall('carol');
    await assert.rejects(bob.mesh.kick(alice.client.socketId), { code: 'forbidden' });
    await assert.rejects(alice.mesh.kick(carol.client.socketId), { code: 'forbidden' }, 'only staff kick a moderator');
    await assert.rejects(alice.mesh.kick(alice.client.socketId), { code: 'forbidden' }, 'nor oneself');
    await assert.rejects(alice.mesh.kick('nobody-1'), { code: 'participant-not-found' });
    await alice.mesh.kick(bob.client.socketId);
    await settle();
    assert.deepEqual(bob.told('kicked').map(({ by, bannedUntil }) => [by.username, bannedUntil]), [['alice', null]]);
    await bob.meshOn().join(); // no ban: back in
    closeAll();
  });

  test('end the call: everyone, the moderator included, is told and stopped; rings end as call-ended', async () => {
    const { connect, inCall, closeAll } = world();
    const alice = await inCall('alice');
    const bob = await inCall('bob');
    const carol = connect('carol');
    await carol.client.ready();
    const { ringId } = await alice.mesh.ring();
    await assert.rejects(bob.mesh.endCall(), { code: 'forbidden' });
    await alice.mesh.endCall();
    await settle();
    for (const user of [alice, bob]) {
      assert.deepEqual(user.told('call-ended').map(({ callRoomId, by }) => [callRoomId, by.username]), [[ROOM, 'alice']]);
      assert.equal(user.mesh.peers.size, 0);
      assert.equal(user.mesh.joined, null);
    }
    assert.deepEqual(carol.heard.at(-1), ['webrtc:ring-ended', { ringId, callRoomId: ROOM, reason: 'call-ended' }]);
    closeAll();
  });

  test('lock: everyone hears room-updated and mesh.locked follows; others are refused room-locked, a moderator is not', async () => {
    const { server, connect, inCall, closeAll } = world();
    server.staff.add('admin');
    server.groups.get('1').admin = 'member';
    const alice = await inCall('alice');
    const bob = await inCall('bob');
    assert.equal(alice.mesh.locked, false);
    await assert.rejects(bob.mesh.lock(true), { code: 'forbidden' });
    await alice.mesh.lock(true);
    await settle();
    for (const user of [alice, bob]) {
      assert.equal(user.mesh.locked, true);
      assert.deepEqual(user.told('room-updated').map(({ locked, by }) => [locked, by.username]), [[true, 'alice']]);
    }
    const carol = connect('carol');
    await assert.rejects(carol.meshOn().join(), { name: 'SignalingError', code: 'room-locked' });
    const admin = await inCall('admin');
    assert.equal(admin.mesh.locked, true, 'room-joined says so');
    await alice.mesh.lock(false);
    await settle();
    assert.equal(bob.mesh.locked, false);
    await carol.meshOn().join();
    closeAll();
  });
});

describe('the frames', () => {
  /** A client on a hand-driven socket, connected as `s-1`, with a mesh joined to `group-1`. */
  async function joinedOnManualSocket() {
    const WebSocket = manualWebSocket();
    const client = new SignalingClient({ url: URL_, token: 't', tickets: false, WebSocket, resumeStorage: null });
    const [ws] = WebSocket.instances;
    ws.open();
    ws.receive({ event: 'webrtc:connected', data: { socketId: 's-1', userId: '1' } });
    const mesh = new CallMesh(client, {
      roomId: ROOM,
      metadata: { groupId: '1' },
      media: { audio: true, video: false },
      RTCPeerConnection: fakePeerConnectionClass(),
    });
    const joining = mesh.join();
    const join = ws.sent.at(-1);
    ws.receive({
      event: 'webrtc:room-joined',
      id: join.id,
      data: { callRoomId: ROOM, existingParticipants: [], participant: { socketId: 's-1', media: { audio: true, video: false, screen: false } }, iceServers: [], locked: true },
    });
    await joining;
    return { client, mesh, ws, join };
  }

  test('each request is the protocol\'s frame, with an id, and resolves with its reply', async () => {
    const { client, mesh, ws, join } = await joinedOnManualSocket();
    assert.deepEqual(join.data, { callRoomId: ROOM, callType: 'video', metadata: { groupId: '1' }, media: { audio: true, video: false, screen: false } });
    assert.equal(mesh.locked, true);
    const cases = [
      [() => mesh.ring(), 'webrtc:ring', { callRoomId: ROOM }],
      [() => mesh.ring([2, '3']), 'webrtc:ring', { callRoomId: ROOM, userIds: ['2', '3'] }],
      [() => mesh.kick('s-2'), 'webrtc:kick', { callRoomId: ROOM, targetSocketId: 's-2' }],
      [() => mesh.kick('s-2', { banSecs: 600 }), 'webrtc:kick', { callRoomId: ROOM, targetSocketId: 's-2', banSecs: 600 }],
      [() => mesh.endCall(), 'webrtc:end-call', { callRoomId: ROOM }],
      [() => mesh.lock(false), 'webrtc:lock-room', { callRoomId: ROOM, locked: false }],
      [() => mesh.setMedia({ screen: true }), 'webrtc:media-state', { callRoomId: ROOM, audio: true, video: false, screen: true }],
      [() => mesh.cancelRing('r-1'), 'webrtc:ring-cancel', { ringId: 'r-1' }],
      [() => client.replyToRing('r-1', 'accept'), 'webrtc:ring-reply', { ringId: 'r-1', response: 'accept' }],
    ];
    for (const [call, event, data] of cases) {
      const pending = call();
      const frame = ws.sent.at(-1);
      assert.equal(frame.event, event);
      assert.deepEqual(frame.data, data);
      assert.equal(typeof frame.id, 'string');
      const replyData = event === 'webrtc:ring' ? { ringId: 'r-9', callRoomId: ROOM, userIds: [], expiresAt: 'x' } : { event };
      ws.receive({ event: event === 'webrtc:ring' ? 'webrtc:ring-started' : 'webrtc:ack', id: frame.id, data: replyData });
      assert.deepEqual(await pending, replyData);
    }
    const refused = mesh.kick('s-2');
    ws.receive({ event: 'webrtc:signaling-error', id: ws.sent.at(-1).id, data: { error: 'forbidden', message: 'No.', event: 'webrtc:kick' } });
    await assert.rejects(refused, { name: 'SignalingError', code: 'forbidden', message: 'No.', event: 'webrtc:kick' });
    client.close();
  });

  test('kicked and call-ended of another room are ignored; an unreadable bannedUntil is null', async () => {
    const { client, mesh, ws } = await joinedOnManualSocket();
    const told = [];
    mesh.on('kicked', (data) => told.push(data));
    ws.receive({ event: 'webrtc:kicked', data: { callRoomId: 'elsewhere', by: {} } });
    ws.receive({ event: 'webrtc:call-ended', data: { callRoomId: 'elsewhere', by: {} } });
    assert.notEqual(mesh.joined, null);
    ws.receive({ event: 'webrtc:kicked', data: { callRoomId: ROOM, by: { userId: '2' }, bannedUntil: 'soon' } });
    assert.deepEqual(told, [{ callRoomId: ROOM, by: { userId: '2' }, bannedUntil: null }]);
    assert.equal(mesh.joined, null);
    client.close();
  });
});
