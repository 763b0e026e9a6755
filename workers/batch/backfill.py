"""Embedding backfill: embed the texts that have no stored embedding yet.

Goes through the same path as realtime inference (``embed_texts``: content-hash
cache, PostgreSQL ``Embedding`` rows, the micro-batcher), so a text embedded
here is never embedded again by a suggestion request, and vice versa.
"""

from __future__ import annotations

from collections.abc import Sequence


def embed_missing(texts: Sequence[str]) -> int:
    """Embed those of ``texts`` whose embedding is not stored; returns how many were new."""
    from apps.ai import selectors as ai_selectors
    from workers.inference.embeddings import embed_texts, normalise_text
    from workers.inference.runtime import runtime

    rt = runtime()
    by_hash: dict[str, str] = {}
    for text in texts:
        cleaned = normalise_text(text)
        if cleaned:
            by_hash.setdefault(ai_selectors.embedding_content_hash(text=cleaned, model_name=rt.model_name), cleaned)
    if not by_hash:
        return 0
    stored = ai_selectors.embedding_get_many(content_hashes=list(by_hash))
    missing = [text for h, text in by_hash.items() if h not in stored]
    if missing:
        embed_texts(missing, rt=rt)
    return len(missing)
