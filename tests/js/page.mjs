/**
 * The call page (calls/static/calls/call-page.js) loaded in a fake DOM against the fake server,
 * for the page's tests. The DOM is built from calls/templates/calls/call.html itself (its body,
 * templates included), so the page finds exactly the elements the real one has.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { fakeJwt, fakePeerConnectionClass, settle } from './fakes.mjs';

const PAGE = new URL('../../calls/static/calls/call-page.js', import.meta.url);
const TEMPLATE = new URL('../../calls/templates/calls/call.html', import.meta.url);
export const ORIGIN = 'http://calls.test';
export const ACCESS_TTL_SECS = 900;
const VOID_TAGS = new Set(['input', 'br', 'img', 'meta', 'link', 'hr']);

/** `data-ring-id` → `ringId`. */
const datasetKey = (attribute) => attribute.slice(5).replace(/-([a-z])/g, (_, letter) => letter.toUpperCase());

/** Just enough of an element for the page: text, flags, attributes, children, listeners, simple selectors. */
export class FakeElement {
  hidden = false;
  disabled = false;
  required = false;
  muted = false;
  srcObject = null;
  textContent = '';
  value = '';
  dataset = {};
  children = [];
  parent = null;
  #attributes = new Map();
  #listeners = new Map();
  #classes = new Set();

  constructor(tagName = 'div', id = '', classes = []) {
    this.tagName = tagName;
    this.id = id;
    for (const name of classes) this.#classes.add(name);
    this.classList = {
      add: (name) => this.#classes.add(name),
      remove: (name) => this.#classes.delete(name),
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

  /** A click, as a person makes it: nothing happens on a hidden or disabled element, or inside a hidden one. */
  click() {
    assert.ok(this.visible(), `${this.describe()} is not visible`);
    assert.equal(this.disabled, false, `${this.describe()} is disabled`);
    this.fire('click');
  }

  /** Whether neither it nor an ancestor is hidden (the document root counts as shown). */
  visible() {
    for (let node = this; node; node = node.parent) if (node.hidden) return false;
    return true;
  }

  describe() {
    return `<${this.tagName}${this.id ? `#${this.id}` : ''}${[...this.#classes].map((name) => `.${name}`).join('')}>`;
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
    globalThis.document?.mutated?.(this);
  }

  replaceChildren(...nodes) {
    for (const node of this.children) node.parent = null;
    this.children = [];
    this.append(...nodes);
  }

  remove() {
    if (!this.parent) return;
    const { parent } = this;
    parent.children = parent.children.filter((node) => node !== this);
    this.parent = null;
    globalThis.document?.mutated?.(parent);
  }

  get firstElementChild() {
    return this.children[0] ?? null;
  }

  /** `tag`, `.class`, `tag.class.other`, each maybe with one `[attribute="value"]`, among the descendants. */
  querySelector(selector) {
    return this.querySelectorAll(selector)[0] ?? null;
  }

  querySelectorAll(selector) {
    const match = /^([a-z][a-z0-9-]*)?((?:\.[\w-]+)*)(?:\[([\w-]+)="(.*)"\])?$/.exec(selector);
    assert.ok(match, `selector ${selector}`);
    const [, tag, classes, attribute, value] = match;
    const classNames = classes.split('.').filter(Boolean);
    const matches = (node) =>
      (!tag || node.tagName === tag) &&
      classNames.every((name) => node.classList.contains(name)) &&
      (attribute === undefined ||
        (attribute.startsWith('data-') ? node.dataset[datasetKey(attribute)] : node.getAttribute(attribute)) === value);
    const found = [];
    const walk = (node) => {
      for (const child of node.children) {
        if (matches(child)) found.push(child);
        walk(child);
      }
    };
    walk(this);
    return found;
  }

  /** A copy: its tag, flags, attributes, classes and text, and (deep) its children; no listeners. */
  cloneNode(deep = false) {
    const copy = new this.constructor(this.tagName, this.id, [...this.#classes]);
    Object.assign(copy, { hidden: this.hidden, disabled: this.disabled, textContent: this.textContent, dataset: { ...this.dataset } });
    for (const [name, value] of this.#attributes) copy.setAttribute(name, value);
    if (deep) {
      copy.children = this.children.map((child) => Object.assign(child.cloneNode(true), { parent: copy }));
    }
    return copy;
  }

  /** Every element below, and this one. */
  *all() {
    yield this;
    for (const child of this.children) yield* child.all();
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
    super('option');
    this.text = text;
    this.value = value;
  }
}

/** The `<body>` of call.html as fake elements; a `<template>`'s children are its `content`. */
function parseBody() {
  const html = readFileSync(TEMPLATE, 'utf8')
    .replace(/\{%[\s\S]*?%\}|\{\{[\s\S]*?\}\}/g, '')
    .replace(/<!--[\s\S]*?-->/g, '');
  const body = /<body>([\s\S]*)<\/body>/.exec(html)[1];
  const root = new FakeElement('body');
  const stack = [root];
  for (const [, closing, tag, attributes, text] of body.matchAll(/<(\/?)([a-zA-Z][a-zA-Z0-9-]*)([^>]*)>|([^<]+)/g)) {
    const parent = stack.at(-1);
    if (text !== undefined) {
      const words = text.replace(/\s+/g, ' ').trim();
      if (words) parent.textContent = parent.textContent ? `${parent.textContent} ${words}` : words;
      continue;
    }
    const name = tag.toLowerCase();
    if (closing) {
      assert.equal(parent.tagName, name, `call.html: </${name}> closes <${parent.tagName}>`);
      stack.pop();
      continue;
    }
    const element = name === 'select' ? new FakeSelect(name) : new FakeElement(name);
    for (const [, attribute, value = ''] of attributes.matchAll(/([^\s=/]+)(?:="([^"]*)")?/g)) {
      if (attribute === 'id') element.id = value;
      else if (attribute === 'class') value.split(/\s+/).filter(Boolean).forEach((className) => element.classList.add(className));
      else if (attribute === 'hidden') element.hidden = true;
      else if (attribute === 'disabled') element.disabled = true;
      else if (attribute.startsWith('data-')) element.dataset[datasetKey(attribute)] = value;
      else element.setAttribute(attribute, value);
    }
    if (parent.tagName === 'template') {
      parent.content.children.push(element);
      element.parent = null;
    } else {
      parent.children.push(element);
      element.parent = parent;
    }
    if (name === 'template') element.content = { children: [], get firstElementChild() { return this.children[0] ?? null; } };
    if (!VOID_TAGS.has(name) && !attributes.trim().endsWith('/')) stack.push(element);
  }
  assert.equal(stack.length, 1, 'call.html: every element is closed');
  return root;
}

function fakeDocument() {
  const body = parseBody();
  const byId = new Map([...body.all()].filter((element) => element.id).map((element) => [element.id, element]));
  const observers = [];
  const listeners = new Map();
  return {
    body,
    cookie: '',
    visibilityState: 'visible',
    addEventListener: (type, listener) => listeners.set(type, [...(listeners.get(type) ?? []), listener]),
    /** The tab hidden or shown again, as a browser tells the page. */
    setVisibility(state) {
      this.visibilityState = state;
      for (const listener of listeners.get('visibilitychange') ?? []) listener({ type: 'visibilitychange' });
    },
    getElementById: (id) => byId.get(id) ?? null,
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

/** A track as getUserMedia gives it: `enabled`, and `stop()` that ends it. */
function fakeTrack(kind) {
  return { kind, enabled: true, stopped: false, stop() { this.stopped = true; } };
}

let loads = 0;
// A session id for each session of the fake server (its room info lives as long as the session).
const sessionIds = new WeakMap();
let sessions = 0;

/**
 * What `GET /api/calls/live/` answers `user` of the fake server's rooms (docs/protocol.md §11):
 * those of its groups (`groups`, the page's), and those without a group it created or is in,
 * newest first.
 */
export function liveCallsOf(server, user, groups) {
  const mine = new Set(groups.map(({ id }) => String(id)));
  const calls = [];
  for (const [callRoomId, entries] of server.rooms) {
    const info = server.roomInfo(callRoomId);
    if (!info || entries.length === 0) continue;
    const participants = entries.map(({ participant }) => participant);
    const visible =
      info.groupId === null
        ? info.createdBy === user || participants.some(({ userId }) => userId === user)
        : mine.has(info.groupId);
    if (!visible) continue;
    if (!sessionIds.has(info)) sessionIds.set(info, `session-${(sessions += 1)}`);
    calls.push({
      sessionId: sessionIds.get(info),
      callRoomId,
      groupId: info.groupId,
      callType: info.callType,
      startedAt: info.metadata.createdAt,
      locked: info.locked,
      participants: participants.map((participant) => ({ ...participant, joinedAt: info.metadata.createdAt })),
    });
  }
  return calls.sort((a, b) => (a.startedAt === b.startedAt ? 0 : a.startedAt < b.startedAt ? 1 : -1));
}

/**
 * The page loaded afresh on `server`, with the HTTP API it signs in with; `storage` is its tab's
 * sessionStorage (pass the one a previous page left for a reload). The API's groups are those of
 * `server.groups` (each named `Team <id>`; without any, group 1 "Team"), and a user's id is its name,
 * as the fake server's userIds are. `GET /api/calls/live/` answers {@link liveCallsOf}, or what
 * `live(calls, user)` makes of it: an array (200), `{status, body}`, or a promise of either (a
 * test holds the request by not settling it). Once {@link restore}d, the page is gone: its tab is
 * hidden, and no request of it is ever answered.
 */
export async function openPage(server, { storage = new Map(), live = (calls) => calls } = {}) {
  const http = [];
  let gone = false;
  const issued = new Map(); // refresh token → user
  const json = (status, body) => ({ ok: status < 300, status, json: async () => body });
  const access = (user) => fakeJwt({ user, exp: Date.now() / 1000 + ACCESS_TTL_SECS, n: http.length });
  const groupsOf = (user) =>
    server.groups.size === 0
      ? [{ id: '1', name: 'Team', members: {} }]
      : [...server.groups]
          .filter(([, members]) => Object.hasOwn(members, user))
          .map(([id, members]) => ({ id, name: `Team ${id}`, members }));
  const fetch = async (path, init = {}) => {
    const url = new URL(path, ORIGIN);
    http.push({ url: url.toString(), init });
    await new Promise((resolve) => setImmediate(resolve));
    if (gone) return new Promise(() => {}); // (the tab was closed)
    const body = init.body ? JSON.parse(init.body) : {};
    const bearer = init.headers?.Authorization?.replace(/^Bearer /, '');
    const user = bearer ? JSON.parse(Buffer.from(bearer.split('.')[1], 'base64url')).user : null;
    const group = /^\/api\/groups\/(\d+)\/$/.exec(url.pathname);
    if (group) {
      const found = groupsOf(user).find(({ id }) => id === group[1]);
      if (!found) return json(404, {});
      const members = Object.entries(found.members).map(([userId, role]) => ({
        userId,
        username: userId,
        displayName: userId.toUpperCase(),
        role,
      }));
      return json(200, { id: found.id, name: found.name, members });
    }
    switch (url.pathname) {
      case '/api/auth/token/':
        issued.set(`refresh-${body.username}`, body.username);
        return json(200, { access: access(body.username), refresh: `refresh-${body.username}`, extra: 'ignored' });
      case '/api/auth/token/refresh/':
        return issued.has(body.refresh) ? json(200, { access: access(issued.get(body.refresh)) }) : json(401, {});
      case '/api/auth/me/':
        return json(200, { id: user, username: user, displayName: user.toUpperCase(), isStaff: server.staff.has(user) });
      case '/api/groups/':
        return json(200, groupsOf(user).map(({ id, name }) => ({ id, name })));
      case '/api/calls/live/': {
        const answer = await live(liveCallsOf(server, user, groupsOf(user)), user);
        if (gone) return new Promise(() => {});
        return Array.isArray(answer) ? json(200, answer) : json(answer.status, answer.body);
      }
      default:
        return server.fetch(url.toString(), init);
    }
  };
  const document = fakeDocument();
  const streams = [];
  const getUserMedia = async () => {
    const tracks = [fakeTrack('audio'), fakeTrack('video')];
    const stream = { getTracks: () => tracks };
    streams.push(stream);
    return stream;
  };
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
    setGlobal('navigator', { mediaDevices: { getUserMedia } }),
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
    streams,
    app: globalThis.callApp,
    restore: () => {
      // The tab closes: the page stops polling (a hidden tab does), and nothing answers it again.
      document.setVisibility('hidden');
      gone = true;
      restores.reverse().forEach((restore) => restore());
    },
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
    /** The tile of `username` (remote, or ours as `local`). */
    tileOf: (username) => $('tiles').children.find((tile) => tile.dataset.username === username) ?? null,
    status: () => $('call-status').textContent,
    /** The incoming-call banners shown. */
    rings: () => $('rings').children,
    /** The tab hidden (`'hidden'`) or shown again (`'visible'`). */
    setVisibility: (state) => document.setVisibility(state),
    /** The requests of the live calls so far. */
    liveRequests: () => http.filter(({ url }) => new URL(url).pathname === '/api/calls/live/'),
    /** The lobby's live calls as shown: title, people, meta, locked and audio badges, and the Join button. */
    liveCalls: () =>
      $('live-calls').children.map((item) => ({
        item,
        sessionId: item.dataset.sessionId,
        title: item.querySelector('.live-name').textContent,
        people: item.querySelector('.live-people').textContent,
        meta: item.querySelector('.live-meta').textContent,
        locked: !item.querySelector('.live-locked').hidden,
        audio: !item.querySelector('.live-audio').hidden,
        button: item.querySelector('.live-join'),
      })),
    async join(roomValue = 'group-1') {
      $('room-choice').value = roomValue;
      $('join-form').fire('submit');
      await settle();
    },
  };
  return page;
}
