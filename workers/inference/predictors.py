"""The current next-action predictor of this process, with hot reload.

Every request asks ``current_predictor()``. That costs one indexed read of the
promoted ``ModelVersion``'s id (``model_version_promoted_ref``); only when the
id differs from the loaded one is the artifact read and loaded, under a lock,
and the new predictor swapped in. A request already holding the old predictor
finishes with it (the object stays alive while referenced), so promotion and
rollback need no restart and drop no request.

Without a promoted version (or when its artifact fails to load) the frequency
baseline answers, fitted from recent ``user_action`` sequences (valid names
only) and refitted every ``BASELINE_REFRESH_S``.

Whatever answers, a session is offered only names it may see
(``allowed_actions``): the shared vocabulary (names performed by at least
``AI_NEXT_ACTION_MIN_USERS`` distinct users, ``apps.batch.selectors.
next_action_vocabulary``, re-read every ``BASELINE_REFRESH_S``) plus the
valid names already in that session's own recent actions. A model promoted
before the vocabulary rule, or a baseline fitted on everyone's sessions,
therefore cannot put one user's name in another user's suggestions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from django.conf import settings

from apps.ai import selectors as ai_selectors
from apps.batch import selectors as batch_selectors
from workers.inference.next_action import FrequencyBaseline, load_predictor

logger = logging.getLogger(__name__)

BASELINE_LABEL = "next_action-baseline"
# The baseline is a few GROUP-BY-free scans of recent actions; refitting it
# more often than this buys nothing for a ranking that changes slowly.
BASELINE_REFRESH_S = 300.0


class Predictor(Protocol):
    def predict(self, actions: list[str], k: int = 3) -> list[tuple[str, float]]: ...


class PredictorHolder:
    def __init__(self, *, name: str = ai_selectors.NEXT_ACTION_MODEL, device: str = "cpu") -> None:
        self.name = name
        self.device = device
        # Re-entrant: the load path falls back to the baseline under the same lock.
        self._lock = threading.RLock()
        self._loaded_id: Any = None
        self._loaded_label = ""
        self._loaded: Predictor | None = None
        self._failed_id: Any = None
        self._baseline: FrequencyBaseline | None = None
        self._baseline_at = 0.0
        self._vocabulary: frozenset[str] | None = None
        self._vocabulary_at = 0.0
        self.reloads = 0

    def vocabulary(self) -> frozenset[str]:
        """The shared next-action vocabulary, re-read at most every ``BASELINE_REFRESH_S``."""
        now = time.monotonic()
        if self._vocabulary is None or now - self._vocabulary_at > BASELINE_REFRESH_S:
            with self._lock:
                if self._vocabulary is None or now - self._vocabulary_at > BASELINE_REFRESH_S:
                    self._vocabulary = batch_selectors.next_action_vocabulary(
                        min_users=settings.AI_NEXT_ACTION_MIN_USERS, max_names=settings.AI_NEXT_ACTION_VOCAB_MAX
                    )
                    self._vocabulary_at = now
        return self._vocabulary

    def _baseline_predictor(self) -> tuple[Predictor, str]:
        now = time.monotonic()
        if self._baseline is None or now - self._baseline_at > BASELINE_REFRESH_S:
            with self._lock:
                if self._baseline is None or now - self._baseline_at > BASELINE_REFRESH_S:
                    self._baseline = FrequencyBaseline.fit(ai_selectors.action_sequences())
                    self._baseline_at = now
        return self._baseline, BASELINE_LABEL

    def current(self) -> tuple[Predictor, str]:
        """(predictor, model version label) to use for this request."""
        ref = ai_selectors.model_version_promoted_ref(name=self.name)
        if ref is None:
            return self._baseline_predictor()
        version_id, label = ref
        if version_id == self._loaded_id and self._loaded is not None:
            return self._loaded, self._loaded_label
        if version_id == self._failed_id:
            return self._baseline_predictor()
        with self._lock:
            if version_id != self._loaded_id:
                try:
                    started = time.perf_counter()
                    predictor = load_predictor(
                        ai_selectors.model_version_artifact(model_version_id=version_id), device=self.device
                    )
                except Exception:  # a bad artifact must not take suggestions down
                    logger.exception("could not load model version %s; using the baseline", label)
                    self._failed_id = version_id
                    return self._baseline_predictor()
                self._loaded, self._loaded_id, self._loaded_label = predictor, version_id, label
                self.reloads += 1
                load_ms = round((time.perf_counter() - started) * 1000, 1)
                logger.info("next-action model loaded", extra={"model_version": label, "load_ms": load_ms})
            return self._loaded, self._loaded_label


_holder: PredictorHolder | None = None
_holder_lock = threading.Lock()


def _current_holder(device: str | None = None) -> PredictorHolder:
    global _holder
    if _holder is None:
        with _holder_lock:
            if _holder is None:
                if device is None:
                    from workers.inference.runtime import resolve_device

                    device = resolve_device()
                _holder = PredictorHolder(device=device)
    return _holder


def current_predictor(*, device: str | None = None) -> tuple[Predictor, str]:
    return _current_holder(device).current()


def allowed_actions(*, session_actions: Iterable[str]) -> frozenset[str]:
    """The names a session may be offered: the shared vocabulary plus its own valid names."""
    own = {name for name in session_actions if ai_selectors.action_name_valid(name)}
    return _current_holder().vocabulary() | own


def predictor_reset() -> None:
    global _holder
    with _holder_lock:
        _holder = None
