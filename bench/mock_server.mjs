// A minimal in-memory signaling relay that speaks enough of the native protocol for the
// load generator (connected, join-room, offer/answer/ice-candidate relays), with no
// checks. `python -m bench.run --server mock` runs the scenarios against it, to measure
// how far the generator itself goes on one core.
//
// --fault drop|duplicate|misdeliver|spoof spoils every N-th relay (--fault-every N) after
// the first M (--fault-after M), so that a test can show that the generator notices.

import { createServer } from "node:http";
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { WebSocketServer } from "ws";

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    fault: { type: "string", default: "" },
    "fault-every": { type: "string", default: "100" },
    "fault-after": { type: "string", default: "0" },
  },
});
const FAULT_EVERY = Number(args["fault-every"]);
const FAULT_AFTER = Number(args["fault-after"]);
let relays = 0;

const http = createServer((request, response) => {
  response.writeHead(request.url === "/healthz" ? 200 : 404, { "Content-Type": "application/json" });
  response.end('{"status":"ok"}');
});
const wss = new WebSocketServer({ server: http, path: "/ws/calls/", perMessageDeflate: false });
const sockets = new Map(); // socketId -> connection
const rooms = new Map(); // room -> Set of socketIds

wss.on("connection", (ws) => {
  const me = { ws, socketId: randomBytes(12).toString("base64url"), userId: "0", room: null };
  sockets.set(me.socketId, me);
  ws.send(JSON.stringify({ event: "webrtc:connected", data: { socketId: me.socketId, userId: me.userId } }));
  ws.on("message", (raw) => {
    const frame = JSON.parse(raw);
    const data = frame.data;
    if (frame.event === "webrtc:join-room") {
      me.room = data.callRoomId;
      const members = rooms.get(me.room) || new Set();
      rooms.set(me.room, members);
      const participant = { socketId: me.socketId, userId: me.userId };
      for (const other of members) {
        sockets.get(other).ws.send(JSON.stringify({ event: "webrtc:participant-joined", data: { callRoomId: me.room, participant } }));
      }
      const existingParticipants = [...members].map((socketId) => ({ socketId, userId: "0" }));
      members.add(me.socketId);
      const reply = { callRoomId: me.room, participantCount: members.size, existingParticipants, participant };
      ws.send(JSON.stringify({ event: "webrtc:room-joined", data: reply, id: frame.id }));
      return;
    }
    const target = sockets.get(data.targetSocketId);
    if (target === undefined) return;
    delete data.targetSocketId;
    data.fromSocketId = me.socketId;
    data.fromUserId = me.userId;
    relays += 1;
    const faulty = args.fault && relays > FAULT_AFTER && relays % FAULT_EVERY === 0;
    if (faulty && args.fault === "drop") return;
    if (faulty && args.fault === "spoof") data.fromSocketId = target.socketId;
    const out = JSON.stringify({ event: frame.event, data });
    (faulty && args.fault === "misdeliver" ? me : target).ws.send(out);
    if (faulty && args.fault === "duplicate") target.ws.send(out);
  });
  ws.on("close", () => {
    sockets.delete(me.socketId);
    if (me.room) rooms.get(me.room)?.delete(me.socketId);
  });
});

http.listen(Number(args.port), args.host);
process.on("SIGTERM", () => process.exit(0));
