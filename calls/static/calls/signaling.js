/**
 * Browser client of the call signaling server (docs/protocol.md, version 1.1): no
 * dependencies, one ES module.
 *
 * - {@link SignalingClient} speaks the native websocket endpoint `/ws/calls/` with the
 *   same `emit(event, data)` / `on(event, handler)` shape as a Socket.IO client, adds
 *   `request()` for the events that get a reply, connects with single-use tickets,
 *   keeps its authentication fresh, and reconnects by itself.
 * - {@link CallMesh} runs a full-mesh call over it: one RTCPeerConnection per remote
 *   participant, negotiated with the "perfect negotiation" pattern.
 *
 * Server data is never merged into the client's own objects: frames are parsed without
 * their `__proto__` keys, and whatever the client builds from them copies named fields only.
 *
 * @module signaling
 */

/** Close code of an unauthenticated connection (docs/protocol.md §8). */
export const CLOSE_UNAUTHENTICATED = 4401;
/** Close code of a connection beyond the user's limit (docs/protocol.md §8): never retried. */
export const CLOSE_TOO_MANY_CONNECTIONS = 4409;
/** Where the server tells whether it accepts this page's origin (`{"allowed": bool}`). */
export const ORIGIN_CHECK_PATH = '/api/calls/origin-check/';
/** Where a credential is traded for a single-use websocket ticket (`{"ticket", "expiresIn"}`). */
export const TICKET_PATH = '/api/auth/ws-ticket/';

const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 15000, factor: 2 };
const DEFAULT_REQUEST_TIMEOUT_MS = 10000;
const ORIGIN_CHECK_TIMEOUT_MS = 5000;
const TICKET_TIMEOUT_MS = 10000;
/** Refresh the authentication this long before it expires (half its lifetime when shorter). */
const REFRESH_MARGIN_MS = 60000;
/** Never schedule a refresh sooner than this: a token about to expire cannot spin a loop. */
const MIN_REFRESH_DELAY_MS = 5000;
/** After a refresh whose token has no readable `exp`: refresh again this soon, at the latest. */
const UNKNOWN_EXPIRY_REFRESH_MS = 60000;
/** setTimeout's largest delay; a longer one would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const WS_OPEN = 1;
/** The code that what waits is rejected with when a close stops the client. */
const STOP_CODES = new Map([
  [CLOSE_UNAUTHENTICATED, 'unauthenticated'],
  [CLOSE_TOO_MANY_CONNECTIONS, 'too-many-connections'],
]);
const TOO_MANY_CONNECTIONS_TEXT =
  'This user has too many open connections to the signaling server: close one (another tab or device) and connect again.';
// Relay errors that only mean "that peer is gone" or "we are rejoining": not worth a word.
const RELAY_EVENTS = new Set(['webrtc:offer', 'webrtc:answer', 'webrtc:ice-candidate']);
const QUIET_RELAY_ERRORS = new Set(['participant-not-found', 'not-in-room', 'room-not-found']);
// The events a CallMesh takes whatever their callRoomId: errors, and this user's rings.
const UNSCOPED_EVENTS = new Set(['webrtc:signaling-error', 'webrtc:incoming-call', 'webrtc:ring-ended']);
/** Prefix of the `resumeStorage` key; the endpoint URL (without its query) follows. */
const RESUME_KEY_PREFIX = 'calls.signaling.resume:';

/**
 * A request the server refused (`code` is the protocol's error code), one that got no reply
 * (`code` is `"timeout"`, `"disconnected"`, `"closed"`, `"unauthenticated"`, `"origin-refused"`
 * or `"too-many-connections"`), or a failure of the client's own work (`"ticket-failed"`,
 * `"refresh-failed"`).
 */
export class SignalingError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{event?: string, details?: object, cause?: unknown}} [extra]
   */
  constructor(code, message, { event, details, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'SignalingError';
    this.code = code;
    this.event = event;
    this.details = details;
  }
}

/** Local event handlers: `on`, `off`, `once`. Handler errors are logged, never thrown into the caller. */
class Listeners {
  #handlers = new Map();

  /**
   * Call `handler(data, frame)` for every `event`.
   * @param {string} event
   * @param {(data: any, frame?: object) => void} handler
   * @returns {this}
   */
  on(event, handler) {
    if (!this.#handlers.has(event)) this.#handlers.set(event, new Set());
    this.#handlers.get(event).add(handler);
    return this;
  }

  /**
   * Remove one handler, or every handler of `event` when none is given.
   * @param {string} event
   * @param {Function} [handler]
   * @returns {this}
   */
  off(event, handler) {
    if (handler) this.#handlers.get(event)?.delete(handler);
    else this.#handlers.delete(event);
    return this;
  }

  /**
   * Call `handler` for the next `event` only.
   * @param {string} event
   * @param {(data: any, frame?: object) => void} handler
   * @returns {this}
   */
  once(event, handler) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      handler(...args);
    };
    return this.on(event, wrapper);
  }

  /** @protected */
  dispatch(event, ...args) {
    for (const handler of [...(this.#handlers.get(event) ?? [])]) {
      try {
        handler(...args);
      } catch (error) {
        console.error(`handler of ${event} failed`, error);
      }
    }
  }
}

/**
 * A connection to the native endpoint, one JSON frame per message.
 *
 * Server events reach `on(event, …)` handlers as `(data, frame)`. The client adds its own:
 * - `connect` `{socketId, userId, resumed}` after each `webrtc:connected` (`resumed`: the server
 *   gave back the socketId of the resume token presented, docs/protocol.md §6);
 * - `disconnect` `{code, reason, willReconnect}` when the socket closes, or when the client
 *   stops before it had one (a refused ticket is told as a close 4401, a refused origin as 1006);
 * - `reconnecting` `{attempt, delayMs}` before each new attempt: after every close that the
 *   client did not ask for and that it does not stop at (1006, the server's 1001, …), and after a
 *   failed ticket request; the first one comes after the backoff's first delay;
 * - `error` `(Error)`: the token function's own error when it throws; a {@link SignalingError}
 *   of code `"ticket-failed"` (retried), `"refresh-failed"`, `"origin-refused"` or
 *   `"too-many-connections"` (both final).
 *
 * **Credentials.** Before every connection and reconnection the client trades its credential
 * for a single-use ticket at `ticketUrl` (`POST`, `Authorization: Bearer <token>`, or the
 * session cookie with the `csrftoken` cookie's value in `X-CSRFToken` when there is no
 * token) and connects with `?ticket=`: the access token never appears in a URL. A ticket
 * request that fails (the network, a 5xx) is retried with the backoff; one answered 401 or
 * 403 stops the client as a close 4401 does. `tickets: false` sends `?token=` instead
 * (non-browser clients without the ticket endpoint).
 *
 * **Refresh.** When `webrtc:connected` says when the authentication expires
 * (`authExpiresAt`) and `token` is a function, the client calls it shortly before that
 * (60 s before, or halfway for a shorter lifetime, never sooner than 5 s from then) and
 * sends the fresh token as `webrtc:refresh-auth`; the next refresh is timed from that token's
 * JWT `exp` (or comes within 60 s when it has none). A failed refresh is an `error`, retried
 * halfway to the expiry while there is time; if none succeeds the server closes with 4401.
 *
 * **Reconnects.** Frames emitted while not connected are queued and sent, in order, right
 * after the next `webrtc:connected`. After a close the client reconnects with exponential
 * backoff and jitter, except:
 * - 4401 right at connect (before `webrtc:connected`): it stops (`"unauthenticated"`);
 * - 4401 on a connection that was up (its authentication expired): it reconnects once with a
 *   fresh credential when it can get one (a token function, or the session); it stops if that
 *   connection too ends with 4401 before one of its refreshes succeeded, and at once with a
 *   fixed token string;
 * - 4409 (too many connections for this user): it stops (`"too-many-connections"`);
 * - `close()`.
 *
 * **Resume** (docs/protocol.md §6). Every reconnection presents the last `resumeToken` as
 * `?resume=`: within the server's grace it gives the connection back its socketId, its room and
 * what was sent to it meanwhile (`connect` says `resumed: true`); otherwise the server answers
 * with a fresh socketId and a `signaling-error` `resume-failed`, and the connection starts over
 * (CallMesh rejoins). The token and its socketId are also kept in `resumeStorage` (in a browser
 * the tab's `sessionStorage`, under a key of the endpoint URL), so that the next page of the tab
 * resumes too when this one's connection was lost without a close frame: reloaded while the
 * network was down, or after a crash. (A page reloaded or left while its socket is up is closed
 * by the browser with 1001, a close frame: the server lets its place go at once, and the next
 * page's token is refused.) They are rewritten at every `webrtc:connected` and removed by
 * `close()`, by a stop, and by a `resume-failed` that brought no new token. sessionStorage
 * belongs to the tab and the origin, and a token is worth nothing without a credential of the
 * same user.
 *
 * A browser shows a handshake the server refused (HTTP 403 for a foreign `Origin`) only as
 * a close 1006 before the socket opened, as it shows a network failure; a cross-origin ticket
 * request that CORS refuses looks like the network too. So after either the client asks the
 * server's origin check ({@link ORIGIN_CHECK_PATH}) before it decides: if the origin is
 * refused, it stops (`error`, then `disconnect` with `willReconnect: false`, and whatever
 * waits is rejected with `"origin-refused"`); if it is allowed, or the check cannot be had
 * (the network), it retries as usual.
 */
export class SignalingClient extends Listeners {
  /** Server-assigned id of the connection (from `webrtc:connected`); that of the last one while reconnecting. */
  socketId = null;
  /** The signed-in user's id as a string (from `webrtc:connected`). */
  userId = null;
  /** Whether `webrtc:connected` arrived on the current socket. */
  connected = false;
  /**
   * When the connection's authentication expires, as far as the client knows (a `Date`: from
   * `webrtc:connected`, then from each refreshed token's `exp`), or `null`.
   * @type {Date | null}
   */
  authExpiresAt = null;

  #url;
  #token;
  #tickets;
  #ticketUrl;
  #reconnect;
  #backoff;
  #requestTimeoutMs;
  #WebSocket;
  #fetch;
  #originCheckUrl;
  #ws = null;
  #opening = false;
  #checkingOrigin = false;
  #queue = [];
  #pending = new Map();
  #nextRequestId = 1;
  #attempt = 0;
  #retryTimer = null;
  #refreshTimer = null;
  #refreshDelayMs = UNKNOWN_EXPIRY_REFRESH_MS;
  #reauthenticating = false;
  #stopped = false;
  #stopCode = 'closed';
  #resumeToken = null;
  /** The socketId that `#resumeToken` gives back. */
  #resumeSocketId = null;
  /** The token presented by the socket being opened or open (dropped if the server refuses it). */
  #presentedResumeToken = null;
  #resumeStorage;
  #resumeKey;

  /**
   * @param {object} [options]
   * @param {string | (() => string | Promise<string>)} [options.token] an access token, or a function
   *   that returns a fresh one (it is called for every connection and for every refresh, so it can
   *   refresh an expired token); without it the ticket is asked for with the session cookie
   * @param {string} [options.url] the websocket URL of `/ws/calls/`; by default on this page's host
   * @param {boolean} [options.tickets=true] connect with a single-use ticket (`?ticket=`); `false`:
   *   with the token itself (`?token=`), for clients that cannot reach the ticket endpoint
   * @param {string} [options.ticketUrl] where tickets come from; by default {@link TICKET_PATH} on the
   *   host of `url` (https for wss, http for ws)
   * @param {boolean} [options.reconnect=true] reconnect after a lost connection
   * @param {{initialMs?: number, maxMs?: number, factor?: number}} [options.backoff] delays of the
   *   reconnect attempts: `initialMs * factor ** attempt`, capped at `maxMs`, each with jitter
   * @param {number} [options.requestTimeoutMs=10000] how long `request()` waits for its reply
   * @param {boolean} [options.autoConnect=true] connect at once (else call `connect()`)
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation, outside browsers
   * @param {string | null} [options.originCheckUrl] the server's origin check, asked after a socket
   *   closed before it opened; by default {@link ORIGIN_CHECK_PATH} on the host of `url`; `null`: never ask
   * @param {typeof fetch} [options.fetch] a fetch implementation for the tickets and the origin check
   * @param {Pick<Storage, 'getItem' | 'setItem' | 'removeItem'> | null} [options.resumeStorage] where the
   *   resume token lives between page loads; by default `sessionStorage` where there is one; `null`: in memory only
   */
  constructor({
    token,
    url,
    tickets = true,
    ticketUrl,
    reconnect = true,
    backoff = {},
    requestTimeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
    autoConnect = true,
    WebSocket: WebSocketImpl = globalThis.WebSocket,
    originCheckUrl,
    fetch: fetchImpl = globalThis.fetch?.bind(globalThis),
    resumeStorage = defaultResumeStorage(),
  } = {}) {
    super();
    this.#url = url ?? defaultUrl();
    this.#token = token;
    this.#tickets = tickets;
    this.#ticketUrl = ticketUrl ?? httpUrlOf(TICKET_PATH, this.#url);
    this.#reconnect = reconnect;
    this.#backoff = { ...DEFAULT_BACKOFF, ...backoff };
    this.#requestTimeoutMs = requestTimeoutMs;
    this.#WebSocket = WebSocketImpl;
    this.#fetch = fetchImpl;
    this.#originCheckUrl = originCheckUrl === undefined ? httpUrlOf(ORIGIN_CHECK_PATH, this.#url) : originCheckUrl;
    if (tickets && typeof fetchImpl !== 'function') {
      // Falling back to ?token= would put the token in the URL that tickets keep it out of.
      throw new TypeError('SignalingClient: tickets need a fetch implementation (pass `fetch`, or `tickets: false`).');
    }
    this.#resumeStorage = resumeStorage ?? null;
    this.#resumeKey = resumeKeyOf(this.#url);
    this.#loadResume();
    if (autoConnect) this.connect();
  }

  /** Open the connection (again, after `close()`); a no-op while one is open or opening. */
  connect() {
    if (this.#stopped) this.#reauthenticating = false;
    this.#stopped = false;
    if (!this.#ws && !this.#opening && !this.#checkingOrigin && this.#retryTimer === null) this.#open();
    return this;
  }

  /** Close for good: no reconnect; unanswered requests are rejected with code `"closed"`. */
  close() {
    this.#stopped = true;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#clearRefresh();
    this.#forgetResume(); // the close frame makes the server let our place go at once
    const ws = this.#ws;
    if (ws) {
      this.#ws = null;
      ws.close(1000);
      this.#socketClosed(ws, 1000, 'closed by the client');
    }
    this.#rejectPending(null, 'closed', 'The signaling client was closed.');
  }

  /**
   * Send an event to the server, like Socket.IO's `socket.emit(event, data)`. The frame has no
   * `id`, so the server sends no reply (errors still come as `webrtc:signaling-error`).
   * @param {string} event e.g. `"webrtc:offer"`
   * @param {object} [data]
   * @returns {this}
   */
  emit(event, data = {}) {
    this.#send({ event, data });
    return this;
  }

  /**
   * Send an event with an `id` and wait for the reply that carries it back:
   * `webrtc:room-joined`, `webrtc:room-left`, or `webrtc:ack` (`{event}`) for the events
   * without a reply of their own (relays, `webrtc:refresh-auth`, …).
   * @param {string} event
   * @param {object} [data]
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<object>} the reply's `data`; rejected with a {@link SignalingError}
   *   when the server answers `webrtc:signaling-error`, or when no reply comes
   */
  request(event, data = {}, { timeoutMs = this.#requestTimeoutMs } = {}) {
    if (this.#stopped) return Promise.reject(new SignalingError('closed', 'The signaling client is closed.', { event }));
    const id = `c-${this.#nextRequestId++}`;
    const frame = { event, data, id };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        this.#queue = this.#queue.filter((queued) => queued !== frame); // never sent late
        reject(new SignalingError('timeout', `No reply to ${event} within ${timeoutMs} ms.`, { event }));
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer, event, ws: null });
      this.#send(frame);
    });
  }

  /**
   * Answer a `webrtc:incoming-call` (docs/protocol.md §9) from this connection. The ring ends
   * for every connection of this user, this one included (`webrtc:ring-ended` with reason
   * `accepted` or `declined`). Accepting does not join: join the call's room (with its
   * `groupId`) as well; a join alone also ends the ring as `accepted`.
   * @param {string} ringId the `ringId` of the `incoming-call`
   * @param {'accept' | 'decline'} response
   * @returns {Promise<object>} the `webrtc:ack` data; rejected with a {@link SignalingError},
   *   `ring-not-found` when the ring has ended meanwhile (answered on another device, cancelled, missed)
   */
  replyToRing(ringId, response) {
    return this.request('webrtc:ring-reply', { ringId, response });
  }

  /**
   * Stop ringing everyone this user's ring `ringId` still rings (docs/protocol.md §9): their
   * rings end as `cancelled`. Only the ringer's user may.
   * @param {string} ringId the `ringId` of `webrtc:ring-started`
   * @returns {Promise<object>} the `webrtc:ack` data; rejected with a {@link SignalingError},
   *   `ring-not-found` when no callee is ringing any more or the ring is not this user's
   */
  cancelRing(ringId) {
    return this.request('webrtc:ring-cancel', { ringId });
  }

  /**
   * Resolve once connected (at once if already); reject if the client stops first.
   * @returns {Promise<{socketId: string, userId: string}>}
   */
  ready() {
    if (this.connected) return Promise.resolve({ socketId: this.socketId, userId: this.userId });
    return new Promise((resolve, reject) => {
      const onConnect = (info) => {
        this.off('disconnect', onDisconnect);
        resolve(info);
      };
      const onDisconnect = ({ reason, willReconnect }) => {
        if (willReconnect) return;
        this.off('connect', onConnect).off('disconnect', onDisconnect);
        reject(new SignalingError(this.#stopCode, reason || 'closed'));
      };
      this.once('connect', onConnect).on('disconnect', onDisconnect);
    });
  }

  async #open() {
    let token;
    let ticket = null;
    this.#opening = true;
    try {
      // (Without a token function or tickets, the socket is made synchronously.)
      token = typeof this.#token === 'function' ? await this.#token() : this.#token;
      if (this.#tickets && !this.#stopped) ticket = await this.#obtainTicket(token);
    } catch (error) {
      this.#opening = false;
      if (!this.#stopped) await this.#credentialFailed(error);
      return;
    } finally {
      this.#opening = false;
    }
    if (this.#stopped || this.#ws) return;
    const url = new URL(this.#url);
    if (this.#tickets) url.searchParams.set('ticket', ticket);
    else url.searchParams.set('token', token ?? '');
    if (this.#resumeToken) url.searchParams.set('resume', this.#resumeToken);
    this.#presentedResumeToken = this.#resumeToken;
    const ws = new this.#WebSocket(url.toString());
    this.#ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (message) => {
      if (ws === this.#ws) this.#receive(ws, message.data);
    };
    ws.onclose = (event) => {
      if (ws !== this.#ws) return;
      this.#ws = null;
      const askOrigin = !opened && !this.#stopped && this.#canCheckOrigin();
      if (askOrigin) this.#closedBeforeOpen(ws, event.code, event.reason);
      else this.#socketClosed(ws, event.code, event.reason);
    };
  }

  /**
   * Trade the credential for a ticket: `token` as a bearer token, or (without one) the session
   * cookie and its CSRF token.
   * @returns {Promise<string>} the ticket; rejected with a {@link SignalingError} of code
   *   `"ticket-refused"` (401, 403) or `"ticket-failed"` (`details.network` when fetch itself failed)
   */
  async #obtainTicket(token) {
    const fetchImpl = this.#fetch; // called detached: a browser's fetch refuses another `this`
    const headers = { Accept: 'application/json' };
    let credentials = 'omit';
    if (token) {
      headers.Authorization = `Bearer ${token}`;
    } else {
      credentials = 'same-origin';
      const csrf = cookieValue('csrftoken');
      if (csrf) headers['X-CSRFToken'] = csrf;
    }
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TICKET_TIMEOUT_MS);
    const failed = (message, details, cause) => {
      const text = `No websocket ticket from ${this.#ticketUrl}: ${message}.`;
      return new SignalingError('ticket-failed', text, { details, cause });
    };
    try {
      let response;
      try {
        response = await fetchImpl(this.#ticketUrl, {
          method: 'POST',
          headers,
          credentials,
          cache: 'no-store',
          signal: abort.signal,
        });
      } catch (error) {
        const timedOut = abort.signal.aborted;
        const message = timedOut ? `no answer within ${TICKET_TIMEOUT_MS} ms` : String(error?.message ?? error);
        throw failed(message, { network: !timedOut }, error);
      }
      const { status } = response;
      if (status === 401 || status === 403) {
        const message = `The server refused the credential for a websocket ticket (${status}).`;
        throw new SignalingError('ticket-refused', message, { details: { status } });
      }
      if (!response.ok) throw failed(`HTTP ${status}`, { status });
      let body;
      try {
        body = await response.json();
      } catch (error) {
        throw failed('the answer is not JSON', { status }, error);
      }
      if (typeof body?.ticket !== 'string' || body.ticket === '') throw failed('the answer has no ticket', { status });
      return body.ticket;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The token or the ticket could not be had: stop (refused), or retry with the backoff. */
  async #credentialFailed(error) {
    if (error instanceof SignalingError && error.code === 'ticket-refused') {
      this.#socketClosed(null, CLOSE_UNAUTHENTICATED, error.message);
      return;
    }
    if (error instanceof SignalingError && error.details?.network && this.#canCheckOrigin()) {
      // CORS refuses a foreign page's ticket request as the network fails: ask before retrying.
      this.#checkingOrigin = true;
      const allowed = await this.#originAllowed();
      this.#checkingOrigin = false;
      if (this.#stopped) return;
      if (allowed === false) {
        this.#socketClosed(null, 1006, originRefusal(), { refused: true });
        return;
      }
    }
    this.dispatch('error', error);
    if (!this.#stopped) this.#scheduleReconnect();
  }

  #canCheckOrigin() {
    return Boolean(this.#originCheckUrl) && typeof this.#fetch === 'function';
  }

  /** A socket that never opened: a refused origin, or the network? The server's origin check tells. */
  async #closedBeforeOpen(ws, code, reason) {
    this.#checkingOrigin = true;
    const allowed = await this.#originAllowed();
    this.#checkingOrigin = false;
    if (allowed !== false || this.#stopped) {
      this.#socketClosed(ws, code, reason);
      return;
    }
    this.#socketClosed(ws, code, originRefusal(), { refused: true });
  }

  /** `true` or `false` from the server's origin check; `null` when it cannot be had (so: retry). */
  async #originAllowed() {
    const fetchImpl = this.#fetch; // called detached: a browser's fetch refuses another `this`
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), ORIGIN_CHECK_TIMEOUT_MS);
    try {
      const init = { credentials: 'omit', cache: 'no-store', signal: abort.signal };
      const response = await fetchImpl(this.#originCheckUrl, init);
      if (!response.ok) return null;
      const { allowed } = await response.json();
      return typeof allowed === 'boolean' ? allowed : null;
    } catch {
      return null; // the network, or a server without the check: no telling
    } finally {
      clearTimeout(timer);
    }
  }

  #receive(ws, text) {
    let frame;
    try {
      frame = JSON.parse(text, withoutProtoKeys);
    } catch {
      return; // the server sends JSON only; anything else is not ours to guess at
    }
    if (!frame || typeof frame.event !== 'string') return;
    const { event, id } = frame;
    const data = isObject(frame.data) ? frame.data : {};
    if (event === 'webrtc:connected' || (event === 'webrtc:resumed' && !this.connected)) {
      this.#connected(ws, event, data);
    } else if (event === 'webrtc:signaling-error' && data.error === 'resume-failed') {
      this.#resumeFailed();
    }
    const pending = id === undefined ? undefined : this.#pending.get(id);
    if (pending) {
      this.#pending.delete(id);
      clearTimeout(pending.timer);
      if (event === 'webrtc:signaling-error') {
        pending.reject(new SignalingError(data.error, data.message, { event: data.event, details: data.details }));
      } else {
        pending.resolve(data);
      }
    }
    this.dispatch(event, data, frame);
  }

  #connected(ws, event, data) {
    // A resume (docs/protocol.md §6) keeps the socketId: the room and the peer connections live on.
    const previous = this.socketId ?? this.#resumeSocketId; // (the latter: a page reloaded)
    const resumed = event === 'webrtc:resumed' || (previous !== null && data.socketId === previous);
    this.socketId = data.socketId;
    this.userId = data.userId ?? this.userId;
    if (event === 'webrtc:connected') {
      // Each token resumes once: the one presented is spent, whether or not this one came with a new one.
      this.#resumeToken = typeof data.resumeToken === 'string' && data.resumeToken ? data.resumeToken : null;
      this.#resumeSocketId = this.#resumeToken ? data.socketId : null;
      this.#saveResume();
    }
    if (data.authExpiresAt !== undefined) this.authExpiresAt = dateOrNull(data.authExpiresAt);
    this.connected = true;
    this.#attempt = 0;
    this.#clearRefresh();
    if (this.authExpiresAt && typeof this.#token === 'function') {
      this.#scheduleRefresh(ws, refreshDelay(this.authExpiresAt.getTime() - Date.now()));
    }
    const queued = this.#queue;
    this.#queue = [];
    for (const frame of queued) this.#send(frame);
    this.dispatch('connect', { socketId: this.socketId, userId: this.userId, resumed });
  }

  /** Refresh the authentication of `ws` in `delayMs` (in steps, past setTimeout's limit). */
  #scheduleRefresh(ws, delayMs) {
    clearTimeout(this.#refreshTimer);
    this.#refreshDelayMs = delayMs;
    const step = Math.min(delayMs, MAX_TIMER_MS);
    this.#refreshTimer = setTimeout(() => {
      this.#refreshTimer = null;
      if (step < delayMs) this.#scheduleRefresh(ws, delayMs - step);
      else this.#refreshAuth(ws);
    }, step);
  }

  #clearRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
  }

  /** A fresh token from the token function, sent as `webrtc:refresh-auth`; then the next one is timed. */
  async #refreshAuth(ws) {
    const current = () => ws === this.#ws && this.connected && !this.#stopped;
    if (!current()) return;
    let token;
    try {
      token = await this.#token();
      if (!token) throw new Error('the token function gave no token');
    } catch (error) {
      if (!current()) return;
      this.dispatch('error', error);
      this.#retryRefresh(ws);
      return;
    }
    if (!current()) return;
    try {
      await this.request('webrtc:refresh-auth', { token });
    } catch (error) {
      if (!current()) return; // the connection went: its successor has a schedule of its own
      const refused = error instanceof SignalingError && error.code === 'forbidden';
      this.dispatch(
        'error',
        new SignalingError('refresh-failed', `The authentication could not be refreshed: ${error.message}`, {
          event: 'webrtc:refresh-auth',
          details: { code: error.code },
          cause: error,
        }),
      );
      if (!refused) this.#retryRefresh(ws); // a refused token stays refused
      return;
    }
    if (!current()) return;
    this.#reauthenticating = false;
    const expiresAt = jwtExpiresAt(token);
    this.authExpiresAt = expiresAt === null ? null : new Date(expiresAt);
    if (expiresAt !== null) this.#scheduleRefresh(ws, refreshDelay(expiresAt - Date.now()));
    else this.#scheduleRefresh(ws, Math.min(UNKNOWN_EXPIRY_REFRESH_MS, this.#refreshDelayMs));
  }

  /** Try once more, halfway to the expiry, while that is far enough; else the server's 4401 comes. */
  #retryRefresh(ws) {
    const leftMs = this.authExpiresAt ? this.authExpiresAt.getTime() - Date.now() : 0;
    if (leftMs >= 2 * MIN_REFRESH_DELAY_MS) this.#scheduleRefresh(ws, leftMs / 2);
  }

  #send(frame) {
    const ws = this.#ws;
    if (!this.connected || !ws || ws.readyState !== WS_OPEN) {
      this.#queue.push(frame);
      return;
    }
    if (frame.id !== undefined && this.#pending.has(frame.id)) this.#pending.get(frame.id).ws = ws;
    ws.send(JSON.stringify(frame));
  }

  /**
   * The socket `ws` closed with `code` (`ws` is `null` when the client stops before it had a
   * socket: a refused ticket, a refused origin). Decide whether to reconnect, and tell.
   */
  #socketClosed(ws, code, reason, { refused = false } = {}) {
    const wasUp = ws !== null && this.connected;
    this.connected = false;
    this.#clearRefresh();
    // Requests sent on this socket will get no reply; queued ones wait for the next socket.
    if (ws) this.#rejectPending(ws, 'disconnected', 'The connection was lost before the reply came.');
    let willReconnect = !refused && !this.#stopped && this.#reconnect && code !== CLOSE_TOO_MANY_CONNECTIONS;
    if (willReconnect && code === CLOSE_UNAUTHENTICATED) {
      // Expired on the way (not refused at connect): one more try, with a fresh credential.
      willReconnect = wasUp && !this.#reauthenticating && this.#canRenewCredential();
      if (willReconnect) this.#reauthenticating = true;
    }
    if (!willReconnect) {
      this.#stopped = true;
      this.#forgetResume();
      this.#stopCode = refused ? 'origin-refused' : (STOP_CODES.get(code) ?? 'closed');
      if (this.#stopCode === 'too-many-connections') reason ||= TOO_MANY_CONNECTIONS_TEXT;
      this.#rejectPending(null, this.#stopCode, reason || `The connection was closed (${code}).`);
      if (this.#stopCode === 'origin-refused' || this.#stopCode === 'too-many-connections') {
        this.dispatch('error', new SignalingError(this.#stopCode, reason));
      }
    }
    this.dispatch('disconnect', { code, reason, willReconnect });
    if (willReconnect) this.#scheduleReconnect();
  }

  /**
   * The server refused the token this socket presented: its `webrtc:connected` (just before)
   * has already replaced it with the fresh connection's token, if it brought one.
   */
  #resumeFailed() {
    if (this.#resumeToken !== null && this.#resumeToken === this.#presentedResumeToken) this.#forgetResume();
    this.#presentedResumeToken = null;
  }

  /** Take up the token a previous page of this tab left in `resumeStorage`, if any. */
  #loadResume() {
    let saved = null;
    try {
      saved = JSON.parse(this.#resumeStorage?.getItem(this.#resumeKey) ?? 'null', withoutProtoKeys);
    } catch {
      saved = null; // unreadable (or a storage that throws): as if there were none
    }
    if (isObject(saved) && typeof saved.resumeToken === 'string' && typeof saved.socketId === 'string') {
      this.#resumeToken = saved.resumeToken;
      this.#resumeSocketId = saved.socketId;
    }
  }

  #saveResume() {
    if (!this.#resumeToken) {
      this.#removeSavedResume();
      return;
    }
    const saved = JSON.stringify({ socketId: this.#resumeSocketId, resumeToken: this.#resumeToken });
    try {
      this.#resumeStorage?.setItem(this.#resumeKey, saved);
    } catch {
      // a full or refused storage: the resume still works within this page
    }
  }

  #forgetResume() {
    this.#resumeToken = null;
    this.#resumeSocketId = null;
    this.#removeSavedResume();
  }

  #removeSavedResume() {
    try {
      this.#resumeStorage?.removeItem(this.#resumeKey);
    } catch {
      // nothing to remove from a storage that refuses
    }
  }

  /** Whether a new connection could present a newer credential than the last one. */
  #canRenewCredential() {
    return typeof this.#token === 'function' || (this.#token == null && this.#tickets);
  }

  #scheduleReconnect() {
    const { initialMs, maxMs, factor } = this.#backoff;
    const step = Math.min(maxMs, initialMs * factor ** this.#attempt);
    // "Equal jitter": at least half the step, so that retries spread out but never stampede.
    const delayMs = Math.round(step / 2 + (Math.random() * step) / 2);
    this.#attempt += 1;
    this.dispatch('reconnecting', { attempt: this.#attempt, delayMs });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (!this.#stopped) this.#open();
    }, delayMs);
  }

  /** Reject the requests sent on `ws`, or every request when `ws` is null. */
  #rejectPending(ws, code, message) {
    for (const [id, pending] of this.#pending) {
      if (ws !== null && pending.ws !== ws) continue;
      this.#pending.delete(id);
      clearTimeout(pending.timer);
      pending.reject(new SignalingError(code, message, { event: pending.event }));
    }
    if (ws === null) this.#queue = [];
  }
}

/** This tab's `sessionStorage`, or `null` where there is none or it may not be used (a sandbox throws). */
function defaultResumeStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}

/** The `resumeStorage` key of the endpoint `wsUrl`: one token per endpoint, whatever its query. */
function resumeKeyOf(wsUrl) {
  const url = new URL(wsUrl);
  return `${RESUME_KEY_PREFIX}${url.origin}${url.pathname}`;
}

function defaultUrl() {
  const { protocol, host } = globalThis.location;
  return `${protocol === 'https:' ? 'wss' : 'ws'}://${host}/ws/calls/`;
}

/** `path` on the host of the websocket URL `wsUrl`, over https for wss and http for ws. */
function httpUrlOf(path, wsUrl) {
  const url = new URL(path, wsUrl);
  url.protocol = url.protocol === 'wss:' || url.protocol === 'https:' ? 'https:' : 'http:';
  return url.toString();
}

function originRefusal() {
  const origin = globalThis.location?.origin;
  return (
    `The signaling server refuses websockets from this page's origin${origin ? ` (${origin})` : ''}: ` +
    'it must be allowed there (ALLOWED_HOSTS or CSRF_TRUSTED_ORIGINS).'
  );
}

/** The value of the cookie `name` of this page, or `null` (and always `null` outside a page). */
function cookieValue(name) {
  const cookies = globalThis.document?.cookie;
  if (typeof cookies !== 'string') return null;
  for (const pair of cookies.split(';')) {
    const at = pair.indexOf('=');
    if (at !== -1 && pair.slice(0, at).trim() === name) {
      try {
        return decodeURIComponent(pair.slice(at + 1).trim());
      } catch {
        return pair.slice(at + 1).trim();
      }
    }
  }
  return null;
}

/**
 * When to refresh an authentication that expires in `leftMs`: 60 s before, or halfway for a
 * shorter lifetime, but never sooner than 5 s from now.
 */
function refreshDelay(leftMs) {
  return Math.max(MIN_REFRESH_DELAY_MS, leftMs - Math.min(REFRESH_MARGIN_MS, leftMs / 2));
}

/** The JWT `exp` claim of `token` in milliseconds, or `null` when it has no readable one. */
export function jwtExpiresAt(token) {
  try {
    const part = String(token).split('.')[1];
    if (!part) return null;
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const payload = JSON.parse(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, '=')), withoutProtoKeys);
    const { exp } = payload ?? {};
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : null;
  } catch {
    return null;
  }
}

/** An ISO 8601 time as a `Date`, or `null` when absent or unreadable. */
function dateOrNull(value) {
  if (typeof value !== 'string') return null;
  const time = Date.parse(value);
  return Number.isNaN(time) ? null : new Date(time);
}

function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * JSON.parse reviver: drop `__proto__` keys. JSON.parse makes them plain own properties, but
 * one copied on with `Object.assign` or `obj[key] = value` would set the target's prototype;
 * dropped here, no copy the application makes later can.
 */
function withoutProtoKeys(key, value) {
  return key === '__proto__' ? undefined : value;
}

/**
 * A full-mesh call in one room: one RTCPeerConnection per remote participant.
 *
 * Who offers: the newcomer. On `webrtc:room-joined` it opens a connection to every existing
 * participant and offers; the existing participants only answer (they open their connection
 * when the offer arrives). Every later negotiation (an added track, an ICE restart) may come
 * from either side, and glare is settled by *perfect negotiation*: of two peers, the one with
 * the greater socketId is polite (it rolls its own offer back and answers), the other
 * impolite (it ignores the colliding offer).
 *
 * Across a dropped signaling connection (docs/protocol.md §6):
 * - a resume (same socketId) keeps the room and every RTCPeerConnection as they are: media
 *   never went through the server. Only a connection whose `connectionState` is `failed` at
 *   that moment, with no negotiation under way, restarts ICE (its restart while we were away
 *   may have been lost with the socket); the others are left alone;
 * - a reconnect with a new socketId means the room saw us leave: the mesh closes everything and
 *   joins again as a newcomer;
 * - a new page that resumed its tab's last socketId (see {@link SignalingClient}) has no peer
 *   connections: its join answers `room-joined` again (announced to nobody) and it offers to
 *   everyone, as a newcomer does. The others recognise such an offer by its DTLS fingerprint (`a=fingerprint`),
 *   which differs from that of the connection they have with that socketId: the other end of it
 *   is gone, so they close it and answer with a new one (the same goes for an answer).
 *
 * Events for the UI (`mesh.on(name, handler)`):
 * - `joined` (room-joined data); `left` ();
 * - `participant` `{participant}`: a remote participant to show (existing ones at join, then newcomers);
 * - `track` `{participant, track, stream}`: remote media arrived;
 * - `connection-state` `{participant, state}`: the RTCPeerConnection's `connectionState` changed;
 * - `participant-left` `{participant, reason}`: gone (its connection is closed);
 * - `participant-updated` `{participant}`: a remote participant's `media` (or other fields)
 *   changed; {@link CallMesh#participants} holds the new object already;
 * - `room-updated` `{callRoomId, locked, by}`: a moderator locked or unlocked the room
 *   ({@link CallMesh#locked} is up to date); `by` is the moderator, as a participant;
 * - `kicked` `{callRoomId, by, bannedUntil}`: a moderator removed us (`bannedUntil`: a `Date`
 *   until which our user may not join again, or `null`); `call-ended` `{callRoomId, by}`: a
 *   moderator ended the call for everyone. After either the mesh has stopped: every peer
 *   connection is closed, it will not rejoin, and no `left` follows;
 * - `ring-updated` `{ringId, callRoomId, userId, status}`: one callee's ring of this room ended
 *   (`accepted`, `declined`, `missed`, `cancelled`, `call-ended`);
 * - `incoming-call` `{ringId, callRoomId, groupId, callType, from, expiresAt}` and `ring-ended`
 *   `{ringId, callRoomId, reason}`: this user is rung for a call (of another room), and that
 *   ring is over. They are the client's `webrtc:` events, passed on while the mesh is active for
 *   a UI that listens to the mesh only; a page that must ring outside calls listens to the client;
 * - `error` `{error, participant?}`.
 *
 * Moderation (docs/protocol.md §10: staff, a group's owners and admins, the creator of a room
 * without a group) goes through {@link CallMesh#kick}, {@link CallMesh#endCall} and
 * {@link CallMesh#lock}; anyone else is refused with `forbidden`.
 */
export class CallMesh extends Listeners {
  /** Remote participants by socketId, as the server describes them. */
  participants = new Map();
  /** Per remote socketId: `{pc, polite, makingOffer, ignoreOffer, settingRemoteAnswer}`. */
  peers = new Map();
  /** The `webrtc:room-joined` data of the current join, or `null`. */
  joined = null;
  /**
   * Our own media state as the room sees it (`{audio, video, screen}`): the `media` option, then
   * what `room-joined` says, then each {@link CallMesh#setMedia}; `null` until one of them.
   * @type {{audio: boolean, video: boolean, screen: boolean} | null}
   */
  media = null;
  /** Whether the room is locked (`room-joined`, then `room-updated`): only moderators may join it. */
  locked = false;

  #client;
  #roomId;
  #localStream;
  #callType;
  #metadata;
  #rtcConfig;
  #RTCPeerConnection;
  #iceServers = [];
  #active = false;
  #subscriptions = [];

  /**
   * @param {SignalingClient} client
   * @param {object} options
   * @param {string} options.roomId the `callRoomId`
   * @param {MediaStream | null} [options.localStream] what to send; without it the mesh only receives
   * @param {'audio' | 'video'} [options.callType='video']
   * @param {object} [options.metadata] the room's metadata if this join creates it (e.g. `{groupId}`)
   * @param {{audio?: boolean, video?: boolean, screen?: boolean}} [options.media] our media state
   *   at the join (docs/protocol.md §3); by default the server's: audio on, video on for a video
   *   call, no screen
   * @param {RTCConfiguration} [options.rtcConfig] extra RTCPeerConnection settings; `iceServers`
   *   always comes from `room-joined`
   * @param {typeof RTCPeerConnection} [options.RTCPeerConnection] an implementation, outside browsers
   */
  constructor(
    client,
    {
      roomId,
      localStream = null,
      callType = 'video',
      metadata,
      media,
      rtcConfig = {},
      RTCPeerConnection: PeerConnection = globalThis.RTCPeerConnection,
    },
  ) {
    super();
    this.#client = client;
    this.#roomId = roomId;
    this.#localStream = localStream;
    this.#callType = callType;
    this.#metadata = metadata;
    if (media) this.media = mediaState(media, defaultMedia(callType));
    this.#rtcConfig = rtcConfig;
    this.#RTCPeerConnection = PeerConnection;
  }

  /** The room's id. */
  get roomId() {
    return this.#roomId;
  }

  /**
   * Join the room and offer to everyone already in it.
   * @returns {Promise<object>} the `webrtc:room-joined` data; rejected with the
   *   {@link SignalingError} of a refusal (`forbidden`, `room-full`, …)
   */
  async join() {
    if (!this.#active) this.#subscribe();
    this.#active = true;
    let joined;
    try {
      const data = { callRoomId: this.#roomId, callType: this.#callType };
      if (this.#metadata) data.metadata = this.#metadata;
      // (A rejoin after a reconnect carries what setMedia set meanwhile.)
      if (this.media) data.media = { ...this.media };
      joined = await this.#client.request('webrtc:join-room', data);
    } catch (error) {
      this.#stop();
      throw error;
    }
    this.joined = joined;
    this.#iceServers = joined.iceServers ?? [];
    this.locked = joined.locked === true;
    if (isObject(joined.participant?.media)) {
      this.media = mediaState(joined.participant.media, this.media ?? defaultMedia(this.#callType));
    }
    this.dispatch('joined', joined);
    for (const participant of joined.existingParticipants) {
      if (participant.socketId === this.#client.socketId) continue; // (never listed; never our own peer)
      this.#remember(participant);
      this.#peer(participant.socketId, { initiator: true });
    }
    return joined;
  }

  /** Leave the room and close every peer connection. The local stream is the caller's to stop. */
  async leave() {
    const wasActive = this.#active;
    this.#stop();
    if (wasActive && this.#client.connected) {
      try {
        await this.#client.request('webrtc:leave-room', { callRoomId: this.#roomId });
      } catch {
        // not in the room any more (or disconnected): the server has already let us go
      }
    }
    this.dispatch('left');
  }

  /**
   * Set our media state (docs/protocol.md §5 rule 11): what is not given keeps its value. The
   * others get `participant-updated`; a rejoin carries the new state. The tracks themselves are
   * the caller's to mute or stop.
   * @param {{audio?: boolean, video?: boolean, screen?: boolean}} media
   * @returns {Promise<object | null>} the `webrtc:ack` data; `null` when the mesh is not in the
   *   room (the next join carries the state); rejected with a {@link SignalingError}
   */
  async setMedia(media) {
    this.media = mediaState(media, this.media ?? defaultMedia(this.#callType));
    if (!this.#active) return null;
    return this.#client.request('webrtc:media-state', { callRoomId: this.#roomId, ...this.media });
  }

  /**
   * Ring the members of the room's group (docs/protocol.md §9): `userIds`, or every member
   * not in the room. Ourselves and those in the room are never rung; someone already rung for
   * this room keeps that ring. Each callee's outcome comes as `ring-updated`.
   * @param {string[]} [userIds]
   * @returns {Promise<{ringId: string, callRoomId: string, userIds: string[], expiresAt: string}>}
   *   the `webrtc:ring-started` data (`userIds`: those actually rung, maybe none); rejected with a
   *   {@link SignalingError}: `forbidden` for a room without a group or a user outside it
   */
  ring(userIds) {
    const data = { callRoomId: this.#roomId };
    if (userIds !== undefined) data.userIds = [...userIds].map(String);
    return this.#client.request('webrtc:ring', data);
  }

  /**
   * Stop ringing those a ring of ours still rings: {@link SignalingClient#cancelRing}.
   * @param {string} ringId
   * @returns {Promise<object>}
   */
  cancelRing(ringId) {
    return this.#client.cancelRing(ringId);
  }

  /**
   * Remove a participant from the room (moderators only, docs/protocol.md §10): it gets
   * `kicked`, the others `participant-left` with reason `kicked`.
   * @param {string} targetSocketId
   * @param {{banSecs?: number}} [options] `banSecs` > 0: its user may not join this room again
   *   for that long (at most 86400)
   * @returns {Promise<object>} the `webrtc:ack` data; rejected with a {@link SignalingError}
   *   (`forbidden`, `participant-not-found`, …)
   */
  kick(targetSocketId, { banSecs } = {}) {
    const data = { callRoomId: this.#roomId, targetSocketId };
    if (banSecs !== undefined) data.banSecs = banSecs;
    return this.#client.request('webrtc:kick', data);
  }

  /**
   * End the call for everyone in it, us included (moderators only, docs/protocol.md §10): each
   * gets `call-ended`, so this mesh stops too.
   * @returns {Promise<object>} the `webrtc:ack` data; rejected with a {@link SignalingError}
   */
  endCall() {
    return this.#client.request('webrtc:end-call', { callRoomId: this.#roomId });
  }

  /**
   * Lock the room (only moderators may join it then) or unlock it (moderators only,
   * docs/protocol.md §10). Everyone in it, us included, gets `room-updated`.
   * @param {boolean} locked
   * @returns {Promise<object>} the `webrtc:ack` data; rejected with a {@link SignalingError}
   */
  lock(locked) {
    return this.#client.request('webrtc:lock-room', { callRoomId: this.#roomId, locked: Boolean(locked) });
  }

  #subscribe() {
    const handlers = {
      'webrtc:participant-joined': ({ participant }) => {
        this.#remember(participant);
      },
      'webrtc:participant-left': ({ participant, reason }) => this.#forget(participant.socketId, reason),
      'webrtc:participant-updated': ({ participant }) => this.#update(participant),
      'webrtc:room-updated': ({ callRoomId, locked, by }) => {
        this.locked = locked === true;
        this.dispatch('room-updated', { callRoomId, locked: this.locked, by });
      },
      'webrtc:kicked': ({ callRoomId, by, bannedUntil }) => {
        this.#stop();
        this.dispatch('kicked', { callRoomId, by, bannedUntil: dateOrNull(bannedUntil) });
      },
      'webrtc:call-ended': ({ callRoomId, by }) => {
        this.#stop();
        this.dispatch('call-ended', { callRoomId, by });
      },
      'webrtc:ring-updated': ({ ringId, callRoomId, userId, status }) => {
        this.dispatch('ring-updated', { ringId, callRoomId, userId, status });
      },
      'webrtc:incoming-call': ({ ringId, callRoomId, groupId, callType, from, expiresAt }) => {
        this.dispatch('incoming-call', { ringId, callRoomId, groupId, callType, from, expiresAt });
      },
      'webrtc:ring-ended': ({ ringId, callRoomId, reason }) => {
        this.dispatch('ring-ended', { ringId, callRoomId, reason });
      },
      'webrtc:offer': (data) => this.#onDescription(data.fromSocketId, data.fromUserId, data.offer),
      'webrtc:answer': (data) => this.#onDescription(data.fromSocketId, data.fromUserId, data.answer),
      'webrtc:ice-candidate': (data) => this.#onCandidate(data),
      'webrtc:signaling-error': (data) => {
        if (RELAY_EVENTS.has(data.event) && !QUIET_RELAY_ERRORS.has(data.error)) {
          this.dispatch('error', { error: new SignalingError(data.error, data.message, data) });
        }
      },
    };
    for (const [event, handler] of Object.entries(handlers)) {
      // Frames of another room (after a switch) are not this mesh's business; those about
      // this user's rings are, whatever their room.
      const scoped = (data) => {
        if (UNSCOPED_EVENTS.has(event) || data?.callRoomId === this.#roomId) handler(data);
      };
      this.#client.on(event, scoped);
      this.#subscriptions.push([event, scoped]);
    }
    // A reconnect with a new socketId means the room saw us leave: start over as a newcomer.
    const onConnect = ({ resumed }) => {
      if (!this.#active || !this.joined) return; // (a join still queued is sent as it is)
      if (resumed) {
        this.#afterResume();
        return;
      }
      this.joined = null;
      for (const socketId of [...this.participants.keys()]) this.#forget(socketId, 'reconnecting');
      this.join().catch((error) => this.dispatch('error', { error }));
    };
    this.#client.on('connect', onConnect);
    this.#subscriptions.push(['connect', onConnect]);
  }

  /** Back as ourselves: every peer connection lives on; a failed one that is idle tries ICE again. */
  #afterResume() {
    for (const { pc } of this.peers.values()) {
      if (pc.connectionState === 'failed' && pc.signalingState === 'stable') pc.restartIce();
    }
  }

  #stop() {
    this.#active = false;
    for (const [event, handler] of this.#subscriptions) this.#client.off(event, handler);
    this.#subscriptions = [];
    for (const socketId of [...this.peers.keys()]) this.#closePeer(socketId);
    this.participants.clear();
    this.joined = null;
  }

  #remember(participant) {
    const known = this.participants.has(participant.socketId);
    this.participants.set(participant.socketId, participant);
    if (!known) this.dispatch('participant', { participant });
  }

  /** A remote participant's new state: it replaces the one known (told as new if it was not). */
  #update(participant) {
    if (!isObject(participant) || typeof participant.socketId !== 'string') return;
    if (participant.socketId === this.#client.socketId) return; // (never sent; never our own tile)
    this.#remember(participant);
    this.dispatch('participant-updated', { participant });
  }

  #forget(socketId, reason) {
    const participant = this.#participant(socketId);
    this.#closePeer(socketId);
    if (this.participants.delete(socketId)) this.dispatch('participant-left', { participant, reason });
  }

  #participant(socketId) {
    return this.participants.get(socketId) ?? { socketId };
  }

  /** The peer of `socketId`, created (with the local tracks added) on first use. */
  #peer(socketId, { initiator = false } = {}) {
    const existing = this.peers.get(socketId);
    if (existing) return existing;
    const pc = new this.#RTCPeerConnection({ ...this.#rtcConfig, iceServers: this.#iceServers });
    const peer = {
      pc,
      polite: this.#client.socketId > socketId,
      makingOffer: false,
      ignoreOffer: false,
      settingRemoteAnswer: false,
    };
    this.peers.set(socketId, peer);

    pc.onnegotiationneeded = async () => {
      try {
        peer.makingOffer = true;
        await pc.setLocalDescription();
        this.#relay('webrtc:offer', socketId, { offer: plainDescription(pc.localDescription) });
      } catch (error) {
        this.dispatch('error', { error, participant: this.#participant(socketId) });
      } finally {
        peer.makingOffer = false;
      }
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) return; // end of gathering; the connection does not need to be told
      const init = typeof candidate.toJSON === 'function' ? candidate.toJSON() : candidate;
      this.#relay('webrtc:ice-candidate', socketId, {
        candidate: init,
        sdpMid: candidate.sdpMid ?? null,
        sdpMLineIndex: candidate.sdpMLineIndex ?? null,
      });
    };
    pc.ontrack = ({ track, streams }) => {
      this.dispatch('track', { participant: this.#participant(socketId), track, stream: streams[0] ?? null });
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed') pc.restartIce();
      this.dispatch('connection-state', { participant: this.#participant(socketId), state: pc.connectionState });
    };

    const tracks = this.#localStream?.getTracks() ?? [];
    for (const track of tracks) pc.addTrack(track, this.#localStream);
    if (initiator && tracks.length === 0) {
      // Nothing to send, but the offer must still ask for the others' media.
      pc.addTransceiver('audio', { direction: 'recvonly' });
      if (this.#callType === 'video') pc.addTransceiver('video', { direction: 'recvonly' });
    }
    return peer;
  }

  async #onDescription(fromSocketId, fromUserId, received) {
    const description = remoteDescription(received);
    if (!description || typeof fromSocketId !== 'string') return; // not a description: nothing to negotiate
    if (description.type === 'answer' && !this.peers.has(fromSocketId)) return; // to an offer we closed
    if (!this.participants.has(fromSocketId)) this.#remember({ socketId: fromSocketId, userId: fromUserId });
    const known = this.peers.get(fromSocketId);
    if (known && isAnotherPeer(known.pc, description)) {
      // That participant is a new page that resumed the socketId: our connection leads nowhere now.
      this.#closePeer(fromSocketId);
      if (description.type === 'answer') {
        // An answer of its new connection cannot be applied to a new one of ours: offer afresh.
        this.#peer(fromSocketId, { initiator: true });
        return;
      }
    }
    const peer = this.#peer(fromSocketId);
    const { pc } = peer;
    try {
      const readyForOffer = !peer.makingOffer && (pc.signalingState === 'stable' || peer.settingRemoteAnswer);
      const offerCollision = description.type === 'offer' && !readyForOffer;
      peer.ignoreOffer = !peer.polite && offerCollision;
      if (peer.ignoreOffer) return; // impolite: our offer wins; theirs is dropped
      peer.settingRemoteAnswer = description.type === 'answer';
      if (offerCollision) {
        // Polite: roll our offer back and take theirs. Both calls are queued at once on the
        // connection's operations chain, so no candidate can slip in between.
        await Promise.all([pc.setLocalDescription({ type: 'rollback' }), pc.setRemoteDescription(description)]);
      } else {
        await pc.setRemoteDescription(description);
      }
      peer.settingRemoteAnswer = false;
      if (description.type === 'offer') {
        await pc.setLocalDescription();
        this.#relay('webrtc:answer', fromSocketId, { answer: plainDescription(pc.localDescription) });
      }
    } catch (error) {
      peer.settingRemoteAnswer = false;
      this.dispatch('error', { error, participant: this.#participant(fromSocketId) });
    }
  }

  async #onCandidate({ fromSocketId, candidate, sdpMid, sdpMLineIndex }) {
    const peer = this.peers.get(fromSocketId);
    if (!peer) return; // nothing negotiated with that participant (or it has just left)
    const init = candidateInit(candidate, sdpMid, sdpMLineIndex);
    if (!init) return;
    try {
      await peer.pc.addIceCandidate(init);
    } catch (error) {
      // Candidates of an offer we ignored cannot be added, and need not be.
      if (!peer.ignoreOffer) this.dispatch('error', { error, participant: this.#participant(fromSocketId) });
    }
  }

  #relay(event, targetSocketId, payload) {
    this.#client.emit(event, { callRoomId: this.#roomId, targetSocketId, ...payload });
  }

  #closePeer(socketId) {
    const peer = this.peers.get(socketId);
    if (!peer) return;
    this.peers.delete(socketId);
    const { pc } = peer;
    pc.onnegotiationneeded = pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
    pc.close();
  }
}

/** The media state the server gives a join without `media` (docs/protocol.md §3). */
function defaultMedia(callType) {
  return { audio: true, video: callType !== 'audio', screen: false };
}

/** `{audio, video, screen}` of the booleans of `given`, the others from `current`. */
function mediaState(given, current) {
  const pick = (key) => (typeof given?.[key] === 'boolean' ? given[key] : current[key]);
  return { audio: pick('audio'), video: pick('video'), screen: pick('screen') };
}

/**
 * Whether `description` comes from another RTCPeerConnection than the remote description of `pc`
 * does: their DTLS fingerprints differ (a connection keeps its certificate for life). `false` when
 * either has none, or `pc` has no remote description yet.
 */
function isAnotherPeer(pc, description) {
  const current = pc.currentRemoteDescription ?? pc.remoteDescription;
  if (!current?.sdp) return false;
  const before = fingerprintsOf(current.sdp);
  const now = fingerprintsOf(description.sdp);
  return before !== '' && now !== '' && before !== now;
}

/** The `a=fingerprint` values of an SDP (session and media level), normalised, sorted and joined. */
function fingerprintsOf(sdp) {
  const found = new Set();
  for (const match of sdp.matchAll(/^a=fingerprint:[ \t]*(\S+)[ \t]+(\S+)[ \t]*\r?$/gim)) {
    found.add(`${match[1].toLowerCase()} ${match[2].toUpperCase()}`);
  }
  return [...found].sort().join(',');
}

function plainDescription(description) {
  return { type: description.type, sdp: description.sdp };
}

/** A received offer or answer as a new `{type, sdp}`, or `null` when it is not one. */
function remoteDescription(description) {
  if (!isObject(description) || typeof description.sdp !== 'string') return null;
  if (description.type !== 'offer' && description.type !== 'answer') return null;
  return plainDescription(description);
}

/**
 * A received candidate as a new RTCIceCandidateInit of its named fields only, or `null`.
 * Seed-style clients send the candidate string with sdpMid/sdpMLineIndex beside it; others
 * send the RTCIceCandidateInit, whose own fields win over those beside it.
 */
function candidateInit(candidate, sdpMid, sdpMLineIndex) {
  const fields = typeof candidate === 'string' ? { candidate } : isObject(candidate) ? candidate : null;
  if (!fields || typeof fields.candidate !== 'string') return null;
  const init = {
    candidate: fields.candidate,
    sdpMid: fields.sdpMid !== undefined ? fields.sdpMid : (sdpMid ?? null),
    sdpMLineIndex: fields.sdpMLineIndex !== undefined ? fields.sdpMLineIndex : (sdpMLineIndex ?? null),
  };
  if (typeof fields.usernameFragment === 'string') init.usernameFragment = fields.usernameFragment;
  return init;
}
