// Open-loop load generator for the signaling server (docs/benchmarks.md).
//
// Opens authenticated websocket connections (round-robin over the given server URLs),
// fills rooms one participant at a time at a fixed join rate, lets
// every newcomer offer to everyone present (the target answers; 8 ICE candidates each
// way per pair), then sends targeted ICE candidates on a timer at a fixed total rate,
// whatever the server answers. Every relayed message carries a sequence number and its
// send time, so the receiver checks that it arrived exactly once, at its target only,
// from its sender, and how late.
//
// Modes:
//   scenario  connect, set up rooms, a steady phase, then optionally a bisection of the
//             steady rate (the highest rate with every message delivered, p99 under the
//             limit and this process not saturated).
//   idle      connect many clients and hold them: server RSS per connection.
// With --overload the scenario's steady phase is an overload instead: --rate for
// --duration, then at once a probe at --probe-rate for --probe-secs, both drained (at most
// --overload-drain-max-secs); it reports what was lost, the connections closed, the
// servers' peak RSS against the RSS before, and the probe's relay p99 in windows of send
// time (--probe-window-ms), hence how long after the load ended p99 was back under the
// limit.
//
// Framing (--framing):
//   native    the native endpoint's JSON frames, {"event", "data", "id"}; the token in
//             ?token=.
//   socketio  Engine.IO v4 / Socket.IO v5 over a plain websocket (a URL of
//             /socket.io/?EIO=4&transport=websocket): the server's handshake 0{...}, then
//             CONNECT 40{"token":...} answered 40{"sid":...}; events 42["event",data];
//             a join asks for an acknowledgement, 42<id>[...], answered 43<id>[reply]
//             (or by a plain room-joined event, from a server that does not acknowledge);
//             pings 2 answered 3. With --connected-on sid the CONNECT answer's sid is the
//             socketId (a server that sends no webrtc:connected), otherwise the
//             webrtc:connected event that follows it.
// The scenario, the checks and the figures are the same in both.
//
// Offers and answers carry the sequence number and send time in their SDP's o= line,
// candidates in the candidate string (foundation = sequence number, last word = time).
// Given the server (and Redis) PIDs it reads their CPU time and RSS from /proc at each
// phase boundary, and waits for them to be idle between phases. Prints one JSON report on
// stdout; progress goes to stderr.
//
// Usage (bench/run.py passes all of this): node bench/loadgen.mjs --urls ws://H:P/ws/calls/[,...]
//   --tokens tokens.json [--framing native|socketio [--connected-on event|sid]] [--mode scenario|idle] [--rooms 100 --size 4 --rate 5000 --duration 10]
//   [--bisect-lo 250 --bisect-hi 40000] [--overload --probe-rate 1000 --probe-secs 8]
//   [--pids 123,456 --redis-pid 789]
// The tokens file is a JSON list of access tokens: one per client, then two per URL for
// the warm-up.

import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import WebSocket from "ws";

const { values: args } = parseArgs({
  options: {
    urls: { type: "string" },
    tokens: { type: "string" },
    mode: { type: "string", default: "scenario" },
    rooms: { type: "string", default: "100" },
    size: { type: "string", default: "4" },
    ice: { type: "string", default: "8" },
    "join-rate": { type: "string", default: "100" },
    rate: { type: "string", default: "5000" },
    duration: { type: "string", default: "10" },
    "bisect-lo": { type: "string", default: "0" },
    "bisect-hi": { type: "string", default: "0" },
    "bisect-ratio": { type: "string", default: "1.1" },
    "step-secs": { type: "string", default: "5" },
    "p99-limit-ms": { type: "string", default: "50" },
    "drain-idle-secs": { type: "string", default: "1" },
    "drain-max-secs": { type: "string", default: "30" },
    "quiet-max-secs": { type: "string", default: "10" },
    "connect-concurrency": { type: "string", default: "32" },
    "idle-connections": { type: "string", default: "10000" },
    "idle-settle-secs": { type: "string", default: "3" },
    "idle-rooms-of": { type: "string", default: "0" },
    pids: { type: "string", default: "" },
    "redis-pid": { type: "string", default: "" },
    "clk-tck": { type: "string", default: "100" },
    deadline: { type: "string", default: "600" },
    "room-prefix": { type: "string", default: "" },
    framing: { type: "string", default: "native" },
    "connected-on": { type: "string", default: "event" },
    deflate: { type: "boolean", default: false },
    quiet: { type: "boolean", default: false },
    overload: { type: "boolean", default: false },
    "probe-rate": { type: "string", default: "1000" },
    "probe-secs": { type: "string", default: "8" },
    "probe-window-ms": { type: "string", default: "500" },
    "overload-drain-max-secs": { type: "string", default: "120" },
    "rss-sample-ms": { type: "string", default: "100" },
  },
});

const num = (name) => {
  const value = Number(args[name]);
  if (!Number.isFinite(value)) fail(`--${name} must be a number, got ${args[name]}`);
  return value;
};

function fail(message) {
  process.stderr.write(`loadgen: ${message}\n`);
  process.exit(2);
}

if (!args.urls || !args.tokens) fail("--urls and --tokens are required");
const URLS = args.urls.split(",").filter(Boolean);
const TOKENS = JSON.parse(readFileSync(args.tokens, "utf8"));
const SERVER_PIDS = args.pids.split(",").filter(Boolean).map(Number);
const REDIS_PID = args["redis-pid"] ? Number(args["redis-pid"]) : null;
const CLK_TCK = num("clk-tck");
const ICE = num("ice");
const P99_LIMIT_MS = num("p99-limit-ms");
const ROOM_PREFIX = args["room-prefix"] || `b${process.pid.toString(36)}`;
const WARMUP_TOKENS = 2 * URLS.length; // the last tokens of the file warm each server up
const SATURATED_CPU = 0.9; // of one core
const SATURATED_RATE = 0.97; // of the scheduled rate
if (!["event", "sid"].includes(args["connected-on"])) fail("--connected-on must be event or sid");
const CONNECTED_ON_SID = args["connected-on"] === "sid";

const log = (message) => {
  if (!args.quiet) process.stderr.write(`[loadgen ${(performance.now() / 1000).toFixed(1)}s] ${message}\n`);
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------- server figures

function procCpuMs(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLK_TCK; // utime + stime
  } catch {
    return Number.NaN; // the process is gone
  }
}

function procRssKb(pid) {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** CPU ms of the servers (summed) and of Redis, and the generator's own, at one instant. */
function cpuSnapshot() {
  const own = process.cpuUsage();
  return {
    at: performance.now(),
    server: SERVER_PIDS.reduce((sum, pid) => sum + procCpuMs(pid), 0),
    redis: REDIS_PID === null ? 0 : procCpuMs(REDIS_PID),
    own: (own.user + own.system) / 1000,
  };
}

function cpuSince(before) {
  const now = cpuSnapshot();
  const wallMs = now.at - before.at;
  return {
    wallMs,
    serverMs: now.server - before.server,
    redisMs: now.redis - before.redis,
    ownMs: now.own - before.own,
    ownCores: wallMs > 0 ? (now.own - before.own) / wallMs : 0,
  };
}

const serverRssKb = () => SERVER_PIDS.reduce((sum, pid) => sum + procRssKb(pid), 0);

// ---------------------------------------------------------------- bookkeeping

class GrowableArray {
  constructor(Type, capacity = 1 << 16) {
    this.Type = Type;
    this.data = new Type(capacity);
  }
  ensure(index) {
    if (index < this.data.length) return;
    let size = this.data.length;
    while (size <= index) size *= 2;
    const bigger = new this.Type(size);
    bigger.set(this.data);
    this.data = bigger;
  }
}

// Per sequence number: who sent it, to whom, in which phase, how often it arrived.
const expectedSender = new GrowableArray(Int32Array);
const expectedTarget = new GrowableArray(Int32Array);
const phaseOf = new GrowableArray(Uint8Array);
const arrivals = new GrowableArray(Uint8Array);
let nextSeq = 0;

const phases = [];
let currentPhase = null;

function newPhase(name, rate = null) {
  const phase = {
    id: phases.length,
    name,
    rate,
    sent: 0,
    delivered: 0,
    duplicates: 0,
    misdelivered: 0,
    errors: {},
    closes: 0,
    latencies: [],
    lastDeliveryAt: performance.now(),
    windows: null, // the probe's: per window of send time, messages sent and their latencies
  };
  if (phases.length >= 255) fail("too many phases");
  phases.push(phase);
  currentPhase = phase;
  return phase;
}

const totals = { errors: {}, closes: {}, socketErrors: {}, unexpectedEvents: {}, badFrames: 0 };
const count = (table, key) => {
  table[key] = (table[key] || 0) + 1;
};

function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return Math.round(sorted[rank] * 1000) / 1000;
}

function latencySummary(values) {
  const sorted = Float64Array.from(values).sort();
  return {
    p50: quantile(sorted, 0.5),
    p99: quantile(sorted, 0.99),
    max: sorted.length ? Math.round(sorted[sorted.length - 1] * 1000) / 1000 : null,
    count: sorted.length,
  };
}

// ---------------------------------------------------------------- framing

// What a decoded Socket.IO CONNECT answer and CONNECT_ERROR look like to the clients.
const SIO_CONNECT = "socket.io:connect";
const SIO_CONNECT_ERROR = "socket.io:connect-error";

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    totals.badFrames += 1;
    return null;
  }
}

/** The native endpoint: one JSON object per text frame. */
const NATIVE = {
  url: (base, token) => `${base}?token=${encodeURIComponent(token)}`,
  /** A server frame as {event, data, id?}, or null for one that carries no event. */
  decode(client, raw, isBinary) {
    if (isBinary) {
      totals.badFrames += 1;
      return null;
    }
    const frame = parseJson(raw);
    return frame !== null && typeof frame === "object" ? frame : null;
  },
  encode: (event, data, id) => JSON.stringify(id === undefined ? { event, data } : { event, data, id }),
  joinId: (client) => `j${client.index}`,
  /** A targeted ICE frame is this head, the candidate string, and ICE_TAIL. */
  iceHead: (room, targetSocketId) =>
    `{"event":"webrtc:ice-candidate","data":{"callRoomId":${JSON.stringify(room)},` +
    `"targetSocketId":${JSON.stringify(targetSocketId)},"candidate":"`,
  iceTail: '"}}',
};

/** Engine.IO v4 / Socket.IO v5 over a websocket, on the main namespace. */
const SOCKETIO = {
  url: (base) => base, // the token goes in the CONNECT packet's auth object
  decode(client, raw, isBinary) {
    if (isBinary) {
      totals.badFrames += 1;
      return null;
    }
    const text = raw.toString();
    switch (text[0]) {
      case "0": // Engine.IO handshake: connect to "/" with the token
        client.send(`40${JSON.stringify({ token: client.token })}`);
        return null;
      case "2": // ping: pong with the same data
        client.send(`3${text.slice(1)}`);
        return null;
      case "4":
        break;
      case "1": // Engine.IO close; the socket's close follows
      case "6": // noop
        return null;
      default:
        totals.badFrames += 1;
        return null;
    }
    switch (text[1]) {
      case "2": {
        // EVENT: ["event", data, ...more arguments]; the server asks for no acknowledgement
        const start = text.indexOf("[", 2);
        const args = start < 0 ? null : parseJson(text.slice(start));
        if (!Array.isArray(args) || typeof args[0] !== "string") return args === null ? null : bad();
        return { event: args[0], data: args[1] ?? {} };
      }
      case "3": {
        // ACK <id>[reply]: the reply is the native frame without its id
        const start = text.indexOf("[", 2);
        const args = start < 0 ? null : parseJson(text.slice(start));
        const reply = Array.isArray(args) ? args[0] : null;
        if (reply === null || typeof reply !== "object" || typeof reply.event !== "string") return bad();
        return { event: reply.event, data: reply.data ?? {}, id: Number(text.slice(2, start)) };
      }
      case "0":
        return { event: SIO_CONNECT, data: parseJson(text.slice(2)) ?? {} };
      case "4":
        return { event: SIO_CONNECT_ERROR, data: parseJson(text.slice(2)) ?? {} };
      case "1": // DISCONNECT from the server: counted as a close
        count(totals.closes, "socket.io-disconnect");
        if (currentPhase) currentPhase.closes += 1;
        return null;
      default:
        return bad();
    }
  },
  encode: (event, data, id) => `42${id === undefined ? "" : id}${JSON.stringify([event, data])}`,
  joinId: (client) => client.index + 2, // an acknowledgement id is a non-negative integer
  iceHead: (room, targetSocketId) =>
    `42["webrtc:ice-candidate",{"callRoomId":${JSON.stringify(room)},` +
    `"targetSocketId":${JSON.stringify(targetSocketId)},"candidate":"`,
  iceTail: '"}]',
};

function bad() {
  totals.badFrames += 1;
  return null;
}

const FRAMINGS = { native: NATIVE, socketio: SOCKETIO };
const FRAMING = FRAMINGS[args.framing];
if (FRAMING === undefined) fail("--framing must be native or socketio");

// ---------------------------------------------------------------- clients

class Client {
  constructor(index, url, token) {
    this.index = index;
    this.url = url;
    this.token = token;
    this.ws = null;
    this.socketId = null;
    this.room = null;
    this.joinId = null;
    this.joinSentAt = 0;
    this.joined = false;
    this.closing = false;
    this.prefixes = new Map(); // target index -> start of an ICE frame to it
  }

  send(frame) {
    this.ws.send(frame);
  }

  /** The constant start of a targeted ICE frame to ``target``, built once per pair. */
  icePrefix(target) {
    let prefix = this.prefixes.get(target.index);
    if (prefix === undefined) {
      prefix = FRAMING.iceHead(this.room, target.socketId);
      this.prefixes.set(target.index, prefix);
    }
    return prefix;
  }
}

const clients = [];
const bySocketId = new Map();
const connectLatencies = [];
const joinLatencies = [];
let connectFailures = 0;
let joinFailures = 0;
let joinsDone = 0;
let inSetup = false;
let lastFrameAt = 0; // when any frame last arrived: progress, while waiting
let report = { mode: args.mode, framing: args.framing }; // filled in as the run goes; printed even at the deadline

function connect(client) {
  return new Promise((resolve) => {
    const startedAt = performance.now();
    const ws = new WebSocket(FRAMING.url(client.url, client.token), {
      perMessageDeflate: args.deflate,
      handshakeTimeout: 15000,
    });
    client.ws = ws;
    const connected = (socketId) => {
      client.socketId = socketId;
      bySocketId.set(client.socketId, client);
      connectLatencies.push(performance.now() - startedAt);
      resolve(true);
    };
    ws.on("message", (data, isBinary) => {
      const frame = FRAMING.decode(client, data, isBinary);
      if (frame === null) return;
      if (client.socketId !== null) {
        onFrame(client, frame);
        return;
      }
      if (frame.event === SIO_CONNECT) {
        if (CONNECTED_ON_SID) connected(frame.data.sid);
      } else if (frame.event === SIO_CONNECT_ERROR) {
        count(totals.unexpectedEvents, `connect-error:${frame.data.message}`);
        ws.close(1000);
      } else if (frame.event === "webrtc:connected") {
        connected(frame.data.socketId);
      } else {
        count(totals.unexpectedEvents, `before-connected:${frame.event}`);
      }
    });
    ws.on("error", (error) => count(totals.socketErrors, error.code || error.message));
    ws.on("close", (code) => {
      if (!client.closing) {
        count(totals.closes, String(code));
        if (currentPhase) currentPhase.closes += 1;
      }
      if (client.socketId === null) {
        connectFailures += 1;
        resolve(false);
      }
    });
  });
}

async function inPool(items, limit, fn) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

// ---------------------------------------------------------------- relayed messages

const SDP_BODY = [
  "s=-",
  "t=0 0",
  "a=group:BUNDLE 0 1",
  "a=extmap-allow-mixed",
  "a=msid-semantic: WMS bench",
  "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
  "c=IN IP4 0.0.0.0",
  "a=rtcp:9 IN IP4 0.0.0.0",
  "a=ice-ufrag:bnch",
  "a=ice-pwd:benchbenchbenchbenchbench",
  "a=ice-options:trickle",
  "a=fingerprint:sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08",
  "a=setup:actpass",
  "a=mid:0",
  "a=sendrecv",
  "a=rtcp-mux",
  "a=rtpmap:111 opus/48000/2",
  "a=fmtp:111 minptime=10;useinbandfec=1",
  "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
  "c=IN IP4 0.0.0.0",
  "a=rtcp:9 IN IP4 0.0.0.0",
  "a=ice-ufrag:bnch",
  "a=ice-pwd:benchbenchbenchbenchbench",
  "a=setup:actpass",
  "a=mid:1",
  "a=sendrecv",
  "a=rtcp-mux",
  "a=rtcp-rsize",
  "a=rtpmap:96 VP8/90000",
  "a=rtcp-fb:96 nack pli",
  "a=rtpmap:102 H264/90000",
  "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
  "",
].join("\r\n");

function allocate(sender, target) {
  const seq = nextSeq++;
  expectedSender.ensure(seq);
  expectedTarget.ensure(seq);
  phaseOf.ensure(seq);
  arrivals.ensure(seq);
  expectedSender.data[seq] = sender.index;
  expectedTarget.data[seq] = target.index;
  phaseOf.data[seq] = currentPhase.id;
  currentPhase.sent += 1;
  return seq;
}

const stamp = () => performance.now().toFixed(3);

function sendCandidate(sender, target) {
  const seq = allocate(sender, target);
  const ts = stamp();
  // The receiver finds the window from the same stamp, so both count it in one window.
  if (currentPhase.windows !== null) windowOf(currentPhase, Number.parseFloat(ts)).sent += 1;
  sender.send(
    `${sender.icePrefix(target)}candidate:${seq} 1 udp 2122260223 192.0.2.${(seq % 250) + 1} ` +
      `${50000 + (seq % 10000)} typ host generation 0 ufrag bnch network-cost 10 ts ${ts}${FRAMING.iceTail}`,
  );
}

/** The window of ``phase`` that a message sent at ``ts`` belongs to (the last one takes
 * whatever the schedule sent late, rather than a window of a few messages after it). */
function windowOf(phase, ts) {
  const { startAt, ms, count, list } = phase.windows;
  const index = Math.min(count - 1, Math.max(0, Math.floor((ts - startAt) / ms)));
  while (list.length <= index) list.push({ sent: 0, latencies: [] });
  return list[index];
}

function sendDescription(sender, target, kind) {
  const seq = allocate(sender, target);
  const sdp = `v=0\r\no=- ${seq} ${stamp()} IN IP4 127.0.0.1\r\n${SDP_BODY}`;
  sender.send(
    FRAMING.encode(`webrtc:${kind}`, {
      callRoomId: sender.room,
      targetSocketId: target.socketId,
      [kind]: { type: kind, sdp },
    }),
  );
}

/** Sequence number and send time embedded in a candidate string or an SDP. */
function marker(text, isSdp) {
  if (typeof text !== "string") return null;
  if (isSdp) {
    const start = text.indexOf("o=- ") + 4;
    const space = text.indexOf(" ", start);
    return { seq: Number.parseInt(text.slice(start, space), 10), ts: Number.parseFloat(text.slice(space + 1)) };
  }
  return {
    seq: Number.parseInt(text.slice(10), 10), // after "candidate:"
    ts: Number.parseFloat(text.slice(text.lastIndexOf(" ") + 1)),
  };
}

function onRelay(receiver, data, text, isSdp, now) {
  const mark = marker(text, isSdp);
  const seq = mark ? mark.seq : -1;
  if (!(seq >= 0 && seq < nextSeq)) {
    if (currentPhase) currentPhase.misdelivered += 1;
    return false;
  }
  const phase = phases[phaseOf.data[seq]];
  const sender = clients[expectedSender.data[seq]];
  if (
    expectedTarget.data[seq] !== receiver.index ||
    data.fromSocketId !== sender.socketId ||
    data.callRoomId !== receiver.room
  ) {
    phase.misdelivered += 1;
    return false;
  }
  arrivals.data[seq] += 1;
  if (arrivals.data[seq] > 1) {
    phase.duplicates += 1;
    return false;
  }
  phase.delivered += 1;
  phase.lastDeliveryAt = now;
  phase.latencies.push(now - mark.ts);
  if (phase.windows !== null) windowOf(phase, mark.ts).latencies.push(now - mark.ts);
  return true;
}

function onFrame(client, frame) {
  const now = performance.now();
  lastFrameAt = now;
  const data = frame.data || {};
  switch (frame.event) {
    case "webrtc:ice-candidate":
      onRelay(client, data, data.candidate, false, now);
      break;
    case "webrtc:offer":
      if (onRelay(client, data, data.offer && data.offer.sdp, true, now)) answer(client, data.fromSocketId);
      break;
    case "webrtc:answer":
      onRelay(client, data, data.answer && data.answer.sdp, true, now);
      break;
    case "webrtc:room-joined":
      onJoined(client, frame, now);
      break;
    case "webrtc:participant-joined":
    case "webrtc:participant-left":
      break;
    case "webrtc:signaling-error":
      count(totals.errors, data.error);
      if (currentPhase) count(currentPhase.errors, data.error);
      if (frame.id !== undefined && frame.id === client.joinId && !client.joined) {
        joinFailures += 1;
        joinsDone += 1;
      }
      break;
    default:
      count(totals.unexpectedEvents, frame.event);
  }
}

// ---------------------------------------------------------------- setup: joins and negotiation

function onJoined(client, frame, now) {
  // A Socket.IO server that does not acknowledge the join answers with the event alone.
  const id = frame.id === undefined && FRAMING === SOCKETIO ? client.joinId : frame.id;
  if (id !== client.joinId || client.joined) {
    count(totals.unexpectedEvents, "room-joined-without-request");
    return;
  }
  client.joined = true;
  joinsDone += 1;
  joinLatencies.push(now - client.joinSentAt);
  if (!inSetup) return;
  // The newcomer offers to everyone present and trickles its candidates.
  for (const participant of frame.data.existingParticipants) {
    const target = bySocketId.get(participant.socketId);
    if (target === undefined) {
      count(totals.unexpectedEvents, "unknown-participant");
      continue;
    }
    sendDescription(client, target, "offer");
    for (let i = 0; i < ICE; i++) sendCandidate(client, target);
  }
}

function answer(client, offererSocketId) {
  const offerer = bySocketId.get(offererSocketId);
  sendDescription(client, offerer, "answer");
  for (let i = 0; i < ICE; i++) sendCandidate(client, offerer);
}

function sendJoin(client) {
  client.joinId = FRAMING.joinId(client);
  client.joinSentAt = performance.now();
  client.send(FRAMING.encode("webrtc:join-room", { callRoomId: client.room }, client.joinId));
}

/** Send ``total`` actions open-loop at ``rate`` a second; returns the largest lag (ms)
 * behind the schedule. */
function onSchedule(total, rate, action) {
  return new Promise((resolve) => {
    const startedAt = performance.now();
    let done = 0;
    let maxLagMs = 0;
    const tick = () => {
      const elapsed = performance.now() - startedAt;
      const due = Math.min(total, Math.floor((elapsed * rate) / 1000) + 1);
      if (due - done > 1) maxLagMs = Math.max(maxLagMs, ((due - done - 1) * 1000) / rate);
      while (done < due) action(done++);
      if (done >= total) resolve({ maxLagMs, elapsedMs: performance.now() - startedAt });
      else setTimeout(tick, 1);
    };
    tick();
  });
}

async function waitFor(predicate, maxMs, idleMs = Number.POSITIVE_INFINITY, lastProgress = () => 0) {
  const startedAt = performance.now();
  while (!predicate()) {
    const now = performance.now();
    if (now - startedAt > maxMs) return false;
    if (now - Math.max(startedAt, lastProgress()) > idleMs) return false;
    await sleep(5);
  }
  return true;
}

const QUIET_WINDOW_MS = 500;
const QUIET_CPU = 0.05; // of one core: the servers (and Redis) have nothing left to do

/** Whether the servers stay (nearly) idle over the next half second. */
async function serversIdle() {
  const before = cpuSnapshot();
  await sleep(QUIET_WINDOW_MS);
  const cpu = cpuSince(before);
  return (cpu.serverMs + cpu.redisMs) / cpu.wallMs < QUIET_CPU;
}

/** Wait until the servers are idle (at most ``maxMs``): a backlog left by an overload
 * would otherwise be measured as part of the next phase. */
async function quiesce(maxMs) {
  if (SERVER_PIDS.length === 0) return true;
  const startedAt = performance.now();
  while (performance.now() - startedAt < maxMs) {
    if (await serversIdle()) return true;
  }
  return false;
}

/** Wait until every message of ``phase`` arrived; or until nothing arrived for a while
 * and the servers are idle (what is missing then is lost, not late); or at most
 * ``--drain-max-secs``. */
async function drain(phase, maxMs = num("drain-max-secs") * 1000) {
  const startedAt = performance.now();
  const idleMs = num("drain-idle-secs") * 1000;
  while (phase.delivered + phase.misdelivered < phase.sent) {
    const now = performance.now();
    if (now - startedAt > maxMs) return false;
    if (now - Math.max(startedAt, phase.lastDeliveryAt) > idleMs) {
      if (SERVER_PIDS.length === 0 || (await serversIdle())) return false;
    } else {
      await sleep(5);
    }
  }
  return true;
}

function phaseReport(phase, cpu, extra = {}) {
  const latency = latencySummary(phase.latencies);
  const relays = phase.delivered;
  return {
    sent: phase.sent,
    delivered: phase.delivered,
    undelivered: phase.sent - phase.delivered - phase.misdelivered,
    misdelivered: phase.misdelivered,
    duplicates: phase.duplicates,
    errors: phase.errors,
    closes: phase.closes,
    relay_p50_ms: latency.p50,
    relay_p99_ms: latency.p99,
    relay_max_ms: latency.max,
    server_cpu_ms: round(cpu.serverMs),
    server_cpu_ms_per_1k: relays ? round((cpu.serverMs * 1000) / relays) : null,
    redis_cpu_ms: round(cpu.redisMs),
    redis_cpu_ms_per_1k: relays ? round((cpu.redisMs * 1000) / relays) : null,
    ...extra,
  };
}

const round = (value, digits = 1) => (Number.isFinite(value) ? Math.round(value * 10 ** digits) / 10 ** digits : null);

// ---------------------------------------------------------------- phases

async function warmUp() {
  // One pair per server process joins a room and relays once, so that lazy imports and
  // first-use caches count neither as per-connection memory nor as setup CPU.
  for (const [i, url] of URLS.entries()) {
    const base = TOKENS.length - WARMUP_TOKENS + 2 * i;
    const pair = [new Client(-1, url, TOKENS[base]), new Client(-1, url, TOKENS[base + 1])];
    const inbox = new Map(pair.map((client) => [client, []]));
    for (const client of pair) {
      if (!(await connect(client))) fail(`warm-up connection to ${url} failed: ${JSON.stringify(totals)}`);
      client.room = `${ROOM_PREFIX}-warm-${i}`;
      client.ws.removeAllListeners("message");
      client.ws.on("message", (data, isBinary) => {
        const frame = FRAMING.decode(client, data, isBinary);
        if (frame !== null) inbox.get(client).push(frame.event);
      });
      sendJoin(client);
      if (!(await waitFor(() => inbox.get(client).includes("webrtc:room-joined"), 10000))) {
        fail(`warm-up join on ${url} failed: ${inbox.get(client)}`);
      }
    }
    const [a, b] = pair;
    a.send(`${a.icePrefix(b)}candidate:warm-up${FRAMING.iceTail}`);
    if (!(await waitFor(() => inbox.get(b).includes("webrtc:ice-candidate"), 10000))) {
      fail(`warm-up relay on ${url} failed: ${inbox.get(b)}`);
    }
    for (const client of pair) {
      client.closing = true;
      client.ws.close(1000);
    }
  }
  connectLatencies.length = 0;
  await sleep(1000); // the servers handle the closes before anything is measured
}

function makeClients(total) {
  const needed = total + WARMUP_TOKENS;
  if (TOKENS.length < needed) fail(`need ${needed} tokens, the file has ${TOKENS.length}`);
  for (let i = 0; i < total; i++) clients.push(new Client(i, URLS[i % URLS.length], TOKENS[i]));
}

async function connectAll() {
  const before = cpuSnapshot();
  const rssBefore = serverRssKb();
  await inPool(clients, num("connect-concurrency"), connect);
  const rssAfter = serverRssKb();
  const connected = clients.filter((c) => c.socketId !== null).length;
  const latency = latencySummary(connectLatencies);
  return {
    cpuBefore: before,
    report: {
      connections: connected,
      failed: connectFailures,
      connect_p50_ms: latency.p50,
      connect_p99_ms: latency.p99,
      server_rss_before_kb: rssBefore,
      server_rss_after_kb: rssAfter,
      rss_per_connection_kb: connected ? round((rssAfter - rssBefore) / connected, 2) : null,
    },
  };
}

function steadyPairs(rooms, size) {
  // Consecutive messages come from different senders, so every client sends at rate / N.
  const pairs = [];
  for (let offset = 1; offset < size; offset++) {
    for (let r = 0; r < rooms; r++) {
      for (let p = 0; p < size; p++) {
        pairs.push([clients[r * size + p], clients[r * size + ((p + offset) % size)]]);
      }
    }
  }
  return pairs;
}

let pairCursor = 0;

async function steady(name, pairs, rate, secs) {
  const phase = newPhase(name, rate);
  const before = cpuSnapshot();
  const total = Math.max(1, Math.round(rate * secs));
  const schedule = await onSchedule(total, rate, () => {
    const [sender, target] = pairs[pairCursor];
    pairCursor = (pairCursor + 1) % pairs.length;
    sendCandidate(sender, target);
  });
  const sending = cpuSince(before);
  const drained = await drain(phase);
  const cpu = cpuSince(before);
  const quiet = await quiesce(num("quiet-max-secs") * 1000);
  const achieved = (phase.sent * 1000) / schedule.elapsedMs;
  const saturated = sending.ownCores > SATURATED_CPU || achieved < rate * SATURATED_RATE;
  const result = phaseReport(phase, cpu, {
    rate,
    secs,
    achieved_rate: Math.round(achieved),
    schedule_max_lag_ms: round(schedule.maxLagMs, 2),
    generator_cpu: round(sending.ownCores, 3),
    generator_saturated: saturated,
    drained,
    servers_quiet: quiet,
  });
  result.held =
    result.undelivered === 0 &&
    result.misdelivered === 0 &&
    result.duplicates === 0 &&
    result.closes === 0 &&
    Object.keys(result.errors).length === 0 &&
    result.relay_p99_ms !== null &&
    result.relay_p99_ms < P99_LIMIT_MS &&
    !saturated;
  return result;
}

/** The overload: ``rate`` for ``secs``, then at once the probe (a low rate, in windows of
 * send time) while the servers work off what the overload left; both drained. Reports
 * what was lost, the connections closed, the servers' RSS before, at its peak and after,
 * and how long after the load ended the probe's p99 was back under the limit. */
async function overload(pairs, rate, secs) {
  const send = () => {
    const [sender, target] = pairs[pairCursor];
    pairCursor = (pairCursor + 1) % pairs.length;
    sendCandidate(sender, target);
  };
  const rssBefore = serverRssKb();
  let rssPeak = rssBefore;
  const sampler = setInterval(() => {
    rssPeak = Math.max(rssPeak, serverRssKb());
  }, num("rss-sample-ms"));
  const phase = newPhase("overload", rate);
  const before = cpuSnapshot();
  const schedule = await onSchedule(Math.max(1, Math.round(rate * secs)), rate, send);
  const sending = cpuSince(before);
  const loadEndedAt = performance.now();

  const probeRate = num("probe-rate");
  const probeSecs = num("probe-secs");
  const windowMs = num("probe-window-ms");
  const probe = newPhase("probe", probeRate);
  const count = Math.max(1, Math.ceil((probeSecs * 1000) / windowMs));
  probe.windows = { startAt: loadEndedAt, ms: windowMs, count, list: [] };
  log(`overload over: probe at ${probeRate} msg/s for ${probeSecs}s`);
  const probeSchedule = await onSchedule(Math.max(1, Math.round(probeRate * probeSecs)), probeRate, send);
  const drainMs = num("overload-drain-max-secs") * 1000;
  const overloadDrained = await drain(phase, drainMs);
  const probeDrained = await drain(probe, drainMs);
  const cpu = cpuSince(before);
  clearInterval(sampler);
  rssPeak = Math.max(rssPeak, serverRssKb());
  const quiet = await quiesce(num("quiet-max-secs") * 1000);
  const rssAfter = serverRssKb();

  // A window is back when every probe message sent in it arrived, with p99 under the
  // limit (a window in which the generator sent nothing tells nothing either way).
  const windows = probe.windows.list.map((w, i) => {
    const latency = latencySummary(w.latencies);
    const back = w.latencies.length === w.sent && (w.sent === 0 || latency.p99 < P99_LIMIT_MS);
    return {
      from_secs: round((i * windowMs) / 1000, 2),
      sent: w.sent,
      delivered: w.latencies.length,
      relay_p99_ms: latency.p99,
      back,
    };
  });
  const lastOut = windows.findLastIndex((w) => !w.back);
  const achieved = (phase.sent * 1000) / schedule.elapsedMs;
  const undelivered = (p) => p.sent - p.delivered - p.misdelivered;
  const lastOverloadDelivery = Math.max(0, phase.lastDeliveryAt - loadEndedAt);
  return phaseReport(phase, cpu, {
    rate,
    secs,
    achieved_rate: Math.round(achieved),
    schedule_max_lag_ms: round(schedule.maxLagMs, 2),
    generator_cpu: round(sending.ownCores, 3),
    generator_saturated: sending.ownCores > SATURATED_CPU || achieved < rate * SATURATED_RATE,
    drained: overloadDrained && probeDrained,
    servers_quiet: quiet,
    // until the last message of the overload arrived, counted from the end of the load
    backlog_secs: undelivered(phase) === 0 ? round(lastOverloadDelivery / 1000, 2) : null,
    connections: clients.length,
    connections_open: clients.filter((c) => c.ws.readyState === WebSocket.OPEN).length,
    server_rss_before_kb: rssBefore,
    server_rss_peak_kb: rssPeak,
    server_rss_after_kb: rssAfter,
    probe: phaseReport(probe, { serverMs: Number.NaN, redisMs: Number.NaN }, {
      rate: probeRate,
      secs: probeSecs,
      achieved_rate: Math.round((probe.sent * 1000) / probeSchedule.elapsedMs),
      window_ms: windowMs,
      windows,
      // how long after the load ended p99 was back under the limit for good; null: not
      // within the probe
      recovery_secs: lastOut === windows.length - 1 ? null : round(((lastOut + 1) * windowMs) / 1000, 2),
    }),
  });
}

/** Why the servers can no longer be measured as they are, if they cannot. */
function brokenBy(phase) {
  if (phase.closes > 0 || clients.some((c) => c.ws.readyState !== WebSocket.OPEN)) return "connections lost";
  if (!phase.servers_quiet) return "servers still busy with a backlog";
  return null;
}

/** Bisect (geometrically) for the highest steady rate held, until hi / lo <= ratio. Stops
 * early when an overload left the servers unfit for the next step ("broken"): the
 * runner then goes on from ``lo``, ``hi`` with fresh servers. */
async function bisect(pairs, lo, hi, secs) {
  const ratio = num("bisect-ratio");
  const steps = [];
  let best = null;
  let broken = null;
  while (hi / lo > ratio) {
    const rate = Math.round(Math.sqrt(lo * hi) / 50) * 50;
    log(`bisect: ${rate} msg/s for ${secs}s (between ${lo} and ${hi})`);
    const step = await steady(`step-${rate}`, pairs, rate, secs);
    steps.push(step);
    if (step.held) {
      lo = rate;
      best = rate;
    } else {
      hi = rate;
    }
    broken = brokenBy(step);
    if (broken) break;
  }
  const limitedByGenerator = steps.some((s) => !s.held && s.generator_saturated);
  return { lo, hi, max_rate_held: best, limited_by_generator: limitedByGenerator, broken, steps };
}

async function scenario() {
  const rooms = num("rooms");
  const size = num("size");
  const joinRate = num("join-rate");
  makeClients(rooms * size);
  await warmUp();
  log(`connecting ${clients.length} clients to ${URLS.length} server(s)`);
  const { cpuBefore, report: connection } = await connectAll();
  Object.assign(report, { rooms, size, ice: ICE, join_rate: joinRate, connection });
  if (connection.failed > 0) return finish("connections failed");

  // Setup: participants join one by one (each room's k-th participant after every
  // room's (k-1)-th) at the join rate, open-loop.
  for (const client of clients) client.room = `${ROOM_PREFIX}-${Math.floor(client.index / size)}`;
  const order = [];
  for (let p = 0; p < size; p++) for (let r = 0; r < rooms; r++) order.push(clients[r * size + p]);
  const setup = newPhase("setup");
  inSetup = true;
  const pairsPerRoom = (size * (size - 1)) / 2;
  const expected = rooms * pairsPerRoom * (2 + 2 * ICE);
  log(`setup: ${order.length} joins at ${joinRate}/s, ${expected} relays`);
  const joinSchedule = await onSchedule(order.length, joinRate, (i) => sendJoin(order[i]));
  const complete = await waitFor(
    () => joinsDone >= order.length && setup.delivered + setup.misdelivered >= expected,
    num("drain-max-secs") * 1000 + 10000,
    num("drain-idle-secs") * 1000 + 3000,
    () => lastFrameAt,
  );
  inSetup = false;
  const joins = latencySummary(joinLatencies);
  report.setup = phaseReport(setup, cpuSince(cpuBefore), {
    expected,
    complete,
    joins: joinsDone - joinFailures,
    join_failures: joinFailures,
    join_p50_ms: joins.p50,
    join_p99_ms: joins.p99,
    join_schedule_max_lag_ms: round(joinSchedule.maxLagMs, 2),
  });
  report.setup.server_cpu_ms_per_1k = round((report.setup.server_cpu_ms * 1000) / expected);
  report.setup.redis_cpu_ms_per_1k = round((report.setup.redis_cpu_ms * 1000) / expected);
  if (!complete || setup.sent !== expected) return finish("setup incomplete");

  const pairs = steadyPairs(rooms, size);
  await quiesce(num("quiet-max-secs") * 1000);
  if (args.overload) {
    log(`overload: ${num("rate")} msg/s for ${num("duration")}s`);
    report.overload = await overload(pairs, num("rate"), num("duration"));
    return finish();
  }
  let broken = null;
  if (num("duration") > 0) {
    log(`steady: ${num("rate")} msg/s for ${num("duration")}s`);
    report.steady = await steady("steady", pairs, num("rate"), num("duration"));
    broken = brokenBy(report.steady);
  }
  const [lo, hi] = [num("bisect-lo"), num("bisect-hi")];
  if (hi > lo && lo > 0) {
    report.bisect = broken
      ? { lo, hi, max_rate_held: null, limited_by_generator: false, broken, steps: [] }
      : await bisect(pairs, lo, hi, num("step-secs"));
  }
  return finish();
}

async function idle() {
  const total = num("idle-connections");
  makeClients(total);
  await warmUp();
  log(`connecting ${total} idle clients`);
  const { report: connection } = await connectAll();
  report.connection = connection;
  // Let the server settle (its per-connection tasks start, allocator arenas fill).
  await sleep(num("idle-settle-secs") * 1000);
  const rss = serverRssKb();
  connection.server_rss_settled_kb = rss;
  connection.rss_per_connection_kb = connection.connections
    ? round((rss - connection.server_rss_before_kb) / connection.connections, 2)
    : null;
  const roomSize = num("idle-rooms-of");
  if (roomSize > 0 && connection.failed === 0) {
    for (const client of clients) client.room = `${ROOM_PREFIX}-idle-${Math.floor(client.index / roomSize)}`;
    await inPool(clients, num("connect-concurrency"), (client) => {
      sendJoin(client);
      return waitFor(() => client.joined, 30000);
    });
    await sleep(num("idle-settle-secs") * 1000);
    const joined = serverRssKb();
    const latency = latencySummary(joinLatencies);
    report.joined = {
      participants: joinsDone - joinFailures,
      join_p50_ms: latency.p50,
      join_p99_ms: latency.p99,
      server_rss_kb: joined,
      rss_per_participant_kb: round((joined - connection.server_rss_before_kb) / clients.length, 2),
    };
  }
  return finish();
}

function finish(problem = null) {
  report.problem = problem;
  report.totals = totals;
  const own = process.cpuUsage();
  report.generator_cpu_ms = round((own.user + own.system) / 1000);
  for (const client of clients) {
    client.closing = true;
    if (client.ws && client.ws.readyState === WebSocket.OPEN) client.ws.close(1000);
  }
  return report;
}

const deadline = setTimeout(() => {
  process.stdout.write(`${JSON.stringify(finish("deadline exceeded"))}\n`);
  process.exit(3);
}, num("deadline") * 1000);

const run = args.mode === "idle" ? idle : scenario;
run().then(
  (report) => {
    clearTimeout(deadline);
    process.stdout.write(`${JSON.stringify(report)}\n`);
    // Close frames were queued; give them a moment, then leave whatever is still open.
    setTimeout(() => process.exit(0), 300);
  },
  (error) => {
    process.stderr.write(`loadgen: ${error.stack || error}\n`);
    process.exit(1);
  },
);
