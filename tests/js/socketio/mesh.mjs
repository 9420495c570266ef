// A mesh call of peers of any endpoint, each on its own server:
// `node mesh.mjs SPEC`, SPEC being JSON {room, peers: [{name, kind, url, token}]}, where
// kind is "native" (url: the native websocket endpoint), or a Socket.IO client's
// transports: "websocket", "polling" or "default" (url: the server). The peers join in
// order; each newcomer offers to everyone already there, who answers, and candidates go
// both ways; then each sends a candidate to everyone, and the first leaves. Prints what
// each exchange carried, as JSON.

import { check, connectNative, connectSocketIO, run, upgraded } from './lib.mjs';

const spec = JSON.parse(process.argv[2]);
const room = spec.room;

async function connect({ name, kind, url, token }) {
  if (kind === 'native') return connectNative(name, url, token);
  const peer = await connectSocketIO(name, url, token, kind === 'default' ? {} : { transports: [kind] });
  if (kind === 'default') await upgraded(peer);
  return peer;
}

await run(async (peers) => {
  for (const peerSpec of spec.peers) peers.push(await connect(peerSpec));
  const exchanges = [];
  for (const [index, peer] of peers.entries()) {
    const earlier = peers.slice(0, index);
    const joined = await peer.request('webrtc:join-room', { callRoomId: room, callType: 'video', metadata: {} });
    check(joined.event === 'webrtc:room-joined', `${peer.name}: joined with ${JSON.stringify(joined)}`);
    const existing = joined.data.existingParticipants.map((p) => p.socketId);
    check(JSON.stringify(existing) === JSON.stringify(earlier.map((p) => p.socketId)), `${peer.name}: existing ${existing}`);
    for (const other of earlier) {
      const announced = await other.next('webrtc:participant-joined');
      check(announced.participant.socketId === peer.socketId, `${other.name}: announced ${JSON.stringify(announced)}`);
    }
    for (const other of earlier) {
      const target = (to) => ({ callRoomId: room, targetSocketId: to.socketId });
      peer.emit('webrtc:offer', { ...target(other), offer: { type: 'offer', sdp: `offer ${peer.name}>${other.name}` } });
      const offer = await other.next('webrtc:offer');
      other.emit('webrtc:answer', { ...target(peer), answer: { type: 'answer', sdp: `answer ${other.name}>${peer.name}` } });
      const answer = await peer.next('webrtc:answer');
      peer.emit('webrtc:ice-candidate', { ...target(other), candidate: `candidate ${peer.name}>${other.name}` });
      const forward = await other.next('webrtc:ice-candidate');
      other.emit('webrtc:ice-candidate', { ...target(peer), candidate: `candidate ${other.name}>${peer.name}` });
      const back = await peer.next('webrtc:ice-candidate');
      exchanges.push({ from: peer.name, to: other.name, offer, answer, candidates: [forward, back] });
    }
  }
  const broadcasts = [];
  for (const peer of peers) {
    peer.emit('webrtc:ice-candidate', { callRoomId: room, candidate: `to all from ${peer.name}` });
    for (const other of peers.filter((p) => p !== peer)) {
      const candidate = await other.next('webrtc:ice-candidate');
      broadcasts.push({ from: peer.name, to: other.name, candidate });
    }
  }
  const [first, ...rest] = peers;
  const left = await first.request('webrtc:leave-room', { callRoomId: room });
  const seenLeaving = [];
  for (const other of rest) seenLeaving.push(await other.next('webrtc:participant-left'));
  await Promise.all(peers.map((p) => p.silent()));
  return {
    peers: peers.map((p) => ({ name: p.name, socketId: p.socketId, transport: p.transport ?? 'native' })),
    exchanges,
    broadcasts,
    left,
    seenLeaving,
  };
});
