// The call page's lobby list of live calls (calls/static/calls/call-page.js, GET /api/calls/live/
// of docs/protocol.md §11), in a fake DOM built from call.html, against the fake server: what it
// lists, how it joins, and when it asks (polls, refreshes, never two requests at once).
// `node --test tests/js/`.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';

import { CallMesh, SignalingClient } from '../../calls/static/calls/signaling.js';
import { FakeServer, fakePeerConnectionClass, settle } from './fakes.mjs';
import { openPage } from './page.mjs';

const POLL_MS = 5000;
const EMPTY_TEXT = 'No calls are live in your groups right now.';

/** A request that the test answers by hand: `answer(calls)` lets the held one through. */
function heldEndpoint() {
  const held = [];
  const endpoint = (calls) => new Promise((resolve) => held.push({ calls, resolve }));
  endpoint.held = held;
  /** Answer the oldest held request: with what the server holds, or with `answer`. */
  endpoint.release = (answer) => {
    const next = held.shift();
    assert.ok(next, 'a request is held');
    next.resolve(answer ?? next.calls);
  };
  return endpoint;
}

describe('the lobby: the live calls of my groups', () => {
  let server;
  let page;
  let others;
  beforeEach(() => {
    server = new FakeServer();
    server.groups.set('1', { alice: 'owner', bob: 'member', carol: 'member' });
    server.groups.set('2', { carol: 'member', dave: 'owner' });
    server.groups.set('3', { erin: 'owner' });
    others = [];
  });
  afterEach(() => {
    page?.app.client?.close();
    page?.restore();
    page = null;
    for (const { client } of others) client.close();
  });

  /** `name` on a device of its own (not a page), in `roomId` (with `groupId`, or none for null). */
  async function device(name, roomId = 'group-1', groupId = roomId.startsWith('group-') ? roomId.slice(6) : null) {
    const client = new SignalingClient({ url: 'ws://calls.test/ws/calls/', token: name, WebSocket: server.WebSocket, fetch: server.fetch, resumeStorage: null });
    const metadata = groupId === null ? undefined : { groupId };
    const mesh = new CallMesh(client, { roomId, metadata, RTCPeerConnection: fakePeerConnectionClass() });
    await mesh.join();
    await settle();
    const other = { client, mesh };
    others.push(other);
    return other;
  }

  /** The page signed in as `name`, in the lobby. */
  async function lobbyOf(name, options) {
    page = await openPage(server, options);
    await page.signIn(name);
    await settle();
    assert.equal(page.view(), 'lobby');
    return page;
  }

  const titles = () => page.liveCalls().map(({ title }) => title);
  const empty = () => (page.$('live-empty').visible() ? page.$('live-empty').textContent : '');
  const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  test("lists my groups' live calls, newest first, with who is in them; not another group's", async () => {
    await device('alice');
    await device('bob');
    await pause(5); // (a later start)
    await device('dave', 'standup', '2');
    await device('erin', 'group-3'); // not carol's group
    await device('frank', 'loose', null); // no group, not hers
    await lobbyOf('carol');

    const shown = page.liveCalls();
    assert.deepEqual(titles(), ['Team 2 · standup', 'Team 1']);
    assert.deepEqual(shown.map(({ people }) => people), ['DAVE', 'ALICE, BOB']);
    assert.match(shown[1].meta, /^2 people · since \d\d:\d\d/);
    assert.match(shown[0].meta, /^1 person · /);
    for (const { button, title, item } of shown) {
      assert.ok(button.visible());
      assert.equal(button.textContent, 'Join');
      assert.equal(button.getAttribute('aria-label'), `Join ${title}`);
      assert.equal(button.getAttribute('type'), 'button');
      assert.equal(item.tagName, 'li');
    }
    assert.equal(empty(), '');
    assert.equal(page.$('live-status').visible(), false);
    const [request] = page.liveRequests();
    assert.match(request.init.headers.Authorization, /^Bearer /);
  });

  test('joining from the list joins that room with its groupId, and the call is titled as listed', async () => {
    const dave = await device('dave', 'standup', '2');
    await lobbyOf('carol');
    const [standup] = page.liveCalls();
    assert.equal(standup.title, 'Team 2 · standup');

    standup.button.click();
    // While the camera opens, no Join button takes a second click.
    assert.equal(standup.button.disabled, true);
    assert.equal(page.$('join').disabled, true);
    await settle();
    assert.equal(page.view(), 'call');
    assert.equal(page.notice(), '');
    assert.equal(page.$('call-title').textContent, 'Team 2 · standup');
    assert.deepEqual(page.app.call.metadata, { groupId: '2' });
    assert.equal(page.app.call.roomId, 'standup');
    assert.deepEqual(server.rooms.get('standup').map(({ participant }) => participant.userId), ['dave', 'carol']);
    assert.deepEqual([...dave.mesh.participants.values()].map(({ userId }) => userId), ['carol']);
    assert.deepEqual(JSON.parse(page.storage.get('calls.call')), { roomId: 'standup', title: 'Team 2 · standup', groupId: '2' });
    assert.equal(standup.button.disabled, false);
  });

  test('a room without a group that I am in elsewhere is listed as its id, and joined without a groupId', async () => {
    await device('carol', 'loose', null); // her other device
    await device('bob', 'loose', null);
    await lobbyOf('carol');
    const [loose] = page.liveCalls();
    assert.equal(loose.title, 'loose');
    assert.equal(loose.people, 'You, BOB', 'each person once; her own devices are "You"');
    loose.button.click();
    await settle();
    assert.equal(page.view(), 'call');
    assert.equal(page.app.call.metadata, undefined);
  });

  test('a locked call and an audio call say so', async () => {
    const alice = await device('alice');
    await alice.mesh.lock(true);
    await lobbyOf('carol', {
      live: (calls) => [...calls, { ...calls[0], sessionId: 'audio-1', callRoomId: 'chat', callType: 'audio', locked: false }],
    });
    const [locked, audio] = page.liveCalls();
    assert.equal(locked.locked, true);
    assert.equal(locked.audio, false);
    assert.equal(locked.button.getAttribute('aria-label'), 'Join Team 1 (locked)');
    assert.equal(audio.locked, false);
    assert.equal(audio.audio, true);
    assert.equal(audio.title, 'Team 1 · chat');
  });

  test('an empty list says so, once the answer is in', async () => {
    const endpoint = heldEndpoint();
    await lobbyOf('carol', { live: endpoint });
    assert.equal(endpoint.held.length, 1);
    assert.equal(empty(), '', 'nothing said before the answer');
    endpoint.release();
    await settle();
    assert.deepEqual(page.liveCalls(), []);
    assert.equal(empty(), EMPTY_TEXT);
  });

  test('polled every 5 s in the lobby: a call that starts is listed, one that ends goes; one request a poll', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    await lobbyOf('carol');
    assert.equal(page.liveRequests().length, 1);
    assert.equal(empty(), EMPTY_TEXT);

    const alice = await device('alice');
    t.mock.timers.tick(POLL_MS - 1);
    await settle();
    assert.equal(page.liveRequests().length, 1, 'not before 5 s');
    t.mock.timers.tick(1);
    await settle();
    assert.equal(page.liveRequests().length, 2);
    assert.deepEqual(titles(), ['Team 1']);
    assert.equal(empty(), '');

    const bob = await device('bob');
    t.mock.timers.tick(POLL_MS);
    await settle();
    assert.deepEqual(page.liveCalls().map(({ people }) => people), ['ALICE, BOB']);

    await alice.mesh.leave();
    await bob.mesh.leave();
    t.mock.timers.tick(POLL_MS);
    await settle();
    assert.deepEqual(page.liveCalls(), []);
    assert.equal(empty(), EMPTY_TEXT);
    assert.equal(page.liveRequests().length, 4);
  });

  test('a poll keeps the items of calls that go on, in place (a focused Join button stays)', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    await device('alice');
    await lobbyOf('carol');
    const [first] = page.liveCalls();
    let replaced = 0;
    const list = page.$('live-calls');
    const replaceChildren = list.replaceChildren.bind(list);
    list.replaceChildren = (...nodes) => {
      replaced += 1;
      replaceChildren(...nodes);
    };
    await device('bob');
    t.mock.timers.tick(POLL_MS);
    await settle();
    const [again] = page.liveCalls();
    assert.equal(again.item, first.item, 'the same element');
    assert.equal(again.people, 'ALICE, BOB', 'with what changed');
    assert.equal(replaced, 0, 'the list was not rebuilt');
  });

  test('never two requests at once: refreshes asked meanwhile make one more, after the answer', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const endpoint = heldEndpoint();
    await lobbyOf('carol', { live: endpoint });
    const alice = await device('alice');
    assert.equal(endpoint.held.length, 1);

    // A ring (a refresh), the tab hidden and shown again (a refresh), and the poll's time passing.
    await alice.mesh.ring();
    await settle();
    assert.equal(page.rings().length, 1);
    page.setVisibility('hidden');
    page.setVisibility('visible');
    t.mock.timers.tick(POLL_MS * 3);
    await settle();
    assert.equal(page.liveRequests().length, 1, 'still the one request');

    endpoint.release();
    await settle();
    assert.equal(page.liveRequests().length, 2, 'one more for all that was asked meanwhile');
    endpoint.release();
    await settle();
    assert.deepEqual(titles(), ['Team 1']);
    t.mock.timers.tick(POLL_MS - 1);
    await settle();
    assert.equal(page.liveRequests().length, 2, 'the next poll 5 s after the last answer');
    t.mock.timers.tick(1);
    await settle();
    assert.equal(page.liveRequests().length, 3);
    endpoint.release();
    await settle();
  });

  test('a hidden tab is not polled; shown again, it asks at once', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    await lobbyOf('carol');
    page.setVisibility('hidden');
    t.mock.timers.tick(POLL_MS * 10);
    await settle();
    assert.equal(page.liveRequests().length, 1);
    await device('alice');
    page.setVisibility('visible');
    await settle();
    assert.equal(page.liveRequests().length, 2);
    assert.deepEqual(titles(), ['Team 1']);
    t.mock.timers.tick(POLL_MS);
    await settle();
    assert.equal(page.liveRequests().length, 3, 'and polls again');
  });

  test('asked right after the own join and leave, and not polled during the call', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    await device('alice');
    await lobbyOf('carol');
    assert.equal(page.liveRequests().length, 1);
    await page.join('group-1');
    assert.equal(page.view(), 'call');
    assert.equal(page.liveRequests().length, 2, 'right after the join');
    assert.deepEqual(page.liveCalls().map(({ people }) => people), ['ALICE, You']);
    t.mock.timers.tick(POLL_MS * 10);
    await settle();
    assert.equal(page.liveRequests().length, 2, 'no polls during the call');

    page.$('leave').click();
    await settle();
    assert.equal(page.view(), 'lobby');
    assert.equal(page.liveRequests().length, 3, 'right after the leave');
    assert.deepEqual(page.liveCalls().map(({ people }) => people), ['ALICE']);
    t.mock.timers.tick(POLL_MS);
    await settle();
    assert.equal(page.liveRequests().length, 4, 'polled again in the lobby');
  });

  test('a ring that starts or ends refreshes the list at once', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    await lobbyOf('carol');
    assert.deepEqual(page.liveCalls(), []);
    const alice = await device('alice');
    const { ringId } = await alice.mesh.ring();
    await settle();
    assert.equal(page.rings().length, 1);
    assert.equal(page.liveRequests().length, 2, 'on incoming-call');
    assert.deepEqual(titles(), ['Team 1']);

    await alice.mesh.cancelRing(ringId);
    await alice.mesh.leave();
    await settle();
    assert.equal(page.rings().length, 0);
    // The ring ended before alice left, so the list may still show her: it is right at the next poll.
    assert.equal(page.liveRequests().length, 3, 'on ring-ended');
    t.mock.timers.tick(POLL_MS);
    await settle();
    assert.deepEqual(page.liveCalls(), []);
  });

  test('a failed request says so and keeps the list; the next poll puts it right', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    await device('alice');
    let failing = false;
    await lobbyOf('carol', { live: (calls) => (failing ? { status: 503, body: { detail: 'Presence is down.' } } : calls) });
    assert.deepEqual(titles(), ['Team 1']);
    failing = true;
    t.mock.timers.tick(POLL_MS);
    await settle();
    assert.equal(page.$('live-status').visible(), true);
    assert.equal(page.$('live-status').textContent, 'Could not load the live calls; trying again…');
    assert.equal(page.$('live-status').getAttribute('role'), null, 'not an alert');
    assert.deepEqual(titles(), ['Team 1'], 'the last list is kept');
    assert.equal(page.notice(), '');
    failing = false;
    t.mock.timers.tick(POLL_MS);
    await settle();
    assert.equal(page.$('live-status').visible(), false);
    assert.deepEqual(titles(), ['Team 1']);
  });

  test('a sign-out drops the list and an answer still coming; the next user gets their own', async () => {
    await device('alice');
    const endpoint = heldEndpoint();
    await lobbyOf('carol', { live: endpoint });
    endpoint.release();
    await settle();
    assert.deepEqual(titles(), ['Team 1']);

    // A refresh is out when she signs out: its answer is never shown.
    page.setVisibility('hidden');
    page.setVisibility('visible');
    await settle();
    assert.equal(endpoint.held.length, 1);
    page.$('sign-out').click();
    await settle();
    assert.equal(page.view(), 'sign-in');
    assert.deepEqual(page.liveCalls(), []);
    endpoint.release();
    await settle();
    assert.deepEqual(page.liveCalls(), []);
    assert.equal(empty(), '');

    // Bob signs in on the same page: his list, not hers.
    await page.signIn('bob');
    await settle();
    assert.equal(endpoint.held.length, 1);
    endpoint.release();
    await settle();
    assert.deepEqual(page.liveCalls().map(({ people }) => people), ['ALICE']);
    const bearer = page.liveRequests().at(-1).init.headers.Authorization.slice('Bearer '.length);
    assert.equal(JSON.parse(Buffer.from(bearer.split('.')[1], 'base64url')).user, 'bob');
  });

  test('a 401 for the list signs the page out', async () => {
    await lobbyOf('carol', { live: () => ({ status: 401, body: { detail: 'Token is invalid.' } }) }).catch(() => {});
    await settle();
    assert.equal(page.view(), 'sign-in');
    assert.equal(page.notice(), 'Your sign-in has expired; sign in again.');
    assert.equal(page.app.tokens, null);
  });
});
