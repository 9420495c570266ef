// Every ```js block of README.md runs as written: each is loaded as a module, as a page
// would load it, in several "pages" against one fake server (`node --test tests/js/`).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';

import { FakeServer, fakePeerConnectionClass, settle } from './fakes.mjs';

const README = new URL('../../README.md', import.meta.url);
const SIGNALING = new URL('../../calls/static/calls/signaling.js', import.meta.url);
const SERVED_AT = '/static/calls/signaling.js';

/** The ```js blocks of README.md, with the line each starts on. */
function jsBlocks() {
  const text = readFileSync(README, 'utf8');
  return [...text.matchAll(/^```js\n([\s\S]*?)^```$/gm)].map((match) => ({
    source: match[1],
    line: text.slice(0, match.index).split('\n').length,
  }));
}

/**
 * One browser page of `user`: the helpers the snippets leave to the reader (the token, the
 * DOM), as stubs that record what they were asked to do.
 */
function page(user) {
  const calls = [];
  const record = (name) => (...args) => void calls.push([name, ...args]);
  const videos = new Map();
  return {
    user,
    calls,
    /** socketId → the remote stream shown for it. */
    shown: videos,
    helpers: {
      token: user,
      freshAccessToken: () => user,
      showVideo: (socketId, stream) => {
        calls.push(['showVideo', socketId, stream]);
        videos.set(socketId, stream);
      },
      videoOf: (socketId) => ({
        set srcObject(stream) {
          calls.push(['videoOf', socketId, stream]);
          videos.set(socketId, stream);
        },
      }),
      addTile: record('addTile'),
      removeTile: record('removeTile'),
      showState: record('showState'),
    },
  };
}

let pages = 0;
const modules = mkdtempSync(join(tmpdir(), 'readme-js-'));
after(() => rmSync(modules, { recursive: true, force: true }));

/**
 * Load the block as a module of `thePage`: the specifier of signaling.js as served is
 * pointed at the file, and the page's helpers are bound to the free names the snippet uses.
 * The module's line numbers are README.md's, for the stack of an error. Resolves when the
 * module has run to its end (top-level awaits included).
 */
async function load({ source, line }, thePage) {
  pages += 1;
  globalThis.readmePages ??= {};
  globalThis.readmePages[pages] = thePage.helpers;
  const declared = (name) => new RegExp(`\\b(?:function|const|let|var|class)\\s+${name}\\b`).test(source);
  const names = Object.keys(thePage.helpers).filter((name) => new RegExp(`\\b${name}\\b`).test(source) && !declared(name));
  const rewritten = source.replaceAll(`'${SERVED_AT}'`, `'${SIGNALING.href}'`);
  assert.notEqual(rewritten, source, `the block imports ${SERVED_AT}`);
  const prelude = names.length ? `const { ${names.join(', ')} } = globalThis.readmePages[${pages}];` : '';
  const file = join(modules, `README.md-line-${line}-${thePage.user}.mjs`);
  writeFileSync(file, `${prelude}${'\n'.repeat(line)}${rewritten}`);
  await import(pathToFileURL(file).href);
}

/** Replace a global for the duration of the tests (some, like `navigator`, are getters in newer Node). */
function setGlobal(name, value) {
  const previous = Object.getOwnPropertyDescriptor(globalThis, name);
  Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
  return () => (previous ? Object.defineProperty(globalThis, name, previous) : delete globalThis[name]);
}

const blocks = jsBlocks();

test('README.md has the two js snippets of "Use it from your front end"', () => {
  assert.ok(blocks.length >= 2, `found ${blocks.length}`);
});

for (const [index, block] of blocks.entries()) {
  const { source, line } = block;
  describe(`README.md js block ${index + 1} (line ${line})`, () => {
    const server = new FakeServer();
    const PeerConnection = fakePeerConnectionClass();
    const restores = [];
    const problems = [];
    const onRejection = (reason) => problems.push(['unhandled rejection', reason]);
    const users = ['alice', 'bob', 'carol'];
    const browser = Object.fromEntries(users.map((user) => [user, page(user)]));
    const socketOf = (user) => server.relayed.find((r) => r.data.fromUserId === user)?.from;

    before(async () => {
      const localStream = { id: 'local', getTracks: () => [{ kind: 'audio' }, { kind: 'video' }] };
      restores.push(
        setGlobal('location', { protocol: 'http:', host: 'calls.test', origin: 'http://calls.test' }),
        setGlobal('WebSocket', server.WebSocket),
        setGlobal('fetch', server.fetch),
        setGlobal('RTCPeerConnection', PeerConnection),
        setGlobal('navigator', { mediaDevices: { getUserMedia: async () => localStream } }),
      );
      process.on('unhandledRejection', onRejection);
      const { log, error } = console;
      console.log = () => {};
      console.error = (...args) => problems.push(['console.error', ...args]);
      restores.push(() => Object.assign(console, { log, error }));
      // One after the other, as people join a call: each runs to its end before the next.
      for (const user of users) {
        await load(block, browser[user]);
        await settle();
      }
    });

    after(() => {
      process.off('unhandledRejection', onRejection);
      for (const restore of restores.reverse()) restore();
    });

    test('runs as written, for the first to join and for the others', () => {
      assert.deepEqual(problems, []);
    });

    test('each page connects with a ticket from the ticket endpoint: no token in a websocket URL', () => {
      assert.equal(server.urls.length, users.length);
      for (const url of server.urls) assert.deepEqual([...url.searchParams.keys()], ['ticket']);
      assert.deepEqual(
        server.ticketRequests.map(({ authorization }) => authorization),
        users.map((user) => `Bearer ${user}`),
      );
    });

    test('each newcomer offers to everyone already there, who answer', () => {
      const pairs = (event) =>
        server.relayed
          .filter((r) => r.event === event)
          .map((r) => `${r.data.fromUserId}→${users.find((user) => r.to === socketOf(user))}`)
          .sort();
      assert.deepEqual(pairs('webrtc:offer'), ['bob→alice', 'carol→alice', 'carol→bob']);
      assert.deepEqual(pairs('webrtc:answer'), ['alice→bob', 'alice→carol', 'bob→carol']);
      for (const pc of PeerConnection.instances) assert.equal(pc.signalingState, 'stable');
      assert.equal(PeerConnection.instances.length, 6, 'one connection per pair and side');
    });

    test('candidates go both ways and are added', () => {
      const candidates = server.relayed.filter((r) => r.event === 'webrtc:ice-candidate');
      assert.equal(candidates.length, 6);
      for (const pc of PeerConnection.instances) {
        assert.equal(pc.addedCandidates.length, 1);
        assert.match(pc.addedCandidates[0].candidate, /^candidate:/);
      }
    });

    test("every page shows the others' media, with the local tracks sent and the room's iceServers", () => {
      for (const user of users) {
        const others = users.filter((other) => other !== user).map(socketOf).sort();
        assert.deepEqual([...browser[user].shown.keys()].sort(), others, `${user}'s page`);
      }
      for (const pc of PeerConnection.instances) {
        assert.deepEqual(pc.config.iceServers, server.iceServers);
        assert.equal(pc.senders.filter((sender) => sender.track).length, 2);
      }
    });

    test('the helpers it names were used as it says', () => {
      if (!/\baddTile\b/.test(source)) return;
      const tiles = browser.alice.calls.filter(([name]) => name === 'addTile').map(([, ...args]) => args);
      assert.deepEqual(tiles, [
        [socketOf('bob'), 'BOB'],
        [socketOf('carol'), 'CAROL'],
      ]);
    });
  });
}
