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
 *
 * Ringing, moderation and media state (docs/protocol.md §9, §10, §5 rule 11) follow
 * the "How this server does it" parts of docs/protocol.md: participants carry `media` (from the join's `media`, by default audio
 * on and video for a video room), `webrtc:media-state` tells the others `participant-updated`,
 * and `room-joined` carries `locked`. A room's group is the `metadata.groupId` of the join that
 * created it; `groups` holds each group's members and roles (`{alice: 'owner', bob: 'member'}`;
 * a join of a group listed there by a non-member is `forbidden`), `staff` the staff users.
 * Moderators (staff, a group's owners and admins, the creator of a room without a group) may
 * `kick` (with `banSecs`: joins of that user answer `forbidden` with `details.bannedUntil`),
 * `end-call` and `lock-room` (joins by others answer `room-locked`). `webrtc:ring` rings the
 * group's members (every open connection of theirs gets `incoming-call`, and so does one they
 * open while rung); a ring ends by `ring-reply`, a join of the room, `ring-cancel`, the end of
 * the call, or {@link FakeServer#expireRings} (`missed`): `ring-ended` to the callee's
 * connections and `ring-updated` to the room.
 */
export class FakeServer {
  rooms = new Map(); // roomId → [{participant, ws}]
  relayed = []; // every relayed frame: {event, from, to, data}
  iceServers = [{ urls: 'stun:stun.example.org' }];
  forbidden = new Map(); // roomId → user ids that may not join
  joinRefusal = null; // {error, message}: the signaling-error every join gets
  metadata = {}; // more metadata of room-joined, under the room's own (a JSON.parse result may hold any key)
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
  groups = new Map(); // groupId (string) → {user: role}: the members of each group the server knows
  staff = new Set(); // users who are staff: moderators everywhere
  bans = new Map(); // `${roomId}` → Map(user → the ban's end, in ms)
  rings = new Map(); // ringId → {ringId, callRoomId, ringer, from, groupId, callType, expiresAt, callees: Map(user → status)}
  ringTimeoutSecs = 30;
  #roomInfo = new Map(); // roomId → {groupId, createdBy, callType, locked}, while the room has a session
  #ringsIssued = 0;
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
    // A connection opened while its user is rung hears of the call at once.
    for (const ring of this.rings.values()) {
      if (ring.callees.get(user) === 'ringing') this.#send(ws, { event: 'webrtc:incoming-call', data: this.#incomingCall(ring) });
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

  #participant(ws, media = { audio: true, video: true, screen: false }) {
    return { socketId: ws.socketId, userId: ws.user, username: ws.user, displayName: ws.user.toUpperCase(), media };
  }

  /** The live state of `roomId` (its group, creator, lock), or `undefined` without a session. */
  roomInfo(roomId) {
    return this.#roomInfo.get(roomId);
  }

  /** Every ring still ringing ends as `missed`, as CALLS_RING_TIMEOUT_SECS would end it. */
  expireRings() {
    for (const ring of this.rings.values()) {
      for (const [user, status] of ring.callees) if (status === 'ringing') this.#endRing(ring, user, 'missed');
    }
  }

  #isModerator(user, roomId) {
    const info = this.#roomInfo.get(roomId);
    if (this.staff.has(user)) return true;
    if (!info) return false;
    if (info.groupId) return ['owner', 'admin'].includes(this.groups.get(info.groupId)?.[user]);
    return info.createdBy === user;
  }

  #incomingCall(ring) {
    const { ringId, callRoomId, groupId, callType, from, expiresAt } = ring;
    return { ringId, callRoomId, groupId, callType, from, expiresAt };
  }

  /** The ring of `user` ends with `reason`: its connections get ring-ended, the room ring-updated. */
  #endRing(ring, user, reason) {
    if (ring.callees.get(user) !== 'ringing') return;
    ring.callees.set(user, reason);
    const { ringId, callRoomId } = ring;
    for (const open of this.#open) {
      if (open.user === user) this.#send(open, { event: 'webrtc:ring-ended', data: { ringId, callRoomId, reason } });
    }
    for (const entry of this.rooms.get(callRoomId) ?? []) {
      this.#send(entry.ws, { event: 'webrtc:ring-updated', data: { ringId, callRoomId, userId: user, status: reason } });
    }
  }

  /** Ringing, moderation and media state; `true` when `event` was one of theirs. */
  #handleCallControl(ws, { event, data, id }, reply, ack) {
    const refuse = (error, message) => {
      reply('webrtc:signaling-error', { error, message, event });
      return true;
    };
    if (event === 'webrtc:ring-reply' || event === 'webrtc:ring-cancel') {
      const ring = this.rings.get(data.ringId);
      if (event === 'webrtc:ring-reply') {
        if (ring?.callees.get(ws.user) !== 'ringing') return refuse('ring-not-found', 'That ring has ended.');
        ack();
        this.#endRing(ring, ws.user, data.response === 'accept' ? 'accepted' : 'declined');
        return true;
      }
      const ringing = ring ? [...ring.callees].filter(([, status]) => status === 'ringing').map(([user]) => user) : [];
      if (!ring || ring.ringer !== ws.user || ringing.length === 0) return refuse('ring-not-found', 'That ring has ended.');
      ack();
      for (const user of ringing) this.#endRing(ring, user, 'cancelled');
      return true;
    }
    const known = ['webrtc:media-state', 'webrtc:ring', 'webrtc:kick', 'webrtc:end-call', 'webrtc:lock-room'];
    if (!known.includes(event)) return false;
    const { callRoomId } = data;
    const room = this.rooms.get(callRoomId) ?? [];
    const me = room.find((entry) => entry.ws === ws);
    if (!me) return refuse('not-in-room', 'You are not in that call.');
    const info = this.#roomInfo.get(callRoomId);
    if (event === 'webrtc:media-state') {
      const media = { audio: data.audio, video: data.video, screen: data.screen ?? false };
      me.participant = { ...me.participant, media };
      ack();
      for (const other of room) {
        if (other !== me) this.#send(other.ws, { event: 'webrtc:participant-updated', data: { callRoomId, participant: me.participant } });
      }
      return true;
    }
    if (event === 'webrtc:ring') {
      const members = this.groups.get(info.groupId);
      if (!info.groupId || !members) return refuse('forbidden', 'Only a group call can ring.');
      if (data.userIds?.some((user) => !Object.hasOwn(members, user))) return refuse('forbidden', 'Not a member.');
      const inRoom = new Set(room.map((entry) => entry.participant.userId));
      const alreadyRung = new Set(
        [...this.rings.values()]
          .filter((other) => other.callRoomId === callRoomId)
          .flatMap((other) => [...other.callees].filter(([, status]) => status === 'ringing').map(([user]) => user)),
      );
      const userIds = (data.userIds ?? Object.keys(members)).filter(
        (user) => user !== ws.user && !inRoom.has(user) && !alreadyRung.has(user),
      );
      this.#ringsIssued += 1;
      const ring = {
        ringId: `ring-${this.#ringsIssued}`,
        callRoomId,
        ringer: ws.user,
        from: me.participant,
        groupId: info.groupId,
        callType: info.callType,
        expiresAt: new Date(Date.now() + this.ringTimeoutSecs * 1000).toISOString(),
        callees: new Map(userIds.map((user) => [user, 'ringing'])),
      };
      this.rings.set(ring.ringId, ring);
      reply('webrtc:ring-started', { ringId: ring.ringId, callRoomId, userIds, expiresAt: ring.expiresAt });
      for (const open of this.#open) {
        if (ring.callees.has(open.user)) this.#send(open, { event: 'webrtc:incoming-call', data: this.#incomingCall(ring) });
      }
      return true;
    }
    if (!this.#isModerator(ws.user, callRoomId)) return refuse('forbidden', 'Only a moderator may do that.');
    const by = me.participant;
    if (event === 'webrtc:lock-room') {
      info.locked = data.locked;
      ack();
      for (const entry of room) this.#send(entry.ws, { event: 'webrtc:room-updated', data: { callRoomId, locked: info.locked, by } });
    } else if (event === 'webrtc:kick') {
      const target = room.find((entry) => entry.participant.socketId === data.targetSocketId);
      if (!target) return refuse('participant-not-found', 'Nobody of that id is in the call.');
      if (target === me) return refuse('forbidden', 'You cannot remove yourself.');
      if (this.#isModerator(target.ws.user, callRoomId) && !this.staff.has(ws.user)) {
        return refuse('forbidden', 'Only staff may remove a moderator.');
      }
      const kicked = { callRoomId, by };
      if (data.banSecs > 0) {
        const until = Date.now() + data.banSecs * 1000;
        if (!this.bans.has(callRoomId)) this.bans.set(callRoomId, new Map());
        this.bans.get(callRoomId).set(target.ws.user, until);
        kicked.bannedUntil = new Date(until).toISOString();
      }
      ack();
      this.rooms.set(callRoomId, room.filter((entry) => entry !== target));
      this.#send(target.ws, { event: 'webrtc:kicked', data: kicked });
      for (const other of room) {
        if (other === target) continue;
        this.#send(other.ws, { event: 'webrtc:participant-left', data: { callRoomId, participant: target.participant, reason: 'kicked' } });
      }
    } else if (event === 'webrtc:end-call') {
      ack();
      for (const entry of room) this.#send(entry.ws, { event: 'webrtc:call-ended', data: { callRoomId, by } });
      this.rooms.delete(callRoomId);
      this.#roomInfo.delete(callRoomId);
      for (const ring of this.rings.values()) {
        if (ring.callRoomId !== callRoomId) continue;
        for (const [user, status] of ring.callees) if (status === 'ringing') this.#endRing(ring, user, 'call-ended');
      }
    }
    return true;
  }

  #handle(ws, { event, data, id }) {
    if (ws.readyState !== 1) return;
    const reply = (replyEvent, replyData) => this.#send(ws, { event: replyEvent, data: replyData, id });
    const ack = () => id !== undefined && reply('webrtc:ack', { event });
    if (this.#handleCallControl(ws, { event, data, id }, reply, ack)) return;
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
      const groupId = data.metadata?.groupId === undefined ? null : String(data.metadata.groupId);
      const members = groupId === null ? undefined : this.groups.get(groupId);
      if (this.forbidden.get(data.callRoomId)?.includes(ws.user) || (members && !Object.hasOwn(members, ws.user))) {
        reply('webrtc:signaling-error', { error: 'forbidden', message: 'Not a member.', event });
        return;
      }
      const bannedUntil = this.bans.get(data.callRoomId)?.get(ws.user);
      if (bannedUntil > Date.now()) {
        const details = { bannedUntil: new Date(bannedUntil).toISOString() };
        reply('webrtc:signaling-error', { error: 'forbidden', message: 'You were removed from this call.', details, event });
        return;
      }
      if (!this.#roomInfo.has(data.callRoomId)) {
        const callType = data.callType ?? 'video';
        // The room's metadata (docs/protocol.md §4): the creator's, under the server's own keys.
        const metadata = { ...data.metadata, callType, createdAt: new Date().toISOString(), createdBy: ws.user };
        if (groupId !== null) metadata.groupId = groupId;
        this.#roomInfo.set(data.callRoomId, { groupId, createdBy: ws.user, callType, locked: false, metadata });
      }
      const info = this.#roomInfo.get(data.callRoomId);
      const mine = room.find((entry) => entry.ws === ws);
      if (info.locked && !mine && !this.#isModerator(ws.user, data.callRoomId)) {
        reply('webrtc:signaling-error', { error: 'room-locked', message: 'This call is locked.', event });
        return;
      }
      const given = data.media ?? {};
      const me = this.#participant(ws, {
        audio: given.audio ?? true,
        video: given.video ?? info.callType === 'video',
        screen: given.screen ?? false,
      });
      const others = room.filter((entry) => entry.ws !== ws);
      if (mine) {
        // The room one is in: room-joined again, announced to nobody (docs/protocol.md §5 rule 2).
        reply('webrtc:room-joined', {
          callRoomId: data.callRoomId,
          participantCount: room.length,
          existingParticipants: others.map((other) => other.participant),
          participant: mine.participant,
          metadata: { ...this.metadata, ...info.metadata },
          iceServers: this.iceServers,
          locked: info.locked,
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
        metadata: { ...this.metadata, ...info.metadata },
        iceServers: this.iceServers,
        locked: info.locked,
      });
      this.rooms.set(data.callRoomId, [...room, { participant: me, ws }]);
      for (const ring of this.rings.values()) {
        if (ring.callRoomId === data.callRoomId) this.#endRing(ring, ws.user, 'accepted');
      }
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
      if (remaining.length === 0) this.#roomInfo.delete(roomId); // the session ends, and its lock with it
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
