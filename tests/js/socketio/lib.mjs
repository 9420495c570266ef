// Peers for the scripts of this folder, which tests/test_socketio.py runs against real
// server processes: Socket.IO peers are the real socket.io-client (tests/js/package.json),
// native peers speak JSON frames over a plain websocket (ws). Every wait has a timeout,
// and a script that fails exits non-zero with the reason on stderr.

import { io } from 'socket.io-client';
import WebSocket from 'ws';

export const WAIT_MS = 10_000; // generous for a loaded two-core machine; waits end on the event
export const SILENCE_MS = 300;

/** Something received, by event name, with waits that end on arrival or time out. */
class Inbox {
  constructor(name) {
    this.name = name;
    this.queues = new Map(); // event -> data not yet taken
    this.waiters = new Map(); // event -> [resolve]
  }

  put(event, data) {
    const waiting = this.waiters.get(event);
    if (waiting?.length) {
      waiting.shift()(data);
      return;
    }
    if (!this.queues.has(event)) this.queues.set(event, []);
    this.queues.get(event).push(data);
  }

  /** The next `event`'s data. */
  next(event, ms = WAIT_MS) {
    const queued = this.queues.get(event);
    if (queued?.length) return Promise.resolve(queued.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const waiting = this.waiters.get(event);
        waiting.splice(waiting.indexOf(done), 1);
        reject(new Error(`${this.name}: no ${event} within ${ms} ms`));
      }, ms);
      const done = (data) => {
        clearTimeout(timer);
        resolve(data);
      };
      if (!this.waiters.has(event)) this.waiters.set(event, []);
      this.waiters.get(event).push(done);
    });
  }

  /** Fails if anything arrives (or anything not yet taken is waiting) within `ms`. */
  async silent(ms = SILENCE_MS) {
    await new Promise((resolve) => setTimeout(resolve, ms));
    const left = [...this.queues].filter(([, items]) => items.length).map(([event]) => event);
    if (left.length) throw new Error(`${this.name}: unexpected ${left.join(', ')}`);
  }
}

/** A Socket.IO peer: `socket` is the unchanged socket.io-client socket. */
export class SocketIOPeer extends Inbox {
  constructor(name, socket) {
    super(name);
    this.socket = socket;
    socket.onAny((event, data) => this.put(event, data));
  }

  emit(event, data) {
    this.socket.emit(event, data);
  }

  /** An acknowledged emit: resolves with the reply, `{event, data}`. */
  request(event, data, ms = WAIT_MS) {
    return this.socket.timeout(ms).emitWithAck(event, data);
  }

  get transport() {
    return this.socket.io.engine.transport.name;
  }

  /** Disconnects; resolves once the engine has closed (its close packet sent). */
  close() {
    const engine = this.socket.io.engine;
    const closed = new Promise((resolve) => {
      if (!engine || engine.readyState === 'closed') resolve();
      else engine.once('close', resolve);
    });
    this.socket.disconnect();
    return closed;
  }
}

/** A Socket.IO peer that has connected and received `webrtc:connected`. */
export async function connectSocketIO(name, url, token, options = {}) {
  const socket = io(url, { auth: { token }, ...options });
  const peer = new SocketIOPeer(name, socket);
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: not connected within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once('connect_error', (error) => {
      clearTimeout(timer);
      reject(new Error(`${name}: connect_error ${error.message}`));
    });
  });
  peer.connected = await peer.next('webrtc:connected');
  peer.socketId = socket.id;
  return peer;
}

/** Waits until the socket's engine runs on a websocket (the upgrade of a polling start). */
export function upgraded(peer, ms = WAIT_MS) {
  if (peer.transport === 'websocket') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${peer.name}: no upgrade within ${ms} ms`)), ms);
    peer.socket.io.engine.once('upgrade', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** A peer of the native endpoint (docs/protocol.md §1: one JSON object per text frame). */
export class NativePeer extends Inbox {
  constructor(name, ws) {
    super(name);
    this.ws = ws;
    this.replies = new Map(); // request id -> resolve
    this.nextId = 1;
    ws.on('message', (text) => {
      const frame = JSON.parse(text);
      const reply = frame.id !== undefined && this.replies.get(frame.id);
      if (reply) {
        this.replies.delete(frame.id);
        reply({ event: frame.event, data: frame.data });
      } else {
        this.put(frame.event, frame.data);
      }
    });
  }

  emit(event, data) {
    this.ws.send(JSON.stringify({ event, data }));
  }

  /** A request with an `id`: resolves with its reply, `{event, data}`. */
  request(event, data, ms = WAIT_MS) {
    const id = `n-${this.nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: no reply to ${event} within ${ms} ms`)), ms);
      this.replies.set(id, (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      this.ws.send(JSON.stringify({ event, data, id }));
    });
  }

  close() {
    this.ws.close();
    return new Promise((resolve) => {
      if (this.ws.readyState === WebSocket.CLOSED) resolve();
      else this.ws.once('close', resolve);
    });
  }
}

export async function connectNative(name, url, token) {
  const ws = new WebSocket(`${url}?token=${encodeURIComponent(token)}`);
  const peer = new NativePeer(name, ws);
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  peer.connected = await peer.next('webrtc:connected');
  peer.socketId = peer.connected.socketId;
  return peer;
}

export function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Runs a script's body: prints its result as JSON, or fails with the reason. */
export async function run(body) {
  const peers = [];
  try {
    const result = await body(peers);
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    const closed = Promise.all(peers.map((peer) => peer.close()));
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, WAIT_MS))]);
  }
  // Nothing may keep the process alive once the peers are closed (reconnection timers).
  process.exit(0);
}
