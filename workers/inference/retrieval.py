"""Ranking of a session's earlier events against a query: pure functions, no I/O.

``rank_related`` takes the candidate events (plain mappings with ``seq``,
``text`` and optionally ``author``) and their embeddings, already computed,
and returns the best ones with an explanation each. The inference pipeline
(``workers.inference.pipeline``) calls it on what it read from the database;
``bench/quality.py`` calls the same function on the labelled conversations in
``tests/data/quality/``, in memory, so the figures measure the worker's code.

``dense``: cosine similarity over normalised MiniLM embeddings (a dot
product), best first, nothing under ``MIN_SIMILARITY``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Below this cosine similarity MiniLM pairs are unrelated in practice (random
# English sentence pairs score about 0.0-0.15), so they are not suggested.
MIN_SIMILARITY = 0.2

DENSE = "dense"
METHODS = (DENSE,)


@dataclass(frozen=True)
class Ranked:
    """One chosen candidate: its index in the input, its score and why it was chosen."""

    index: int
    score: float
    explanation: dict[str, Any] = field(default_factory=dict)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def rank_related(
    *,
    query_text: str,
    query_vector: np.ndarray,
    candidates: Sequence[Mapping[str, Any]],
    vectors: Sequence[np.ndarray] | np.ndarray,
    k: int | None,
    method: str = DENSE,
    query_author: Any = None,
    timings: dict[str, float] | None = None,
) -> list[Ranked]:
    """The best ``k`` candidates (all when ``k`` is None) for the query, best first.

    ``timings`` (when given) receives the time of each stage in ms.
    Candidates repeating an earlier one's ``seq`` are skipped.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown retrieval method {method!r}; expected one of {METHODS}.")
    timings = timings if timings is not None else {}
    if not candidates:
        return []
    t0 = time.perf_counter()
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(candidates), -1)
    dense = matrix @ np.asarray(query_vector, dtype=np.float32)
    timings["dense_ms"] = _ms(t0)
    order = np.argsort(-dense, kind="stable")
    out: list[Ranked] = []
    seen: set[Any] = set()
    for index in order:
        i = int(index)
        score = float(dense[i])
        if score < MIN_SIMILARITY or (k is not None and len(out) >= k):
            break
        seq = candidates[i].get("seq")
        if seq in seen:
            continue
        seen.add(seq)
        out.append(Ranked(index=i, score=score, explanation={"method": DENSE, "dense": round(score, 4)}))
    return out
