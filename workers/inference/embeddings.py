"""Embeddings by content hash: L1 process memory -> PostgreSQL -> the model.

The hash is sha256 over the model name and the (trimmed, cut) text, so a text
is embedded once per model, ever: a process keeps recent vectors in a bounded
LRU, every process shares the ``Embedding`` table, and concurrent requests for
one text in one process wait on a single in-flight future (single-flight)
instead of each sending it to the batcher.

Why no Redis level: a vector is 1.5 KB and the PostgreSQL lookup by unique
hash is one indexed read for a whole batch of texts, already cheaper than the
round trip per key that an L2 would add.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future

import numpy as np

from apps.ai import selectors as ai_selectors
from apps.ai import services as ai_services
from workers.inference.runtime import MAX_TEXT_CHARS, Runtime, runtime

L1_SIZE = 20_000


def normalise_text(text: str) -> str:
    return text.strip()[:MAX_TEXT_CHARS]


class _L1:
    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_l1 = _L1(L1_SIZE)
_inflight: dict[str, Future] = {}
_inflight_lock = threading.Lock()
counters = {"l1": 0, "db": 0, "model": 0, "shared_inflight": 0}


def cache_clear() -> None:
    _l1.clear()


def _stored_vectors(hashes: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The vectors already known (this process's L1, then the database) and the hashes neither has."""
    out: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for h in dict.fromkeys(hashes):
        if not h:
            continue
        vector = _l1.get(h)
        if vector is None:
            missing.append(h)
        else:
            counters["l1"] += 1
            out[h] = vector
    if missing:
        for h, vector in ai_selectors.embedding_get_many(content_hashes=missing).items():
            counters["db"] += 1
            _l1.put(h, vector)
            out[h] = vector
    return out, missing


def embed_texts(texts: Sequence[str], *, rt: Runtime | None = None) -> list[np.ndarray]:
    """One normalised vector per text, in order; the model sees only texts never embedded before."""
    rt = rt or runtime()
    model_name = rt.model_name
    cleaned = [normalise_text(t) if isinstance(t, str) else t for t in texts]
    hashes = [
        ai_selectors.embedding_content_hash(text=t, model_name=model_name) if isinstance(t, str) else ""
        for t in cleaned
    ]
    out, missing = _stored_vectors(hashes)
    text_by_hash = {h: t for h, t in zip(hashes, cleaned, strict=True)}
    to_compute = [h for h in missing if h not in out]

    owned: dict[str, Future] = {}
    waiting: dict[str, Future] = {}
    with _inflight_lock:
        for h in to_compute:
            existing = _inflight.get(h)
            if existing is not None:
                waiting[h] = existing
            else:
                future = rt.batcher.submit(text_by_hash[h])
                _inflight[h] = future
                owned[h] = future
    try:
        computed: dict[str, np.ndarray] = {}
        errors: list[BaseException] = []
        for h, future in owned.items():
            try:
                computed[h] = future.result()
                counters["model"] += 1
            except BaseException as exc:  # noqa: BLE001 - raised below after clean-up
                errors.append(exc)
        if computed:
            ai_services.embedding_store_many(model_name=model_name, vectors=computed)
            for h, vector in computed.items():
                _l1.put(h, vector)
            out.update(computed)
    finally:
        with _inflight_lock:
            for h in owned:
                _inflight.pop(h, None)
    if errors:
        raise errors[0]
    for h, future in waiting.items():
        counters["shared_inflight"] += 1
        out[h] = future.result()
    for t, h in zip(cleaned, hashes, strict=True):
        if not h:
            # Non-strings never reach the cache; the encoder names the problem.
            rt.encoder.encode([t])
    return [out[h] for h in hashes]
