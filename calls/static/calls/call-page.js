/**
 * The call page: sign in, pick a group or a room, join with camera and microphone; hear and
 * answer incoming calls anywhere on the page, ring a group, see who is muted, and moderate.
 * Everything that touches signaling goes through signaling.js.
 *
 * The page holds one signaling connection from the lobby on (not only during a call), so that
 * a ring reaches it wherever the user is; each call is a CallMesh on that connection.
 *
 * The lobby lists the calls live in the user's groups (GET /api/calls/live/, docs/protocol.md
 * §11), each with who is in it and a Join button: asked every LIVE_POLL_MS while the lobby is
 * shown in a visible tab, and at once after the page's own join or leave and when a ring starts
 * or ends; never more than one request at a time.
 */
import { CallMesh, CLOSE_UNAUTHENTICATED, jwtExpiresAt, SignalingClient } from './signaling.js';

const TOKENS_KEY = 'calls.tokens';
// The call this tab is in, so that a reload goes back into it.
const CALL_KEY = 'calls.call';
// Refresh the access token when it has less than this left: more than the signaling client's
// own margin (60 s), so that the token its refresh asks for is always a new one.
const REFRESH_MARGIN_SECS = 90;
const CUSTOM_ROOM = 'custom';
const GROUP_ROOM = /^group-([1-9][0-9]{0,17})$/;
const VIDEO_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 } };
const GROUP_ID = /^[1-9][0-9]{0,17}$/;
// "Remove and ban": how long the removed user may not come back.
const BAN_SECS = 600;
const MODERATOR_ROLES = new Set(['owner', 'admin']);
// How often the lobby asks for the live calls while it is shown and the tab is visible.
const LIVE_POLL_MS = 5000;
const LIVE_API = '/api/calls/live/';

const ERROR_TEXT = {
  forbidden: "You are not a member of this group's call.",
  'room-full': 'This call is full.',
  'invalid-message': 'That room id is not valid: use letters, digits and _ . : - only.',
  'rate-limited': 'Too many messages at once; try again in a moment.',
  'internal-error': 'The server had a problem; try again.',
  unauthenticated: 'Your sign-in has expired; sign in again.',
  timeout: 'The server did not answer; check your connection and try again.',
  disconnected: 'The connection was lost; try again.',
  'too-many-connections': 'You are connected to calls from too many tabs or devices; close one and try again.',
  'origin-refused': "The call server does not accept connections from this page's address; ask its administrator.",
  'room-locked': 'This call is locked: only its moderators can join it now.',
  'ring-not-found': 'That call is no longer ringing.',
};
// What a refusal of a moderation or ringing request means, per request (ERROR_TEXT for the rest).
const ACTION_ERROR_TEXT = {
  kick: {
    forbidden: 'You cannot remove that participant: only moderators can remove people, and only staff can remove a moderator.',
    'participant-not-found': 'That participant has already left.',
  },
  moderate: { forbidden: "Only this call's moderators can do that." },
  ring: { forbidden: 'Only the members of a group can be called, from its own call.' },
};
// How one callee's ring ended, as the ringer reads it (`cancelled`: by the ringer, so nothing).
const RING_OUTCOME_TEXT = {
  accepted: (name) => `${name} answered.`,
  declined: (name) => `${name} declined.`,
  missed: (name) => `${name} did not answer.`,
};
// The stops of the signaling client that end the call with a message (besides unauthenticated).
const FINAL_ERRORS = new Set(['too-many-connections', 'origin-refused']);
const RECONNECTING_TEXT = 'Connection lost; reconnecting…';
const STATE_TEXT = {
  new: 'connecting…',
  connecting: 'connecting…',
  connected: '',
  disconnected: 'reconnecting…',
  failed: 'connection failed',
  closed: '',
};

const $ = (id) => document.getElementById(id);

/**
 * The page's state; `window.callApp` for a look from the console. `call` is the room of `mesh`;
 * `moderator` whether we may moderate it, as far as the page can tell; `members` the userIds of
 * its group (→ `{displayName, role}`); `ring` our own ring of it, while someone is still rung;
 * `groups` the names of our groups by id.
 */
const app = {
  tokens: null,
  me: null,
  groups: new Map(),
  client: null,
  mesh: null,
  call: null,
  localStream: null,
  moderator: false,
  members: new Map(),
  ring: null,
  joining: false,
};
window.callApp = app;

/**
 * The lobby's list of live calls: `calls` the last answer's by sessionId; `inFlight` while a
 * request is out (the only one); `again` when a refresh was asked meanwhile (one more follows
 * it); `timer` the next poll; `epoch` counts sign-outs, so that an answer for a user who has
 * signed out meanwhile is dropped.
 */
const live = {
  calls: new Map(),
  inFlight: false,
  again: false,
  timer: null,
  epoch: 0,
};
app.live = live;

// ---------------------------------------------------------------------------
// Messages and views
// ---------------------------------------------------------------------------

/** The message at the top of the page; `tone: 'info'` for news that is not a failure. */
function notify(text, { tone = 'alert' } = {}) {
  const notice = $('notice');
  notice.textContent = text;
  notice.hidden = !text;
  notice.dataset.tone = tone;
}

/** A line of news in the call (who answered, who was removed, who locked it). */
function note(text) {
  $('call-note').textContent = text;
}

function show(view) {
  for (const id of ['sign-in', 'lobby', 'call']) $(id).hidden = id !== view;
  $('account').hidden = view === 'sign-in';
  document.body.dataset.view = view;
  // The lobby's list is asked afresh whenever the lobby shows (after a leave, a refusal, a
  // removal), and polled only while it shows.
  if (view === 'lobby') refreshLive();
  else scheduleLive();
}

/** `table[key]` when `table` has it as its own (a code from the server is never `constructor`). */
function lookup(table, key) {
  return typeof key === 'string' && Object.hasOwn(table, key) ? table[key] : undefined;
}

/** A refusal for a person; `action` (`kick`, `moderate`, `ring`) picks its own words for its codes. */
function errorText(error, action) {
  const bannedUntil = dateOf(error?.details?.bannedUntil);
  if (error?.code === 'forbidden' && bannedUntil) {
    return `You were removed from this call and cannot join it again until ${timeText(bannedUntil)}.`;
  }
  const message = typeof error?.message === 'string' && error.message ? error.message : undefined;
  const own = action === undefined ? undefined : lookup(ACTION_ERROR_TEXT[action], error?.code);
  return own ?? lookup(ERROR_TEXT, error?.code) ?? message ?? 'Something went wrong; try again.';
}

function dateOf(value) {
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value;
  const time = typeof value === 'string' ? Date.parse(value) : NaN;
  return Number.isNaN(time) ? null : new Date(time);
}

/** "14:32", or "Tue 14:32" when it is not today (a ban lasts up to a day). */
function timeText(date) {
  const today = date.toDateString() === new Date().toDateString();
  const options = { hour: '2-digit', minute: '2-digit', ...(today ? {} : { weekday: 'short' }) };
  return date.toLocaleString([], options);
}

/** A participant's name as the page shows it; `by` fields may be a participant or a userId. */
function nameOf(who, fallback = 'Someone') {
  if (typeof who === 'string' || typeof who === 'number') {
    const userId = String(who);
    if (userId === String(app.me?.id)) return 'You';
    const member = app.members.get(userId);
    const participant = [...(app.mesh?.participants.values() ?? [])].find((p) => String(p.userId) === userId);
    return member?.displayName || participant?.displayName || participant?.username || fallback;
  }
  if (typeof who !== 'object' || who === null) return fallback;
  if (who.userId !== undefined && String(who.userId) === String(app.me?.id)) return 'You';
  return displayNameOf(who, fallback);
}

/** A participant object's own name, never "You" (a ring comes from someone else). */
function displayNameOf(participant, fallback = 'Someone') {
  const { displayName, username } = participant ?? {};
  return (typeof displayName === 'string' && displayName) || (typeof username === 'string' && username) || fallback;
}

function mediaErrorText(error) {
  if (error.name === 'NotAllowedError') return 'Camera and microphone access was refused: allow it and try again.';
  if (error.name === 'NotFoundError') return 'No camera or microphone was found.';
  if (error.name === 'NotReadableError') return 'The camera or microphone is in use by another program.';
  return `The camera or microphone could not be opened (${error.message}).`;
}

// ---------------------------------------------------------------------------
// Tokens and the HTTP API
// ---------------------------------------------------------------------------

class HttpError extends Error {
  constructor(status, path) {
    super(`${path} answered ${status}`);
    this.status = status;
  }
}

async function api(path, { method = 'GET', body, auth = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (body) headers['Content-Type'] = 'application/json';
  if (auth) headers.Authorization = `Bearer ${await accessToken()}`;
  const response = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  if (!response.ok) throw new HttpError(response.status, path);
  return response.json();
}

/** Seconds until the JWT `jwt` expires; an unreadable one counts as expired. */
function secondsLeft(jwt) {
  const expiresAt = jwtExpiresAt(jwt);
  return expiresAt === null ? 0 : (expiresAt - Date.now()) / 1000;
}

/** Keep `{access, refresh}` (named fields only: nothing else of the server's answer). */
function saveTokens(tokens) {
  const valid = typeof tokens?.access === 'string' && typeof tokens?.refresh === 'string';
  app.tokens = valid ? { access: tokens.access, refresh: tokens.refresh } : null;
  if (app.tokens) sessionStorage.setItem(TOKENS_KEY, JSON.stringify(app.tokens));
  else sessionStorage.removeItem(TOKENS_KEY);
}

/** A valid access token, refreshed when it is about to expire. Also the signaling client's token. */
async function accessToken() {
  if (!app.tokens) throw new HttpError(401, 'sign-in');
  if (secondsLeft(app.tokens.access) > REFRESH_MARGIN_SECS) return app.tokens.access;
  const { access } = await api('/api/auth/token/refresh/', {
    method: 'POST',
    body: { refresh: app.tokens.refresh },
    auth: false,
  });
  saveTokens({ access, refresh: app.tokens.refresh });
  return access;
}

// ---------------------------------------------------------------------------
// Sign in and the lobby
// ---------------------------------------------------------------------------

async function signIn(form) {
  notify('');
  const data = new FormData(form);
  try {
    const tokens = await api('/api/auth/token/', {
      method: 'POST',
      body: { username: data.get('username'), password: data.get('password') },
      auth: false,
    });
    saveTokens(tokens);
  } catch (error) {
    notify(error.status === 401 ? 'Wrong username or password.' : 'Could not sign in; try again.');
    return;
  }
  form.reset();
  await enterLobby();
}

function signOut(message = '') {
  endCall();
  disconnect();
  saveTokens(null);
  app.me = null;
  app.groups = new Map();
  forgetLive();
  show('sign-in');
  notify(message);
}

async function enterLobby() {
  let groups;
  try {
    [app.me, groups] = await Promise.all([api('/api/auth/me/'), api('/api/groups/')]);
  } catch (error) {
    signOut(error.status === 401 ? ERROR_TEXT.unauthenticated : 'Could not load your groups; try again.');
    return;
  }
  app.groups = new Map(groups.map((group) => [String(group.id), group.name]));
  $('account-name').textContent = app.me.displayName || app.me.username;
  const choice = $('room-choice');
  choice.replaceChildren(
    ...groups.map((group) => new Option(group.name, `group-${group.id}`)),
    new Option('Another room (type its id)', CUSTOM_ROOM),
  );
  const linked = new URLSearchParams(location.search).get('room');
  if (linked) {
    choice.value = [...choice.options].some((option) => option.value === linked) ? linked : CUSTOM_ROOM;
    if (choice.value === CUSTOM_ROOM) $('room-id').value = linked;
  }
  syncRoomField();
  show('lobby');
  connect(); // from now on, a call to this user rings here
}

function syncRoomField() {
  const custom = $('room-choice').value === CUSTOM_ROOM;
  $('room-id-field').hidden = !custom;
  $('room-id').required = custom;
}

function chosenRoom() {
  const choice = $('room-choice');
  const roomId = choice.value === CUSTOM_ROOM ? $('room-id').value.trim() : choice.value;
  const title = choice.value === CUSTOM_ROOM ? roomId : choice.selectedOptions[0].text;
  return room(roomId, title);
}

/**
 * A call to join. A group's call carries its groupId, so that the server admits only the group's
 * members: the one given (an incoming call names it), or the one of a `group-<id>` room id.
 */
function room(roomId, title, groupId = GROUP_ROOM.exec(roomId)?.[1]) {
  return { roomId, title, metadata: groupId ? { groupId } : undefined };
}

/** The lobby again after a call, with that call's room chosen when it is one of the list. */
function backToLobby(call) {
  show('lobby');
  const choice = $('room-choice');
  if (call && [...choice.options].some((option) => option.value === call.roomId)) choice.value = call.roomId;
  syncRoomField();
}

// ---------------------------------------------------------------------------
// The lobby's live calls
// ---------------------------------------------------------------------------

/** Whether the list is to be polled: the lobby is shown, in a tab the user can see. */
function lobbyWatched() {
  return Boolean(app.me) && document.body.dataset.view === 'lobby' && document.visibilityState !== 'hidden';
}

/**
 * Ask for the live calls now. While a request is out, the refresh waits for it and follows it
 * once, however many were asked meanwhile; each answer schedules the next poll.
 */
function refreshLive() {
  clearTimeout(live.timer);
  live.timer = null;
  if (!app.tokens || !app.me) return;
  if (live.inFlight) {
    live.again = true;
    return;
  }
  live.inFlight = true;
  const { epoch } = live;
  api(LIVE_API)
    .then(
      (calls) => {
        if (epoch === live.epoch) showLive(Array.isArray(calls) ? calls : []);
      },
      (error) => {
        if (epoch !== live.epoch) return;
        if (error.status === 401) {
          signOut(ERROR_TEXT.unauthenticated); // (the refresh token has expired too)
          return;
        }
        console.warn('live calls', error);
        liveStatus('Could not load the live calls; trying again…');
      },
    )
    .finally(() => {
      live.inFlight = false;
      const again = live.again;
      live.again = false;
      if (again) refreshLive();
      else scheduleLive();
    });
}

/** The next poll in LIVE_POLL_MS, if the lobby is watched and no request is out. */
function scheduleLive() {
  clearTimeout(live.timer);
  live.timer = null;
  if (lobbyWatched() && !live.inFlight) live.timer = setTimeout(refreshLive, LIVE_POLL_MS);
}

/** Signed out: no more polls, an empty list, and any answer still coming dropped. */
function forgetLive() {
  clearTimeout(live.timer);
  Object.assign(live, { timer: null, again: false, calls: new Map(), epoch: live.epoch + 1 });
  $('live-calls').replaceChildren();
  $('live-empty').hidden = true;
  liveStatus('');
}

function liveStatus(text) {
  $('live-status').textContent = text;
  $('live-status').hidden = !text;
}

/** A live call of the API as the page lists it, or `null` for one it cannot join. */
function liveCallOf(call) {
  if (typeof call !== 'object' || call === null) return null;
  const { sessionId, callRoomId } = call;
  if (typeof sessionId !== 'string' || !sessionId || typeof callRoomId !== 'string' || !callRoomId) return null;
  const groupId = typeof call.groupId === 'string' || typeof call.groupId === 'number' ? String(call.groupId) : null;
  if (groupId !== null && !GROUP_ID.test(groupId)) return null;
  const participants = Array.isArray(call.participants) ? call.participants.filter((p) => typeof p === 'object' && p) : [];
  return {
    sessionId,
    callRoomId,
    groupId,
    audio: call.callType === 'audio',
    locked: call.locked === true,
    startedAt: dateOf(call.startedAt),
    participants,
    title: liveTitle(callRoomId, groupId),
  };
}

/** A group's own room is the group's name; another room of a group says both. */
function liveTitle(callRoomId, groupId) {
  const group = groupId === null ? undefined : app.groups.get(groupId);
  if (group === undefined) return callRoomId;
  return callRoomId === `group-${groupId}` ? group : `${group} · ${callRoomId}`;
}

/** The names of who is in a call, each person once (a user may be in it from two devices). */
function peopleOf(participants) {
  const names = new Map();
  for (const participant of participants) {
    const key = String(participant.userId ?? participant.socketId ?? names.size);
    if (!names.has(key)) names.set(key, nameOf(participant));
  }
  return [...names.values()];
}

/**
 * Show the calls of an answer, newest first as the API gives them. An item stays the same
 * element while its session lasts, and the list is reordered only when its order changed, so
 * that a poll never takes the focus from a Join button.
 */
function showLive(answer) {
  const calls = answer.map(liveCallOf).filter(Boolean);
  live.calls = new Map(calls.map((call) => [call.sessionId, call]));
  const list = $('live-calls');
  const before = [...list.children];
  const items = new Map(before.map((item) => [item.dataset.sessionId, item]));
  const after = calls.map((call) => describeLive(items.get(call.sessionId) ?? newLiveItem(call.sessionId), call));
  const same = after.length === before.length && after.every((item, index) => item === before[index]);
  if (!same) list.replaceChildren(...after);
  $('live-empty').hidden = calls.length > 0;
  liveStatus('');
}

function newLiveItem(sessionId) {
  const item = $('live-template').content.firstElementChild.cloneNode(true);
  item.dataset.sessionId = sessionId;
  item.querySelector('.live-join').addEventListener('click', () => {
    const call = live.calls.get(sessionId);
    if (call) joinLive(call);
  });
  return item;
}

function describeLive(item, call) {
  const people = peopleOf(call.participants);
  item.querySelector('.live-name').textContent = call.title;
  item.querySelector('.live-audio').hidden = !call.audio;
  item.querySelector('.live-locked').hidden = !call.locked;
  item.querySelector('.live-people').textContent = people.join(', ');
  const count = `${people.length} ${people.length === 1 ? 'person' : 'people'}`;
  item.querySelector('.live-meta').textContent = call.startedAt ? `${count} · since ${timeText(call.startedAt)}` : count;
  const join = item.querySelector('.live-join');
  join.setAttribute('aria-label', `Join ${call.title}${call.locked ? ' (locked)' : ''}`);
  join.disabled = app.joining;
  return item;
}

/** Join a call of the list: its room, with its groupId (none for a room without a group). */
function joinLive(call) {
  const { callRoomId, title, groupId } = call;
  joinCall({ roomId: callRoomId, title, metadata: groupId ? { groupId } : undefined });
}

/** The lobby's Join buttons, all disabled while a join is under way. */
function setJoining(joining) {
  app.joining = joining;
  $('join').disabled = joining;
  for (const button of $('live-calls').querySelectorAll('.live-join')) button.disabled = joining;
}

/** The call this tab was in before a reload (its room id, title and groupId only), or `null`. */
function savedCall() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(CALL_KEY) ?? 'null');
    if (typeof saved?.roomId !== 'string' || !saved.roomId || typeof saved.title !== 'string') return null;
    // Only a well-formed groupId is taken (the server checks membership either way).
    const groupId = typeof saved.groupId === 'string' && GROUP_ID.test(saved.groupId) ? saved.groupId : undefined;
    return room(saved.roomId, saved.title, groupId);
  } catch {
    return null;
  }
}

function saveCall(call) {
  if (!call) {
    sessionStorage.removeItem(CALL_KEY);
    return;
  }
  const { roomId, title, metadata } = call;
  sessionStorage.setItem(CALL_KEY, JSON.stringify({ roomId, title, groupId: metadata?.groupId }));
}

// ---------------------------------------------------------------------------
// The signaling connection (from the lobby on) and incoming calls
// ---------------------------------------------------------------------------

/** The page's signaling client, opened when there is none. */
function connect() {
  if (app.client) return app.client;
  // A single-use ticket per connection (obtained with the access token): the access token
  // itself never goes into the websocket URL. The client refreshes the connection's
  // authentication with accessToken() before it expires.
  const client = new SignalingClient({ token: accessToken, tickets: true });
  app.client = client;
  watchClient(client);
  return client;
}

function disconnect() {
  const { client } = app;
  app.client = null;
  client?.close();
  clearRings();
}

function watchClient(client) {
  // While the signaling connection is down a call goes on (media is peer to peer): the page
  // says so and keeps every tile. A resume changes nothing else; a reconnect that could not
  // resume has the mesh rejoin, and its tiles come back with it.
  client.on('disconnect', ({ code, willReconnect }) => {
    if (app.client !== client) return;
    if (willReconnect) setSignalingState('reconnecting');
    else if (code === CLOSE_UNAUTHENTICATED) signOut(ERROR_TEXT.unauthenticated);
  });
  client.on('reconnecting', () => {
    if (app.client === client) setSignalingState('reconnecting');
  });
  client.on('connect', ({ resumed }) => {
    if (app.client !== client) return;
    setSignalingState('connected');
    // A new connection is told again of every ring still ringing, right after it connects;
    // what this page shows of the old one's may have ended meanwhile.
    if (!resumed) clearRings();
  });
  client.on('error', (error) => {
    if (app.client !== client) return;
    if (error.status === 401) {
      signOut(ERROR_TEXT.unauthenticated); // the refresh token has expired too
    } else if (FINAL_ERRORS.has(error.code)) {
      // The client has stopped for good: back to the lobby, saying why. A join opens a new one.
      endCall();
      disconnect();
      show('lobby');
      notify(errorText(error));
    } else {
      console.warn('signaling', error); // retried by the client (a ticket, a refresh)
    }
  });
  // A ring says a call has started (and its end, that someone may have joined it or left):
  // the lobby's list is asked afresh.
  client.on('webrtc:incoming-call', (call) => {
    if (app.client !== client) return;
    showRing(call);
    refreshLive();
  });
  client.on('webrtc:ring-ended', ({ ringId }) => {
    if (app.client !== client) return;
    ringOf(ringId)?.remove();
    refreshLive();
  });
}

function ringOf(ringId) {
  return $('rings').querySelector(`.ring[data-ring-id="${CSS.escape(ringId)}"]`);
}

function clearRings() {
  $('rings').replaceChildren();
}

/** The banner of an incoming call, on top of whatever the page shows, until it ends. */
function showRing(call) {
  const { ringId, callRoomId, callType, from } = call;
  if (typeof ringId !== 'string' || typeof callRoomId !== 'string' || ringOf(ringId)) return;
  const groupId = typeof call.groupId === 'string' || typeof call.groupId === 'number' ? String(call.groupId) : '';
  const title = app.groups.get(groupId) ?? callRoomId;
  const banner = $('ring-template').content.firstElementChild.cloneNode(true);
  banner.dataset.ringId = ringId;
  banner.querySelector('.ring-from').textContent = displayNameOf(from);
  banner.querySelector('.ring-what').textContent =
    `is calling you${callType === 'audio' ? ' (audio)' : ''} · ${title}`;
  banner.querySelector('.accept').addEventListener('click', () => {
    banner.remove();
    acceptRing(ringId, room(callRoomId, title, GROUP_ID.test(groupId) ? groupId : undefined));
  });
  banner.querySelector('.decline').addEventListener('click', () => {
    banner.remove();
    declineRing(ringId);
  });
  $('rings').append(banner);
}

async function acceptRing(ringId, call) {
  const { client } = app;
  // Accept first, then join (a join alone would end the ring as accepted too): the ring ends
  // on our other devices and for the ringer at once, not after the camera has opened. A ring
  // that ended meanwhile is no reason not to join the call.
  client?.replyToRing(ringId, 'accept').catch(() => {});
  await joinCall(call);
}

async function declineRing(ringId) {
  try {
    await app.client?.replyToRing(ringId, 'decline');
  } catch (error) {
    if (error.code !== 'ring-not-found') notify(errorText(error)); // (already over: nothing to decline)
  }
}

// ---------------------------------------------------------------------------
// The call
// ---------------------------------------------------------------------------

/**
 * Join the room chosen in the lobby, or `call` (an incoming call accepted, or the one a
 * reloaded page was in), leaving the call we are in first.
 */
async function joinCall(call = chosenRoom()) {
  notify('');
  const { roomId, title, metadata } = call;
  setJoining(true);
  try {
    if (app.mesh) await leaveCall({ toLobby: false });
    let localStream;
    try {
      localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: VIDEO_CONSTRAINTS });
    } catch (error) {
      saveCall(null);
      show('lobby');
      notify(mediaErrorText(error));
      return;
    }
    const client = connect();
    // The room hears our media state from the join on (the badges on the others' pages).
    const has = (kind) => localStream.getTracks().some((track) => track.kind === kind);
    const media = { audio: has('audio'), video: has('video') };
    const mesh = new CallMesh(client, { roomId, localStream, metadata, media });
    Object.assign(app, { mesh, call, localStream, moderator: false, members: new Map(), ring: null });
    watchMesh(mesh);
    $('call-title').textContent = title;
    const local = addTile({ socketId: 'local', username: app.me.username }, { local: true });
    local.querySelector('video').srcObject = localStream;
    describeTile(local, { media });
    try {
      await mesh.join();
    } catch (error) {
      if (app.mesh !== mesh) return; // (the client stopped meanwhile, and said why)
      endCall();
      show('lobby');
      if (error.code === 'unauthenticated') signOut(errorText(error));
      else notify(errorText(error));
      return;
    }
    saveCall(call);
    setSignalingState('connected');
    updateCallControls();
    show('call');
    learnRole(mesh);
    refreshLive(); // (the lobby shows this call when we come back to it)
  } finally {
    setJoining(false);
  }
}

function watchMesh(mesh) {
  const current = (handler) => (data) => {
    if (app.mesh === mesh) handler(data);
  };
  mesh.on('participant', current(({ participant }) => describeTile(addTile(participant), participant)));
  mesh.on('participant-updated', current(({ participant }) => describeTile(addTile(participant), participant)));
  mesh.on('track', current(({ participant, stream }) => {
    const video = addTile(participant).querySelector('video');
    if (stream && video.srcObject !== stream) video.srcObject = stream;
  }));
  mesh.on('connection-state', current(({ participant, state }) => setTileState(addTile(participant), state)));
  mesh.on('participant-left', current(({ participant, reason }) => {
    tileOf(participant.socketId)?.remove();
    if (reason === 'kicked') note(`${nameOf(participant)} was removed from the call.`);
  }));
  mesh.on('room-updated', current(({ locked, by }) => {
    updateCallControls();
    note(`${nameOf(by, 'A moderator')} ${locked ? 'locked' : 'unlocked'} the call.`);
  }));
  mesh.on('ring-updated', current(ringUpdated));
  // Removed or ended by a moderator: the mesh has stopped; the page goes back to the lobby
  // saying why, and forgets the call (a reload must not try to rejoin it).
  mesh.on('kicked', current(({ by, bannedUntil }) => {
    const { call } = app;
    endCall();
    backToLobby(call);
    const until = bannedUntil ? ` You cannot join it again until ${timeText(bannedUntil)}.` : '';
    const who = nameOf(by, 'A moderator');
    // (Our own user, from another device, is the one moderator who is not "someone else".)
    const what = who === 'You' ? 'You removed this page from the call on another device.' : `${who} removed you from the call.`;
    notify(`${what}${until}`);
  }));
  mesh.on('call-ended', current(({ by }) => {
    const { call } = app;
    endCall();
    backToLobby(call);
    notify(`${nameOf(by, 'A moderator')} ended the call for everyone.`, { tone: 'info' });
  }));
  mesh.on('error', ({ error }) => console.warn('call error', error));
}

/**
 * Whether we may moderate this call, as far as the page can tell (docs/protocol.md §10): in a
 * group's call, our role in the group; in another room, whether we started it. (Staff may too,
 * but the API does not say who is staff: for them the server alone decides.) The group's
 * members also give the names of those we ring.
 */
async function learnRole(mesh) {
  const { groupId, createdBy } = mesh.joined?.metadata ?? {};
  const myId = String(app.me.id);
  // Staff moderate every call (docs/protocol.md §10).
  let moderator = Boolean(app.me.isStaff);
  const members = new Map();
  if (typeof groupId === 'string' && GROUP_ID.test(groupId)) {
    try {
      const group = await api(`/api/groups/${groupId}/`);
      for (const { userId, displayName, username, role } of group.members ?? []) {
        members.set(String(userId), { displayName: displayName || username, role });
      }
      moderator ||= MODERATOR_ROLES.has(members.get(myId)?.role);
    } catch (error) {
      console.warn('could not read the group', error); // no moderator controls, then
    }
  } else {
    moderator ||= createdBy !== undefined && String(createdBy) === myId;
  }
  if (app.mesh !== mesh) return;
  Object.assign(app, { moderator, members });
  updateCallControls();
}

/** The call's buttons and state as the room and our role say. */
function updateCallControls() {
  const { mesh, moderator } = app;
  const locked = Boolean(mesh?.locked);
  $('ring-group').hidden = !mesh?.joined?.metadata?.groupId;
  $('ring-group').textContent = app.ring ? 'Stop calling' : 'Call the group';
  $('call-locked').hidden = !locked;
  $('lock-call').hidden = !moderator;
  $('lock-call').textContent = locked ? 'Unlock call' : 'Lock call';
  $('lock-call').setAttribute('aria-pressed', String(locked));
  $('end-for-all').hidden = !moderator;
  for (const tile of $('tiles').children) {
    if (!tile.classList.contains('local')) tile.querySelector('.moderate').hidden = !moderator;
  }
}

/** "Call the group" rings every member not in the call; while some still ring, it stops that. */
async function ringGroup() {
  const { mesh } = app;
  if (!mesh) return;
  const button = $('ring-group');
  button.disabled = true;
  try {
    if (app.ring) {
      await mesh.cancelRing(app.ring.ringId);
      app.ring = null;
      note('');
      return;
    }
    const { ringId, userIds } = await mesh.ring();
    if (app.mesh !== mesh) return;
    if (userIds.length === 0) {
      note('Everyone else in the group is here or already being called.');
      return;
    }
    app.ring = { ringId, ringing: new Set(userIds.map(String)), outcomes: [] };
    showRingProgress();
  } catch (error) {
    if (error.code === 'ring-not-found') app.ring = null; // (everyone had answered meanwhile)
    else notify(errorText(error, 'ring'));
  } finally {
    button.disabled = false;
    updateCallControls();
  }
}

/** One callee of a ring in this room is done: ours, so the progress line says how. */
function ringUpdated({ ringId, userId, status }) {
  const { ring } = app;
  if (!ring || ring.ringId !== ringId || !ring.ringing.delete(String(userId))) return;
  const outcome = lookup(RING_OUTCOME_TEXT, status);
  if (outcome) ring.outcomes.push(outcome(nameOf(String(userId), 'Someone')));
  if (ring.ringing.size === 0) app.ring = null;
  showRingProgress(ring);
  updateCallControls();
}

function showRingProgress(ring = app.ring) {
  const calling = [...ring.ringing].map((userId) => nameOf(userId, 'someone'));
  note([...ring.outcomes, calling.length ? `Calling ${calling.join(', ')}…` : ''].filter(Boolean).join(' '));
}

async function toggleLock() {
  const { mesh } = app;
  try {
    await mesh?.lock(!mesh.locked); // the room-updated that follows shows it
  } catch (error) {
    notify(errorText(error, 'moderate'));
  }
}

async function endForAll() {
  try {
    await app.mesh?.endCall(); // we hear call-ended too, and go back to the lobby with it
  } catch (error) {
    notify(errorText(error, 'moderate'));
  }
}

async function kick(participant, banSecs) {
  const { mesh } = app;
  try {
    await mesh?.kick(participant.socketId, banSecs ? { banSecs } : {});
  } catch (error) {
    notify(errorText(error, 'kick'));
  }
}

/** `connected` or `reconnecting`: the status line, and `data-signaling` on the call for styles. */
function setSignalingState(state) {
  $('call').dataset.signaling = state;
  $('call-status').textContent = state === 'reconnecting' ? RECONNECTING_TEXT : '';
}

/** Tear the call down on this page (the signaling connection stays, for the next ring). */
function endCall() {
  const { mesh, localStream } = app;
  Object.assign(app, { mesh: null, call: null, localStream: null, moderator: false, members: new Map(), ring: null });
  saveCall(null);
  mesh?.leave(); // (a no-op for a mesh already stopped: kicked, ended)
  for (const track of localStream?.getTracks() ?? []) track.stop();
  $('tiles').replaceChildren();
  $('call-status').textContent = '';
  note('');
  delete $('call').dataset.signaling;
  for (const [id, label] of [['toggle-mic', 'Mute'], ['toggle-camera', 'Camera off']]) {
    $(id).setAttribute('aria-pressed', 'false');
    $(id).textContent = label;
  }
  for (const id of ['ring-group', 'lock-call', 'end-for-all', 'call-locked']) $(id).hidden = true;
}

async function leaveCall({ toLobby = true } = {}) {
  const { mesh, ring } = app;
  // Calling people into a call we leave empty would leave them alone in it.
  if (ring && mesh?.participants.size === 0) await mesh.cancelRing(ring.ringId).catch(() => {});
  await mesh?.leave();
  if (app.mesh === mesh) endCall();
  if (toLobby) show('lobby');
}

function toggleTrack(button, kind, onLabel, offLabel) {
  const tracks = app.localStream?.getTracks().filter((track) => track.kind === kind) ?? [];
  const off = button.getAttribute('aria-pressed') !== 'true';
  for (const track of tracks) track.enabled = !off;
  button.setAttribute('aria-pressed', String(off));
  button.textContent = off ? offLabel : onLabel;
  const { mesh } = app;
  if (!mesh) return;
  // The others' pages show it as a badge; a failure (the connection is down) needs no word:
  // the rejoin after a reconnect carries the state anyway.
  mesh.setMedia(kind === 'audio' ? { audio: !off } : { video: !off }).catch((error) => console.warn('media state', error));
  describeTile(tileOf('local'), { media: mesh.media });
}

// ---------------------------------------------------------------------------
// Tiles
// ---------------------------------------------------------------------------

function tileOf(socketId) {
  return $('tiles').querySelector(`.tile[data-socket-id="${CSS.escape(socketId)}"]`);
}

/** The tile of a participant, created on first sight. */
function addTile(participant, { local = false } = {}) {
  const existing = tileOf(participant.socketId);
  if (existing) return existing;
  const tile = $('tile-template').content.firstElementChild.cloneNode(true);
  tile.dataset.socketId = participant.socketId;
  tile.classList.add(local ? 'local' : 'remote');
  const video = tile.querySelector('video');
  video.muted = local; // never play our own microphone back
  setTileState(tile, local ? 'connected' : 'new');
  const moderate = tile.querySelector('.moderate');
  moderate.hidden = local || !app.moderator;
  if (!local) {
    const toggle = tile.querySelector('.moderate-toggle');
    const menu = tile.querySelector('.moderate-menu');
    const open = (on) => {
      menu.hidden = !on;
      toggle.setAttribute('aria-expanded', String(on));
    };
    toggle.addEventListener('click', () => open(menu.hidden));
    tile.querySelector('.kick').addEventListener('click', () => {
      open(false);
      kick(participant, 0);
    });
    tile.querySelector('.kick-ban').addEventListener('click', () => {
      open(false);
      kick(participant, BAN_SECS);
    });
  }
  describeTile(tile, participant, { local });
  $('tiles').append(tile);
  return tile;
}

/**
 * A tile's name and media badges from what the server says of its participant (a participant
 * first known from its offer has neither yet). A camera that is off shows the name, not black.
 */
function describeTile(tile, participant, { local = tile.classList.contains('local') } = {}) {
  const shown = local ? app.me.displayName || app.me.username : participant.displayName || participant.username;
  if (local || shown) {
    tile.dataset.username = local ? app.me.username : (participant.username ?? '');
    tile.querySelector('.name').textContent = local ? `${shown} (you)` : shown;
    tile.querySelector('.placeholder-name').textContent = shown;
    tile.querySelector('.initials').textContent = initialsOf(shown);
  } else if (!tile.querySelector('.name').textContent) {
    tile.querySelector('.name').textContent = 'Guest';
  }
  const { media } = participant;
  if (typeof media !== 'object' || media === null) return; // (a server without media state)
  const muted = media.audio === false;
  const cameraOff = media.video === false;
  tile.classList.toggle('muted', muted);
  tile.classList.toggle('camera-off', cameraOff);
  tile.querySelector('.badge.muted').hidden = !muted;
  tile.querySelector('.badge.camera').hidden = !cameraOff;
  tile.querySelector('.badge.screen').hidden = media.screen !== true;
}

function initialsOf(name) {
  const words = String(name).trim().split(/\s+/).filter(Boolean);
  return words.slice(0, 2).map((word) => [...word][0].toUpperCase()).join('');
}

function setTileState(tile, state) {
  tile.dataset.state = state;
  tile.querySelector('.state').textContent = lookup(STATE_TEXT, state) ?? state;
}

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

$('sign-in-form').addEventListener('submit', (event) => {
  event.preventDefault();
  signIn(event.target);
});
$('join-form').addEventListener('submit', (event) => {
  event.preventDefault();
  joinCall();
});
$('room-choice').addEventListener('change', syncRoomField);
$('sign-out').addEventListener('click', () => signOut());
$('leave').addEventListener('click', () => leaveCall());
$('toggle-mic').addEventListener('click', (event) => toggleTrack(event.target, 'audio', 'Mute', 'Unmute'));
$('toggle-camera').addEventListener('click', (event) =>
  toggleTrack(event.target, 'video', 'Camera off', 'Camera on'),
);
$('ring-group').addEventListener('click', ringGroup);
$('lock-call').addEventListener('click', toggleLock);
$('end-for-all').addEventListener('click', endForAll);
// A hidden tab stops polling the live calls; shown again, it asks at once.
document.addEventListener('visibilitychange', () => {
  if (lobbyWatched()) refreshLive();
  else scheduleLive();
});
new MutationObserver(() => {
  const count = $('tiles').children.length;
  $('tiles').dataset.count = String(count);
  $('call-count').textContent = count ? `${count} in the call` : '';
  $('waiting').hidden = count !== 1; // only our own tile
}).observe($('tiles'), { childList: true });

function savedTokens() {
  try {
    return JSON.parse(sessionStorage.getItem(TOKENS_KEY) ?? 'null');
  } catch {
    return null;
  }
}

saveTokens(savedTokens());
if (app.tokens) {
  // A reload during a call goes back into it: as a newcomer (the browser closed the old page's
  // socket with a close frame, so the server let it go), or, if that socket was lost without
  // one (the network was down), as the same participant within the server's grace: signaling.js
  // kept the resume token in this tab's sessionStorage.
  const call = savedCall();
  enterLobby().then(() => {
    if (call && app.me && !app.mesh) joinCall(call);
  });
} else {
  saveCall(null);
  show('sign-in');
}
