// The call page's ringing, media badges and moderation (calls/static/calls/call-page.js), in a
// fake DOM built from call.html, against the fake server: one page per test, the others as
// plain clients. `node --test tests/js/`.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';

import { CallMesh, SignalingClient } from '../../calls/static/calls/signaling.js';
import { FakeServer, fakePeerConnectionClass, settle } from './fakes.mjs';
import { openPage } from './page.mjs';

const ROOM = 'group-1';

describe('the call page: ringing, media state and moderation', () => {
  let server;
  let page;
  let others;
  beforeEach(() => {
    server = new FakeServer();
    server.groups.set('1', { alice: 'owner', bob: 'member', carol: 'member' });
    others = [];
  });
  afterEach(() => {
    page?.app.client?.close();
    page?.restore();
    page = null;
    for (const { client } of others) client.close();
  });

  /** `name` on a device of its own (not a page): a client, and a mesh joined to `roomId` unless null. */
  async function device(name, roomId = ROOM) {
    const client = new SignalingClient({ url: 'ws://calls.test/ws/calls/', token: name, WebSocket: server.WebSocket, fetch: server.fetch, resumeStorage: null });
    const heard = [];
    for (const event of ['webrtc:incoming-call', 'webrtc:ring-ended']) client.on(event, (data) => heard.push([event, data]));
    const metadata = roomId?.startsWith('group-') ? { groupId: roomId.slice(6) } : undefined;
    const mesh = new CallMesh(client, { roomId, metadata, RTCPeerConnection: fakePeerConnectionClass() });
    const told = [];
    for (const event of ['participant-updated', 'kicked', 'participant-left']) mesh.on(event, (data) => told.push([event, data]));
    if (roomId) await mesh.join();
    else await client.ready();
    await settle();
    const other = { client, mesh, heard, told };
    others.push(other);
    return other;
  }

  /** The page signed in as `name`, in the lobby (and connected), or in `roomValue`'s call. */
  async function pageOf(name, roomValue) {
    page = await openPage(server);
    await page.signIn(name);
    if (roomValue) await page.join(roomValue);
    await settle();
    return page;
  }

  const visible = (element) => element.visible();
  const button = (id) => page.$(id);

  test('in the lobby: alice rings the group, the banner shows; accept joins the call with its groupId', async () => {
    await pageOf('carol');
    assert.equal(page.view(), 'lobby');
    assert.ok(page.app.client.connected, 'the lobby is connected, to hear rings');
    const alice = await device('alice');
    const { ringId } = await alice.mesh.ring();
    await settle();

    const [banner] = page.rings();
    assert.ok(banner && visible(banner));
    assert.equal(banner.dataset.ringId, ringId);
    assert.equal(banner.querySelector('.ring-from').textContent, 'ALICE');
    assert.match(banner.querySelector('.ring-what').textContent, /is calling you · Team 1/);

    const updates = [];
    alice.mesh.on('ring-updated', (data) => updates.push(data.status));
    banner.querySelector('.accept').click();
    await settle();
    assert.equal(page.rings().length, 0);
    assert.equal(page.view(), 'call');
    assert.equal(page.$('call-title').textContent, 'Team 1');
    assert.deepEqual(server.rooms.get(ROOM).map(({ participant }) => participant.userId), ['alice', 'carol']);
    assert.deepEqual(updates, ['accepted']);
    assert.deepEqual([...page.tiles().keys()], [alice.client.socketId]);
    assert.equal(page.storage.get('calls.call'), JSON.stringify({ roomId: ROOM, title: 'Team 1', groupId: '1' }));
  });

  test('declined on one device, the banner of the other goes; decline replies', async () => {
    await pageOf('bob');
    const phone = await device('bob', null);
    const alice = await device('alice');
    const { ringId } = await alice.mesh.ring(['bob']);
    await settle();
    assert.equal(page.rings().length, 1);
    await phone.client.replyToRing(ringId, 'decline');
    await settle();
    assert.equal(page.rings().length, 0, 'answered elsewhere: gone');

    // The page's own decline: its reply ends the ring on the other device.
    const again = await alice.mesh.ring(['bob']);
    await settle();
    page.rings()[0].querySelector('.decline').click();
    await settle();
    assert.equal(page.rings().length, 0);
    assert.deepEqual(phone.heard.at(-1), ['webrtc:ring-ended', { ringId: again.ringId, callRoomId: ROOM, reason: 'declined' }]);
    assert.equal(page.view(), 'lobby');
    assert.equal(page.notice(), '');
  });

  test('during another call the banner shows too; accept leaves that call for the ringing one', async () => {
    await pageOf('carol');
    page.$('room-choice').value = 'custom';
    page.$('room-id').value = 'side-room';
    page.$('join-form').fire('submit');
    await settle();
    assert.equal(page.view(), 'call');
    assert.equal(page.app.mesh.roomId, 'side-room');
    const alice = await device('alice');
    await alice.mesh.ring();
    await settle();
    const [banner] = page.rings();
    assert.ok(visible(banner), 'over the call');
    banner.querySelector('.accept').click();
    await settle();
    assert.equal(page.app.mesh.roomId, ROOM);
    assert.equal(server.rooms.get('side-room').length, 0);
    assert.equal(page.view(), 'call');
    assert.ok(page.streams[0].getTracks().every((track) => track.stopped), "the first call's camera is closed");
  });

  test('a page opened while its user is rung shows the call; a missed ring goes away', async () => {
    const alice = await device('alice');
    await alice.mesh.ring(['carol']);
    await pageOf('carol');
    assert.equal(page.rings().length, 1);
    server.expireRings();
    await settle();
    assert.equal(page.rings().length, 0);
  });

  test('"Call the group" in a group call rings, says who is called and how each answered; again stops it', async () => {
    await pageOf('alice', ROOM);
    assert.ok(visible(page.$('waiting')), 'alone: waiting for others');
    const bob = await device('bob', null);
    const carol = await device('carol', null);
    button('ring-group').click();
    await settle();
    assert.equal(bob.heard.length, 1);
    assert.equal(carol.heard.length, 1);
    assert.equal(page.$('call-note').textContent, 'Calling BOB, CAROL…');
    assert.equal(button('ring-group').textContent, 'Stop calling');

    await bob.client.replyToRing(bob.heard[0][1].ringId, 'decline');
    await settle();
    assert.equal(page.$('call-note').textContent, 'BOB declined. Calling CAROL…');
    button('ring-group').click();
    await settle();
    assert.equal(carol.heard.at(-1)[1].reason, 'cancelled');
    assert.equal(button('ring-group').textContent, 'Call the group');

    button('ring-group').click();
    await settle();
    await new CallMesh(carol.client, { roomId: ROOM, metadata: { groupId: '1' }, RTCPeerConnection: fakePeerConnectionClass() }).join();
    await settle();
    assert.equal(page.$('call-note').textContent, 'CAROL answered. Calling BOB…');
    assert.equal(page.$('waiting').hidden, true);
  });

  test('no "Call the group" outside a group call; the creator of such a room may moderate it', async () => {
    page = await openPage(server);
    await page.signIn('bob');
    page.$('room-choice').value = 'custom';
    page.$('room-id').value = 'open-room';
    page.$('join-form').fire('submit');
    await settle();
    assert.equal(page.$('ring-group').hidden, true);
    assert.equal(page.$('lock-call').hidden, false, 'bob started it');
    assert.equal(page.$('end-for-all').hidden, false);
  });

  test("others' mute and camera show as badges, a camera-off tile as the name; own toggles send the media state", async () => {
    const bob = await device('bob');
    await pageOf('alice', ROOM);
    const tile = page.tileOf('bob');
    assert.equal(tile.querySelector('.badge.muted').hidden, true);
    assert.equal(tile.classList.contains('camera-off'), false);

    await bob.mesh.setMedia({ audio: false, video: false });
    await settle();
    assert.equal(visible(tile.querySelector('.badge.muted')), true);
    assert.equal(visible(tile.querySelector('.badge.camera')), true);
    assert.equal(tile.classList.contains('camera-off'), true);
    assert.equal(tile.querySelector('.placeholder-name').textContent, 'BOB');
    assert.equal(tile.querySelector('.initials').textContent, 'B');
    await bob.mesh.setMedia({ audio: true });
    await settle();
    assert.equal(tile.querySelector('.badge.muted').hidden, true);

    const aliceEntry = () => server.rooms.get(ROOM).find(({ participant }) => participant.userId === 'alice').participant;
    assert.deepEqual(aliceEntry().media, { audio: true, video: true, screen: false }, 'joined with what the tracks are');
    button('toggle-mic').click();
    await settle();
    assert.deepEqual(aliceEntry().media, { audio: false, video: true, screen: false });
    const [, { participant }] = bob.told.findLast(([event]) => event === 'participant-updated');
    assert.equal(participant.media.audio, false);
    assert.equal(page.streams[0].getTracks()[0].enabled, false);
    button('toggle-camera').click();
    await settle();
    assert.equal(aliceEntry().media.video, false);
    assert.equal(page.tileOf('alice').classList.contains('camera-off'), true);
    assert.equal(visible(page.tileOf('alice').querySelector('.badge.muted')), true);
  });

  test('a member sees no moderator controls; the group owner does', async () => {
    await device('carol');
    await pageOf('bob', ROOM);
    for (const id of ['lock-call', 'end-for-all']) assert.equal(page.$(id).hidden, true, id);
    assert.equal(page.tileOf('carol').querySelector('.moderate').hidden, true);
    assert.equal(page.$('ring-group').hidden, false, 'any member may ring');
    page.app.client.close();
    page.restore();

    await pageOf('alice', ROOM);
    for (const id of ['lock-call', 'end-for-all']) assert.equal(page.$(id).hidden, false, id);
    assert.equal(page.tileOf('carol').querySelector('.moderate').hidden, false);
    assert.equal(page.tileOf('alice').querySelector('.moderate').hidden, true, 'not on our own tile');
  });

  test('a staff member who is a plain member of the group sees the moderator controls', async () => {
    server.staff.add('bob');
    await device('carol');
    await pageOf('bob', ROOM);
    for (const id of ['lock-call', 'end-for-all']) assert.equal(page.$(id).hidden, false, id);
    assert.equal(page.tileOf('carol').querySelector('.moderate').hidden, false);
  });

  test('the owner kicks with a ban: the kicked page says by whom and until when, and its rejoin is refused', async () => {
    const alice = await device('alice');
    await pageOf('carol', ROOM);
    await alice.mesh.kick(page.app.client.socketId, { banSecs: 600 });
    await settle();
    assert.equal(page.view(), 'lobby');
    assert.match(page.notice(), /^ALICE removed you from the call\. You cannot join it again until .*\d{1,2}:\d{2}.*\.$/);
    assert.equal(page.$('notice').dataset.tone, 'alert');
    assert.equal(page.storage.has('calls.call'), false, 'a reload does not try to rejoin');
    assert.equal(page.$('tiles').children.length, 0);
    assert.ok(page.streams[0].getTracks().every((track) => track.stopped));

    await page.join(ROOM);
    assert.equal(page.view(), 'lobby');
    assert.match(page.notice(), /^You were removed from this call and cannot join it again until .*\d{1,2}:\d{2}/);
  });

  test("the page's moderator menu kicks (with a ban, or not); a refusal is shown as a message", async () => {
    server.groups.get('1').dave = 'admin';
    const bob = await device('bob');
    const dave = await device('dave');
    await pageOf('alice', ROOM);
    const tile = page.tileOf('bob');
    const menu = tile.querySelector('.moderate-menu');
    assert.equal(menu.hidden, true);
    tile.querySelector('.moderate-toggle').click();
    assert.equal(menu.hidden, false);
    assert.equal(tile.querySelector('.moderate-toggle').getAttribute('aria-expanded'), 'true');
    tile.querySelector('.kick-ban').click();
    await settle();
    assert.equal(menu.hidden, true);
    const [[, kicked]] = bob.told.filter(([event]) => event === 'kicked');
    assert.equal(kicked.by.userId, 'alice');
    assert.ok(kicked.bannedUntil instanceof Date);
    assert.equal(page.tileOf('bob'), null);
    assert.equal(page.$('call-note').textContent, 'BOB was removed from the call.');

    const daveTile = page.tileOf('dave');
    daveTile.querySelector('.moderate-toggle').click();
    daveTile.querySelector('.kick').click();
    await settle();
    assert.match(page.notice(), /only staff can remove a moderator/);
    assert.deepEqual(dave.told.filter(([event]) => event === 'kicked'), []);
    assert.equal(page.view(), 'call');
  });

  test('lock and unlock: the state shows on every page; a locked call refuses a member with the reason', async () => {
    const bob = await device('bob');
    await pageOf('alice', ROOM);
    assert.equal(page.$('call-locked').hidden, true);
    button('lock-call').click();
    await settle();
    assert.equal(visible(page.$('call-locked')), true);
    assert.equal(button('lock-call').textContent, 'Unlock call');
    assert.equal(button('lock-call').getAttribute('aria-pressed'), 'true');
    assert.equal(page.$('call-note').textContent, 'You locked the call.');
    assert.equal(bob.mesh.locked, true);
    page.app.client.close();
    page.restore();

    await pageOf('carol');
    await page.join(ROOM);
    assert.equal(page.view(), 'lobby');
    assert.equal(page.notice(), 'This call is locked: only its moderators can join it now.');
    page.app.client.close();
    page.restore();

    // bob's page joins while unlocked, and sees the lock come and go.
    const alice = await device('alice');
    await alice.mesh.lock(false);
    await pageOf('bob', ROOM);
    await alice.mesh.lock(true);
    await settle();
    assert.equal(visible(page.$('call-locked')), true);
    assert.equal(page.$('lock-call').hidden, true, 'bob may not unlock it');
    assert.equal(page.$('call-note').textContent, 'ALICE locked the call.');
  });

  test('"End for all" ends the call on every page: back to the lobby, saying who ended it', async () => {
    const bob = await device('bob');
    const ended = new Promise((resolve) => bob.mesh.once('call-ended', resolve));
    await pageOf('alice', ROOM);
    button('end-for-all').click();
    await settle();
    assert.equal((await ended).by.userId, 'alice');
    assert.equal(page.view(), 'lobby');
    assert.equal(page.notice(), 'You ended the call for everyone.');
    assert.equal(page.$('notice').dataset.tone, 'info');
    page.app.client.close();
    page.restore();

    await pageOf('bob', ROOM);
    const alice = await device('alice');
    await alice.mesh.endCall();
    await settle();
    assert.equal(page.view(), 'lobby');
    assert.equal(page.notice(), 'ALICE ended the call for everyone.');
    assert.equal(page.storage.has('calls.call'), false);
  });

  test('a non-moderator who tries is told by the server, shown as a message', async () => {
    await pageOf('bob', ROOM);
    page.$('lock-call').fire('click'); // (hidden for a member; the server refuses all the same)
    await settle();
    assert.equal(page.notice(), "Only this call's moderators can do that.");
  });
});
