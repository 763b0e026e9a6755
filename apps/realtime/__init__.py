"""Real-time collaboration over WebSockets (README section).

Endpoint
    ``/ws/sessions/<session id>/`` on the web process (uvicorn, ``--ws websockets``).
    Token in the ``token`` query parameter, or offer the subprotocols
    ``["context-engine", "token.<key>"]`` in ``Sec-WebSocket-Protocol`` (the
    server selects ``context-engine``). A browser's ``Origin`` must be listed in
    ``ALLOWED_ORIGINS`` (``*`` allows any); clients that send no Origin (scripts,
    services) are not browsers and are let through on their token alone.

Close codes (the server accepts, then closes, so the client sees the code)
    ====  ==========================================================================
    4401  unauthenticated: no token, unknown token, inactive user
    4403  forbidden: Origin not in ALLOWED_ORIGINS
    4404  not found: no such session, not a participant, malformed id, unknown path
          (all identical, so outsiders learn nothing about which sessions exist)
    4429  too many connections for this user (WS_MAX_CONNECTIONS_PER_USER, across
          servers), or a client that keeps exceeding the message rate
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
        ``{after_seq, last_seq, max_events}``.

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

Limits (settings, env vars of the same name)
    WS_MAX_FRAME_BYTES (96 KiB) -> ``error`` ``frame_too_large``;
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
