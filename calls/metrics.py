"""Prometheus metrics of one server process (scrape every process; see README).

Gauges are this process's share: sum them over processes for the cluster, except
``calls_parked``, which every process reads from presence for the whole cluster.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("calls_connections", "Open signaling connections in this process")
PARTICIPANTS = Gauge("calls_participants", "Participants this process holds in rooms")
ROOMS = Gauge("calls_rooms", "Rooms with at least one participant held by this process")
RELAYED = Counter("calls_relayed_messages", "Messages relayed, by event", ["event"])
ERRORS = Counter("calls_signaling_errors", "Signaling errors answered, by code", ["code"])
RATE_LIMITED = Counter("calls_rate_limited_frames", "Frames dropped by the per-connection rate limit")
AUTH_REFUSED = Counter("calls_auth_refused", "Websocket handshakes refused, by close code", ["code"])
BACKPRESSURE = Counter(
    "calls_backpressure",
    "Times a connection was held back: inbound = socket reading paused, outbound = send waited",
    ["direction"],
)
DROPPED = Counter(
    "calls_dropped_messages", "Messages from other processes dropped for a connection that stopped reading"
)
PARKED = Gauge("calls_parked", "Parked participants waiting for a resume, on all processes (from presence)")
RESUMES = Counter("calls_resumes", "Connections that resumed a parked participant")
RESUME_FAILED = Counter("calls_resume_failures", "Resume tokens refused")
RESUME_DROPPED = Counter(
    "calls_resume_buffer_dropped", "Messages dropped from a parked participant's full buffer, oldest first"
)
RINGS = Counter("calls_rings", "Callees rung")
RING_OUTCOMES = Counter("calls_ring_outcomes", "Callees' rings ended, by outcome", ["outcome"])
MODERATION = Counter("calls_moderation_actions", "Moderation actions, by action", ["action"])
MEDIA_CHANGES = Counter("calls_media_changes", "Media state changes of participants")
LOST = Counter("calls_participants_lost", "Participants removed because their process died")
JOIN_SECONDS = Histogram(
    "calls_join_seconds",
    "Time to handle webrtc:join-room",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
