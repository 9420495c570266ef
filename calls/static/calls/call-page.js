/**
 * The call page: sign in, pick a group or a room, join with camera and microphone.
 * Everything that touches signaling goes through signaling.js.
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

/** The page's state; `window.callApp` for a look from the console. */
const app = { tokens: null, me: null, client: null, mesh: null, localStream: null };
window.callApp = app;

// ---------------------------------------------------------------------------
// Messages and views
// ---------------------------------------------------------------------------

function notify(text) {
  const notice = $('notice');
  notice.textContent = text;
  notice.hidden = !text;
}

function show(view) {
  for (const id of ['sign-in', 'lobby', 'call']) $(id).hidden = id !== view;
  $('account').hidden = view === 'sign-in';
  document.body.dataset.view = view;
}

/** `table[key]` when `table` has it as its own (a code from the server is never `constructor`). */
function lookup(table, key) {
  return typeof key === 'string' && Object.hasOwn(table, key) ? table[key] : undefined;
}

function errorText(error) {
  const message = typeof error?.message === 'string' && error.message ? error.message : undefined;
  return lookup(ERROR_TEXT, error?.code) ?? message ?? 'Something went wrong; try again.';
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
  saveTokens(null);
  app.me = null;
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

function room(roomId, title) {
  // A group's room carries its groupId, so that the server admits only the group's members.
  const groupId = GROUP_ROOM.exec(roomId)?.[1];
  return { roomId, title, metadata: groupId ? { groupId } : undefined };
}

/** The call this tab was in before a reload (its room id and title only), or `null`. */
function savedCall() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(CALL_KEY) ?? 'null');
    if (typeof saved?.roomId !== 'string' || !saved.roomId || typeof saved.title !== 'string') return null;
    return room(saved.roomId, saved.title); // the groupId is read from the id again, never taken as saved
  } catch {
    return null;
  }
}

function saveCall(call) {
  if (call) sessionStorage.setItem(CALL_KEY, JSON.stringify({ roomId: call.roomId, title: call.title }));
  else sessionStorage.removeItem(CALL_KEY);
}

// ---------------------------------------------------------------------------
// The call
// ---------------------------------------------------------------------------

/** Join the room chosen in the lobby, or `call` (the one a reloaded page was in). */
async function joinCall(call = chosenRoom()) {
  notify('');
  const { roomId, title, metadata } = call;
  $('join').disabled = true;
  try {
    try {
      app.localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: VIDEO_CONSTRAINTS });
    } catch (error) {
      saveCall(null);
      notify(mediaErrorText(error));
      return;
    }
    // A single-use ticket per connection (obtained with the access token): the access token
    // itself never goes into the websocket URL. The client refreshes the connection's
    // authentication with accessToken() before it expires.
    const client = new SignalingClient({ token: accessToken, tickets: true });
    const mesh = new CallMesh(client, { roomId, localStream: app.localStream, metadata });
    Object.assign(app, { client, mesh });
    watch(client, mesh);
    $('call-title').textContent = title;
    addTile({ socketId: 'local', username: app.me.username }, { local: true }).querySelector('video').srcObject =
      app.localStream;
    try {
      await mesh.join();
    } catch (error) {
      endCall();
      if (error.code === 'unauthenticated') signOut(errorText(error));
      else notify(errorText(error));
      return;
    }
    saveCall(call);
    setSignalingState('connected');
    show('call');
  } finally {
    $('join').disabled = false;
  }
}

function watch(client, mesh) {
  mesh.on('participant', ({ participant }) => addTile(participant));
  mesh.on('track', ({ participant, stream }) => {
    const video = addTile(participant).querySelector('video');
    if (stream && video.srcObject !== stream) video.srcObject = stream;
  });
  mesh.on('connection-state', ({ participant, state }) => setTileState(addTile(participant), state));
  mesh.on('participant-left', ({ participant }) => tileOf(participant.socketId)?.remove());
  mesh.on('error', ({ error }) => console.warn('call error', error));

  // While the signaling connection is down the call goes on (media is peer to peer): the page
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
  client.on('connect', () => {
    if (app.client === client) setSignalingState('connected');
  });
  client.on('error', (error) => {
    if (app.client !== client) return;
    if (error.status === 401) {
      signOut(ERROR_TEXT.unauthenticated); // the refresh token has expired too
    } else if (FINAL_ERRORS.has(error.code)) {
      // The client has stopped for good: back to the lobby, saying why.
      endCall();
      show('lobby');
      notify(errorText(error));
    } else {
      console.warn('signaling', error); // retried by the client (a ticket, a refresh)
    }
  });
}

/** `connected` or `reconnecting`: the status line, and `data-signaling` on the call for styles. */
function setSignalingState(state) {
  $('call').dataset.signaling = state;
  $('call-status').textContent = state === 'reconnecting' ? RECONNECTING_TEXT : '';
}

function endCall() {
  const { client, mesh, localStream } = app;
  Object.assign(app, { client: null, mesh: null, localStream: null });
  saveCall(null);
  mesh?.leave().finally(() => client?.close());
  for (const track of localStream?.getTracks() ?? []) track.stop();
  $('tiles').replaceChildren();
  $('call-status').textContent = '';
  delete $('call').dataset.signaling;
  for (const id of ['toggle-mic', 'toggle-camera']) $(id).setAttribute('aria-pressed', 'false');
}

async function leaveCall() {
  const { mesh } = app;
  await mesh?.leave();
  endCall();
  show('lobby');
}

function toggleTrack(button, kind, onLabel, offLabel) {
  const tracks = app.localStream?.getTracks().filter((track) => track.kind === kind) ?? [];
  const off = button.getAttribute('aria-pressed') !== 'true';
  for (const track of tracks) track.enabled = !off;
  button.setAttribute('aria-pressed', String(off));
  button.textContent = off ? offLabel : onLabel;
  if (kind === 'video') tileOf('local')?.classList.toggle('camera-off', off);
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
  tile.dataset.username = participant.username ?? '';
  tile.classList.add(local ? 'local' : 'remote');
  const name = local ? app.me.displayName || app.me.username : participant.displayName || participant.username;
  tile.querySelector('.name').textContent = local ? `${name} (you)` : name || 'Guest';
  const video = tile.querySelector('video');
  video.muted = local; // never play our own microphone back
  setTileState(tile, local ? 'connected' : 'new');
  $('tiles').append(tile);
  return tile;
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
$('leave').addEventListener('click', leaveCall);
$('toggle-mic').addEventListener('click', (event) => toggleTrack(event.target, 'audio', 'Mute', 'Unmute'));
$('toggle-camera').addEventListener('click', (event) =>
  toggleTrack(event.target, 'video', 'Camera off', 'Camera on'),
);
new MutationObserver(() => {
  const count = $('tiles').children.length;
  $('tiles').dataset.count = String(count);
  $('call-count').textContent = count ? `${count} in the call` : '';
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
    if (call && app.me && !app.client) joinCall(call);
  });
} else {
  saveCall(null);
  show('sign-in');
}
