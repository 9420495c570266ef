// Socket.IO connection state recovery (docs/protocol.md §6) with an unchanged socket.io-client:
// `node recover.mjs TRANSPORTS ALICE_URLS BOB_URL TOKEN_A TOKEN_B`, where TRANSPORTS is
// "websocket" (transports: ["websocket"]) or "default" (long-polling, then the upgrade), and
// ALICE_URLS is one server URL or two, comma-separated: alice reaches them through a TCP proxy
// of this script, the first until her connection is cut, the last after (so, with two, she
// comes back to another process). Bob is connected to BOB_URL directly.
//
// Alice and bob join a room; the proxy kills alice's TCP connections (a reset: no close frame,
// no DISCONNECT packet) and holds her reconnection until the server has parked her and bob has
// sent her an offer and 3 ICE candidates, acknowledged; then it lets her through. Prints what
// both saw as JSON: tests/test_socketio_recovery.py checks it.

import net from 'node:net';

import { check, connectSocketIO, run, upgraded, WAIT_MS } from './lib.mjs';

const [transports, aliceUrls, bobUrl, aliceToken, bobToken] = process.argv.slice(2);
const options = transports === 'default' ? {} : { transports: [transports] };
const upstreams = aliceUrls.split(',').map((url) => new URL(url));
const room = `recover-${transports}-${process.pid}`;

/**
 * A TCP proxy on a free loopback port to `upstreams[route]`: `cut()` resets every connection
 * through it, `hold()` makes new connections wait (accepted, not forwarded) until `release()`.
 */
class Proxy {
  route = 0;
  links = new Set();
  #held = null;

  async listen() {
    this.server = net.createServer((client) => this.#accept(client));
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  async #accept(client) {
    client.pause();
    client.on('error', () => {});
    if (this.#held) await this.#held.promise;
    const { hostname, port } = upstreams[this.route];
    const upstream = net.connect(Number(port), hostname);
    upstream.on('error', () => client.destroy());
    const link = { client, upstream };
    this.links.add(link);
    const gone = () => {
      this.links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', gone);
    upstream.on('close', gone);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  }

  /** Reset every connection, both ways: the server and the client each see a TCP reset. */
  cut() {
    for (const { client, upstream } of this.links) {
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    }
    this.links.clear();
  }

  hold() {
    let release;
    const promise = new Promise((resolve) => (release = resolve));
    this.#held = { promise, release };
  }

  release() {
    const held = this.#held;
    this.#held = null;
    held?.release();
  }

  close() {
    this.cut();
    this.server.close();
  }
}

/** `calls_parked` of the process at `url` (0 when it has none). */
async function parkedOn(url) {
  const text = await (await fetch(new URL('/metrics', url))).text();
  const match = /^calls_parked(?:\{[^}]*\})? (\S+)$/m.exec(text);
  return match ? Number(match[1]) : 0;
}

async function until(what, condition, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const proxy = await new Proxy().listen();

await run(async (peers) => {
  const alice = await connectSocketIO('alice', proxy.url, aliceToken, options);
  const bob = await connectSocketIO('bob', bobUrl, bobToken, options);
  peers.push(alice, bob);
  if (transports === 'default') await Promise.all(peers.map((peer) => upgraded(peer)));
  const seen = {
    before: { socketId: alice.socket.id, engineId: alice.socket.io.engine.id, hasPid: typeof alice.socket._pid === 'string' },
  };

  await alice.request('webrtc:join-room', { callRoomId: room, callType: 'video' });
  await bob.request('webrtc:join-room', { callRoomId: room, callType: 'video' });
  await alice.next('webrtc:participant-joined');

  // Everything alice's socket receives from now on, with all its arguments (the offset last).
  const received = [];
  alice.socket.onAny((event, ...args) => received.push({ event, args }));
  const disconnected = new Promise((resolve) => alice.socket.once('disconnect', resolve));

  proxy.hold();
  proxy.route = upstreams.length - 1;
  const parkedBefore = await parkedOn(upstreams[0]);
  proxy.cut();
  seen.disconnectReason = await disconnected;
  await until('the server parks alice', async () => (await parkedOn(upstreams[0])) > parkedBefore);

  // While she is away, bob sends her an offer and three candidates: each is acknowledged.
  const target = seen.before.socketId;
  const offer = { type: 'offer', sdp: 'v=0 offer while away' };
  const acks = [await bob.request('webrtc:offer', { callRoomId: room, targetSocketId: target, offer })];
  for (let n = 1; n <= 3; n += 1) {
    const candidate = { candidate: `candidate:${n} 1 udp 2122260223 192.0.2.1 ${54400 + n} typ host`, sdpMid: '0', sdpMLineIndex: 0 };
    acks.push(await bob.request('webrtc:ice-candidate', { callRoomId: room, targetSocketId: target, candidate }));
  }
  seen.acks = acks.map((ack) => ack.event);

  const reconnected = new Promise((resolve) => alice.socket.once('connect', resolve));
  proxy.release();
  await reconnected;
  seen.after = {
    socketId: alice.socket.id,
    engineId: alice.socket.io.engine.id,
    recovered: alice.socket.recovered,
    transport: alice.transport,
  };
  await until('alice gets the 4 missed events', () => received.filter(({ event }) => event === 'webrtc:ice-candidate').length >= 3);

  // Then live traffic, both ways.
  const live = { candidate: 'candidate:9 1 udp 2122260223 192.0.2.1 54409 typ host', sdpMid: '0', sdpMLineIndex: 0 };
  bob.emit('webrtc:ice-candidate', { callRoomId: room, targetSocketId: target, candidate: live });
  await until('alice gets the live candidate', () => received.filter(({ event }) => event === 'webrtc:ice-candidate').length >= 4);
  const answer = { type: 'answer', sdp: 'v=0 answer after the resume' };
  seen.answerAck = await alice.request('webrtc:answer', { callRoomId: room, targetSocketId: bob.socketId, answer });
  seen.bobGotAnswer = await bob.next('webrtc:answer');
  seen.received = received;
  // What else bob got meanwhile: he must not have seen alice leave or join again.
  await new Promise((resolve) => setTimeout(resolve, 300));
  const leftOver = (peer) => [...peer.queues].filter(([, items]) => items.length).map(([event]) => event).sort();
  seen.bobLeftOver = leftOver(bob); // (alice's all are in `received`)
  check(seen.after.socketId === seen.before.socketId, `socket.id changed: ${seen.before.socketId} → ${seen.after.socketId}`);
  return seen;
});
