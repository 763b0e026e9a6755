"""Fixtures for the inference worker tests: one real model per test process."""

from __future__ import annotations

import pytest

# A small hand-written conversation. The expectations below were picked by a
# person reading the sentences, not computed by the code under test.
CONVERSATION = [
    "We need to migrate the billing database from MySQL to PostgreSQL before the end of the quarter.",
    "The marketing team wants a new landing page with a brighter colour scheme.",
    "Alice will book the venue for the offsite team dinner next Friday.",
    "Remember to rotate the API keys for the payment provider.",
]
# trigger text -> seq (1-based) of the earlier event it is about
CLOSEST = {
    "What is the plan for moving our invoices data into Postgres?": 1,
    "Who is organising the restaurant for the team's evening meal?": 3,
    "Our Stripe credentials must be renewed for security.": 4,
}
OTHER_SESSION = ["The office is closed on December 24th and 25th for the holidays."]
OTHER_SESSION_TRIGGER = "Is the office open on Christmas Eve?"


@pytest.fixture(scope="session")
def real_runtime():
    from workers.inference.runtime import runtime

    return runtime()


@pytest.fixture
def fresh_caches():
    from workers.inference import embeddings, predictors

    embeddings.cache_clear()
    predictors.predictor_reset()
    yield
    embeddings.cache_clear()
    predictors.predictor_reset()
