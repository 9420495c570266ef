"""Presence in Redis, shared by every server process (docs/protocol.md §5 rule 8).

Each method is one Lua script, so it is atomic across processes: of n concurrent first
joins exactly one creates the room, and capacity is checked and taken in one step.

Liveness: every process holds a lease (``lease:<server>``, renewed by ``heartbeat``)
and owns the members it joined (``server:<server>:sockets``). ``reap`` finds servers
whose lease expired and removes their members; claiming a dead server is an ``SREM`` in
the same script, so exactly one survivor reports each departure. A process that finds
Redis emptied (restart without persistence) puts back the members it still holds.

Keys (prefix ``calls:``), for room R (its key: the callRoomId with its group), socket S
and server V:
  room:R            hash  session (JSON), group
  room:R:order      zset  S → join time in µs (Redis clock), oldest first
  room:R:members    hash  S → participant (JSON)
  room:R:channels   hash  S → channel name
  socket:S          string R
  server:V:sockets  set   S…
  user:U:conns      hash  S → channel name: the user's open connections, all processes
  server:V:conns    hash  S → U: the connections server V counted
  servers           set   V…
  lease:V           string, expires after the lease time
  reaped:V          string, marks a server that was declared dead
  parked            zset  S → end of its grace in ms (Redis clock): parked participants
  parked:S          hash  user, room, epoch, offset, cap, sealed, dropped
  parked:S:early    list  messages routed to S before it was parked that arrived after
  parked:S:later    list  messages routed to S since (a message: event, newline, data)
A parked socket belongs to no server: a dead server's reap leaves it to its grace.
Redis Cluster is not supported: scripts touch keys of several rooms.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from django.core.exceptions import ImproperlyConfigured
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from calls.presence.base import (
    Buffered,
    Departure,
    Expired,
    Forward,
    JoinOutcome,
    JoinStatus,
    Member,
    Parking,
    Participant,
    Presence,
    PresenceEvicted,
    PresenceUnavailable,
    ResumeStatus,
    Resumption,
    RingEnd,
    RingRecord,
    RoomSession,
    Route,
    RouteStatus,
)

logger = logging.getLogger("calls")

PREFIX = "calls:"

# Shared Lua helpers, prepended to the scripts that need them.
_LUA_HELPERS = """
local P = ARGV[1]
local function room_keys(room)
  local k = P .. 'room:' .. room
  return k, k .. ':order', k .. ':members', k .. ':channels'
end
local function members_of(room)
  local _, order, members, channels = room_keys(room)
  local ids = redis.call('ZRANGE', order, 0, -1)
  if #ids == 0 then return {}, {}, {} end
  return ids, redis.call('HMGET', members, unpack(ids)), redis.call('HMGET', channels, unpack(ids))
end
-- Remove a socket from its room; returns {session, participant, ids, participants, channels}.
local function remove(room, sock, server)
  local key, order, members, channels = room_keys(room)
  local session = redis.call('HGET', key, 'session')
  local participant = redis.call('HGET', members, sock)
  redis.call('ZREM', order, sock)
  redis.call('HDEL', members, sock)
  redis.call('HDEL', channels, sock)
  redis.call('DEL', P .. 'socket:' .. sock)
  redis.call('SREM', P .. 'server:' .. server .. ':sockets', sock)
  local ids, ps, chs = members_of(room)
  if #ids == 0 then redis.call('DEL', key, order, members, channels) end
  return {session, participant, ids, ps, chs}
end
"""

# Keep a message for a parked socket (list ':early' or ':later'), dropping the oldest
# (early ones first) past its capacity.
_LUA_KEEP = """
local function keep(pk, list, item)
  local cap = redis.call('HGET', pk, 'cap')
  if not cap then return end
  redis.call('RPUSH', pk .. list, item)
  local over = redis.call('LLEN', pk .. ':early') + redis.call('LLEN', pk .. ':later') - tonumber(cap)
  while over > 0 do
    if not redis.call('LPOP', pk .. ':early') then redis.call('LPOP', pk .. ':later') end
    redis.call('HINCRBY', pk, 'dropped', 1)
    over = over - 1
  end
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# ARGV: prefix, room, session, group, socket, participant, channel, capacity,
#       groups of the joiner (comma-separated), server, moderator ('1' or '0'), user,
#       video as the room's call type ('1' or '0')
_JOIN = (
    _LUA_HELPERS
    + """
local room, sock, server = ARGV[2], ARGV[5], ARGV[10]
local key, order, members, channels = room_keys(room)
local current = redis.call('GET', P .. 'socket:' .. sock)
local exists = redis.call('EXISTS', key) == 1
if ARGV[4] ~= '' then
  local member = false
  for id in string.gmatch(ARGV[9], '[^,]+') do
    if id == ARGV[4] then member = true end
  end
  if not member then return {'forbidden'} end
end
local locked = redis.call('HGET', key, 'locked') == '1'
if exists and current == room then
  local ids, ps, chs = members_of(room)
  return {'already-in-room', redis.call('HGET', key, 'session'), ids, ps, chs, false, locked}
end
local now = redis.call('TIME')
local banned = redis.call('GET', P .. 'ban:' .. room .. ':' .. ARGV[12])
if banned and tonumber(banned) > tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) then
  return {'banned', banned}
end
if exists then
  if locked and ARGV[11] ~= '1' then
    local live = cjson.decode(redis.call('HGET', key, 'session'))
    if ARGV[4] ~= '' or tostring(live.metadata.createdBy) ~= ARGV[12] then return {'locked'} end
  end
  if redis.call('ZCARD', order) >= tonumber(ARGV[8]) then return {'full'} end
end
local previous = false
if current then previous = remove(current, sock, server) end
local status = 'joined'
if not exists then
  redis.call('HSET', key, 'session', ARGV[3], 'group', ARGV[4])
  status = 'created'
end
local participant = ARGV[6]
if ARGV[13] == '1' then  -- video as the room's call type
  local live = cjson.decode(redis.call('HGET', key, 'session'))
  local p = cjson.decode(participant)
  p.media.video = live.metadata.callType == 'video'
  participant = cjson.encode(p)
end
redis.call('ZADD', order, tonumber(now[1]) * 1000000 + tonumber(now[2]), sock)
redis.call('HSET', members, sock, participant)
redis.call('HSET', channels, sock, ARGV[7])
redis.call('SET', P .. 'socket:' .. sock, room)
redis.call('SADD', P .. 'server:' .. server .. ':sockets', sock)
local ids, ps, chs = members_of(room)
return {status, redis.call('HGET', key, 'session'), ids, ps, chs, previous, locked}
"""
)

# ARGV: prefix, room, socket, server
_LEAVE = (
    _LUA_HELPERS
    + """
if redis.call('GET', P .. 'socket:' .. ARGV[3]) ~= ARGV[2] then return false end
return remove(ARGV[2], ARGV[3], ARGV[4])
"""
)

# ARGV: prefix, room, sender, target ('' for everyone else)[, inbox, type, event, data: a Forward]
_ROUTE = (
    _LUA_KEEP
    + """
local key = ARGV[1] .. 'room:' .. ARGV[2]
local channels = key .. ':channels'
if redis.call('EXISTS', key) == 0 then return {'no-room'} end
if redis.call('HEXISTS', channels, ARGV[3]) == 0 then return {'sender-not-in-room'} end
local out = {'ok'}
if ARGV[4] ~= '' then
  local channel = redis.call('HGET', channels, ARGV[4])
  if not channel then return {'target-not-in-room'} end
  out[2] = channel
else
  local all = redis.call('HGETALL', channels)
  for i = 1, #all, 2 do
    if all[i] ~= ARGV[3] then out[#out + 1] = all[i + 1] end
  end
end
if not ARGV[5] then return out end
-- Forward: publish to other processes' inboxes as channels_redis's pub/sub layer does
-- (msgpack, no prefix), once per inbox; return this process's channels.
local mine, others, inboxes = {'ok'}, {}, {}
for i = 2, #out do
  local inbox, sock = string.match(out[i], '^(.+)#([^#]+)$')
  if inbox == nil or inbox == ARGV[5] then
    mine[#mine + 1] = out[i]
  elseif inbox == 'parked' then
    keep(ARGV[1] .. 'parked:' .. sock, ':later', ARGV[7] .. '\\n' .. ARGV[8])
  else
    if others[inbox] == nil then others[inbox] = {}; inboxes[#inboxes + 1] = inbox end
    table.insert(others[inbox], sock)
  end
end
for _, inbox in ipairs(inboxes) do
  redis.call('PUBLISH', inbox, cmsgpack.pack({type = ARGV[6], to = others[inbox], event = ARGV[7], data = ARGV[8]}))
end
return mine
"""
)

# ARGV: prefix, socket, user, epoch, offset, grace ms, capacity, server, fence inbox
# ('' for none), then the pending messages.
_PARK = (
    _LUA_KEEP
    + """
local P, sock, user, server, fence = ARGV[1], ARGV[2], ARGV[3], ARGV[8], ARGV[9]
local channel = 'parked#' .. sock
local room = redis.call('GET', P .. 'socket:' .. sock)
if room then redis.call('HSET', P .. 'room:' .. room .. ':channels', sock, channel) else room = '' end
redis.call('SREM', P .. 'server:' .. server .. ':sockets', sock)
redis.call('HDEL', P .. 'server:' .. server .. ':conns', sock)
redis.call('HSET', P .. 'user:' .. user .. ':conns', sock, channel)
local pk = P .. 'parked:' .. sock
redis.call('DEL', pk, pk .. ':early', pk .. ':later')
local sealed = '0'
if fence == '' then sealed = '1' end
redis.call('HSET', pk, 'user', user, 'room', room, 'epoch', ARGV[4], 'offset', ARGV[5], 'cap', ARGV[7],
  'sealed', sealed, 'dropped', 0)
redis.call('ZADD', P .. 'parked', now_ms() + tonumber(ARGV[6]), sock)
for i = 10, #ARGV do keep(pk, ':early', ARGV[i]) end
if fence ~= '' then
  redis.call('PUBLISH', fence, cmsgpack.pack({type = 'calls.fence', to = {sock}, epoch = ARGV[4]}))
end
return 1
"""
)

# ARGV: prefix, message, then the sockets. Returns the channels of those that resumed.
_BUFFER = (
    _LUA_KEEP
    + """
local out = {}
for i = 3, #ARGV do
  local sock = ARGV[i]
  local pk = ARGV[1] .. 'parked:' .. sock
  if redis.call('HEXISTS', pk, 'cap') == 1 then
    keep(pk, ':later', ARGV[2])
  else
    local room = redis.call('GET', ARGV[1] .. 'socket:' .. sock)
    local channel = room and redis.call('HGET', ARGV[1] .. 'room:' .. room .. ':channels', sock)
    if channel and channel ~= 'parked#' .. sock then out[#out + 1] = channel end
  end
end
return out
"""
)

# ARGV: prefix, socket, user, epoch, message. Returns false if kept, else the channel
# that reaches the socket now (false too if there is none).
_BUFFER_LATE = (
    _LUA_KEEP
    + """
local P, sock = ARGV[1], ARGV[2]
local pk = P .. 'parked:' .. sock
local epoch = redis.call('HGET', pk, 'epoch')
if epoch == ARGV[4] then
  keep(pk, ':early', ARGV[5])
  return false
end
if epoch then return false end
local live = redis.call('HGET', P .. 'user:' .. ARGV[3] .. ':conns', sock)
if live and live ~= 'parked#' .. sock then return live end
return false
"""
)

# ARGV: prefix, socket, epoch
_SEAL = """
local pk = ARGV[1] .. 'parked:' .. ARGV[2]
if redis.call('HGET', pk, 'epoch') == ARGV[3] then redis.call('HSET', pk, 'sealed', '1') end
return 1
"""

# ARGV: prefix, socket, user, epoch ('' for any), channel, server, force ('1' or '0')
_RESUME = """
local P, sock, user, channel, server = ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6]
local pk = P .. 'parked:' .. sock
local rec = redis.call('HMGET', pk, 'user', 'room', 'epoch', 'offset', 'sealed', 'dropped')
if not rec[1] then
  local live = redis.call('HGET', P .. 'user:' .. user .. ':conns', sock)
  if live and live ~= 'parked#' .. sock then return {'live', live} end
  return {'unknown'}
end
if rec[1] ~= user then return {'foreign'} end
if ARGV[4] ~= '' and rec[3] ~= ARGV[4] then return {'used'} end
if rec[5] ~= '1' and ARGV[7] ~= '1' then return {'unsealed'} end
redis.call('ZREM', P .. 'parked', sock)
local early = redis.call('LRANGE', pk .. ':early', 0, -1)
local later = redis.call('LRANGE', pk .. ':later', 0, -1)
redis.call('DEL', pk, pk .. ':early', pk .. ':later')
local session, participant = '', ''
local room = P .. 'room:' .. rec[2]
if rec[2] ~= '' and redis.call('HEXISTS', room .. ':channels', sock) == 1 then
  redis.call('HSET', room .. ':channels', sock, channel)
  redis.call('SADD', P .. 'server:' .. server .. ':sockets', sock)
  session = redis.call('HGET', room, 'session')
  participant = redis.call('HGET', room .. ':members', sock)
end
redis.call('HSET', P .. 'user:' .. user .. ':conns', sock, channel)
redis.call('HSET', P .. 'server:' .. server .. ':conns', sock, user)
local out = {'resumed', session, participant, rec[3], rec[4], rec[6]}
for _, m in ipairs(early) do out[#out + 1] = m end
for _, m in ipairs(later) do out[#out + 1] = m end
return out
"""

# ARGV: prefix, at most this many. Returns {socket, user, dropped, departure or false}…
_EXPIRE_PARKED = (
    _LUA_HELPERS
    + _LUA_KEEP
    + """
local out = {}
for _, sock in ipairs(redis.call('ZRANGEBYSCORE', P .. 'parked', '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', P .. 'parked', sock)
  local pk = P .. 'parked:' .. sock
  local rec = redis.call('HMGET', pk, 'user', 'room', 'dropped')
  redis.call('DEL', pk, pk .. ':early', pk .. ':later')
  local user = rec[1] or ''
  if user ~= '' then redis.call('HDEL', P .. 'user:' .. user .. ':conns', sock) end
  local departure = false
  if rec[2] and rec[2] ~= '' and redis.call('GET', P .. 'socket:' .. sock) == rec[2] then
    departure = remove(rec[2], sock, '')
  end
  out[#out + 1] = {sock, user, rec[3] or '0', departure}
end
return out
"""
)
EXPIRED_PER_CALL = 100

# ARGV: prefix, room, socket, audio, video, screen ('1' or '0'). Returns false if the
# socket is not in the room, else {participant, ids, participants, channels}.
_UPDATE_MEDIA = (
    _LUA_HELPERS
    + """
local _, _, members = room_keys(ARGV[2])
local raw = redis.call('HGET', members, ARGV[3])
if not raw then return false end
local p = cjson.decode(raw)
p.media = {audio = ARGV[4] == '1', video = ARGV[5] == '1', screen = ARGV[6] == '1'}
raw = cjson.encode(p)
redis.call('HSET', members, ARGV[3], raw)
local ids, ps, chs = members_of(ARGV[2])
return {raw, ids, ps, chs}
"""
)

# ARGV: prefix, room, locked ('1' or '0'). Returns {ids, participants, channels}.
_SET_LOCKED = (
    _LUA_HELPERS
    + """
local key = room_keys(ARGV[2])
if redis.call('EXISTS', key) == 0 then return {{}, {}, {}} end
redis.call('HSET', key, 'locked', ARGV[3])
local ids, ps, chs = members_of(ARGV[2])
return {ids, ps, chs}
"""
)

# ARGV: prefix, room. Returns false, or {session, ids, participants, channels}.
_END_ROOM = (
    _LUA_HELPERS
    + """
local key, order, members, channels = room_keys(ARGV[2])
local session = redis.call('HGET', key, 'session')
if not session then return false end
local ids, ps, chs = members_of(ARGV[2])
for _, sock in ipairs(ids) do redis.call('DEL', P .. 'socket:' .. sock) end
redis.call('DEL', key, order, members, channels)
return {session, ids, ps, chs}
"""
)

# Rings: ring:I (string: the record as JSON), ring:I:ringing (set of callees still
# ringing), room:R:rung (hash callee -> I), user:U:rings (set of I), rings (zset
# "I|U" -> end of the ring in ms).
_LUA_RINGS = """
local P = ARGV[1]
-- End one callee's ring if it is still ringing: {record, user, outcome}, or nil.
local function end_ring(ring, user, outcome)
  if redis.call('SREM', P .. 'ring:' .. ring .. ':ringing', user) == 0 then return nil end
  local record = redis.call('GET', P .. 'ring:' .. ring)
  local room = cjson.decode(record).roomKey
  if redis.call('HGET', P .. 'room:' .. room .. ':rung', user) == ring then
    redis.call('HDEL', P .. 'room:' .. room .. ':rung', user)
  end
  redis.call('SREM', P .. 'user:' .. user .. ':rings', ring)
  redis.call('ZREM', P .. 'rings', ring .. '|' .. user)
  return {record, user, outcome}
end
"""

# ARGV: prefix, ring id, record, room, end ms, key ttl ms, callees… Returns the callees rung.
_START_RING = (
    _LUA_RINGS
    + """
local ring, rung = ARGV[2], {}
for i = 7, #ARGV do
  local user = ARGV[i]
  if redis.call('HSETNX', P .. 'room:' .. ARGV[4] .. ':rung', user, ring) == 1 then
    redis.call('SADD', P .. 'ring:' .. ring .. ':ringing', user)
    redis.call('SADD', P .. 'user:' .. user .. ':rings', ring)
    redis.call('ZADD', P .. 'rings', ARGV[5], ring .. '|' .. user)
    rung[#rung + 1] = user
  end
end
if #rung > 0 then
  redis.call('SET', P .. 'ring:' .. ring, ARGV[3], 'PX', ARGV[6])
  redis.call('PEXPIRE', P .. 'ring:' .. ring .. ':ringing', ARGV[6])
end
return rung
"""
)

# ARGV: prefix, outcome, ring id, room, user, ringer user ('' when not given).
_END_RINGS = (
    _LUA_RINGS
    + """
local outcome, ring, room, user, ringer = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local out = {}
local function add(e) if e then out[#out + 1] = e end end
if ring ~= '' then
  local record = redis.call('GET', P .. 'ring:' .. ring)
  if not record then return out end
  if ringer ~= '' and tostring(cjson.decode(record).ringer.userId) ~= ringer then return out end
  if user ~= '' then
    add(end_ring(ring, user, outcome))
  else
    for _, callee in ipairs(redis.call('SMEMBERS', P .. 'ring:' .. ring .. ':ringing')) do
      add(end_ring(ring, callee, outcome))
    end
  end
  return out
end
local rung = P .. 'room:' .. room .. ':rung'
if user ~= '' then
  local id = redis.call('HGET', rung, user)
  if id then add(end_ring(id, user, outcome)) end
else
  local all = redis.call('HGETALL', rung)
  for i = 1, #all, 2 do add(end_ring(all[i + 1], all[i], outcome)) end
end
return out
"""
)

# ARGV: prefix, at most this many.
_EXPIRE_RINGS = (
    _LUA_RINGS
    + _LUA_KEEP
    + """
local out = {}
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', P .. 'rings', '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[2]))) do
  local ring, user = string.match(entry, '^(.+)|([^|]+)$')
  local e = end_ring(ring, user, 'missed')
  redis.call('ZREM', P .. 'rings', entry)
  if e then out[#out + 1] = e end
end
return out
"""
)

# ARGV: prefix, server, lease ms. Returns -1 if this server was declared dead, 1 if
# Redis did not know it (first beat, or Redis lost its data), else 0.
_HEARTBEAT = """
local P, server = ARGV[1], ARGV[2]
if redis.call('EXISTS', P .. 'reaped:' .. server) == 1 then return -1 end
local fresh = redis.call('SADD', P .. 'servers', server)
redis.call('SET', P .. 'lease:' .. server, '1', 'PX', ARGV[3])
return fresh
"""

# ARGV: prefix, dead server, tombstone secs. Returns the departures, or false if the
# server is alive or another process already claimed it.
_REAP = (
    _LUA_HELPERS
    + """
local dead = ARGV[2]
if redis.call('EXISTS', P .. 'lease:' .. dead) == 1 then return false end
if redis.call('SREM', P .. 'servers', dead) == 0 then return false end
redis.call('SET', P .. 'reaped:' .. dead, '1', 'EX', ARGV[3])
local departures = {}
local owned = P .. 'server:' .. dead .. ':sockets'
for _, sock in ipairs(redis.call('SMEMBERS', owned)) do
  local room = redis.call('GET', P .. 'socket:' .. sock)
  if room then departures[#departures + 1] = remove(room, sock, dead) end
end
redis.call('DEL', owned)
local conns = P .. 'server:' .. dead .. ':conns'
local all = redis.call('HGETALL', conns)
for i = 1, #all, 2 do redis.call('HDEL', P .. 'user:' .. all[i + 1] .. ':conns', all[i]) end
redis.call('DEL', conns)
return departures
"""
)

# ARGV: prefix, user, socket, channel, limit, server. Returns 1 if counted, 0 if the
# user already holds ``limit`` connections.
_OPEN_CONNECTION = """
local P = ARGV[1]
local key = P .. 'user:' .. ARGV[2] .. ':conns'
if redis.call('HEXISTS', key, ARGV[3]) == 0 and redis.call('HLEN', key) >= tonumber(ARGV[5]) then return 0 end
redis.call('HSET', key, ARGV[3], ARGV[4])
redis.call('HSET', P .. 'server:' .. ARGV[6] .. ':conns', ARGV[3], ARGV[2])
return 1
"""

# ARGV: prefix, user, socket, server
_CLOSE_CONNECTION = """
local P = ARGV[1]
redis.call('HDEL', P .. 'user:' .. ARGV[2] .. ':conns', ARGV[3])
redis.call('HDEL', P .. 'server:' .. ARGV[4] .. ':conns', ARGV[3])
return 1
"""

# ARGV: prefix, room, session, group, socket, participant, channel, score, server
_RESTORE = (
    _LUA_HELPERS
    + """
local room, sock = ARGV[2], ARGV[5]
local key, order, members, channels = room_keys(room)
redis.call('HSETNX', key, 'session', ARGV[3])
redis.call('HSETNX', key, 'group', ARGV[4])
redis.call('ZADD', order, 'NX', ARGV[8], sock)
redis.call('HSET', members, sock, ARGV[6])
redis.call('HSET', channels, sock, ARGV[7])
redis.call('SET', P .. 'socket:' .. sock, room)
redis.call('SADD', P .. 'server:' .. ARGV[9] .. ':sockets', sock)
return 1
"""
)

REAPED_TOMBSTONE_SECS = 3600  # long enough for an evicted process to notice on its next beat

P = ParamSpec("P")
T = TypeVar("T")


def _unavailable_on_redis_error(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn Redis and network failures into ``PresenceUnavailable``."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(exc)) from exc

    return wrapper


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def _session_json(session: RoomSession) -> str:
    data = {"roomId": session.room_id, "sessionId": session.session_id, "metadata": session.metadata}
    return json.dumps(data | {"groupId": session.group_id}, separators=(",", ":"))


def _session_from(raw: bytes | str) -> RoomSession:
    data = json.loads(raw)
    return RoomSession(data["roomId"], data["sessionId"], data["metadata"], data["groupId"])


def _participant_json(participant: Participant) -> str:
    return json.dumps(participant.wire(), separators=(",", ":"))


def _participant_from(raw: bytes | str) -> Participant:
    return Participant.from_wire(json.loads(raw))


def _members_from(participants: list[Any], channels: list[Any]) -> tuple[Member, ...]:
    return tuple(
        Member(_participant_from(p), c.decode() if isinstance(c, bytes) else c)
        for p, c in zip(participants, channels, strict=True)
        if p is not None and c is not None
    )


def _departure_from(reply: list[Any]) -> Departure:
    session_raw, participant_raw, _ids, participants, channels = reply
    remaining = _members_from(participants, channels)
    return Departure(_session_from(session_raw), _participant_from(participant_raw), remaining)


@dataclass(slots=True)
class _Held:
    """A member this process serves, kept to put it back if Redis loses its data."""

    session: RoomSession
    member: Member


class _Batched:
    """Calls of one script made in the same pass of the event loop, sent as one pipeline:
    one write to Redis and one read for all of them. A system call each way costs as much
    as the script itself on loopback, and under load many relays are routed in one pass
    (docs/benchmarks.md has the figures). A call alone in its pass goes as a plain call."""

    def __init__(self, redis: aioredis.Redis, script: AsyncScript) -> None:
        self.redis = redis
        self.script = script
        self.forming: list[tuple[list[Any], asyncio.Future]] | None = None
        self.sending: set[asyncio.Task] = set()

    async def __call__(self, *, args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        if self.forming is not None:  # a batch is forming in this pass: join it
            reply = loop.create_future()
            self.forming.append((args, reply))
            return await reply
        self.forming = []
        cancelled = True
        try:
            await asyncio.sleep(0)  # let the calls ready in this pass join
            cancelled = False
        finally:
            others, self.forming = self.forming, None
            if cancelled and others:
                self._spawn(others)
        if not others:
            return await self.script(args=args)
        reply = loop.create_future()
        self._spawn([(args, reply), *others])  # a task of its own: no caller's cancellation strands the rest
        return await reply

    def _spawn(self, batch: list[tuple[list[Any], asyncio.Future]]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _send(self, batch: list[tuple[list[Any], asyncio.Future]]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for args, _ in batch:
                    pipe.execute_command("EVALSHA", self.script.sha, 0, *args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, reply in batch:
                if not reply.done():
                    reply.set_exception(exc)
            return
        for (args, reply), result in zip(batch, replies, strict=True):
            if reply.done():  # its caller went away
                continue
            if isinstance(result, NoScriptError):  # Redis restarted: the plain call loads it
                try:
                    result = await self.script(args=args)
                except Exception as exc:
                    result = exc
            if isinstance(result, Exception):
                reply.set_exception(result)
            else:
                reply.set_result(result)


class RedisPresence(Presence):
    shared = True

    @classmethod
    def from_settings(cls, settings: Any) -> RedisPresence:
        if not settings.REDIS_URL:
            raise ImproperlyConfigured("RedisPresence needs REDIS_URL.")
        from calls.liveness import heartbeat_interval_secs, lease_secs

        return cls(settings.REDIS_URL, lease_secs=lease_secs(), restore_window_secs=1.5 * heartbeat_interval_secs())

    def __init__(
        self, url: str, *, lease_secs: float, restore_window_secs: float = 1.5, server_id: str | None = None
    ) -> None:
        # No socket timeout: blocking is bounded by the scripts, and redis-py 8's default
        # of 5 s would cut idle connections (channels_redis#422, redis-py#4091).
        self.redis = aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=5, max_connections=1000)
        self.server_id = server_id or uuid.uuid4().hex
        self.lease_ms = int(lease_secs * 1000)
        self._held: dict[str, _Held] = {}
        self._connections: dict[str, tuple[str, str]] = {}  # socketId -> (userId, channel), to restore
        self._registered = False
        # After a restore, peers need up to one beat to restore theirs.
        self.restore_window_secs = restore_window_secs
        self._restored_at = -restore_window_secs
        self._join = self.redis.register_script(_JOIN)
        self._leave = self.redis.register_script(_LEAVE)
        self._route = _Batched(self.redis, self.redis.register_script(_ROUTE))
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._reap = self.redis.register_script(_REAP)
        self._restore = self.redis.register_script(_RESTORE)
        self._open_connection = self.redis.register_script(_OPEN_CONNECTION)
        self._close_connection = self.redis.register_script(_CLOSE_CONNECTION)
        self._park = self.redis.register_script(_PARK)
        self._buffer = self.redis.register_script(_BUFFER)
        self._buffer_late = self.redis.register_script(_BUFFER_LATE)
        self._seal = self.redis.register_script(_SEAL)
        self._resume = self.redis.register_script(_RESUME)
        self._expire_parked = self.redis.register_script(_EXPIRE_PARKED)
        self._update_media = self.redis.register_script(_UPDATE_MEDIA)
        self._set_locked = self.redis.register_script(_SET_LOCKED)
        self._end_room = self.redis.register_script(_END_ROOM)
        self._start_ring = self.redis.register_script(_START_RING)
        self._end_rings = self.redis.register_script(_END_RINGS)
        self._expire_rings = self.redis.register_script(_EXPIRE_RINGS)

    @_unavailable_on_redis_error
    async def open_connection(self, *, user_id: str, socket_id: str, channel_name: str, limit: int) -> bool:
        if not self._registered:
            await self.heartbeat()  # hold a lease before counting, or a peer could reap the count
        args: list[str | int] = [PREFIX, user_id, socket_id, channel_name, limit, self.server_id]
        if not await self._open_connection(args=args):
            return False
        self._connections[socket_id] = (user_id, channel_name)
        return True

    def forget(self, socket_id: str) -> None:
        self._held.pop(socket_id, None)  # or a restore after Redis lost its data would bring it back

    @_unavailable_on_redis_error
    async def close_connection(self, *, user_id: str, socket_id: str) -> None:
        self._connections.pop(socket_id, None)
        self._held.pop(socket_id, None)
        await self._close_connection(args=[PREFIX, user_id, socket_id, self.server_id])

    @_unavailable_on_redis_error
    async def connections_of(self, *, user_id: str) -> tuple[str, ...]:
        return tuple(_text(c) for c in await self.redis.hvals(f"{PREFIX}user:{user_id}:conns"))

    @_unavailable_on_redis_error
    async def join(
        self,
        *,
        new_session: RoomSession,
        member: Member,
        capacity: int,
        group_ids: frozenset[str],
        moderator: bool = False,
    ) -> JoinOutcome:
        if not self._registered:
            await self.heartbeat()  # hold a lease before owning members, or a peer could reap them
        elif self._held:
            await self._restore_if_forgotten()  # so that the joiner sees this process's members
        socket_id = member.participant.socket_id
        reply = await self._join(
            args=[
                PREFIX,
                new_session.key,
                _session_json(new_session),
                new_session.group_id or "",
                socket_id,
                _participant_json(member.participant),
                member.channel_name,
                capacity,
                ",".join(sorted(group_ids)),
                self.server_id,
                int(moderator),
                member.participant.user_id,
                int(member.participant.video is None),
            ]
        )
        status = JoinStatus(reply[0].decode())
        if status is JoinStatus.BANNED:
            return JoinOutcome(status, banned_until_ms=int(reply[1]))
        if status in (JoinStatus.FORBIDDEN, JoinStatus.FULL, JoinStatus.LOCKED):
            return JoinOutcome(status)
        session = _session_from(reply[1])
        members = _members_from(reply[3], reply[4])
        previous = _departure_from(reply[5]) if reply[5] else None
        joined = next(m for m in members if m.participant.socket_id == socket_id)
        self._held[socket_id] = _Held(session, joined)
        return JoinOutcome(status, session, members, previous, locked=bool(reply[6]))

    @_unavailable_on_redis_error
    async def leave(self, *, room_key: str, socket_id: str) -> Departure | None:
        reply = await self._leave(args=[PREFIX, room_key, socket_id, self.server_id])
        if not reply:
            return None
        self._held.pop(socket_id, None)
        return _departure_from(reply)

    @_unavailable_on_redis_error
    async def room_of(self, *, socket_id: str) -> str | None:
        room = await self.redis.get(f"{PREFIX}socket:{socket_id}")
        return _text(room) if room is not None else None

    @_unavailable_on_redis_error
    async def session(self, *, room_key: str) -> RoomSession | None:
        raw = await self.redis.hget(f"{PREFIX}room:{room_key}", "session")
        return _session_from(raw) if raw is not None else None

    @_unavailable_on_redis_error
    async def members(self, *, room_key: str) -> tuple[Member, ...]:
        key = f"{PREFIX}room:{room_key}"
        ids: list[bytes] = await self.redis.zrange(f"{key}:order", 0, -1)  # type: ignore[assignment]
        if not ids:
            return ()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(f"{key}:members", ids)
            pipe.hmget(f"{key}:channels", ids)
            participants, channels = await pipe.execute()
        return _members_from(participants, channels)

    @_unavailable_on_redis_error
    async def route(self, *, room_key: str, sender: str, target: str | None, forward: Forward | None = None) -> Route:
        route = await self._route_once(room_key, sender, target, forward)
        suspicious = route.status in (RouteStatus.NO_ROOM, RouteStatus.SENDER_NOT_IN_ROOM) and sender in self._held
        if suspicious and await self._restore_if_forgotten():
            route = await self._route_once(room_key, sender, target, forward)
        if route.status is not RouteStatus.OK and self._restoring():
            # This process or its peers may not have put their members back yet: "not
            # found" could be false.
            raise PresenceUnavailable("presence is being restored after Redis lost its data")
        return route

    async def _route_once(self, room_key: str, sender: str, target: str | None, forward: Forward | None) -> Route:
        args: list[str | bytes] = [PREFIX, room_key, sender, target or ""]
        if forward is not None:
            # One round trip instead of two (route, then publish).
            args += [forward.inbox, forward.message_type, forward.event, forward.data]
        reply = await self._route(args=args)
        return Route(RouteStatus(reply[0].decode()), tuple(c.decode() for c in reply[1:]))

    async def _restore_if_forgotten(self) -> bool:
        """If Redis no longer knows this process (it lost its data), register again and
        put back the members this process holds, now rather than at the next beat.
        Returns whether it did."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sismember(f"{PREFIX}servers", self.server_id)
            pipe.exists(f"{PREFIX}reaped:{self.server_id}")
            registered, reaped = await pipe.execute()
        if registered or reaped:
            return False  # Redis knows this process (or evicted it, which the next beat handles)
        await self.heartbeat()
        return True

    def _restoring(self) -> bool:
        return time.monotonic() - self._restored_at < self.restore_window_secs

    @_unavailable_on_redis_error
    async def ping(self) -> None:
        await self.redis.ping()

    @_unavailable_on_redis_error
    async def heartbeat(self) -> None:
        result = await self._heartbeat(args=[PREFIX, self.server_id, self.lease_ms])
        if result == -1:
            # Peers declared this process dead and told its rooms; its members are gone.
            channels = self.held_channels()
            self._held.clear()
            self._connections.clear()
            self.server_id = uuid.uuid4().hex
            self._registered = False
            raise PresenceEvicted(channels)
        if result == 1 and self._registered:
            # Restoring from now: registered again, but the members are back only once
            # the restore is done, and a route meanwhile must not say "not found".
            self._restored_at = time.monotonic()
            await self._restore_held()
            self._restored_at = time.monotonic()
            logger.warning("Redis had lost this process's %d members; restored them", len(self._held))
        self._registered = True

    async def _restore_held(self) -> None:
        """Redis lost its data: put back every member and connection this process still
        serves."""
        for socket_id, (user_id, channel) in list(self._connections.items()):
            await self._open_connection(args=[PREFIX, user_id, socket_id, channel, 2**31, self.server_id])
        for socket_id, held in list(self._held.items()):
            await self._restore(
                args=[
                    PREFIX,
                    held.session.key,
                    _session_json(held.session),
                    held.session.group_id or "",
                    socket_id,
                    _participant_json(held.member.participant),
                    held.member.channel_name,
                    _joined_at_score(held.member.participant),
                    self.server_id,
                ]
            )

    @_unavailable_on_redis_error
    async def reap(self) -> list[Departure]:
        servers = [_text(s) for s in await self.redis.smembers(f"{PREFIX}servers")]
        others = [s for s in servers if s != self.server_id]
        async with self.redis.pipeline(transaction=False) as pipe:
            for server in others:
                pipe.exists(f"{PREFIX}lease:{server}")
            leases = await pipe.execute()
        departures: list[Departure] = []
        for server, has_lease in zip(others, leases, strict=True):
            if has_lease:
                continue
            # The script checks the lease again and claims the server atomically.
            reply = await self._reap(args=[PREFIX, server, REAPED_TOMBSTONE_SECS])
            departures.extend(_departure_from(d) for d in reply or [])
        return departures

    @_unavailable_on_redis_error
    async def park(self, parking: Parking) -> None:
        socket_id = parking.socket_id
        self._held.pop(socket_id, None)
        self._connections.pop(socket_id, None)
        args: list[str | int | bytes] = [
            PREFIX,
            socket_id,
            parking.user_id,
            parking.epoch,
            parking.offset,
            int(parking.grace_secs * 1000),
            parking.capacity,
            self.server_id,
            parking.fence or "",
        ]
        await self._park(args=args + [_buffered(m) for m in parking.pending])

    @_unavailable_on_redis_error
    async def buffer(self, *, socket_ids: list[str], message: Buffered) -> list[str]:
        return [_text(channel) for channel in await self._buffer(args=[PREFIX, _buffered(message), *socket_ids])]

    @_unavailable_on_redis_error
    async def buffer_late(self, *, socket_id: str, user_id: str, epoch: int, message: Buffered) -> str | None:
        channel = await self._buffer_late(args=[PREFIX, socket_id, user_id, epoch, _buffered(message)])
        return _text(channel) if channel else None

    @_unavailable_on_redis_error
    async def seal(self, *, socket_id: str, epoch: int) -> None:
        await self._seal(args=[PREFIX, socket_id, epoch])

    @_unavailable_on_redis_error
    async def resume(
        self, *, socket_id: str, user_id: str, epoch: int | None, channel_name: str, force: bool
    ) -> Resumption:
        if not self._registered:
            await self.heartbeat()  # hold a lease before owning it, or a peer could reap it
        args = [PREFIX, socket_id, user_id, "" if epoch is None else epoch, channel_name, self.server_id, int(force)]
        reply = await self._resume(args=args)
        status = ResumeStatus(_text(reply[0]))
        if status is ResumeStatus.LIVE:
            return Resumption(status, channel=_text(reply[1]))
        if status is not ResumeStatus.RESUMED:
            return Resumption(status)
        _, session_raw, participant_raw, epoch_raw, offset, dropped, *missed = reply
        session = _session_from(session_raw) if session_raw else None
        participant = _participant_from(participant_raw) if participant_raw else None
        if session is not None and participant is not None:
            self._held[socket_id] = _Held(session, Member(participant, channel_name))
        self._connections[socket_id] = (user_id, channel_name)
        return Resumption(
            status,
            session,
            participant,
            int(epoch_raw),
            int(offset),
            tuple(_unbuffered(m) for m in missed),
            int(dropped),
        )

    @_unavailable_on_redis_error
    async def expire_parked(self) -> list[Expired]:
        expired: list[Expired] = []
        while True:
            reply = await self._expire_parked(args=[PREFIX, EXPIRED_PER_CALL])
            for socket_id, user_id, dropped, departure in reply:
                gone = _departure_from(departure) if departure else None
                expired.append(Expired(_text(socket_id), _text(user_id), int(dropped), gone))
            if len(reply) < EXPIRED_PER_CALL:
                return expired

    @_unavailable_on_redis_error
    async def parked_count(self) -> int:
        return int(await self.redis.zcard(f"{PREFIX}parked"))

    @_unavailable_on_redis_error
    async def update_media(
        self, *, room_key: str, socket_id: str, audio: bool, video: bool, screen: bool
    ) -> tuple[Participant, tuple[Member, ...]] | None:
        args: list[str | int] = [PREFIX, room_key, socket_id, int(audio), int(video), int(screen)]
        reply = await self._update_media(args=args)
        if not reply:
            return None
        participant = _participant_from(reply[0])
        held = self._held.get(socket_id)
        if held is not None:
            self._held[socket_id] = _Held(held.session, Member(participant, held.member.channel_name))
        return participant, _members_from(reply[2], reply[3])

    @_unavailable_on_redis_error
    async def set_locked(self, *, room_key: str, locked: bool) -> tuple[Member, ...]:
        _, participants, channels = await self._set_locked(args=[PREFIX, room_key, int(locked)])
        return _members_from(participants, channels)

    @_unavailable_on_redis_error
    async def ban(self, *, room_key: str, user_id: str, until_ms: int) -> None:
        ttl = max(1, until_ms - int(time.time() * 1000))
        await self.redis.set(f"{PREFIX}ban:{room_key}:{user_id}", until_ms, px=ttl)

    @_unavailable_on_redis_error
    async def end_room(self, *, room_key: str) -> tuple[RoomSession, tuple[Member, ...]] | None:
        reply = await self._end_room(args=[PREFIX, room_key])
        if not reply:
            return None
        members = _members_from(reply[2], reply[3])
        for member in members:
            self._held.pop(member.participant.socket_id, None)
        return _session_from(reply[0]), members

    @_unavailable_on_redis_error
    async def start_ring(self, ring: RingRecord, user_ids: list[str]) -> list[str]:
        ttl_ms = max(1, ring.expires_at_ms - int(time.time() * 1000)) + RING_RECORD_LINGER_MS
        args: list[str | int] = [PREFIX, ring.ring_id, _ring_json(ring), ring.room_key, ring.expires_at_ms, ttl_ms]
        args += user_ids
        return [_text(u) for u in await self._start_ring(args=args)]

    @_unavailable_on_redis_error
    async def end_rings(
        self,
        *,
        outcome: str,
        ring_id: str | None = None,
        room_key: str | None = None,
        user_id: str | None = None,
        ringer_user_id: str | None = None,
    ) -> list[RingEnd]:
        args = [PREFIX, outcome, ring_id or "", room_key or "", user_id or "", ringer_user_id or ""]
        return [_ring_end_from(e) for e in await self._end_rings(args=args)]

    @_unavailable_on_redis_error
    async def expire_rings(self) -> list[RingEnd]:
        return [_ring_end_from(e) for e in await self._expire_rings(args=[PREFIX, EXPIRED_PER_CALL])]

    @_unavailable_on_redis_error
    async def rings_of(self, *, user_id: str) -> list[RingRecord]:
        ids = [_text(i) for i in await self.redis.smembers(f"{PREFIX}user:{user_id}:rings")]
        if not ids:
            return []
        records = await self.redis.mget([f"{PREFIX}ring:{i}" for i in sorted(ids)])
        return [_ring_from(r) for r in records if r is not None]

    def held_channels(self) -> list[str]:
        """Every connection this process counted, in a room or not."""
        channels = {held.member.channel_name for held in self._held.values()}
        return sorted(channels | {channel for _, channel in self._connections.values()})

    async def close(self) -> None:
        await self.redis.aclose()

    @_unavailable_on_redis_error
    async def locked(self, *, room_key: str) -> bool:
        raw = await self.redis.hget(f"{PREFIX}room:{room_key}", "locked")
        return raw is not None and _text(raw) == "1"


RING_RECORD_LINGER_MS = 60_000  # a ring's record outlives its time: late replies still find it


def _ring_json(ring: RingRecord) -> str:
    data = {
        "ringId": ring.ring_id,
        "roomKey": ring.room_key,
        "roomId": ring.room_id,
        "groupId": ring.group_id,
        "callType": ring.call_type,
        "sessionId": ring.session_id,
        "ringer": ring.ringer.wire(),
        "expiresAt": ring.expires_at_ms,
    }
    return json.dumps(data, separators=(",", ":"))


def _ring_from(raw: bytes | str) -> RingRecord:
    data = json.loads(raw)
    return RingRecord(
        data["ringId"],
        data["roomKey"],
        data["roomId"],
        data["groupId"],
        data["callType"],
        data["sessionId"],
        Participant.from_wire(data["ringer"]),
        int(data["expiresAt"]),
    )


def _ring_end_from(reply: list[Any]) -> RingEnd:
    record, user_id, outcome = reply
    return RingEnd(_ring_from(record), _text(user_id), _text(outcome))


def _buffered(message: Buffered) -> bytes:
    """A buffered message as one list item: its event, a newline, its data."""
    event, data = message
    return event.encode() + b"\n" + data


def _unbuffered(item: bytes) -> Buffered:
    event, _, data = item.partition(b"\n")
    return event.decode(), data


def _joined_at_score(participant: Participant) -> int:
    """A join-order score for a restored member: its original join time in µs."""
    joined = dt.datetime.fromisoformat(participant.joined_at.replace("Z", "+00:00"))
    return int(joined.timestamp() * 1_000_000)
