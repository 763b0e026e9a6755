"""Real-time collaboration over WebSockets (README section).

Endpoint
    ``/ws/sessions/<session id>/`` on the web process (uvicorn, ``--ws websockets``).
    The token, in order of preference: an ``Authorization: Token <key>`` header
    (scripts, services); the subprotocols ``["context-engine", "token.<key>"]``
    in ``Sec-WebSocket-Protocol`` (browsers; the server selects
    ``context-engine``); the ``token`` query parameter (old clients; it is
    rewritten to ``token=[redacted]`` in every log line, uvicorn's access and
    handshake lines included). Revoked, expired (``API_TOKEN_TTL_S``) and
    inactive users' tokens are refused. A browser's ``Origin`` must be listed in
    ``ALLOWED_ORIGINS`` (``*`` allows any); clients that send no Origin (scripts,
    services) are not browsers and are let through on their token alone.

Close codes (the server accepts, then closes, so the client sees the code)
    ====  ==========================================================================
    4401  unauthenticated: no token, unknown token, inactive user; on an open
          socket: its token was revoked, rotated or deleted, or expired, or the user
          was deactivated or deleted (after a ``revoked`` frame)
    4403  forbidden: Origin not in ALLOWED_ORIGINS
    4404  not found: no such session, not a participant, malformed id, unknown path
          (all identical, so outsiders learn nothing about which sessions exist);
          on an open socket: the participant was removed (REST or admin), or the
          session was deleted (after a ``session`` ``deleted`` frame)
    4408  client too slow: a frame waited WS_SEND_TIMEOUT_S (5 s) for a client that
          stopped reading; what was pushed meanwhile is dropped. Reconnect, ``resume``
    4429  too many connections for this user (WS_MAX_CONNECTIONS_PER_USER, across
          servers), or a client that keeps exceeding the message rate
    1009  message too big: a frame over WS_MAX_FRAME_BYTES, refused by uvicorn
          (``--ws-max-size``, Procfile) before it is buffered
    1013  try again later: Redis (channel layer / presence) unavailable at connect
    1011  server error: reconnect and ``resume``
    1012  service restart: this web instance is shutting down (SIGTERM; uvicorn
          sends it to every open socket): reconnect (the load balancer picks a
          live instance) and ``resume`` (tests/integration/ops/test_lb_websockets.py)
    ====  ==========================================================================

Frames (JSON text, each with ``type``)
    client -> server
        ``context_update`` ``{data: {...}, client_msg_id?: str<=64, event_type?:
        "context_update"|"user_action"|"note"}`` - the same service as the REST
        append (same seq, same dedupe by ``client_msg_id``);
        ``resume`` ``{after_seq: int}``; ``ping`` ``{t: number|string}``;
        ``typing`` ``{active?: bool}``; ``presence`` ``{state: "active"|"idle"|"away"}``.
        Any frame may carry ``correlation_id`` (``[A-Za-z0-9._:-]{1,64}``): the id of
        the work it causes in logs, outbox rows and task headers (else a new one).
    server -> client
        ``hello`` ``{session: {id, title, state}, user: {username, role}, last_seq,
        online: [{user, state}], typing: [user], ai_state, limits, heartbeat_s}``;
        ``event`` ``{seq, event_type, data, user, client_msg_id, created_at}``;
        ``ack`` ``{client_msg_id, seq, duplicate}`` (after the sender's own ``event``);
        ``presence`` ``{event: "join"|"leave"|"state"|"ai_state", user, state, online,
        ai_state}`` (``online`` only on join/leave/state);
        ``typing`` ``{user, active, ttl_ms}`` (not echoed to the typist);
        ``suggestion`` (whatever the AI worker broadcast); ``pong`` ``{t, server_time}``;
        ``error`` ``{code, message, details, client_msg_id?}``; ``resync_required``
        ``{after_seq, last_seq, max_events}``;
        ``session`` ``{event: "updated"|"closed"|"deleted", session: {id, title?, state?}}``
        (an edit by REST or admin; after ``deleted`` the socket closes 4404);
        ``revoked`` ``{reason, close_code}`` just before a 4401/4404 close, reason one
        of ``token_revoked``, ``token_expired``, ``user_inactive``, ``user_deleted``,
        ``removed`` (also announced as ``presence`` ``removed``), ``session_deleted``.

Ordering and delivery
    ``hello.last_seq`` is read after the connection joined the session's group:
    every event with a larger seq arrives live; everything up to it is the
    snapshot's (``GET .../context/``) or ``resume``'s. Each connection tracks the
    highest seq it delivered, drops live copies of delivered events, and fills a
    hole in live seqs from PostgreSQL before going on, so a client sees every
    event once, in seq order. ``resume {after_seq}`` replays from PostgreSQL in
    pages of WS_REPLAY_PAGE for any gap up to WS_RESUME_MAX_EVENTS (10,000);
    beyond that the server sends ``resync_required``: refetch the snapshot, then
    live delivery continues after its ``last_seq``. A client reconnecting after
    a drop opens a new connection and sends ``resume`` with the last seq it saw.
    Broadcasts go through ``apps.realtime.broadcast.session_broadcast`` after
    commit (at-most-once); the seq logic above makes delivery complete.

Channel layer
    channels-redis pub/sub (``RedisPubSubChannelLayer``): a group send is one
    PUBLISH and each web process fans it out to its own sockets, where the
    list-based core layer pays several Redis round trips per member
    (bench/results/ws.md measures both; ``CHANNEL_LAYER_BACKEND`` switches).
    redis-py resubscribes after a Redis restart; what was published meanwhile
    is lost, so after any Redis failure seen by its heartbeat, each connection
    catches up from PostgreSQL on every beat for 3 heartbeats. A readiness probe
    must use ``channel_layer_check`` (a plain receive leaks one subscription
    per call on the pub/sub layer).

Presence
    Online users live in Redis, one entry per connection with an expiry pushed
    forward by a heartbeat every PRESENCE_HEARTBEAT_S (10 s). A client that
    vanishes without closing is dropped by the server's WebSocket ping (uvicorn:
    20 s interval + 20 s timeout), then leaves at once; a server process that
    dies leaves entries that expire after PRESENCE_TTL_S (30 s) and are swept by
    any live connection's next heartbeat. Either way a vanished user drops out
    within 45 s and a ``presence`` ``leave`` frame is broadcast. Typing
    indicators expire after TYPING_TTL_S (5 s) unless repeated. The AI state
    (``queued``/``generating``, set by workers via ``presence_set_ai_state``)
    expires after AI_STATE_TTL_S (120 s) if a worker dies before clearing it.
    If Redis loses its state (restart, flush), the heartbeat notices its entry
    is gone, re-registers, re-joins the group and catches up from PostgreSQL.

Revocation (apps/realtime/revocation.py)
    Every socket joins its user's channel-layer group (``user.<id>``). Removing a
    participant (the service: REST and admin), deactivating or deleting a user,
    and deleting, rotating or revoking a token push ``access.revoked`` there after
    commit; the socket sends ``revoked`` and closes (measured 60-160 ms after the
    REST call returns, tests/security/test_revocation.py). Besides, ``context_update``
    and ``resume`` re-check token and membership through the cache (invalidated by
    the same writes), other frames in and out at most every WS_ACCESS_RECHECK_S (1 s),
    and the heartbeat every PRESENCE_HEARTBEAT_S: a lost push is caught within 10 s.
    A token's expiry closes its sockets by a timer. A revoked socket gets no event
    after the close decision, cannot ``resume`` and cannot write.

Limits (settings, env vars of the same name)
    WS_MAX_FRAME_BYTES (96 KiB): uvicorn closes 1009 before buffering (``error``
    ``frame_too_large`` where the server does not enforce it); uvicorn holds at most
    8 unread incoming frames per socket (``--ws-max-queue``): 768 KiB in. Out: the
    socket's write buffer (64 KiB) and, for a client that stops reading, whatever
    arrives within WS_SEND_TIMEOUT_S, then 4408. Every frame that does work counts
    against the user's REST budget too (THROTTLE_USER_RATE, THROTTLE_IP_RATE, across
    all their sockets and web instances) -> ``error`` ``rate_limited`` ``{retry_after_ms,
    scope: "user"}``;
    WS_RATE_PER_SECOND / WS_RATE_BURST (20/s, burst 40) -> ``error`` ``rate_limited``
    with ``retry_after_ms``; WS_RATE_STRIKES (20) refusals within 10 s -> close 4429;
    WS_MAX_CONNECTIONS_PER_USER (20). Malformed JSON (``malformed_json``), a
    non-object (``invalid_frame``), an unknown type (``unknown_type``), bad
    fields (``invalid``), binary frames (``unsupported_frame``) and service
    errors (``ApplicationError`` -> its code) get an ``error`` frame and the
    connection stays open. ``context_update`` goes through the same validator
    as the REST append (``apps/context/validation.py``): NUL characters, lone
    surrogates, NaN/Infinity, ``data`` nested deeper than 32 levels -> ``invalid``;
    ``data`` over EVENT_DATA_MAX_BYTES -> ``event_too_large``. A frame the
    database fails on gets ``error`` ``server_error`` (``details.retryable``;
    retry with the same ``client_msg_id``), not a 1011 close.
"""
