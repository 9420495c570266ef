"""Who a connection is: the websocket handshake's origin check and authentication
(``websocket``), single-use websocket tickets (``tickets``) and the throttles of failed
authentications and logins (``throttle``). A host replaces the credential check through
``CALLS_TOKEN_USER`` or the whole middleware through ``CALLS_WEBSOCKET_AUTH_MIDDLEWARE``
(calls/host.py)."""
