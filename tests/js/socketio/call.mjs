// A three-person call of unchanged socket.io-clients, as the seed document's usage example
// writes it: `node call.mjs URL TRANSPORTS TOKEN_A TOKEN_B TOKEN_C`, where TRANSPORTS is
// "websocket" (transports: ["websocket"]), "polling" (long-polling only) or "default" (the
// client's defaults: long-polling, then the upgrade). Prints what it saw as JSON.

import { check, connectSocketIO, run, upgraded } from './lib.mjs';

const [url, transports, ...tokens] = process.argv.slice(2);
const options = transports === 'default' ? {} : { transports: [transports] };
const room = `sio-${transports}-${process.pid}`;

await run(async (peers) => {
  const [alice, bob, carol] = await Promise.all(
    ['alice', 'bob', 'carol'].map((name, i) => connectSocketIO(name, url, tokens[i], options)),
  );
  peers.push(alice, bob, carol);
  const seen = {
    socketIds: peers.map((p) => p.socketId),
    connected: peers.map((p) => p.connected),
    engineIds: peers.map((p) => p.socket.io.engine.id),
  };
  if (transports === 'default') await Promise.all(peers.map((p) => upgraded(p)));

  // The usage example: answer every offer.
  for (const peer of [bob, carol]) {
    peer.socket.on('webrtc:offer', ({ fromSocketId, offer }) => {
      peer.emit('webrtc:answer', {
        callRoomId: room,
        targetSocketId: fromSocketId,
        answer: { type: 'answer', sdp: `answer of ${peer.name} to ${offer.sdp}` },
      });
    });
  }

  // alice joins with an acknowledgement: the reply is the ack's argument, not an event.
  const aliceJoined = await alice.request('webrtc:join-room', {
    callRoomId: room,
    callType: 'video',
    metadata: { topic: 'socket.io' },
  });
  // bob joins without one: the reply comes as an event.
  bob.emit('webrtc:join-room', { callRoomId: room, callType: 'video', metadata: {} });
  const bobJoined = await bob.next('webrtc:room-joined');
  const bobAnnounced = await alice.next('webrtc:participant-joined');
  const carolJoined = await carol.request('webrtc:join-room', { callRoomId: room, callType: 'audio' });
  const carolAnnounced = [await alice.next('webrtc:participant-joined'), await bob.next('webrtc:participant-joined')];
  seen.joins = { aliceJoined, bobJoined, bobAnnounced, carolJoined, carolAnnounced };

  // The newcomer offers to everyone already there; each answers back.
  for (const { socketId } of carolJoined.data.existingParticipants) {
    carol.emit('webrtc:offer', { callRoomId: room, targetSocketId: socketId, offer: { type: 'offer', sdp: `v=0 ${socketId}` } });
  }
  const offers = { bob: await bob.next('webrtc:offer'), alice: await alice.next('webrtc:offer') };
  const answers = [await carol.next('webrtc:answer')]; // bob's handler answered
  // alice has no handler of her own: she answers by hand, acknowledged.
  const answerAck = await alice.request('webrtc:answer', {
    callRoomId: room,
    targetSocketId: carol.socketId,
    answer: { type: 'answer', sdp: 'answer of alice' },
  });
  answers.push(await carol.next('webrtc:answer'));
  seen.signalling = { offers, answers, answerAck };

  // ICE: targeted, then to everyone else.
  const candidate = { candidate: 'candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host', sdpMid: '0', sdpMLineIndex: 0 };
  alice.emit('webrtc:ice-candidate', { callRoomId: room, targetSocketId: bob.socketId, candidate });
  const targeted = await bob.next('webrtc:ice-candidate');
  bob.emit('webrtc:ice-candidate', { callRoomId: room, candidate: '' });
  const broadcast = [await alice.next('webrtc:ice-candidate'), await carol.next('webrtc:ice-candidate')];
  await carol.silent();
  seen.ice = { targeted, broadcast };

  // Errors, as events, or as the acknowledgement of a request that asked for one.
  alice.emit('webrtc:offer', { callRoomId: room, targetSocketId: 'nobody', offer: { type: 'offer', sdp: 'v=0' } });
  const errorEvent = await alice.next('webrtc:signaling-error');
  const errorAck = await alice.request('webrtc:offer', { callRoomId: room, targetSocketId: 'nobody', offer: { type: 'offer', sdp: 'v=0' } });
  const unknownEvent = await alice.request('webrtc:no-such-event', { callRoomId: room });
  const invalid = await bob.request('webrtc:join-room', { callRoomId: 'not a room id!' });
  seen.errors = { errorEvent, errorAck, unknownEvent, invalid };

  seen.transports = peers.map((p) => p.transport);

  // Leaving: acknowledged, and seen by the others; a disconnect is seen as one.
  const left = await bob.request('webrtc:leave-room', { callRoomId: room });
  const bobLeft = [await alice.next('webrtc:participant-left'), await carol.next('webrtc:participant-left')];
  carol.close();
  const carolGone = await alice.next('webrtc:participant-left');
  seen.leaving = { left, bobLeft, carolGone };
  check(seen.socketIds.every((id, i) => id === seen.connected[i].socketId), 'socket.id is the socketId');
  return seen;
});
