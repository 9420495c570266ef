// The call page (calls/static/calls/call-page.js) in a fake DOM, against the fake server:
// sign in, join, and what it says when the signaling client stops. `node --test tests/js/`.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';

import { CallMesh, SignalingClient } from '../../calls/static/calls/signaling.js';
import { FakeServer, fakeJwt, fakePeerConnectionClass, settle } from './fakes.mjs';

const PAGE = new URL('../../calls/static/calls/call-page.js', import.meta.url);
const ORIGIN = 'http://calls.test';
const ACCESS_TTL_SECS = 900;

/** Just enough of an element for the page: text, flags, children, listeners, a few selectors. */
class FakeElement {
  hidden = false;
  disabled = false;
  required = false;
  muted = false;
  srcObject = null;
  textContent = '';
  dataset = {};
  children = [];
  parent = null;
  #attributes = new Map();
  #listeners = new Map();
  #classes = new Set();

  constructor(id = '', classes = []) {
    this.id = id;
    for (const name of classes) this.#classes.add(name);
    this.classList = {
      add: (name) => this.#classes.add(name),
      contains: (name) => this.#classes.has(name),
      toggle: (name, on = !this.#classes.has(name)) => (on ? this.#classes.add(name) : this.#classes.delete(name)),
    };
  }

  addEventListener(type, listener) {
    this.#listeners.set(type, [...(this.#listeners.get(type) ?? []), listener]);
  }

  fire(type, event = {}) {
    for (const listener of this.#listeners.get(type) ?? []) listener({ preventDefault() {}, target: this, ...event });
  }

  setAttribute(name, value) {
    this.#attributes.set(name, String(value));
  }

  getAttribute(name) {
    return this.#attributes.get(name) ?? null;
  }

  append(...nodes) {
    for (const node of nodes) node.parent = this;
    this.children = [...this.children, ...nodes];
    document.mutated(this);
  }

  replaceChildren(...nodes) {
    this.children = [];
    this.append(...nodes);
  }

  remove() {
    if (!this.parent) return;
    this.parent.children = this.parent.children.filter((node) => node !== this);
    document.mutated(this.parent);
    this.parent = null;
  }

  get firstElementChild() {
    return this.children[0] ?? null;
  }

  /** `.class`, `video`, or `.class[data-socket-id="…"]`, among the descendants. */
  querySelector(selector) {
    const match = /^(?:\.([\w-]+)|(video))(?:\[data-socket-id="(.*)"\])?$/.exec(selector);
    assert.ok(match, `selector ${selector}`);
    const [, className, tag, socketId] = match;
    const matches = (node) =>
      (className ? node.classList.contains(className) : node.tagName === tag) &&
      (socketId === undefined || node.dataset.socketId === socketId);
    for (const child of this.children) {
      if (matches(child)) return child;
      const found = child.querySelector(selector);
      if (found) return found;
    }
    return null;
  }

  cloneNode() {
    const tile = new FakeElement('', ['tile']);
    const video = Object.assign(new FakeElement(), { tagName: 'video' });
    const caption = new FakeElement();
    caption.children = [new FakeElement('', ['name']), new FakeElement('', ['state'])];
    tile.children = [video, caption];
    return tile;
  }
}

/** A `<select>` of `Option`s: `value` is the selected option's. */
class FakeSelect extends FakeElement {
  selectedIndex = 0;

  get options() {
    return this.children;
  }

  get selectedOptions() {
    return this.children.slice(this.selectedIndex, this.selectedIndex + 1);
  }

  get value() {
    return this.children[this.selectedIndex]?.value ?? '';
  }

  set value(value) {
    this.selectedIndex = this.children.findIndex((option) => option.value === value);
  }
}

class FakeOption extends FakeElement {
  constructor(text, value) {
    super();
    this.text = text;
    this.value = value;
  }
}

const IDS = [
  'notice', 'sign-in', 'lobby', 'call', 'account', 'account-name', 'sign-out', 'sign-in-form', 'join-form',
  'room-id-field', 'room-id', 'join', 'call-title', 'call-count', 'call-status', 'tiles', 'toggle-mic',
  'toggle-camera', 'leave',
];

function fakeDocument() {
  const elements = new Map(IDS.map((id) => [id, new FakeElement(id)]));
  elements.set('room-choice', new FakeSelect('room-choice'));
  const template = new FakeElement('tile-template');
  template.content = { firstElementChild: new FakeElement() };
  elements.set('tile-template', template);
  const observers = [];
  return {
    body: { dataset: {} },
    cookie: '',
    getElementById: (id) => elements.get(id) ?? null,
    observe: (target, callback) => observers.push({ target, callback }),
    mutated: (target) => {
      for (const observer of observers) if (observer.target === target) queueMicrotask(observer.callback);
    },
  };
}

/** Replace a global for one test (some, like `navigator`, are getters in newer Node). */
function setGlobal(name, value) {
  const previous = Object.getOwnPropertyDescriptor(globalThis, name);
  Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
  return () => (previous ? Object.defineProperty(globalThis, name, previous) : delete globalThis[name]);
}

let loads = 0;

/**
 * The page loaded afresh on `server`, with the HTTP API it signs in with; `storage` is its tab's
 * sessionStorage (pass the one a previous page left for a reload).
 */
async function openPage(server, { storage = new Map() } = {}) {
  const http = [];
  const issued = new Map(); // refresh token → user
  const json = (status, body) => ({ ok: status < 300, status, json: async () => body });
  const access = (user) => fakeJwt({ user, exp: Date.now() / 1000 + ACCESS_TTL_SECS, n: http.length });
  const fetch = async (path, init = {}) => {
    const url = new URL(path, ORIGIN);
    http.push({ url: url.toString(), init });
    await new Promise((resolve) => setImmediate(resolve));
    const body = init.body ? JSON.parse(init.body) : {};
    const bearer = init.headers?.Authorization?.replace(/^Bearer /, '');
    const user = bearer ? JSON.parse(Buffer.from(bearer.split('.')[1], 'base64url')).user : null;
    switch (url.pathname) {
      case '/api/auth/token/':
        issued.set(`refresh-${body.username}`, body.username);
        return json(200, { access: access(body.username), refresh: `refresh-${body.username}`, extra: 'ignored' });
      case '/api/auth/token/refresh/':
        return issued.has(body.refresh) ? json(200, { access: access(issued.get(body.refresh)) }) : json(401, {});
      case '/api/auth/me/':
        return json(200, { id: user, username: user, displayName: user.toUpperCase() });
      case '/api/groups/':
        return json(200, [{ id: 1, name: 'Team' }]);
      default:
        return server.fetch(url.toString(), init);
    }
  };
  const document = fakeDocument();
  const localStream = { getTracks: () => [{ kind: 'audio', stop() {} }, { kind: 'video', stop() {} }] };
  const restores = [
    setGlobal('document', document),
    setGlobal('window', globalThis),
    setGlobal('location', { protocol: 'http:', host: 'calls.test', origin: ORIGIN, search: '' }),
    setGlobal('sessionStorage', {
      getItem: (key) => storage.get(key) ?? null,
      setItem: (key, value) => storage.set(key, String(value)),
      removeItem: (key) => storage.delete(key),
    }),
    setGlobal('fetch', fetch),
    setGlobal('WebSocket', server.WebSocket),
    setGlobal('RTCPeerConnection', fakePeerConnectionClass()),
    setGlobal('navigator', { mediaDevices: { getUserMedia: async () => localStream } }),
    setGlobal('Option', FakeOption),
    setGlobal('CSS', { escape: (value) => value }),
    setGlobal('FormData', class {
      constructor(form) {
        this.fields = form.fields;
      }

      get(name) {
        return this.fields[name];
      }
    }),
    setGlobal('MutationObserver', class {
      constructor(callback) {
        this.callback = callback;
      }

      observe(target) {
        document.observe(target, this.callback);
      }
    }),
  ];
  loads += 1;
  await import(`${PAGE.href}?page=${loads}`);
  const $ = (id) => document.getElementById(id);
  const page = {
    $,
    http,
    storage,
    app: globalThis.callApp,
    restore: () => restores.reverse().forEach((restore) => restore()),
    notice: () => ($('notice').hidden ? '' : $('notice').textContent),
    view: () => document.body.dataset.view,
    async signIn(username) {
      const form = $('sign-in-form');
      form.fields = { username, password: 'pw' };
      form.reset = () => {};
      form.fire('submit');
      await settle();
    },
    /** The remote tiles, by socketId. */
    tiles: () => new Map($('tiles').children.filter((tile) => !tile.classList.contains('local')).map((tile) => [tile.dataset.socketId, tile])),
    status: () => $('call-status').textContent,
    async join(roomValue = 'group-1') {
      $('room-choice').value = roomValue;
      $('join-form').fire('submit');
      await settle();
    },
  };
  return page;
}

describe('the call page', () => {
  let server;
  let page;
  beforeEach(() => {
    server = new FakeServer();
  });
  afterEach(() => {
    page?.app.client?.close();
    page?.restore();
    page = null;
  });

  test('connects with a ticket bought with its access token: the token is never in the websocket URL', async () => {
    page = await openPage(server);
    await page.signIn('alice');
    assert.equal(page.view(), 'lobby');
    const { access } = page.app.tokens;
    assert.deepEqual(Object.keys(page.app.tokens), ['access', 'refresh'], 'only the named fields are kept');
    await page.join();
    assert.equal(page.view(), 'call');
    assert.equal(page.notice(), '');
    assert.equal(server.urls.length, 1);
    const [url] = server.urls;
    assert.equal(url.pathname, '/ws/calls/');
    assert.deepEqual([...url.searchParams.keys()], ['ticket']);
    assert.equal(url.toString().includes(access), false);
    assert.deepEqual(server.ticketRequests, [{ authorization: `Bearer ${access}`, credentials: 'omit', csrf: null }]);
    assert.equal(page.app.client.userId, 'alice');
    assert.ok(page.app.client.authExpiresAt > Date.now());
  });

  test('a user with too many connections is told so, and stays in the lobby', async () => {
    server.maxConnectionsPerUser = 0;
    page = await openPage(server);
    await page.signIn('alice');
    await page.join();
    assert.equal(page.view(), 'lobby');
    assert.equal(page.notice(), 'You are connected to calls from too many tabs or devices; close one and try again.');
    assert.equal(page.app.client, null);
    assert.equal(page.app.mesh, null);
    assert.equal(page.$('join').disabled, false);
  });

  test('a page whose origin the server refuses says so', async () => {
    server.originAllowed = false;
    page = await openPage(server);
    await page.signIn('alice');
    await page.join();
    assert.equal(page.view(), 'lobby');
    assert.equal(page.notice(), "The call server does not accept connections from this page's address; ask its administrator.");
    assert.equal(page.app.client, null);
  });

  test('too many connections at a reconnect, during a call: back to the lobby, with the message', async (t) => {
    t.mock.method(Math, 'random', () => 0); // the first reconnect after 250 ms
    page = await openPage(server);
    await page.signIn('alice');
    await page.join();
    assert.equal(page.view(), 'call');
    server.maxConnectionsPerUser = 0;
    server.drop(page.app.client.socketId);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await settle();
    assert.equal(page.view(), 'lobby');
    assert.match(page.notice(), /too many tabs or devices/);
    assert.equal(page.app.client, null);
    assert.equal(page.$('tiles').children.length, 0);
  });

  test('an error code that is an Object.prototype key shows the server message, not a function', async () => {
    server.joinRefusal = { error: 'constructor', message: 'Refused for a reason.' };
    page = await openPage(server);
    await page.signIn('alice');
    await page.join();
    assert.equal(page.notice(), 'Refused for a reason.');
  });

  test("the client's refresh gets a newly refreshed access token, accepted by the server", async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout', 'Date'], now: Date.now() });
    page = await openPage(server);
    await page.signIn('alice');
    await page.join();
    const before = page.app.tokens.access;
    t.mock.timers.tick((ACCESS_TTL_SECS - 60) * 1000);
    await settle();
    assert.equal(server.refreshes.length, 1);
    assert.equal(server.refreshes[0].accepted, true);
    assert.notEqual(server.refreshes[0].token, before, 'a new access token, not the one about to expire');
    assert.equal(server.refreshes[0].token, page.app.tokens.access);
    assert.ok(page.http.some(({ url }) => url.endsWith('/api/auth/token/refresh/')));
  });

  /** Bob in `group-1` from a client of his own (not a page), before the page joins. */
  async function bobInTheCall() {
    const client = new SignalingClient({ url: 'ws://calls.test/ws/calls/', token: 'bob', WebSocket: server.WebSocket, fetch: server.fetch, resumeStorage: null });
    const mesh = new CallMesh(client, { roomId: 'group-1', RTCPeerConnection: fakePeerConnectionClass() });
    const left = [];
    mesh.on('participant-left', (data) => left.push(data));
    await mesh.join();
    return { client, mesh, left };
  }

  /** Resolve at the next `connect` of the page's signaling client. */
  const nextConnect = (client) => new Promise((resolve) => client.once('connect', resolve));

  test('while the signaling connection is down the page says it is reconnecting; a resume keeps every tile', async (t) => {
    t.mock.method(Math, 'random', () => 0); // the first reconnect after 250 ms
    server.resumes = true;
    const bob = await bobInTheCall();
    page = await openPage(server);
    await page.signIn('alice');
    await page.join();
    assert.equal(page.view(), 'call');
    assert.equal(page.$('call').dataset.signaling, 'connected');
    const tiles = page.tiles();
    assert.deepEqual([...tiles.keys()], ['bob-1']);
    const { socketId } = page.app.client;

    const reopen = server.hold();
    server.drop(socketId);
    await settle();
    assert.equal(page.status(), 'Connection lost; reconnecting…');
    assert.equal(page.$('call').dataset.signaling, 'reconnecting');
    assert.deepEqual(page.tiles(), tiles, 'the tiles stay while the media goes on');

    const back = nextConnect(page.app.client);
    reopen();
    assert.equal((await back).resumed, true);
    await settle();
    assert.equal(page.status(), '');
    assert.equal(page.$('call').dataset.signaling, 'connected');
    assert.equal(page.view(), 'call');
    assert.deepEqual(page.tiles(), tiles, 'the same tiles, never torn down');
    assert.equal(page.$('tiles').children.length, 2);
    assert.equal(page.app.client.socketId, socketId);
    assert.deepEqual(bob.left, [], 'bob saw nobody leave');
    bob.client.close();
  });

  test('a reload during a call goes back into it by itself, resuming the same participant within the grace', async () => {
    server.resumes = true;
    const bob = await bobInTheCall();
    const first = await openPage(server);
    page = first;
    await first.signIn('alice');
    await first.join();
    const { socketId } = first.app.client;
    const bobToAlice = bob.mesh.peers.get(socketId).pc;

    // The reload: the tab's sessionStorage outlives the page; its socket goes without a close frame.
    const storage = new Map(first.storage);
    server.drop(socketId);
    first.app.client.close();
    first.restore();
    page = await openPage(server, { storage });
    await settle();

    assert.equal(page.view(), 'call');
    assert.equal(page.$('call-title').textContent, 'Team');
    assert.equal(page.app.client.socketId, socketId, 'the same participant');
    assert.equal(server.urls.at(-1).searchParams.has('resume'), true);
    assert.deepEqual(server.resumeAttempts.map(({ resumed }) => resumed), [true]);
    assert.deepEqual([...page.tiles().keys()], ['bob-1']);
    assert.deepEqual(bob.left, [], 'bob saw nobody leave');
    const bobToReloaded = bob.mesh.peers.get(socketId).pc;
    assert.notEqual(bobToReloaded, bobToAlice, "bob answered the reloaded page's offer with a new connection");
    assert.equal(bobToAlice.signalingState, 'closed');
    assert.equal(bobToReloaded.signalingState, 'stable');
    bob.client.close();
  });

  test('after leaving, a reload stays in the lobby; a sign-out forgets the call too', async () => {
    page = await openPage(server);
    await page.signIn('alice');
    await page.join();
    assert.equal(page.storage.has('calls.call'), true);
    page.$('leave').fire('click');
    await settle();
    assert.equal(page.view(), 'lobby');
    assert.equal(page.storage.has('calls.call'), false);
    await page.join();
    page.$('sign-out').fire('click');
    await settle();
    assert.equal(page.storage.has('calls.call'), false);
    assert.equal([...page.storage.keys()].some((key) => key.startsWith('calls.signaling.resume:')), false);
  });
});
