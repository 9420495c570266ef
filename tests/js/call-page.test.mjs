// The call page (calls/static/calls/call-page.js) in a fake DOM, against the fake server:
// sign in, join, and what it says when the signaling client stops. `node --test tests/js/`.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';

import { CallMesh, SignalingClient } from '../../calls/static/calls/signaling.js';
import { FakeServer, fakePeerConnectionClass, settle } from './fakes.mjs';
import { ACCESS_TTL_SECS, openPage } from './page.mjs';

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
