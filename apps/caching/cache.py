"""The multi-level cache: L1 in-process -> L2 Redis -> L3 the caller's loader.

``get_or_load(key, loader, ttl=..., tags=...)`` is the one read path:

1. L1 (``apps.caching.local``), only while this process is subscribed to the
   invalidation bus: an L1 that cannot hear invalidations is not trusted.
2. L2 Redis, one round trip that also reads the key's generation counters.
3. On a miss, single-flight inside the process (``apps.caching.inprocess``:
   one thread loads, the others wait for its result) and a short Redis lock
   across processes (the others poll L2 for the value the holder writes, and
   load themselves only if the holder is slow or gone).
4. The fill is fenced: L2 is written by a Lua script only if the key's, its
   tags' and the pattern generation counters still hold the values read before
   the loader ran, and L1 likewise with its local token. An invalidation that
   lands while a loader is reading old rows therefore wins, always.

``None`` from a loader means "not found" and is cached for ``negative_ttl``.

Invalidation (``invalidate``) drops the entries from this process's L1, bumps
the generation counters and deletes the entries in L2, then, in one Lua call,
appends it to the invalidation log (a Redis stream, ``MAXLEN ~ log_max``, each
entry numbered by a counter) and publishes it on the bus; every process's
listener thread applies it to its L1. Every listener clears its whole L1 on
(re)connect, since it may have missed messages while it was away.

Nothing is lost while Redis is unreachable (the circuit open):

- The invalidation is queued in-process, deduplicated by key, tag and pattern
  and bounded by ``pending_max`` distinct items; past the bound the queue
  collapses into "everything" (L2 dropped, every L1 cleared, once Redis is
  back). The listener delivers the queue as soon as the circuit lets a call
  through again, whether or not its own subscription noticed the outage.
- Pub/sub is only the fast path. Every ``catchup_interval`` (and when its
  circuit closes) each listener reads the log from its cursor and applies what
  the bus did not bring; a gap in the numbering (trimmed entries) or a counter
  that went backwards (Redis lost its data) clears its L1 instead. The listener
  also pings its subscription on the same beat: a connection silent for
  ``bus_silence`` seconds (a black-holed path) is reconnected, not trusted.

So an invalidation made while the circuit was open reaches every process about
``breaker_cooldown + catchup_interval`` after Redis is back, even when the bus
message itself never arrives (tests/integration/caching/test_outage_catch_up.py
measures it).

Degrade, never fail: every Redis error is caught, counted and turns the call
into a plain loader call; a circuit breaker skips Redis for a short while after
an error so a dead Redis costs one connect timeout, not one per request.

Values are pickled (Redis and L1 keep the same bytes; each L1 hit unpickles a
private copy, so callers may mutate what they get). Only processes of this
deployment write these keys; like Django's own Redis cache, whoever can write
to this Redis can make the platform unpickle what it wants.

Long on purpose: the fill fence and the invalidation are one protocol over one
state (the Lua scripts, the read path, the invalidation writes, the pending
queue and the bus listener that clears L1 on every (re)connect and reads the
invalidation log behind the bus, the breaker and what a forked child must
renew); whether an invalidation always beats a slow
loader is only checkable reading them side by side. What stands alone lives
beside it: L1 in ``local``, the LRU and single-flight in ``inprocess``, the
counters and histograms in ``instruments``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from apps.caching.inprocess import SingleFlight
from apps.caching.instruments import LAG_BUCKETS, LOADER_BUCKETS, Counters, Histogram
from apps.caching.keys import SCHEME
from apps.caching.local import LocalCache

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A pickle never starts with these bytes (protocol 2+ starts with 0x80).
NEGATIVE = b"\x00N"
_PICKLE_PROTOCOL = 5

_FILL_LUA = """
local ntags = tonumber(ARGV[3])
local ngens = 2 + ntags
for i = 1, ngens do
  local cur = redis.call('GET', KEYS[1 + i]) or '0'
  if cur ~= ARGV[3 + i] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
for i = 1, ntags do
  local ts = KEYS[1 + ngens + i]
  redis.call('SADD', ts, KEYS[1])
  if redis.call('PTTL', ts) < tonumber(ARGV[1]) then redis.call('PEXPIRE', ts, ARGV[1]) end
end
return 1
"""

# KEYS: (value key, gen key) pairs; ARGV[1]: gen TTL in ms.
_INVALIDATE_KEYS_LUA = """
for i = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[i + 1])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
  redis.call('DEL', KEYS[i])
end
return 1
"""

# KEYS: (tag set key, tag gen key) pairs; ARGV[1]: gen TTL in ms.
_INVALIDATE_TAGS_LUA = """
local n = 0
for i = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[i + 1])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[1])
  local members = redis.call('SMEMBERS', KEYS[i])
  for _, member in ipairs(members) do n = n + redis.call('DEL', member) end
  redis.call('DEL', KEYS[i])
end
return n
"""

# KEYS: log stream, sequence counter; ARGV: message JSON (an object), log MAXLEN, bus channel.
# The number goes into the bus message (one more JSON member, so a listener of an older
# release still reads it), and a listener can tell what it heard.
_LOG_PUBLISH_LUA = """
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'seq', seq, 'm', ARGV[1])
redis.call('PUBLISH', ARGV[3], string.sub(ARGV[1], 1, -2) .. ',"seq":' .. seq .. '}')
return seq
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _encode(value: Any) -> bytes:
    return NEGATIVE if value is None else pickle.dumps(value, protocol=_PICKLE_PROTOCOL)


def _decode(blob: bytes) -> Any:
    return None if blob == NEGATIVE else pickle.loads(blob)  # noqa: S301 - our own deployment's values


class MultiLevelCache:
    def __init__(
        self,
        *,
        redis_url: str,
        prefix: str,
        enabled: bool = True,
        l1_max_entries: int = 10_000,
        l1_max_bytes: int | None = 64 * 1024 * 1024,
        l1_max_ttl: float = 30.0,
        lock_ttl: float = 2.0,
        lock_wait: float = 1.0,
        redis_timeout: float = 0.25,
        breaker_cooldown: float = 0.5,
        pending_max: int = 10_000,
        catchup_interval: float = 0.5,
        log_max: int = 10_000,
    ) -> None:
        self.redis_url = redis_url
        self.enabled = enabled
        self.l1_max_ttl = l1_max_ttl
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.redis_timeout = redis_timeout
        self.breaker_cooldown = breaker_cooldown
        self.pending_max = pending_max
        self.catchup_interval = catchup_interval
        # A subscription that answers no ping for this long is taken for dead.
        self.bus_silence = max(2.0, 4 * catchup_interval)
        self.log_max = log_max
        self.base = f"{prefix}:cache:{SCHEME}"
        self.channel = f"{prefix}:cache:{SCHEME}:bus"
        self.gen_ttl_ms = 86_400_000  # longer than any value TTL: a gen must outlive the values it fences
        self.origin = uuid.uuid4().hex
        self.local = LocalCache(max_entries=l1_max_entries, max_bytes=l1_max_bytes)
        self.counters = Counters()
        self.loader_seconds = Histogram(LOADER_BUCKETS)
        self.invalidation_lag = Histogram(LAG_BUCKETS)
        self._down_until = 0.0
        self._circuit_open = False
        # The queue of invalidations that could not reach Redis: ordered sets (dicts), deduplicated.
        self._pending_keys: dict[str, None] = {}
        self._pending_tags: dict[str, None] = {}
        self._pending_patterns: dict[str, None] = {}
        self._pending_overflow = False
        # The listener's place in the invalidation log: the last entry read and its number.
        self._cursor = "0-0"
        self._cursor_seq = 0
        self._heard: set[int] = set()  # numbers the bus brought that the log read has not passed yet
        self._last_pong = 0.0  # when the subscription last answered a ping (the listener thread's)
        self._process_state()
        self._redis = self._client(socket_timeout=redis_timeout)
        self._fill = self._redis.register_script(_FILL_LUA)
        self._inv_keys = self._redis.register_script(_INVALIDATE_KEYS_LUA)
        self._inv_tags = self._redis.register_script(_INVALIDATE_TAGS_LUA)
        self._release = self._redis.register_script(_RELEASE_LUA)
        self._log_publish = self._redis.register_script(_LOG_PUBLISH_LUA)

    def _process_state(self) -> None:
        """Locks, events and the listener: everything a forked child must not inherit.

        A lock another thread held at fork time stays held forever in the child,
        and the listener thread does not exist there; so the child gets fresh ones,
        a new origin and an empty L1 (nobody invalidated the parent's copy for it).
        """
        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        self._flights: SingleFlight[str, tuple[bytes, Any]] = SingleFlight()
        self._pending_lock = threading.Lock()
        self._bus_ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _after_fork(self) -> None:
        self._process_state()
        self.origin = uuid.uuid4().hex
        self.local = LocalCache(max_entries=self.local.max_entries, max_bytes=self.local.max_bytes)
        self.counters = Counters()
        self.loader_seconds = Histogram(LOADER_BUCKETS)
        self.invalidation_lag = Histogram(LAG_BUCKETS)

    # -- plumbing ----------------------------------------------------------
    def _client(self, *, socket_timeout: float | None, health_check_interval: int = 0) -> redis.Redis:
        # No retries: a failing call must fail fast and fall through to the loader.
        return redis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=self.redis_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=health_check_interval,
        )

    def _vkey(self, key: str) -> str:
        return f"{self.base}:v:{key}"

    def _gkey(self, key: str) -> str:
        return f"{self.base}:g:{key}"

    def _tgkey(self, tag: str) -> str:
        return f"{self.base}:tg:{tag}"

    def _tskey(self, tag: str) -> str:
        return f"{self.base}:t:{tag}"

    def _lkey(self, key: str) -> str:
        return f"{self.base}:l:{key}"

    @property
    def _pgkey(self) -> str:
        return f"{self.base}:pg"

    @property
    def _logkey(self) -> str:
        return f"{self.base}:log"

    @property
    def _seqkey(self) -> str:
        return f"{self.base}:seq"

    def _l2_usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _l2_failed(self, exc: BaseException) -> None:
        self.counters.incr("l2_errors")
        self._down_until = time.monotonic() + self.breaker_cooldown
        self._circuit_open = True
        logger.warning("cache: Redis unavailable (%s); reading through to the loader", exc.__class__.__name__)

    def ensure_started(self) -> None:
        """Start the bus listener (lazily, and again in a forked child)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        if self._pid != os.getpid():
            self._after_fork()  # forked without the at-fork hook (it is registered below)
        with self._start_lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._listen, name="cache-invalidation-bus", daemon=True)
                self._thread.start()

    def wait_ready(self, timeout: float = 5.0) -> bool:
        self.ensure_started()
        return self._bus_ready.wait(timeout)

    @property
    def bus_connected(self) -> bool:
        return self._bus_ready.is_set()

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=5)
        self._thread = None
        self._bus_ready.clear()
        self._redis.close()

    # -- reads -------------------------------------------------------------
    def get_or_load(
        self,
        key: str,
        loader: Callable[[], T | None],
        *,
        ttl: float,
        tags: Iterable[str] = (),
        negative_ttl: float = 5.0,
        copy: bool = True,
    ) -> T | None:
        if not self.enabled:
            return loader()
        self.ensure_started()
        tags = tuple(tags)
        use_l1 = self._bus_ready.is_set()
        if use_l1:
            entry = self.local.get(key)
            if entry is not None:
                if entry.encoded:
                    if entry.value == NEGATIVE:
                        self.counters.incr("negative_hits")
                        return None
                    return pickle.loads(entry.value)  # noqa: S301
                return entry.value
        else:
            self.counters.incr("l1_bypassed")
        return self._single_flight(key, loader, ttl, tags, negative_ttl, copy, use_l1)

    def _single_flight(self, key, loader, ttl, tags, negative_ttl, copy, use_l1):  # noqa: ANN001, ANN202
        flight, leader = self._flights.join(key)
        if leader:
            _blob, value = self._flights.lead(
                key, flight, lambda: self._through(key, loader, ttl, tags, negative_ttl, copy, use_l1)
            )
            return value
        self.counters.incr("singleflight_waits")
        if not self._flights.wait(flight, timeout=self.lock_wait + 30):
            # The leader is stuck; do not hang a request on it.
            return loader()
        blob, value = flight.result()  # the leader's exception, if it failed
        return _decode(blob) if copy else value

    def _through(self, key, loader, ttl, tags, negative_ttl, copy, use_l1):  # noqa: ANN001, ANN202
        token = self.local.token(key, tags)
        l1_ttl = min(ttl, self.l1_max_ttl)
        vkey = self._vkey(key)
        gen_keys = [self._pgkey, self._gkey(key), *(self._tgkey(t) for t in tags)]
        gens: list[str] | None = None
        lock_token: str | None = None

        if self._l2_usable():
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.get(vkey)
                pipe.mget(gen_keys)
                blob, raw_gens = pipe.execute()
                self._circuit_open = False  # the listener sees it and catches up
                gens = [g.decode() if g is not None else "0" for g in raw_gens]
                if blob is not None:
                    return self._l2_hit(key, blob, l1_ttl, negative_ttl, tags, token, copy, use_l1)
                self.counters.incr("l2_misses")
                lock_token = uuid.uuid4().hex
                if not self._redis.set(self._lkey(key), lock_token, nx=True, px=int(self.lock_ttl * 1000)):
                    lock_token = None
                    blob = self._wait_for_holder(key, vkey)
                    if blob is not None:
                        return self._l2_hit(key, blob, l1_ttl, negative_ttl, tags, token, copy, use_l1)
            except redis.RedisError as exc:
                self._l2_failed(exc)
                gens = None

        started = time.perf_counter()
        try:
            value = loader()
        except BaseException:
            if lock_token is not None:
                self._release_lock(key, lock_token)  # waiters load themselves instead of timing out
            raise
        finally:
            self.loader_seconds.observe(time.perf_counter() - started)
            self.counters.incr("loads")
        blob = _encode(value)
        if value is None:
            self.counters.incr("negative_stores")
        store_ttl = ttl if value is not None else negative_ttl
        fresh = True
        if gens is not None:
            try:
                stored = self._fill(
                    keys=[vkey, *gen_keys, *(self._tskey(t) for t in tags)],
                    args=[max(1, int(store_ttl * 1000)), blob, len(tags), *gens],
                )
                if not stored:
                    fresh = False
                    self.counters.incr("stale_fills_refused")
            except redis.RedisError as exc:
                self._l2_failed(exc)
            finally:
                if lock_token is not None:
                    self._release_lock(key, lock_token)
        if (
            use_l1
            and fresh
            and not self.local.set(
                key, blob if copy else value, ttl=min(store_ttl, l1_ttl), tags=tags, token=token, encoded=copy
            )
        ):
            self.counters.incr("stale_fills_refused")
        return blob, value

    def _release_lock(self, key: str, lock_token: str) -> None:
        with contextlib.suppress(redis.RedisError):  # it expires by itself within lock_ttl
            self._release(keys=[self._lkey(key)], args=[lock_token])

    def _l2_hit(self, key, blob, l1_ttl, negative_ttl, tags, token, copy, use_l1):  # noqa: ANN001, ANN202
        self.counters.incr("l2_hits")
        value = _decode(blob)
        if value is None:
            self.counters.incr("negative_hits")
            l1_ttl = min(l1_ttl, negative_ttl)
        if use_l1:
            # Promotion: the token was taken before the L2 read, so an invalidation
            # that arrived meanwhile refuses this fill.
            self.local.set(key, blob if copy else value, ttl=l1_ttl, tags=tags, token=token, encoded=copy)
        return blob, value

    def _wait_for_holder(self, key: str, vkey: str) -> bytes | None:
        """Another process holds the key's load lock: poll L2 for what it writes."""
        self.counters.incr("lock_waits")
        deadline = time.monotonic() + self.lock_wait
        delay = 0.002
        lkey = self._lkey(key)
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(vkey)
            pipe.exists(lkey)
            blob, locked = pipe.execute()
            if blob is not None:
                return blob
            if not locked:
                return None  # the holder gave up (error, or its fill was fenced off)
        return None

    # -- invalidation --------------------------------------------------------
    def invalidate(self, *, keys: Iterable[str] = (), tags: Iterable[str] = (), pattern: str | None = None) -> None:
        """Invalidate on every level and in every process. Never raises for Redis trouble."""
        keys, tags = tuple(keys), tuple(tags)
        if not (keys or tags or pattern):
            return
        self._apply_local(keys, tags, pattern)
        if not self.enabled:
            return
        self.ensure_started()
        message = {"origin": self.origin, "keys": list(keys), "tags": list(tags), "pattern": pattern}
        try:
            if not self._l2_usable():
                raise redis.ConnectionError("circuit open")
            self._invalidate_remote(message)
        except redis.RedisError as exc:
            self._l2_failed(exc)
            self._queue(message)

    def _apply_local(self, keys: tuple[str, ...], tags: tuple[str, ...], pattern: str | None) -> None:
        if keys:
            self.local.invalidate_keys(keys)
        if tags:
            self.local.invalidate_tags(tags)
        if pattern:
            self.local.invalidate_pattern(pattern)

    def _invalidate_remote(self, message: dict[str, Any]) -> None:
        keys, tags, pattern = message["keys"], message["tags"], message["pattern"]
        ms = self.gen_ttl_ms
        if pattern:
            # The pattern generation first: it fences every fill in flight, then
            # the matching values go.
            self._redis.incr(self._pgkey)
            self._redis.pexpire(self._pgkey, ms)
            match = f"{_glob_escape(self.base)}:v:{pattern}"
            batch: list[bytes] = []
            for name in self._redis.scan_iter(match=match, count=1000):
                batch.append(name)
                if len(batch) >= 500:
                    self._redis.unlink(*batch)
                    batch = []
            if batch:
                self._redis.unlink(*batch)
        pipe = self._redis.pipeline(transaction=False)
        if keys:
            self._inv_keys(keys=[k for key in keys for k in (self._vkey(key), self._gkey(key))], args=[ms], client=pipe)
        if tags:
            self._inv_tags(
                keys=[k for tag in tags for k in (self._tskey(tag), self._tgkey(tag))], args=[ms], client=pipe
            )
        # Log and publish after L2 is clean, so a process that drops its L1 on
        # this message cannot refill it from L2 with the old value.
        self._log_publish(
            keys=[self._logkey, self._seqkey],
            args=[json.dumps({**message, "sent_at": time.time()}), self.log_max, self.channel],
            client=pipe,
        )
        pipe.execute()
        self.counters.incr("invalidations_sent")

    @property
    def pending(self) -> int:
        """Distinct keys, tags and patterns waiting for Redis (0 after an overflow: then "everything" waits)."""
        with self._pending_lock:
            return len(self._pending_keys) + len(self._pending_tags) + len(self._pending_patterns)

    @property
    def pending_overflowed(self) -> bool:
        return self._pending_overflow

    def _queue(self, message: dict[str, Any]) -> None:
        with self._pending_lock:
            if not self._pending_overflow:
                self._pending_keys.update(dict.fromkeys(message["keys"]))
                self._pending_tags.update(dict.fromkeys(message["tags"]))
                if message["pattern"]:
                    self._pending_patterns[message["pattern"]] = None
                if len(self._pending_keys) + len(self._pending_tags) + len(self._pending_patterns) > self.pending_max:
                    # Too much to replay one by one: "everything" replaces the lot.
                    self._pending_overflow = True
                    self._pending_keys.clear()
                    self._pending_tags.clear()
                    self._pending_patterns.clear()
        self.counters.incr("invalidations_queued")

    def _pending_messages(self) -> tuple[list[dict[str, Any]], bool]:
        """Take the queue as messages (at most 500 names each); empties it."""
        with self._pending_lock:
            keys, tags, patterns = list(self._pending_keys), list(self._pending_tags), list(self._pending_patterns)
            overflow = self._pending_overflow
            self._pending_keys.clear()
            self._pending_tags.clear()
            self._pending_patterns.clear()
            self._pending_overflow = False
        if overflow:
            # Drops all of L2, and every listener clears its whole L1 on it.
            return [{"origin": self.origin, "keys": [], "tags": [], "pattern": "*"}], True
        messages: list[dict[str, Any]] = [
            {"origin": self.origin, "keys": [], "tags": [], "pattern": p} for p in patterns
        ]
        for i in range(0, len(keys), 500):
            messages.append({"origin": self.origin, "keys": keys[i : i + 500], "tags": [], "pattern": None})
        for i in range(0, len(tags), 500):
            messages.append({"origin": self.origin, "keys": [], "tags": tags[i : i + 500], "pattern": None})
        return messages, False

    def _flush_pending(self) -> None:
        if not self._pending_overflow and not self.pending:
            return
        messages, overflow = self._pending_messages()
        done = 0
        try:
            for message in messages:
                self._invalidate_remote(message)
                done += 1
        except redis.RedisError:
            for message in messages[done:]:
                self._queue(message)  # back in the queue (a collapsed "everything" stays one pattern)
            raise
        self.counters.incr("invalidations_delivered_late", len(messages))
        if overflow:
            self.counters.incr("pending_overflows")

    # -- the bus listener -----------------------------------------------------
    def _listen(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            client = self._client(socket_timeout=5.0, health_check_interval=2)
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                deadline = time.monotonic() + 5
                while True:
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None and message["type"] == "subscribe":
                        break
                    if time.monotonic() > deadline:
                        raise redis.TimeoutError("no subscribe confirmation")
                # Anything could have changed while we were not listening.
                self.local.clear()
                self._reset_cursor()
                self._flush_pending()
                self._down_until = 0.0
                self._circuit_open = False
                self._bus_ready.set()
                backoff = 0.05
                self._serve(pubsub)
            except (redis.RedisError, OSError) as exc:
                if self._bus_ready.is_set():
                    logger.warning("cache: invalidation bus lost (%s); L1 bypassed until it is back", exc)
            except Exception:  # a bug here must not kill invalidation for the process
                logger.exception("cache: invalidation bus listener failed")
            finally:
                was_ready = self._bus_ready.is_set()
                self._bus_ready.clear()
                self.local.clear()
                with contextlib.suppress(Exception):  # closing a dead connection
                    pubsub.close()
                    client.close()
            if self._stop.is_set():
                break
            if was_ready:
                self.counters.incr("bus_reconnects")
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 1.0)

    def _serve(self, pubsub: Any) -> None:
        """Apply bus messages; on every beat, ping the subscription, deliver the queue and read the log."""
        self._last_pong = next_beat = time.monotonic()
        due = True
        while not self._stop.is_set():
            # A short poll so close() is prompt; idle polls cost nothing measurable.
            self._drain(pubsub, 0.1)
            now = time.monotonic()
            if now - self._last_pong > self.bus_silence:
                raise redis.TimeoutError(f"the bus answered no ping for {self.bus_silence:.1f}s")
            if now >= next_beat:
                next_beat = now + self.catchup_interval
                pubsub.ping("ce-cache-bus")
                due = True
            # An open circuit is probed as soon as its cooldown lets a call through:
            # the queue goes out, and the log is read, the moment Redis answers again.
            waiting = self._pending_overflow or self._pending_keys or self._pending_tags or self._pending_patterns
            if not ((due or self._circuit_open or waiting) and self._l2_usable()):
                continue
            due = False
            try:
                self._catch_up(lambda: self._drain(pubsub, 0.01))
                self._flush_pending()
                self._circuit_open = False
            except redis.RedisError as exc:
                self._l2_failed(exc)

    def _drain(self, pubsub: Any, wait: float) -> None:
        """Handle what the subscription has: wait up to ``wait`` for the first message, then take the rest."""
        message = pubsub.get_message(timeout=wait)
        while message is not None:
            if message["type"] == "message":
                self._on_message(message["data"])
            elif message["type"] == "pong":
                self._last_pong = time.monotonic()
            message = pubsub.get_message(timeout=0)

    def _on_message(self, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        seq = message.get("seq")
        if isinstance(seq, int):
            if len(self._heard) > 100_000:
                self._heard.clear()  # the log read is failing: it re-applies these later, harmlessly
            self._heard.add(seq)
        if message.get("origin") == self.origin:
            return  # applied locally before it was published
        self._apply(message)
        self.counters.incr("invalidations_received")
        sent_at = message.get("sent_at")
        if isinstance(sent_at, int | float):
            self.invalidation_lag.observe(max(0.0, time.time() - sent_at))

    def _apply(self, message: dict[str, Any]) -> None:
        self._apply_local(tuple(message.get("keys") or ()), tuple(message.get("tags") or ()), message.get("pattern"))

    def _reset_cursor(self) -> None:
        """Start reading the log at its end (the caller has just cleared L1)."""
        pipe = self._redis.pipeline(transaction=True)  # both read at one instant
        pipe.xrevrange(self._logkey, count=1)
        pipe.get(self._seqkey)
        last, seq = pipe.execute()
        self._cursor = last[0][0].decode() if last else "0-0"
        self._cursor_seq = int(last[0][1][b"seq"]) if last else int(seq or 0)
        self._heard.clear()

    def _catch_up(self, drain: Callable[[], None] = lambda: None) -> None:
        """Apply what the log holds past the cursor and the bus did not bring; clear L1 on a gap.

        ``drain`` takes in what the bus has delivered meanwhile: an entry is published in
        the same call that logs it, so its bus message is usually a moment behind the log
        read, and is not applied twice (an entry applied twice would only cost a miss).
        """
        while True:
            pipe = self._redis.pipeline(transaction=True)  # the entries and the counter at one instant
            pipe.xrange(self._logkey, min=f"({self._cursor}", count=500)
            pipe.get(self._seqkey)
            entries, raw_seq = pipe.execute()
            if any(int(fields[b"seq"]) not in self._heard for _, fields in entries):
                drain()
            counter = int(raw_seq or 0)
            if not entries:
                if counter < self._cursor_seq:
                    self._lost_track("the counter went back (Redis lost its data)")
                elif counter > self._cursor_seq:
                    self._lost_track("invalidations trimmed from the log unread")
                return
            for entry_id, fields in entries:
                seq = int(fields[b"seq"])
                if seq <= self._cursor_seq:
                    self._lost_track("the log restarted (Redis lost its data)")
                    return
                if seq > self._cursor_seq + 1:
                    # Entries trimmed before this process read them: which keys, nobody knows.
                    self._lost_track("invalidations trimmed from the log unread")
                    return
                if seq in self._heard:
                    self._heard.discard(seq)
                else:
                    with contextlib.suppress(ValueError, KeyError):
                        message = json.loads(fields[b"m"])
                        if message.get("origin") != self.origin:
                            self._apply(message)
                            self.counters.incr("invalidations_caught_up")
                self._cursor, self._cursor_seq = entry_id.decode(), seq
            self._heard = {seq for seq in self._heard if seq > self._cursor_seq}
            if len(entries) < 500:
                return

    def _lost_track(self, why: str) -> None:
        logger.warning("cache: %s; clearing L1", why)
        self.counters.incr("catchup_clears")
        self.local.clear()
        self._reset_cursor()

    # -- metrics ---------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        counters = self.counters.snapshot()
        return {
            "enabled": self.enabled,
            "l1": {
                "hits": self.local.hits,
                "misses": self.local.misses,
                "bypassed": counters["l1_bypassed"],
                "size": len(self.local),
                "max_entries": self.local.max_entries,
                "bytes": self.local.bytes,
                "max_bytes": self.local.max_bytes,
                "oversized": self.local.oversized,
                "evictions": self.local.evictions,
                "expirations": self.local.expirations,
            },
            "l2": {
                "hits": counters["l2_hits"],
                "misses": counters["l2_misses"],
                "errors": counters["l2_errors"],
                "available": self._l2_usable(),
            },
            "l3": {"loads": counters["loads"], "loader_seconds": self.loader_seconds.snapshot()},
            "negative": {"hits": counters["negative_hits"], "stores": counters["negative_stores"]},
            "singleflight_waits": counters["singleflight_waits"],
            "lock_waits": counters["lock_waits"],
            "stale_fills_refused": counters["stale_fills_refused"] + self.local.refused_fills,
            "invalidations": {
                "sent": counters["invalidations_sent"],
                "received": counters["invalidations_received"],
                "queued": counters["invalidations_queued"],
                "pending": self.pending,
                "delivered_late": counters["invalidations_delivered_late"],
                "caught_up": counters["invalidations_caught_up"],
                "pending_overflows": counters["pending_overflows"],
                "catchup_clears": counters["catchup_clears"],
                "lag_seconds": self.invalidation_lag.snapshot(),
            },
            "bus": {"connected": self.bus_connected, "reconnects": counters["bus_reconnects"]},
        }


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


# -- the process-wide instance ------------------------------------------------
_instance: MultiLevelCache | None = None
_instance_lock = threading.Lock()


def _reset_in_child() -> None:
    global _instance_lock
    _instance_lock = threading.Lock()
    if _instance is not None:
        _instance._after_fork()


os.register_at_fork(after_in_child=_reset_in_child)


def get_cache() -> MultiLevelCache:
    global _instance
    if _instance is None:
        with _instance_lock:
            if _instance is None:
                _instance = MultiLevelCache(
                    redis_url=settings.CACHE_REDIS_URL,
                    prefix=settings.REDIS_KEY_PREFIX,
                    enabled=settings.CACHE_ENABLED,
                    l1_max_entries=settings.CACHE_L1_MAX_ENTRIES,
                    l1_max_bytes=settings.CACHE_L1_MAX_BYTES,
                    l1_max_ttl=settings.CACHE_L1_MAX_TTL,
                    pending_max=settings.CACHE_PENDING_MAX,
                    catchup_interval=settings.CACHE_CATCHUP_INTERVAL,
                    log_max=settings.CACHE_LOG_MAX,
                )
    return _instance


def configure_cache(**overrides: Any) -> MultiLevelCache:
    """Replace the process's cache (tests, benchmarks). Unset options come from settings."""
    global _instance
    with _instance_lock:
        if _instance is not None:
            _instance.close()
        options: dict[str, Any] = {
            "redis_url": settings.CACHE_REDIS_URL,
            "prefix": settings.REDIS_KEY_PREFIX,
            "enabled": settings.CACHE_ENABLED,
            "l1_max_entries": settings.CACHE_L1_MAX_ENTRIES,
            "l1_max_bytes": settings.CACHE_L1_MAX_BYTES,
            "l1_max_ttl": settings.CACHE_L1_MAX_TTL,
            "pending_max": settings.CACHE_PENDING_MAX,
            "catchup_interval": settings.CACHE_CATCHUP_INTERVAL,
            "log_max": settings.CACHE_LOG_MAX,
        }
        options.update(overrides)
        _instance = MultiLevelCache(**options)
    return _instance


def get_or_load(
    key: str,
    loader: Callable[[], T | None],
    *,
    ttl: float,
    tags: Iterable[str] = (),
    negative_ttl: float = 5.0,
    copy: bool = True,
) -> T | None:
    """Read-through on L1 -> L2 -> ``loader``; ``None`` from the loader is cached as "not found".

    ``copy=False`` keeps the object itself in L1 (no unpickle per hit); use it
    only for values nobody mutates (bytes, tuples, frozen data).
    """
    return get_cache().get_or_load(key, loader, ttl=ttl, tags=tags, negative_ttl=negative_ttl, copy=copy)


async def aget_or_load(
    key: str,
    loader: Callable[[], T | None],
    *,
    ttl: float,
    tags: Iterable[str] = (),
    negative_ttl: float = 5.0,
    copy: bool = True,
) -> T | None:
    """``get_or_load`` for async code: the L1 hit is served on the loop, the rest in a thread."""
    from asgiref.sync import sync_to_async

    cache = get_cache()
    if cache.enabled and cache.bus_connected:
        entry = cache.local.get(key)
        if entry is not None:
            if not entry.encoded:
                return entry.value
            return _decode(entry.value)
    return await sync_to_async(cache.get_or_load, thread_sensitive=True)(
        key, loader, ttl=ttl, tags=tags, negative_ttl=negative_ttl, copy=copy
    )


def cache_stats() -> dict[str, Any]:
    """Per-level hits/misses, loader time, invalidation lag, bus state (for /metrics)."""
    return get_cache().stats()
