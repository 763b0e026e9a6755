"""Training the next-action model: beats the baseline on structured data, promotes only when better."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from django.utils import timezone

from apps.ai.models import ModelVersion
from apps.batch.jobs import job_execute
from apps.batch.synthetic import SyntheticConfig, action_sessions, training_data_generate

# The margins this suite promises (held-out sessions, top-3 and top-1 accuracy).
TOP3_MARGIN = 0.08
TOP1_MARGIN = 0.15

TRAIN = {"epochs": 8, "batch_size": 64, "eval_percent": 25, "seed": 0, "min_gain": TOP3_MARGIN, "device": "cpu"}


def test_synthetic_sessions_are_deterministic_and_ambiguous_for_a_bigram():
    config = SyntheticConfig(sessions=30, seed=3)
    first, again = action_sessions(config), action_sessions(config)
    assert first == again and len(first) == 30
    assert all(config.min_actions <= len(s) <= config.max_actions for s in first)
    followers: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for seq in first:
        for a, b in zip(seq, seq[1:], strict=False):
            followers[a][b] += 1
    # The hubs have many likely successors: the last action alone cannot pick one.
    for hub in ("open_doc", "save", "comment"):
        common = [a for a, n in followers[hub].items() if n >= 0.1 * sum(followers[hub].values())]
        assert len(common) >= 3, (hub, followers[hub])


@pytest.mark.slow
def test_training_beats_the_baseline_and_only_a_better_model_is_promoted(db):
    # Given structured sessions stored as user_action events
    counts = training_data_generate(
        config=SyntheticConfig(sessions=60, min_actions=30, max_actions=40, seed=7), users=3
    )
    assert counts["sessions"] == 60

    # When the training job runs
    run = job_execute(name="train_next_action", params=TRAIN)

    # Then a version is registered and promoted, beating the baseline by the stated margins
    first = ModelVersion.objects.get(name="next_action")
    m = first.metrics
    assert run.result["promoted"] is True and first.promoted and first.version == 1
    assert m["eval_pairs"] >= 100 and m["events"] == counts["events"]
    assert m["candidate_topk"] >= m["baseline_topk"] + TOP3_MARGIN, m
    assert m["candidate_top1"] >= m["baseline_top1"] + TOP1_MARGIN, m
    assert "current_topk" not in m and first.artifact_bytes > 0

    # When a worse model is trained (no epochs: untrained weights)
    job_execute(name="train_next_action", params={**TRAIN, "epochs": 0})

    # Then it is registered with its metrics but not promoted; the good one stays
    worse = ModelVersion.objects.get(name="next_action", version=2)
    assert worse.promoted is False
    assert worse.metrics["current_version"] == "next_action@1"
    assert worse.metrics["candidate_topk"] < worse.metrics["current_topk"]
    assert worse.metrics["decision"].startswith("not promoted")
    assert ModelVersion.objects.get(promoted=True).pk == first.pk

    # And a model no better than the promoted one (same data, same seed) is not promoted either
    job_execute(name="train_next_action", params=TRAIN)
    same = ModelVersion.objects.get(name="next_action", version=3)
    assert same.promoted is False and "does not beat next_action@1" in same.metrics["decision"]


def test_too_little_data_is_registered_but_not_promoted(db):
    training_data_generate(config=SyntheticConfig(sessions=12, min_actions=5, max_actions=6, seed=1), users=3)
    run = job_execute(name="train_next_action", params={**TRAIN, "epochs": 1, "min_eval_pairs": 1000})
    assert run.result["promoted"] is False
    assert "held-out pairs" in run.result["metrics"]["decision"]
    assert not ModelVersion.objects.filter(promoted=True).exists()


def test_accepted_suggestions_become_training_examples(db, user, session_factory):
    from apps.ai.models import InferenceRequest, Suggestion, SuggestionFeedback
    from apps.batch.selectors import accepted_next_action_examples
    from apps.context.services import EventInput, context_event_append

    session = session_factory()
    context_event_append(
        session=session,
        author=user,
        events=[EventInput("user_action", {"action": a}) for a in ("open_doc", "edit", "save", "share")],
    )
    request = InferenceRequest.objects.create(session=session, queued_at=timezone.now(), status="done", trigger_seq=3)
    accepted = Suggestion.objects.create(
        request=request, session=session, kind="next_action", rank=0, trigger_seq=3, content={"action": "publish"}
    )
    rejected = Suggestion.objects.create(
        request=request, session=session, kind="next_action", rank=1, trigger_seq=3, content={"action": "print"}
    )
    SuggestionFeedback.objects.create(suggestion=accepted, user=user, verdict="accept")
    SuggestionFeedback.objects.create(suggestion=rejected, user=user, verdict="reject")

    examples = accepted_next_action_examples(context=8)

    assert examples == [(str(session.id), ["open_doc", "edit", "save"], "publish")]


@pytest.mark.parametrize("params", [{"epochs": -1}, {"eval_percent": 100}, {"k": 0}, {"lr": 0}, {"bogus": 1}])
def test_bad_training_parameters_are_rejected(db, params):
    from apps.common.exceptions import ValidationFailed

    with pytest.raises(ValidationFailed):
        job_execute(name="train_next_action", params=params)


def _next_action_with_feedback(session, user, *, action: str, verdict: str, trigger_seq: int):
    from apps.ai.models import InferenceRequest, Suggestion, SuggestionFeedback

    request = InferenceRequest.objects.create(
        session=session, queued_at=timezone.now(), status="done", trigger_seq=trigger_seq
    )
    suggestion = Suggestion.objects.create(
        request=request,
        session=session,
        kind="next_action",
        rank=0,
        trigger_seq=trigger_seq,
        content={"action": action},
    )
    SuggestionFeedback.objects.create(suggestion=suggestion, user=user, verdict=verdict)
    return suggestion


def test_rejected_suggestions_become_negative_examples(db, user, other_user, session_factory):
    from apps.ai.selectors import next_action_feedback_examples
    from apps.context.services import EventInput, context_event_append

    # Given a session whose next-action suggestions got an accept and a rejection
    session = session_factory()
    context_event_append(
        session=session,
        author=user,
        events=[EventInput("user_action", {"action": a}) for a in ("open_doc", "edit", "save", "share")],
    )
    _next_action_with_feedback(session, user, action="publish", verdict="accept", trigger_seq=3)
    _next_action_with_feedback(session, other_user, action="print", verdict="reject", trigger_seq=3)
    _next_action_with_feedback(session, user, action="<b>bad</b>", verdict="reject", trigger_seq=3)

    # When the negatives are read (as training reads them)
    negatives = next_action_feedback_examples(verdict="reject", context=8)

    # Then the valid rejection is one, with what the model saw when it suggested it
    assert negatives == [(str(session.id), ["open_doc", "edit", "save"], "print")]
    assert next_action_feedback_examples(verdict="reject", context=8, vocabulary={"open_doc", "save"}) == []
    accepted = next_action_feedback_examples(verdict="accept", context=2)
    assert accepted == [(str(session.id), ["edit", "save"], "publish")]


def test_a_rejection_lowers_that_action_after_that_context():
    from workers.inference.next_action import Vocab, load_predictor, save_artifact, train_model

    # Given sessions where "save" is followed by "share" or "print" equally often
    sequences = [["open_doc", "edit", "save", "share"], ["open_doc", "edit", "save", "print"]] * 20
    vocab = Vocab(["edit", "open_doc", "print", "save", "share"])
    prefix = ["open_doc", "edit", "save"]

    def p_print(negatives) -> float:
        model, v = train_model(sequences, vocab=vocab, epochs=6, seed=0, negatives=negatives, negative_weight=3.0)
        ranked = dict(load_predictor(save_artifact(model, v)).predict(prefix, 5))
        return ranked.get("print", 0.0)

    # When users rejected "print" after those actions, and the model is trained with and without that
    without = p_print(())
    with_rejections = p_print([(prefix, "print")] * 5)

    # Then the rejected action is much less likely there
    assert with_rejections < without - 0.2, (without, with_rejections)


def test_the_training_job_counts_the_rejections_it_learned_from(db, user, session_factory):
    from apps.context.models import ContextEvent
    from workers.training.train import in_eval_split

    # Given training data and a rejected next-action suggestion in one of its sessions
    training_data_generate(config=SyntheticConfig(sessions=12, min_actions=8, max_actions=10, seed=1), users=3)
    saves = ContextEvent.objects.filter(event_type="user_action", data__action="save").order_by("session_id", "seq")
    # A training session's (held-out sessions' feedback stays out of training).
    event = next(e for e in saves if not in_eval_split(str(e.session_id), TRAIN["eval_percent"]))
    _next_action_with_feedback(event.session, user, action="comment", verdict="reject", trigger_seq=event.seq)

    # When the job runs
    run = job_execute(name="train_next_action", params={**TRAIN, "epochs": 1})

    # Then the rejection was read and used as a negative
    metrics = run.result["metrics"]
    assert metrics["rejected_examples"] == 1 and metrics["rejected_examples_used"] == 1, metrics


class _Fixed:
    """A predictor that always answers the same ranking."""

    def __init__(self, ranking):
        self.ranking = ranking

    def predict(self, actions, k=3):
        return self.ranking[:k]


def test_calibration_measures_how_far_the_top_probability_can_be_trusted():
    import math

    from workers.training.train import calibration

    pairs = [(["x"], "a"), (["x"], "a"), (["x"], "a"), (["x"], "b")]

    # A model right 3 times in 4 at confidence 0.75 is calibrated
    honest = calibration(_Fixed([("a", 0.75), ("b", 0.25)]), pairs, n_actions=2)
    assert honest["ece"] == 0.0 and honest["pairs"] == 4
    assert honest["brier_top1"] == round((3 * 0.25**2 + 0.75**2) / 4, 4)
    assert honest["nll"] == round((-3 * math.log(0.75) - math.log(0.25)) / 4, 4)
    assert honest["bins"] == [{"bin": "0.7-0.8", "n": 4, "confidence": 0.75, "accuracy": 0.75}]

    # One that says 0.95 and is right half the time is not
    overconfident = calibration(_Fixed([("a", 0.95), ("b", 0.05)]), pairs[:2] + [(["x"], "b")] * 2, n_actions=2)
    assert overconfident["ece"] == 0.45
    assert calibration(_Fixed([]), [], n_actions=2) == {"pairs": 0}


def test_a_version_not_promoted_says_why_with_its_calibration_in_admin(db, admin_client):
    # Given a training round that cannot be promoted (too few held-out pairs)
    training_data_generate(config=SyntheticConfig(sessions=12, min_actions=5, max_actions=6, seed=1), users=3)
    run = job_execute(name="train_next_action", params={**TRAIN, "epochs": 1, "min_eval_pairs": 1000})
    version = ModelVersion.objects.get(name="next_action")
    metrics = version.metrics

    # Then its metrics hold the reasons and the held-out calibration of candidate and baseline
    assert run.result["promoted"] is False and metrics["reasons"]
    assert "held-out pairs" in metrics["reasons"][0]
    for who in ("candidate", "baseline"):
        figures = metrics["calibration"][who]
        assert figures["pairs"] == metrics["eval_pairs"] > 0
        assert 0 <= figures["ece"] <= 1 and figures["nll"] > 0
        assert sum(b["n"] for b in figures["bins"]) == figures["pairs"]

    # And admin shows the decision in the list and the reasons and calibration on the version's page
    listing = admin_client.get("/admin/ai/modelversion/").content.decode()
    assert "not promoted: only" in listing
    page = admin_client.get(f"/admin/ai/modelversion/{version.pk}/change/").content.decode()
    assert "not promoted because" in page and "held-out pairs" in page
    assert "candidate calibration" in page and "ECE" in page
