"""Synthetic but structured training data: sessions with recurring action patterns.

Each session belongs to a persona that cycles through a fixed loop of
workflows (``draft -> review -> export -> draft ...``); a workflow is a fixed
sequence of actions, and a little noise inserts random actions. Workflows
share "hub" actions (``open_doc``, ``save``, ``comment``, ``search``), so the
action after a hub depends on what came two or more steps earlier: a bigram
frequency baseline, which sees only the last action, cannot tell the branches
apart, while a sequence model that reads the last few actions can. That gap is
what the training tests and ``bench/training.py`` measure.

``action_sessions`` is pure (seeded ``random.Random``); ``training_data_generate``
writes the sessions through the real context services (events, outbox rows).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

WORKFLOWS: dict[str, list[str]] = {
    "draft": ["open_doc", "edit", "save", "preview", "share"],
    "review": ["open_doc", "comment", "save", "assign", "close_doc"],
    "approve": ["open_doc", "review", "comment", "approve", "archive"],
    "reject": ["open_doc", "review", "comment", "reject", "mention"],
    "publish": ["open_doc", "edit", "save", "publish", "notify"],
    "translate": ["open_doc", "translate", "save", "tag", "share"],
    "export": ["search", "preview", "export", "download"],
    "rework": ["search", "open_doc", "history", "edit", "save", "rename"],
    "upload": ["upload", "rename", "tag", "share"],
    "triage": ["search", "assign", "comment", "resolve"],
    "discuss": ["open_doc", "comment", "like", "mention", "close_doc"],
    "print": ["search", "open_doc", "print", "close_doc"],
}

# A persona repeats its loop of workflows; the loop decides what follows the
# end of a workflow, so the session's history predicts the next workflow.
PERSONAS: list[list[str]] = [
    ["draft", "review", "export"],
    ["approve", "triage", "upload"],
    ["reject", "rework", "publish"],
    ["upload", "translate", "triage"],
    ["review", "approve", "print"],
    ["discuss", "publish", "export"],
    ["translate", "reject", "discuss"],
    ["print", "draft", "rework"],
]

ACTIONS: list[str] = sorted({a for steps in WORKFLOWS.values() for a in steps})

TEXTS = [
    "We should tighten the rollout plan before Friday.",
    "The latency budget for the checkout page is 200 ms.",
    "Customer asked for an export of last quarter's invoices.",
    "Draft the release notes and share them with support.",
    "The staging database needs a bigger disk.",
    "Review the onboarding copy for the mobile app.",
]


@dataclass(frozen=True)
class SyntheticConfig:
    sessions: int = 200
    min_actions: int = 30
    max_actions: int = 60
    noise: float = 0.05
    seed: int = 7


def action_sessions(config: SyntheticConfig) -> list[list[str]]:
    """``config.sessions`` action sequences, deterministic for a given seed."""
    rng = random.Random(config.seed)  # noqa: S311 - reproducible synthetic data, not a secret
    sessions: list[list[str]] = []
    for _ in range(config.sessions):
        loop = rng.choice(PERSONAS)
        position = rng.randrange(len(loop))
        length = rng.randint(config.min_actions, config.max_actions)
        actions: list[str] = []
        while len(actions) < length:
            for action in WORKFLOWS[loop[position % len(loop)]]:
                if rng.random() < config.noise:
                    actions.append(rng.choice(ACTIONS))
                actions.append(action)
            position += 1
        sessions.append(actions[:length])
    return sessions


def training_data_generate(
    *, config: SyntheticConfig, users: int = 5, text_every: int = 0, username_prefix: str = "synthetic"
) -> dict[str, Any]:
    """Create users and sessions holding the synthetic actions as ``user_action`` events.

    ``text_every`` > 0 also adds a ``context_update`` with a sentence after
    every that many actions (material for the embedding backfill).
    Returns counts: sessions, events, users.
    """
    from django.conf import settings
    from django.contrib.auth import get_user_model

    from apps.context.services import EventInput, context_event_append, session_create

    user_model = get_user_model()
    people = []
    for i in range(max(1, users)):
        user, _ = user_model.objects.get_or_create(username=f"{username_prefix}{i}")
        people.append(user)
    rng = random.Random(config.seed + 1)  # noqa: S311 - reproducible synthetic data, not a secret
    total = 0
    sequences = action_sessions(config)
    for index, actions in enumerate(sequences):
        owner = people[index % len(people)]
        session = session_create(
            owner=owner, title=f"synthetic session {index}", metadata={"synthetic": True, "seed": config.seed}
        )
        events: list[EventInput] = []
        for n, action in enumerate(actions, start=1):
            events.append(EventInput("user_action", {"action": action, "target": f"doc-{rng.randrange(50)}"}))
            if text_every and n % text_every == 0:
                events.append(EventInput("context_update", {"text": f"{rng.choice(TEXTS)} (note {index}.{n})"}))
        for start in range(0, len(events), settings.EVENT_BATCH_MAX):
            context_event_append(session=session, author=owner, events=events[start : start + settings.EVENT_BATCH_MAX])
        total += len(events)
    return {"sessions": len(sequences), "events": total, "users": len(people)}
