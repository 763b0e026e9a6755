"""The ranking the worker uses (workers/inference/retrieval.py) and the labelled set it is measured on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from workers.inference import retrieval

DATA = Path(__file__).resolve().parents[2] / "data" / "quality"
CASES = {"paraphrase", "lexical_trap", "recency", "reversed_decision", "long_range"}

# A small fixed conversation, labelled by a person: the latest status answers
# "where are we", and the later decision overrides the earlier one.
CONVERSATION = [
    "Staging deploy started, 3 of 12 services are done.",
    "We'll write the billing service in Go.",
    "Lunch order closes at 11:45, add yourselves to the sheet.",
    "Staging deploy at 8 of 12, the search service is slow to come up.",
    "Can someone review my PR? It's a typo fix in the README.",
    "Change of plan: billing will be written in Kotlin so we can share the JVM libraries.",
    "Staging deploy finished, all 12 services healthy.",
    "The printer on the second floor is jammed again.",
]
# query -> seq (1-based) of the event that answers it
EXPECTED = {
    "Where are we with the staging deploy?": 7,
    "Which language is the billing service going to use?": 6,
}
# query -> words the answer shares with it (stems)
MATCHED = {
    "Where are we with the staging deploy?": {"stag", "deploy"},
    "Which language is the billing service going to use?": {"bill"},
}


def _rank(encoder, query: str, method: str) -> tuple[list[retrieval.Ranked], list[dict]]:
    vectors = encoder.encode([query, *CONVERSATION])
    candidates = [{"seq": i + 1, "text": t} for i, t in enumerate(CONVERSATION)][::-1]
    return retrieval.rank_related(
        query_text=query,
        query_vector=vectors[0],
        candidates=candidates,
        vectors=vectors[1:][::-1],
        k=3,
        method=method,
    ), candidates


@pytest.mark.parametrize("query,expected_seq", sorted(EXPECTED.items()))
def test_hybrid_puts_the_latest_word_first_where_plain_embeddings_do_not(real_runtime, query, expected_seq):
    encoder = real_runtime.encoder

    # When the same candidates are ranked both ways
    plain, candidates = _rank(encoder, query, retrieval.DENSE)
    hybrid, _ = _rank(encoder, query, retrieval.HYBRID_METHOD)

    # Then the hybrid's first suggestion is the one a person picked, and plain cosine's is not
    assert candidates[hybrid[0].index]["seq"] == expected_seq
    assert candidates[plain[0].index]["seq"] != expected_seq
    # And each says why: scores, and which earlier event replaced the others
    explanation = hybrid[0].explanation
    assert explanation["method"] == "hybrid" and explanation["superseded_by"] is None
    assert set(explanation["matched_terms"]) == MATCHED[query]
    assert {"score", "dense", "lexical", "matched_terms", "recency", "same_author"} <= set(explanation)
    assert explanation["score"] == round(hybrid[0].score, 4) and explanation["dense"] >= retrieval.MIN_SIMILARITY
    replaced = [r for r in hybrid if r.explanation["superseded_by"] is not None]
    assert replaced and all(r.explanation["superseded_by"] == expected_seq for r in replaced)


def test_lexical_scores_and_matched_terms():
    docs = [retrieval.tokenize(t) for t in ("The orders.v3 topic keeps seven days", "Lunch is at noon", "orders")]
    scores = retrieval.bm25(retrieval.tokenize("How long does orders.v3 keep messages?"), docs, k1=1.2, b=0.75)
    assert scores[0] > scores[2] > 0 and scores[1] == 0
    assert {"orders.v3", "order", "v3", "keep"} <= set(docs[0])  # stems: orders -> order, keeps -> keep
    assert "the" not in docs[0]


def test_dense_is_plain_cosine_with_the_similarity_floor():
    vectors = np.eye(3, dtype=np.float32)
    query = np.asarray([0.9, 0.1, 0.0], dtype=np.float32)
    candidates = [{"seq": 3, "text": "alpha"}, {"seq": 2, "text": "beta"}, {"seq": 1, "text": "gamma"}]
    ranked = retrieval.rank_related(
        query_text="alpha", query_vector=query, candidates=candidates, vectors=vectors, k=3, method=retrieval.DENSE
    )
    # Only the first passes MIN_SIMILARITY (0.2).
    assert [r.index for r in ranked] == [0]
    assert ranked[0].explanation == {"method": "dense", "dense": 0.9, "matched_terms": ["alpha"]}
    with pytest.raises(ValueError):
        retrieval.rank_related(
            query_text="a", query_vector=query, candidates=candidates, vectors=vectors, k=3, method="unknown"
        )


@pytest.mark.parametrize("part", ["dev", "test"])
def test_the_labelled_set_is_what_the_benchmark_promises(part):
    conversations = json.loads((DATA / f"{part}.json").read_text())["conversations"]
    assert len(conversations) >= 10
    for conversation in conversations:
        events = conversation["events"]
        assert 30 <= len(events) <= 80
        assert [e["order"] for e in events] == list(range(1, len(events) + 1))
        assert all(e["author"] and e["text"] and e["kind"] in ("context_update", "note") for e in events)
        order = {e["id"]: e["order"] for e in events}
        for probe in conversation["probes"]:
            assert probe["case"] in CASES
            assert probe["related"] and all(order[r] < probe["at"] for r in probe["related"])
            assert events[probe["at"] - 1]["text"] == probe["query"]


def test_the_labelled_set_has_enough_probes_and_disjoint_parts():
    parts = {p: json.loads((DATA / f"{p}.json").read_text())["conversations"] for p in ("dev", "test")}
    assert sum(len(c) for c in parts.values()) >= 20
    probes = [p for convs in parts.values() for c in convs for p in c["probes"]]
    assert len(probes) >= 100
    assert {p["case"] for p in probes} == CASES
    queries = {p: {pr["query"] for c in convs for pr in c["probes"]} for p, convs in parts.items()}
    assert not queries["dev"] & queries["test"]


# Three candidates equally close to the query (cosine 0.6) and not about one
# another (cosine <= 0.36, so none replaces another): only the author can order them.
AUTHOR_VECTORS = np.asarray([[0.6, 0.8, 0.0], [0.6, 0.0, 0.8], [0.6, -0.8, 0.0]], dtype=np.float32)
AUTHOR_QUERY = np.asarray([1.0, 0.0, 0.0], dtype=np.float32)


def _rank_authors(authors, *, query_author_id, author_weight):
    candidates = [{"seq": 3 - i, "text": f"update {i}", "author_id": a} for i, a in enumerate(authors)]
    params = dataclasses.replace(retrieval.HYBRID, recency_weight=0.0, author_weight=author_weight)
    ranked = retrieval.rank_related(
        query_text="status",
        query_vector=AUTHOR_QUERY,
        candidates=candidates,
        vectors=AUTHOR_VECTORS,
        k=3,
        query_author_id=query_author_id,
        params=params,
    )
    return [candidates[r.index]["seq"] for r in ranked], ranked


def test_the_author_feature_is_computed_from_the_candidates_authors():
    candidates = [{"seq": 3, "author_id": 8}, {"seq": 2, "author_id": None}, {"seq": 1, "author_id": 7}]
    assert retrieval.same_author_feature(candidates, 7).tolist() == [0.0, 0.0, 1.0]
    # An unknown author (a deleted user, a question with no event) matches nobody, not even None.
    assert retrieval.same_author_feature(candidates, None).tolist() == [0.0, 0.0, 0.0]

    # Without a weight the tie keeps the input order (newest first)
    seqs, ranked = _rank_authors([8, None, 7], query_author_id=7, author_weight=0.0)
    assert seqs == [3, 2, 1]
    assert [r.explanation["same_author"] for r in ranked] == [False, False, True]
    assert all("author_contribution" not in r.explanation for r in ranked)

    # With one, the query author's own event comes first and says how much the author added
    seqs, ranked = _rank_authors([8, None, 7], query_author_id=7, author_weight=0.05)
    assert seqs == [1, 3, 2]
    assert ranked[0].explanation["author_contribution"] == 0.05
    assert ranked[0].explanation["score"] == round(ranked[0].explanation["dense"] + 0.05, 4)
    assert all("author_contribution" not in r.explanation for r in ranked[1:])

    # A negative weight prefers the other participants' events
    seqs, ranked = _rank_authors([7, 8, 7], query_author_id=7, author_weight=-0.05)
    assert seqs == [2, 3, 1]
    assert ranked[1].explanation["author_contribution"] == -0.05

    # Another author's query, or none, leaves the order alone
    assert _rank_authors([8, None, 7], query_author_id=9, author_weight=0.05)[0] == [3, 2, 1]
    assert _rank_authors([8, None, 7], query_author_id=None, author_weight=0.05)[0] == [3, 2, 1]
