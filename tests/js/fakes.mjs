/**
 * Fakes for the signaling.js tests: a WebSocket driven by hand, an in-memory signaling
 * server that follows docs/protocol.md's authentication, join/leave/relay and reply rules
 * (and answers the ticket endpoint and the origin check through its `fetch`), a fetch
 * driven by hand, and an RTCPeerConnection with the real signaling-state machine and
 * operations chain (no media).
 */

/** A JWT-shaped token (unsigned) whose payload is `claims`, e.g. `{user: 'alice', exp}` (seconds). */
export function fakeJwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}.signature`;
}

/** The claims of a {@link fakeJwt} token, or `null` for any other token. */
function claimsOf(token) {
  const parts = String(token).split('.');
  if (parts.length !== 3) return null;
  try {
    return JSON.parse(Buffer.from(parts[1], 'base64url').toString());
  } catch {
    return null;
  }
}

/** Let every pending macrotask (and the microtasks they start) run, a few rounds deep. */
export async function settle(rounds = 40) {
  for (let i = 0; i < rounds; i += 1) await new Promise((resolve) => setImmediate(resolve));
}

/** A WebSocket class whose server side the test plays: `open()`, `receive(frame)`, `serverClose(code)`. */
export function manualWebSocket() {
  return class ManualWebSocket {
    static instances = [];
    readyState = 0;
    sent = [];
    closedWith = null;

    constructor(url) {
      this.url = new URL(url);
      ManualWebSocket.instances.push(this);
    }

    send(text) {
      this.sent.push(JSON.parse(text));
    }

    close(code = 1000) {
      this.readyState = 3;
      this.closedWith = code;
    }

    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    receive(frame) {
      this.onmessage({ data: JSON.stringify(frame) });
    }

    /** A text frame as written, e.g. JSON with keys an object literal cannot hold as data. */
    receiveText(text) {
      this.onmessage({ data: text });
    }

    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose({ code, reason });
    }
  };
}

/**
 * A fetch whose answers the test picks: `answer` is the JSON body (status 200), or
 * `{status}` for an HTTP error, an Error to reject with, or `'hang'` to wait until aborted;
 * or a function `(url, init) => answer` that picks one per call. Every call is recorded in
 * `fetch.calls` as `{url, init}`.
 */
export function fakeFetch(answerOrPick) {
  const fetch = (url, init = {}) => {
    fetch.calls.push({ url: String(url), init });
    const answer = typeof answerOrPick === 'function' ? answerOrPick(String(url), init) : answerOrPick;
    return new Promise((resolve, reject) => {
      if (answer === 'hang') {
        init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
      } else if (answer instanceof Error) {
        setImmediate(() => reject(answer));
      } else {
        const status = answer.status ?? 200;
        setImmediate(() => resolve({ ok: status < 300, status, json: async () => answer }));
      }
    });
  };
  fetch.calls = [];
  return fetch;
}

/**
 * An in-memory server. A token names the user: `"alice"`, or a {@link fakeJwt} with
 * `{user, exp}`; an empty one, one in `revoked` or a JWT past its `exp` is invalid.
 * `POST /api/auth/ws-ticket/` (through its `fetch`) trades a bearer token, or without one
 * the session of `sessionUser`, for a single-use ticket; a websocket presents `?ticket=` or
 * `?token=`, and one without a valid credential is closed with 4401 (one past
 * `maxConnectionsPerUser` open connections of its user with 4409). `webrtc:connected` carries
 * the credential's expiry (a JWT's `exp`) as `authExpiresAt`; `webrtc:refresh-auth` with a
 * valid token of the same user extends it. Every request with an `id` gets one reply
 * (`webrtc:ack` for relays and refresh-auth). socketIds are `"<user>-<n>"`. Frames are
 * delivered as macrotasks, like a network would. With `originAllowed = false` it refuses
 * every handshake as a browser shows a 403 (a close 1006 before open), and its `fetch`
 * answers the origin check (`/api/calls/origin-check/`) accordingly.
 *
 * With `resumes = true` it resumes as docs/protocol.md §6 says: `webrtc:connected` carries a
 * single-use `resumeToken`; a connection lost without the client's close frame ({@link drop},
 * or a server close 1001 by {@link closeWith}) is *parked*, keeping its socketId and its room
 * (nobody is told) while what is sent to it is buffered, until a connection presents its token
 * (`?resume=`): that one gets the socketId back, `webrtc:resumed {socketId, callRoomId, missed}`
 * and the buffered frames, in order. A token that is unknown, spent, another user's, or of a
 * parked connection whose grace has ended ({@link expire}) gets a fresh socketId and a
 * `resume-failed` signaling error. A join of the room one is in answers `room-joined` again
 * (without oneself) and announces nothing.
 */
export class FakeServer {
  rooms = new Map(); // roomId → [{participant, ws}]
  relayed = []; // every relayed frame: {event, from, to, data}
  iceServers = [{ urls: 'stun:stun.example.org' }];
  forbidden = new Map(); // roomId → user ids that may not join
  joinRefusal = null; // {error, message}: the signaling-error every join gets
  metadata = {}; // the metadata of room-joined (a JSON.parse result may hold any key)
  originAllowed = true;
  originChecks = []; // the URL of every origin check asked
  revoked = new Set(); // tokens that are not valid
  sessionUser = null; // the user of the session cookie, for a ticket request without a token
  maxConnectionsPerUser = Infinity;
  ticketRequests = []; // {authorization, credentials, csrf} of every ticket request
  urls = []; // the URL of every websocket
  refreshes = []; // {socketId, token, accepted} of every webrtc:refresh-auth
  resumes = false;
  resumeAttempts = []; // {token, socketId (of the connection it got), resumed} of every ?resume=
  #connections = 0;
  #tokensIssued = 0;
  #resumeTokens = new Map(); // token → socketId
  #parked = new Map(); // socketId → the websocket that was lost, with its buffer
  #tickets = new Map(); // ticket → {user, expiresAt}
  #open = new Set(); // open, authenticated websockets

  #held = null; // while set, a promise that ticket requests wait for

  /** Make ticket requests wait (so: every new connection) until the function returned is called. */
  hold() {
    let release;
    this.#held = new Promise((resolve) => (release = resolve));
    return () => {
      this.#held = null;
      release();
    };
  }

  /** The HTTP side: the ticket endpoint and the origin check. */
  fetch = async (url, init = {}) => {
    const { pathname } = new URL(url);
    await new Promise((resolve) => setImmediate(resolve));
    if (pathname === '/api/auth/ws-ticket/' && this.#held) await this.#held;
    const answer = (status, body) => ({ ok: status < 300, status, json: async () => body });
    if (pathname === '/api/auth/ws-ticket/' && init.method === 'POST') {
      const headers = init.headers ?? {};
      const authorization = headers.Authorization ?? null;
      this.ticketRequests.push({ authorization, credentials: init.credentials, csrf: headers['X-CSRFToken'] ?? null });
      let credential;
      if (authorization) credential = authorization.startsWith('Bearer ') ? this.#credential(authorization.slice(7)) : null;
      else credential = init.credentials !== 'omit' && this.sessionUser ? { user: this.sessionUser, expiresAt: null } : null;
      if (!credential) return answer(401, { detail: 'Authentication credentials were not provided.' });
      const ticket = `ticket-${this.#tickets.size + 1}-${credential.user}`;
      this.#tickets.set(ticket, credential);
      return answer(200, { ticket, expiresIn: 30 });
    }
    if (pathname !== '/api/calls/origin-check/') return answer(404, {});
    this.originChecks.push(String(url));
    return answer(200, { allowed: this.originAllowed });
  };

  constructor() {
    const server = this;
    this.WebSocket = class FakeServerWebSocket {
      readyState = 0;

      constructor(url) {
        this.url = new URL(url);
        server.urls.push(this.url);
        setImmediate(() => server.#accept(this));
      }

      send(text) {
        const frame = JSON.parse(text);
        setImmediate(() => server.#handle(this, frame));
      }

      close(code = 1000) {
        if (this.readyState === 3) return;
        this.readyState = 3;
        server.#gone(this, 'disconnected');
        setImmediate(() => this.onclose?.({ code, reason: '' }));
      }
    };
  }

  /** `{user, expiresAt}` of a valid access token (`expiresAt` in ms, or null), else `null`. */
  #credential(token) {
    if (!token || this.revoked.has(token)) return null;
    const claims = claimsOf(token);
    if (!claims) return { user: token, expiresAt: null };
    if (typeof claims.user !== 'string') return null;
    const expiresAt = typeof claims.exp === 'number' ? claims.exp * 1000 : null;
    if (expiresAt !== null && expiresAt <= Date.now()) return null;
    return { user: claims.user, expiresAt };
  }

  /**
   * Close the connection of `socketId` from the server side with `code` (e.g. 4401); with
   * `resumes`, a 1001 (a graceful shutdown) parks it.
   */
  closeWith(socketId, code) {
    const ws = [...this.#open].find((open) => open.socketId === socketId);
    if (ws && this.resumes && code === 1001) {
      this.#park(ws);
      setImmediate(() => ws.onclose?.({ code, reason: '' }));
      return;
    }
    this.#close(ws, code);
  }

  /** The grace of the parked `socketId` ends: it leaves its room (`disconnected`). */
  expire(socketId) {
    const ws = this.#parked.get(socketId);
    if (!ws) return;
    this.#parked.delete(socketId);
    ws.parked = false;
    this.#gone(ws, 'disconnected');
  }

  /** Whether `socketId` is parked. */
  isParked(socketId) {
    return this.#parked.has(socketId);
  }

  #park(ws) {
    ws.readyState = 3;
    this.#open.delete(ws);
    ws.parked = true;
    ws.buffer = [];
    this.#parked.set(ws.socketId, ws);
  }

  /** Send `frame` to the client of `socketId` (in a room), as the server would. */
  push(socketId, frame) {
    this.#send(this.#entry(socketId).ws, frame);
  }

  /** Drop a connection, without a close frame from the client: it leaves, or with `resumes` is parked. */
  drop(socketId, code = 1006) {
    const { ws } = this.#entry(socketId);
    if (this.resumes) {
      this.#park(ws);
    } else {
      ws.readyState = 3;
      this.#gone(ws, 'disconnected');
    }
    setImmediate(() => ws.onclose?.({ code, reason: '' }));
  }

  #entry(socketId) {
    return [...this.rooms.values()].flat().find((e) => e.participant.socketId === socketId);
  }

  #accept(ws) {
    if (!this.originAllowed) {
      ws.readyState = 3;
      ws.onclose?.({ code: 1006, reason: '' });
      return;
    }
    ws.readyState = 1;
    ws.onopen?.({});
    const ticket = ws.url.searchParams.get('ticket');
    let credential = null;
    if (ticket !== null) {
      credential = this.#tickets.get(ticket) ?? null;
      this.#tickets.delete(ticket); // single use
    } else {
      credential = this.#credential(ws.url.searchParams.get('token'));
    }
    if (!credential) {
      this.#close(ws, 4401);
      return;
    }
    const { user, expiresAt } = credential;
    if ([...this.#open].filter((open) => open.user === user).length >= this.maxConnectionsPerUser) {
      this.#close(ws, 4409);
      return;
    }
    ws.user = user;
    this.#open.add(ws);
    const authExpiresAt = expiresAt === null ? null : new Date(expiresAt).toISOString();
    const token = this.resumes ? ws.url.searchParams.get('resume') : null;
    if (token !== null) {
      const parkedId = this.#resumeTokens.get(token);
      this.#resumeTokens.delete(token); // single use
      const parked = this.#parked.get(parkedId);
      if (parked && parked.user === user) {
        this.#parked.delete(parkedId);
        ws.socketId = parkedId;
        for (const room of this.rooms.values()) {
          for (const entry of room) if (entry.ws === parked) entry.ws = ws;
        }
        this.resumeAttempts.push({ token, socketId: ws.socketId, resumed: true });
        this.#send(ws, { event: 'webrtc:connected', data: this.#connectedData(ws, authExpiresAt) });
        const callRoomId = [...this.rooms].find(([, room]) => room.some((entry) => entry.ws === ws))?.[0] ?? null;
        this.#send(ws, { event: 'webrtc:resumed', data: { socketId: ws.socketId, callRoomId, missed: parked.buffer.length } });
        for (const frame of parked.buffer) this.#send(ws, frame);
        return;
      }
    }
    this.#connections += 1;
    ws.socketId = `${user}-${this.#connections}`;
    this.#send(ws, { event: 'webrtc:connected', data: this.#connectedData(ws, authExpiresAt) });
    if (token !== null) {
      this.resumeAttempts.push({ token, socketId: ws.socketId, resumed: false });
      const refusal = { error: 'resume-failed', message: 'That session cannot be resumed.', timestamp: new Date().toISOString() };
      this.#send(ws, { event: 'webrtc:signaling-error', data: refusal });
    }
  }

  #connectedData(ws, authExpiresAt) {
    const data = { socketId: ws.socketId, userId: ws.user, authExpiresAt };
    if (this.resumes) {
      this.#tokensIssued += 1;
      data.resumeToken = `resume-${ws.socketId}-${this.#tokensIssued}`;
      for (const [token, socketId] of this.#resumeTokens) if (socketId === ws.socketId) this.#resumeTokens.delete(token);
      this.#resumeTokens.set(data.resumeToken, ws.socketId);
    }
    return data;
  }

  #close(ws, code) {
    if (!ws || ws.readyState === 3) return;
    ws.readyState = 3;
    this.#gone(ws, 'disconnected');
    setImmediate(() => ws.onclose?.({ code, reason: '' }));
  }

  #send(ws, frame) {
    if (ws.parked) {
      ws.buffer.push(frame);
      return;
    }
    setImmediate(() => {
      if (ws.readyState === 1) ws.onmessage?.({ data: JSON.stringify(frame) });
    });
  }

  #participant(ws) {
    return { socketId: ws.socketId, userId: ws.user, username: ws.user, displayName: ws.user.toUpperCase() };
  }

  #handle(ws, { event, data, id }) {
    if (ws.readyState !== 1) return;
    const reply = (replyEvent, replyData) => this.#send(ws, { event: replyEvent, data: replyData, id });
    const ack = () => id !== undefined && reply('webrtc:ack', { event });
    if (event === 'webrtc:refresh-auth') {
      const credential = this.#credential(data.token);
      const accepted = credential?.user === ws.user;
      this.refreshes.push({ socketId: ws.socketId, token: data.token, accepted });
      if (accepted) ack();
      else reply('webrtc:signaling-error', { error: 'forbidden', message: 'Not a valid token of this user.', event });
      return;
    }
    const room = this.rooms.get(data.callRoomId) ?? [];
    if (event === 'webrtc:join-room') {
      if (this.joinRefusal) {
        reply('webrtc:signaling-error', { ...this.joinRefusal, event });
        return;
      }
      if (this.forbidden.get(data.callRoomId)?.includes(ws.user)) {
        reply('webrtc:signaling-error', { error: 'forbidden', message: 'Not a member.', event });
        return;
      }
      const me = this.#participant(ws);
      const others = room.filter((entry) => entry.ws !== ws);
      if (others.length < room.length) {
        // The room one is in: room-joined again, announced to nobody (docs/protocol.md §5 rule 2).
        reply('webrtc:room-joined', {
          callRoomId: data.callRoomId,
          participantCount: room.length,
          existingParticipants: others.map((other) => other.participant),
          participant: me,
          metadata: this.metadata,
          iceServers: this.iceServers,
        });
        return;
      }
      for (const other of room) {
        this.#send(other.ws, { event: 'webrtc:participant-joined', data: { callRoomId: data.callRoomId, participant: me } });
      }
      reply('webrtc:room-joined', {
        callRoomId: data.callRoomId,
        participantCount: room.length + 1,
        existingParticipants: room.map((other) => other.participant),
        participant: me,
        metadata: this.metadata,
        iceServers: this.iceServers,
      });
      this.rooms.set(data.callRoomId, [...room, { participant: me, ws }]);
    } else if (event === 'webrtc:leave-room') {
      this.#gone(ws, 'left');
      reply('webrtc:room-left', { callRoomId: data.callRoomId });
    } else {
      const target = room.find((other) => other.participant.socketId === data.targetSocketId);
      if (!target) {
        if (id !== undefined) reply('webrtc:signaling-error', { error: 'participant-not-found', message: 'Gone.', event });
        return;
      }
      const { targetSocketId, ...rest } = data;
      const relayed = { ...rest, fromSocketId: ws.socketId, fromUserId: ws.user };
      this.relayed.push({ event, from: ws.socketId, to: targetSocketId, data: relayed });
      this.#send(target.ws, { event, data: relayed });
      ack();
    }
  }

  #gone(ws, reason) {
    this.#open.delete(ws);
    for (const [roomId, room] of this.rooms) {
      const me = room.find((entry) => entry.ws === ws);
      if (!me) continue;
      const remaining = room.filter((entry) => entry !== me);
      this.rooms.set(roomId, remaining);
      for (const other of remaining) {
        this.#send(other.ws, {
          event: 'webrtc:participant-left',
          data: { callRoomId: roomId, participant: me.participant, reason },
        });
      }
    }
  }
}

/** Certificates made by every fake peer connection class: each connection's is unique, as in browsers. */
let certificates = 0;

/**
 * An RTCPeerConnection without media: the JSEP signaling states, an operations chain, and
 * `negotiationneeded` fired (when stable and idle) while a sender has not been negotiated or
 * an ICE restart (`restartIce()`) has not been offered. Like the standard,
 * `setRemoteDescription(offer)` outside `stable` fails: a glare must be resolved by an explicit
 * rollback. Its descriptions carry an `a=fingerprint` of its own (a certificate per connection,
 * as browsers make) and an `a=ice-ufrag` that each restart changes. Every operation is written
 * to `log`.
 */
export function fakePeerConnectionClass() {
  return class FakePeerConnection {
    static instances = [];
    signalingState = 'stable';
    connectionState = 'new';
    localDescription = null;
    remoteDescription = null;
    senders = [];
    transceivers = [];
    addedCandidates = [];
    log = [];
    restarts = 0;
    /** This connection's DTLS fingerprint, as its descriptions carry it. */
    fingerprint;
    #chain = Promise.resolve();
    #iceGeneration = 0;
    #restartPending = false;
    #restartOffered = false;
    #busy = 0;
    #offers = 0;
    #gathered = false;
    #checkQueued = false;

    constructor(config) {
      this.config = config;
      this.id = FakePeerConnection.instances.push(this);
      certificates += 1;
      this.fingerprint = `sha-256 FA:KE:${certificates.toString(16).toUpperCase().padStart(4, '0')}`;
    }

    addTrack(track, stream) {
      this.senders.push({ track, stream, negotiated: false });
      this.#updateNegotiationNeeded();
    }

    addTransceiver(kind, init) {
      this.transceivers.push({ kind, ...init });
      this.senders.push({ track: null, kind, negotiated: false });
      this.#updateNegotiationNeeded();
    }

    setLocalDescription(description) {
      return this.#operation(() => {
        const type = description?.type ?? (this.signalingState === 'have-remote-offer' ? 'answer' : 'offer');
        this.log.push(`setLocalDescription ${type}`);
        if (type === 'rollback') {
          this.#expectState('have-local-offer', type);
          this.signalingState = 'stable';
          this.localDescription = null;
          this.#restartOffered = false; // (a restart rolled back is still to be offered)
        } else if (type === 'offer') {
          if (this.signalingState === 'have-remote-offer') this.#expectState('stable', type);
          this.#offers += 1;
          if (this.#restartPending) {
            this.#iceGeneration += 1;
            this.#restartOffered = true;
          }
          this.localDescription = { type, sdp: this.#sdp(`offer ${this.id}.${this.#offers}`) };
          this.signalingState = 'have-local-offer';
          this.#gather();
        } else {
          this.#expectState('have-remote-offer', type);
          this.localDescription = { type, sdp: this.#sdp(`answer ${this.id}`) };
          this.#negotiated();
          this.#gather();
        }
      });
    }

    setRemoteDescription(description) {
      return this.#operation(() => {
        this.log.push(`setRemoteDescription ${description.type}`);
        if (description.type === 'offer') {
          this.#expectState('stable', 'remote offer');
          this.signalingState = 'have-remote-offer';
        } else {
          this.#expectState('have-local-offer', 'remote answer');
          this.#negotiated();
        }
        this.remoteDescription = description;
        this.ontrack?.({ track: { kind: 'video' }, streams: [{ id: `stream-of-${description.sdp}` }] });
      });
    }

    addIceCandidate(candidate) {
      return this.#operation(() => {
        if (!this.remoteDescription) throw new Error('InvalidStateError: no remote description');
        this.addedCandidates.push(candidate);
      });
    }

    restartIce() {
      this.restarts += 1;
      this.#restartPending = true;
      this.#updateNegotiationNeeded();
    }

    close() {
      this.signalingState = 'closed';
      this.connectionState = 'closed'; // (without an event, as in browsers)
      this.log.push('close');
    }

    #sdp(first) {
      return `${first}\r\na=ice-ufrag:u${this.id}g${this.#iceGeneration}\r\na=fingerprint:${this.fingerprint}\r\n`;
    }

    /** Test helper: the ICE/DTLS layer reports a new state. */
    reportConnectionState(state) {
      this.connectionState = state;
      this.onconnectionstatechange?.();
    }

    #expectState(state, what) {
      if (this.signalingState !== state) {
        throw new Error(`InvalidStateError: ${what} in ${this.signalingState}`);
      }
    }

    #negotiated() {
      this.signalingState = 'stable';
      for (const sender of this.senders) sender.negotiated = true;
      if (this.#restartOffered) this.#restartPending = this.#restartOffered = false;
    }

    #gather() {
      if (this.#gathered) return;
      this.#gathered = true;
      setImmediate(() => {
        const init = { candidate: `candidate:${this.id} 1 udp 2122260223 127.0.0.1 5000 typ host`, sdpMid: '0', sdpMLineIndex: 0 };
        this.onicecandidate?.({ candidate: { ...init, toJSON: () => ({ ...init, usernameFragment: 'uf' }) } });
        this.onicecandidate?.({ candidate: null });
      });
    }

    #operation(body) {
      this.#busy += 1;
      const result = this.#chain.then(body);
      this.#chain = result.catch(() => {});
      return result.finally(() => {
        this.#busy -= 1;
        this.#updateNegotiationNeeded();
      });
    }

    #updateNegotiationNeeded() {
      if (this.#checkQueued) return;
      this.#checkQueued = true;
      queueMicrotask(() => {
        this.#checkQueued = false;
        const needed = this.#restartPending || this.senders.some((sender) => !sender.negotiated);
        if (needed && this.#busy === 0 && this.signalingState === 'stable') this.onnegotiationneeded?.();
      });
    }
  };
}
