"""Train the next-action model, evaluate it against the baseline and the promoted version, register it.

Data: the ``user_action`` sequences of the most recently active sessions, plus
every accepted ``next_action`` suggestion as an extra (recent actions ->
accepted action) example, weighted ``feedback_weight`` times: an accepted
suggestion is a user telling us the answer. Every rejected one is a negative
(recent actions -> not this action), trained with an unlikelihood loss of
weight ``feedback_weight`` (``train_model``'s ``negatives``).

Tenants: the model is shared by every session, so it learns only names of the
shared vocabulary (``apps.batch.selectors.next_action_vocabulary``: valid
identifiers performed by at least ``AI_NEXT_ACTION_MIN_USERS`` distinct users,
at most ``AI_NEXT_ACTION_VOCAB_MAX``); every other name is left out of the
sequences before training, so the artifact cannot hold or offer it.

Split: by session (crc32 of the id), so no held-out session leaks into
training. Evaluation: top-1 and top-k accuracy over every (prefix, next) pair
of the held-out sessions, for the candidate, the frequency baseline fitted on
the same training sessions, and the currently promoted version; and the
calibration of the candidate's and the baseline's top-1 probability on the
same pairs (``calibration``: ECE, top-1 Brier, NLL, reliability bins).

Promotion: only when the candidate beats the baseline by ``min_gain`` and the
promoted version by more than ``min_gain_over_current`` in top-k accuracy, on
at least ``min_eval_pairs`` pairs. Every candidate is registered as a
``ModelVersion`` with its metrics, promoted or not, and the reasons it was not
(``metrics["reasons"]``, ``metrics["decision"]``), which admin shows.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.inference.next_action import EpochCallback, EpochReport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    max_sessions: int = 5000
    eval_percent: int = 20
    k: int = 3
    epochs: int = 8
    hidden_dim: int = 64
    embed_dim: int = 32
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    min_gain: float = 0.02
    min_gain_over_current: float = 0.0
    min_eval_pairs: int = 20
    feedback_weight: int = 3
    # torch intra-op threads. The training worker shares its host with the
    # realtime workers: on this 2-core machine under load, 1 thread trained the
    # test set in 5 s where torch's default (all cores) took 143 s.
    threads: int = 1
    device: str = "cpu"


def in_eval_split(session_id: str, eval_percent: int) -> bool:
    return zlib.crc32(session_id.encode()) % 100 < eval_percent


def _accuracy(predictor: Any, pairs: list[tuple[list[str], str]], k: int) -> tuple[float, float]:
    """(top-1, top-k) accuracy; one batched call when the predictor has ``predict_batch``."""
    if not pairs:
        return 0.0, 0.0
    prefixes = [p for p, _ in pairs]
    if hasattr(predictor, "predict_batch"):
        ranked: list[list[tuple[str, float]]] = []
        for start in range(0, len(prefixes), 1024):
            ranked.extend(predictor.predict_batch(prefixes[start : start + 1024], k))
    else:
        ranked = [predictor.predict(p, k) for p in prefixes]
    top1 = sum(1 for r, (_, t) in zip(ranked, pairs, strict=True) if r and r[0][0] == t)
    topk = sum(1 for r, (_, t) in zip(ranked, pairs, strict=True) if t in [a for a, _ in r[:k]])
    return top1 / len(pairs), topk / len(pairs)


CALIBRATION_BINS = 10


def calibration(predictor: Any, pairs: list[tuple[list[str], str]], *, n_actions: int) -> dict[str, Any]:
    """How far the top-1 probability can be trusted, on held-out (prefix, next) pairs.

    ``ece``: expected calibration error of the top-1 probability over
    ``CALIBRATION_BINS`` equal-width bins (0 is perfect); ``brier_top1``: mean
    squared gap between that probability and whether the guess was right;
    ``nll``: mean negative log-likelihood of the action that really came next
    (floored at 1e-6); ``bins``: the reliability table (non-empty bins).
    """
    if not pairs:
        return {"pairs": 0}
    k = max(1, n_actions)
    prefixes = [p for p, _ in pairs]
    if hasattr(predictor, "predict_batch"):
        ranked: list[list[tuple[str, float]]] = []
        for start in range(0, len(prefixes), 1024):
            ranked.extend(predictor.predict_batch(prefixes[start : start + 1024], k))
    else:
        ranked = [predictor.predict(p, k) for p in prefixes]
    bins: list[list[tuple[float, float]]] = [[] for _ in range(CALIBRATION_BINS)]
    brier = nll = 0.0
    for guesses, (_, target) in zip(ranked, pairs, strict=True):
        confidence = guesses[0][1] if guesses else 0.0
        correct = 1.0 if guesses and guesses[0][0] == target else 0.0
        bins[min(CALIBRATION_BINS - 1, int(confidence * CALIBRATION_BINS))].append((confidence, correct))
        brier += (confidence - correct) ** 2
        nll -= math.log(max(dict(guesses).get(target, 0.0), 1e-6))
    n = len(pairs)
    table: list[dict[str, Any]] = [
        {
            "bin": f"{i / CALIBRATION_BINS:.1f}-{(i + 1) / CALIBRATION_BINS:.1f}",
            "n": len(b),
            "confidence": round(sum(c for c, _ in b) / len(b), 4),
            "accuracy": round(sum(a for _, a in b) / len(b), 4),
        }
        for i, b in enumerate(bins)
        if b
    ]
    ece = sum(row["n"] / n * abs(row["confidence"] - row["accuracy"]) for row in table)
    return {
        "pairs": n,
        "ece": round(ece, 4),
        "brier_top1": round(brier / n, 4),
        "nll": round(nll / n, 4),
        "bins": table,
    }


def train_next_action(*, config: TrainingConfig, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Run one training round; returns the metrics and the registered version (id, label, promoted).

    ``on_epoch`` is called after every epoch with its ``EpochReport`` (the job
    publishes it as the run's progress); ``metrics["loss_per_epoch"]`` keeps
    them all and ``metrics["train_loss"]`` the last epoch's loss.
    """
    from django.conf import settings

    from apps.ai import selectors as ai_selectors
    from apps.ai import services as ai_services
    from apps.batch import selectors as batch_selectors
    from workers.inference.next_action import (
        DEFAULT_CONTEXT,
        FrequencyBaseline,
        Vocab,
        load_predictor,
        save_artifact,
        train_model,
        training_pairs,
    )

    if config.threads > 0:
        import torch

        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    vocabulary = batch_selectors.next_action_vocabulary(
        min_users=settings.AI_NEXT_ACTION_MIN_USERS, max_names=settings.AI_NEXT_ACTION_VOCAB_MAX
    )
    sessions = batch_selectors.action_sequences_by_session(max_sessions=config.max_sessions, vocabulary=vocabulary)
    feedback = batch_selectors.accepted_next_action_examples(context=DEFAULT_CONTEXT, vocabulary=vocabulary)
    rejected = ai_selectors.next_action_feedback_examples(
        verdict="reject", context=DEFAULT_CONTEXT, vocabulary=vocabulary
    )
    load_s = time.perf_counter() - started
    train_seqs = [actions for sid, actions in sessions if not in_eval_split(sid, config.eval_percent)]
    eval_seqs = [actions for sid, actions in sessions if in_eval_split(sid, config.eval_percent)]
    feedback_seqs = [
        [*prefix, action] for sid, prefix, action in feedback if not in_eval_split(sid, config.eval_percent)
    ] * max(0, config.feedback_weight)
    # Rejections: what not to offer after those actions (held-out sessions' stay out too).
    negatives = [(prefix, action) for sid, prefix, action in rejected if not in_eval_split(sid, config.eval_percent)]
    eval_pairs = training_pairs(eval_seqs, context=DEFAULT_CONTEXT)
    events = sum(len(a) for _, a in sessions)
    metrics: dict[str, Any] = {
        "k": config.k,
        "sessions": len(sessions),
        "events": events,
        "train_sessions": len(train_seqs),
        "eval_sessions": len(eval_seqs),
        "eval_pairs": len(eval_pairs),
        "feedback_examples": len(feedback),
        "rejected_examples": len(rejected),
        "rejected_examples_used": len(negatives),
        "vocabulary": len(vocabulary),
        "config": {k: v for k, v in config.__dict__.items()},
    }
    if not train_seqs:
        metrics["decision"] = "no training data"
        return {"metrics": metrics, "model_version": None, "promoted": False}

    fit_started = time.perf_counter()
    reports: list[EpochReport] = []

    def keep_and_report(report: EpochReport) -> None:
        reports.append(report)
        if on_epoch is not None:
            on_epoch(report)

    model, vocab = train_model(
        train_seqs + feedback_seqs,
        vocab=Vocab(sorted(vocabulary)),
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        seed=config.seed,
        device=config.device,
        embed_dim=config.embed_dim,
        hidden_dim=config.hidden_dim,
        negatives=negatives,
        negative_weight=float(max(0, config.feedback_weight)),
        on_epoch=keep_and_report,
    )
    metrics["train_seconds"] = round(time.perf_counter() - fit_started, 3)
    metrics["loss_per_epoch"] = [report.as_dict() for report in reports]
    if reports:
        metrics["train_loss"] = round(reports[-1].loss, 6)
    artifact = save_artifact(model, vocab)
    candidate = load_predictor(artifact, device="cpu")
    baseline = FrequencyBaseline.fit(train_seqs)
    metrics["candidate_top1"], metrics["candidate_topk"] = _accuracy(candidate, eval_pairs, config.k)
    metrics["baseline_top1"], metrics["baseline_topk"] = _accuracy(baseline, eval_pairs, config.k)
    # Held-out sessions only: is the candidate's confidence worth showing?
    metrics["calibration"] = {
        "candidate": calibration(candidate, eval_pairs, n_actions=len(vocab)),
        "baseline": calibration(baseline, eval_pairs, n_actions=len(vocab)),
    }

    current = ai_selectors.model_version_promoted()
    if current is not None:
        try:
            current_predictor = load_predictor(ai_selectors.model_version_artifact(model_version_id=current.pk))
            metrics["current_version"] = current.label
            metrics["current_top1"], metrics["current_topk"] = _accuracy(current_predictor, eval_pairs, config.k)
        except Exception:  # an unreadable promoted artifact should be replaced, not block training
            logger.exception("promoted next-action artifact could not be evaluated", extra={"version": current.label})
            metrics["current_version"] = current.label
            metrics["current_topk"] = None

    reasons: list[str] = []
    if len(eval_pairs) < config.min_eval_pairs:
        reasons.append(f"only {len(eval_pairs)} held-out pairs (< {config.min_eval_pairs})")
    if metrics["candidate_topk"] < metrics["baseline_topk"] + config.min_gain:
        reasons.append(
            f"top-{config.k} {metrics['candidate_topk']:.4f} does not beat baseline "
            f"{metrics['baseline_topk']:.4f} by {config.min_gain}"
        )
    current_topk = metrics.get("current_topk")
    if (
        current is not None
        and current_topk is not None
        and (metrics["candidate_topk"] <= current_topk + config.min_gain_over_current)
    ):
        reasons.append(
            f"top-{config.k} {metrics['candidate_topk']:.4f} does not beat {current.label} {current_topk:.4f}"
        )
    promote = not reasons
    metrics["reasons"] = reasons
    metrics["decision"] = "promoted" if promote else "not promoted: " + "; ".join(reasons)
    metrics["total_seconds"] = round(time.perf_counter() - started, 3)
    metrics["load_seconds"] = round(load_s, 3)
    version = ai_services.model_version_register(
        artifact=artifact, metrics=metrics, promote=promote, notes=metrics["decision"]
    )
    logger.info("next-action model trained", extra={"version": version.label, "decision": metrics["decision"]})
    return {
        "metrics": metrics,
        "model_version": version.label,
        "model_version_id": str(version.pk),
        "promoted": promote,
    }
