"""Embeddings by content hash: L1 process memory -> PostgreSQL -> the model.

The hash is sha256 over the model name and the (trimmed, cut) text, so a text
is embedded once per model, ever: a process keeps recent vectors in a bounded
LRU, every process shares the ``Embedding`` table, and concurrent requests for
one text in one process wait on a single in-flight future (single-flight)
instead of each sending it to the batcher. The LRU and the single-flight are
the process-wide ones of ``apps.caching.inprocess``.

Why no Redis level: a vector is 1.5 KB and the PostgreSQL lookup by unique
hash is one indexed read for a whole batch of texts, already cheaper than the
round trip per key that an L2 would add.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from apps.ai import selectors as ai_selectors
from apps.ai import services as ai_services
from apps.caching.inprocess import BoundedLRU, SingleFlight
from workers.inference.runtime import MAX_TEXT_CHARS, Runtime, runtime

L1_SIZE = 20_000


def normalise_text(text: str) -> str:
    return text.strip()[:MAX_TEXT_CHARS]


_l1: BoundedLRU[str, np.ndarray] = BoundedLRU(L1_SIZE)
# hash -> the batcher's future for it: concurrent requests wait on that one.
_inflight: SingleFlight[str, np.ndarray] = SingleFlight()
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

    owned, waiting = _inflight.claim(to_compute, lambda h: rt.batcher.submit(text_by_hash[h]))
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
        _inflight.release(owned)
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
