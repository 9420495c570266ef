"""The Socket.IO compatibility endpoint of docs/protocol.md §1, at ``/socket.io/``.

Engine.IO v4 and Socket.IO v5 on the main namespace ``/``, so that an unchanged
``socket.io-client`` 4.x works with its default options (long-polling, then the upgrade
to a websocket) and with ``transports: ["websocket"]``:

- ``codec``: the packet framing, and ``SOCKETIO``, the ``calls.protocol.Wire`` that frames
  server events as ``42["event",data]`` (``43<id>[{event,data}]`` for a reply to a
  request that asked for an acknowledgement);
- ``engine``: Engine.IO sessions (heartbeat, the upgrade, the polling queue) and the
  Socket.IO connection on ``/`` that each may carry, which is a connection of
  ``calls.session`` like a native one: a ``Caller``, a mailbox, the same limits;
- ``consumers``: the two Channels consumers, one for the long-polling HTTP requests and
  one for the websockets.

Long-polling sessions live in the process that opened them (``engine.sessions``), so
several processes need sticky sessions for polling; websocket-only clients do not.
"""
