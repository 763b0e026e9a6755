"""Embedding backfill: embed the texts that have no stored embedding yet.

Same content hash and ``Embedding`` table as realtime inference, so a text
embedded here is never embedded again by a suggestion request, and vice versa.
It skips the micro-batcher: that exists to gather concurrent single requests
into a batch, and a backfill chunk already is one (measured in
bench/results/training.md: one encoder call per chunk of 64 instead of 64
submissions to the batcher, whose batches stop at AI_MAX_BATCH).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def embed_missing(texts: Sequence[str]) -> dict[str, int]:
    """Embed those of ``texts`` whose embedding is not stored; returns counts embedded / skipped (poison)."""
    from apps.ai import selectors as ai_selectors
    from apps.ai import services as ai_services
    from workers.inference.embeddings import normalise_text
    from workers.inference.runtime import PoisonInput, runtime

    rt = runtime()
    by_hash: dict[str, str] = {}
    for text in texts:
        cleaned = normalise_text(text)
        if cleaned:
            by_hash.setdefault(ai_selectors.embedding_content_hash(text=cleaned, model_name=rt.model_name), cleaned)
    if not by_hash:
        return {"embedded": 0, "skipped": 0}
    stored = ai_selectors.embedding_get_many(content_hashes=list(by_hash))
    missing = {h: text for h, text in by_hash.items() if h not in stored}
    if not missing:
        return {"embedded": 0, "skipped": 0}
    hashes = list(missing)
    vectors: dict = {}
    skipped = 0
    try:
        vectors = dict(zip(hashes, rt.encoder.encode([missing[h] for h in hashes]), strict=True))
    except PoisonInput:
        # One bad text must not block the rest of the chunk: embed singly, skip the poison.
        for h in hashes:
            try:
                vectors[h] = rt.encoder.encode([missing[h]])[0]
            except PoisonInput:
                skipped += 1
                logger.warning("backfill skipped a text the model cannot embed", extra={"content_hash": h})
    ai_services.embedding_store_many(model_name=rt.model_name, vectors=vectors)
    return {"embedded": len(vectors), "skipped": skipped}
