"""The same end-to-end path with ``AI_DEVICE=cuda``; skipped where CUDA is absent.

The realtime-suggestions test is imported here and runs again against a stack
whose worker was started with ``AI_DEVICE=cuda`` (the module-level ``ai_stack``
below overrides the CPU one from conftest.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.integration.ai.conftest import AiStack, purge_realtime_queue, start_stack
from tests.integration.ai.test_realtime_suggestions import (
    test_events_appended_over_rest_bring_suggestion_frames_pointing_at_the_closest_event as _cpu_path,
)


def _cuda_available() -> bool:
    # Cheap checks first: importing torch only to learn there is no GPU costs seconds.
    if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidia0"):
        return False
    import torch

    return torch.cuda.is_available()


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not _cuda_available(), reason="CUDA is not available on this machine"),
]


@pytest.fixture(scope="module")
def ai_stack(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[AiStack]:
    with django_db_blocker.unblock():
        purge_realtime_queue()
        stack = start_stack(tmp_path_factory.mktemp("ai-stack-gpu"), AI_DEVICE="cuda")
    yield stack
    for proc in stack.procs.values():
        proc.stop()


def test_suggestion_frames_on_cuda(ai_stack):
    assert "cuda" in ai_stack.procs["worker"].output()  # the worker's runtime log names its device
    _cpu_path(ai_stack)


def test_cuda_embeddings_match_cpu():
    from workers.inference.runtime import SentenceEncoder

    texts = ["the billing database moves to PostgreSQL", "dinner on Friday"]
    cpu = SentenceEncoder(device="cpu").encode(texts)
    gpu = SentenceEncoder(device="cuda").encode(texts)
    assert ((cpu * gpu).sum(axis=1) > 0.999).all()
