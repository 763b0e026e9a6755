"""Next-action prediction: a small torch sequence model and its frequency baseline.

Given a session's recent ``user_action`` names (oldest first), rank the likely
next actions. Two predictors share one interface, ``predict(actions, k) ->
[(action, probability), ...]`` (best first):

- ``FrequencyBaseline``: bigram transition counts from the last action, backed
  off to overall action frequency. Pure Python, so ``apps.ai`` may use it
  without importing torch (the web process never imports torch).
- ``TorchPredictor`` around ``NextActionModel`` (embedding -> GRU -> linear),
  built by the training job (issue 8) and stored as a ``ModelVersion``
  artifact with ``save_artifact``; realtime workers read it with
  ``load_predictor``.

torch is imported lazily inside the functions that need it; ``NextActionModel``
is resolved on first attribute access (``from workers.inference.next_action
import NextActionModel`` works and imports torch only then).

Artifact format (``torch.save`` of a dict, loadable with ``weights_only=True``):
``{"format": 1, "config": {...}, "vocab": [tokens], "state_dict": {...}}``.
"""

from __future__ import annotations

import io
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARTIFACT_FORMAT = 1
PAD = "<pad>"
UNK = "<unk>"
# The model reads at most this many recent actions; older ones add little and
# cost a longer GRU unroll per request.
DEFAULT_CONTEXT = 8


@dataclass
class Vocab:
    """Action names <-> ids. Id 0 is padding, 1 is unknown."""

    tokens: list[str] = field(default_factory=lambda: [PAD, UNK])

    def __post_init__(self) -> None:
        if self.tokens[:2] != [PAD, UNK]:
            self.tokens = [PAD, UNK, *[t for t in self.tokens if t not in (PAD, UNK)]]
        self._index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[str]], *, min_count: int = 1) -> Vocab:
        counts = Counter(action for seq in sequences for action in seq)
        kept = sorted(a for a, c in counts.items() if c >= min_count and a not in (PAD, UNK))
        return cls([PAD, UNK, *kept])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def actions(self) -> list[str]:
        return self.tokens[2:]

    def encode(self, actions: Sequence[str]) -> list[int]:
        return [self._index.get(a, 1) for a in actions]

    def decode(self, index: int) -> str:
        return self.tokens[index]


class FrequencyBaseline:
    """Bigram transitions from the last action, backed off to unigram frequency."""

    def __init__(self) -> None:
        self.unigram: Counter[str] = Counter()
        self.transitions: defaultdict[str, Counter[str]] = defaultdict(Counter)

    @classmethod
    def fit(cls, sequences: Iterable[Sequence[str]]) -> FrequencyBaseline:
        baseline = cls()
        for seq in sequences:
            baseline.update(seq)
        return baseline

    def update(self, actions: Sequence[str]) -> None:
        self.unigram.update(actions)
        for previous, following in zip(actions, actions[1:], strict=False):
            self.transitions[previous][following] += 1

    def predict(self, actions: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
        if k <= 0 or not self.unigram:
            return []
        total_unigram = sum(self.unigram.values())
        following = self.transitions.get(actions[-1]) if actions else None
        scores: dict[str, float] = {}
        if following:
            total = sum(following.values())
            # Interpolate with the unigram so unseen transitions keep a small
            # mass and ties break by overall frequency.
            for action, count in self.unigram.items():
                scores[action] = 0.9 * following.get(action, 0) / total + 0.1 * count / total_unigram
        else:
            scores = {action: count / total_unigram for action, count in self.unigram.items()}
        ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
        return [(action, float(score)) for action, score in ranked[:k]]


def _model_class() -> type:
    import torch
    from torch import nn

    class NextActionModel(nn.Module):
        """Embedding -> GRU -> linear over the vocabulary (logits of the next action)."""

        def __init__(self, vocab_size: int, *, embed_dim: int = 32, hidden_dim: int = 64, num_layers: int = 1) -> None:
            super().__init__()
            self.config = {
                "vocab_size": vocab_size,
                "embed_dim": embed_dim,
                "hidden_dim": hidden_dim,
                "num_layers": num_layers,
            }
            self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
            self.gru = nn.GRU(embed_dim, hidden_dim, num_layers=num_layers, batch_first=True)
            self.out = nn.Linear(hidden_dim, vocab_size)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            """``ids``: [batch, time], left-padded with 0, so the last step is the latest action."""
            hidden, _ = self.gru(self.embed(ids))
            logits = self.out(hidden[:, -1, :])
            # Padding and unknown are never a prediction.
            logits[:, :2] = float("-inf")
            return logits

    return NextActionModel


_MODEL_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    global _MODEL_CLASS
    if name == "NextActionModel":
        if _MODEL_CLASS is None:
            _MODEL_CLASS = _model_class()
        return _MODEL_CLASS
    raise AttributeError(name)


def encode_batch(
    vocab: Vocab, sequences: Sequence[Sequence[str]], *, context: int = DEFAULT_CONTEXT
) -> list[list[int]]:
    """Left-pad each sequence's last ``context`` actions to one length."""
    encoded = [vocab.encode(list(seq)[-context:]) for seq in sequences]
    width = max((len(e) for e in encoded), default=1) or 1
    return [[0] * (width - len(e)) + e for e in encoded]


def training_pairs(
    sequences: Iterable[Sequence[str]], *, context: int = DEFAULT_CONTEXT
) -> list[tuple[list[str], str]]:
    """Every (prefix, next action) pair of every sequence, prefixes cut to ``context``."""
    pairs: list[tuple[list[str], str]] = []
    for seq in sequences:
        for i in range(1, len(seq)):
            pairs.append((list(seq[max(0, i - context) : i]), seq[i]))
    return pairs


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch of ``train_model``: ``loss`` is the mean cross-entropy over its training pairs,
    ``negative_loss`` the mean unlikelihood loss of its pass over the rejections (None without any),
    ``elapsed_s`` the training time since the first epoch began."""

    epoch: int
    epochs: int
    loss: float
    negative_loss: float | None
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "loss": round(self.loss, 6),
            "negative_loss": None if self.negative_loss is None else round(self.negative_loss, 6),
            "elapsed_s": round(self.elapsed_s, 3),
        }


EpochCallback = Callable[[EpochReport], None]


def train_model(
    sequences: Sequence[Sequence[str]],
    *,
    vocab: Vocab | None = None,
    epochs: int = 10,
    lr: float = 0.01,
    batch_size: int = 64,
    context: int = DEFAULT_CONTEXT,
    seed: int = 0,
    device: str = "cpu",
    embed_dim: int = 32,
    hidden_dim: int = 64,
    negatives: Sequence[tuple[Sequence[str], str]] = (),
    negative_weight: float = 1.0,
    on_epoch: EpochCallback | None = None,
) -> tuple[Any, Vocab]:
    """Fit a ``NextActionModel`` on action sequences; returns (model on CPU, vocab).

    ``negatives`` are ``(recent actions, action)`` pairs a user rejected when
    suggested: after each epoch over the sequences, one pass over them with
    the unlikelihood loss ``-log(1 - p(action | recent))`` (weighted by
    ``negative_weight``) pushes that action's probability down in that context
    only. Pairs whose action is not in the vocabulary are skipped.

    ``on_epoch``, if given, is called after every epoch with its
    ``EpochReport`` (the training job publishes it as its progress). It only
    reads the losses: the weights are the same with or without it. Without
    training pairs no epoch runs and it is never called.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    vocab = vocab or Vocab.from_sequences(sequences)
    pairs = training_pairs(sequences, context=context)
    known = set(vocab.actions)
    negative_pairs = [(list(p)[-context:], a) for p, a in negatives if a in known and p]
    model_cls = __getattr__("NextActionModel")
    model = model_cls(len(vocab), embed_dim=embed_dim, hidden_dim=hidden_dim).to(device)
    if not pairs:
        return model.cpu().eval(), vocab
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        # Summed on the device and read once per epoch, only for ``on_epoch``: no sync per batch.
        total = torch.zeros((), device=device)
        negative_total = torch.zeros((), device=device)
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            chunk = [pairs[i] for i in order[start : start + batch_size]]
            ids = torch.tensor(encode_batch(vocab, [p for p, _ in chunk], context=context), device=device)
            targets = torch.tensor([vocab.encode([t])[0] for _, t in chunk], device=device)
            logits = model(ids)
            # -inf on pad/unk would give NaN loss only if a target were pad/unk;
            # targets are real actions, so masking keeps the loss finite.
            loss = loss_fn(logits.masked_fill(torch.isinf(logits), -1e9), targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.detach() * len(chunk)
        for start in range(0, len(negative_pairs), batch_size):
            chunk = negative_pairs[start : start + batch_size]
            ids = torch.tensor(encode_batch(vocab, [p for p, _ in chunk], context=context), device=device)
            rejected = torch.tensor([vocab.encode([a])[0] for _, a in chunk], device=device)
            logits = model(ids)
            logits = logits.masked_fill(torch.isinf(logits), -1e9)
            p_rejected = torch.softmax(logits, dim=-1).gather(1, rejected.unsqueeze(1)).squeeze(1)
            loss = -negative_weight * torch.log1p(-p_rejected.clamp(max=1 - 1e-6)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            negative_total += loss.detach() * len(chunk)
        if on_epoch is not None:
            on_epoch(
                EpochReport(
                    epoch=epoch,
                    epochs=epochs,
                    loss=float(total.item()) / len(pairs),
                    negative_loss=float(negative_total.item()) / len(negative_pairs) if negative_pairs else None,
                    elapsed_s=time.perf_counter() - started,
                )
            )
    return model.cpu().eval(), vocab


def save_artifact(model: Any, vocab: Vocab, destination: str | Path | io.BufferedIOBase | None = None) -> bytes:
    """Serialise model + vocab; writes to ``destination`` (path or binary file) if given, returns the bytes."""
    import torch

    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {"format": ARTIFACT_FORMAT, "config": dict(model.config), "vocab": list(vocab.tokens), "state_dict": state},
        buffer,
    )
    data = buffer.getvalue()
    if isinstance(destination, (str, Path)):
        Path(destination).write_bytes(data)
    elif destination is not None:
        destination.write(data)
    return data


class TorchPredictor:
    """A loaded ``NextActionModel`` with the shared ``predict`` interface."""

    def __init__(self, model: Any, vocab: Vocab, *, device: str = "cpu", context: int = DEFAULT_CONTEXT) -> None:
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.device = device
        self.context = context

    def predict(self, actions: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
        return self.predict_batch([actions], k)[0]

    def predict_batch(self, batch: Sequence[Sequence[str]], k: int = 3) -> list[list[tuple[str, float]]]:
        import torch

        if k <= 0 or not batch:
            return [[] for _ in batch]
        ids = torch.tensor(
            encode_batch(self.vocab, [list(a) or [UNK] for a in batch], context=self.context), device=self.device
        )
        with torch.inference_mode():
            probs = torch.softmax(self.model(ids), dim=-1)
            top = torch.topk(probs, k=min(k, len(self.vocab) - 2), dim=-1)
        results: list[list[tuple[str, float]]] = []
        for values, indices in zip(top.values.cpu().tolist(), top.indices.cpu().tolist(), strict=True):
            results.append(
                [(self.vocab.decode(i), float(v)) for v, i in zip(values, indices, strict=True) if not math.isnan(v)]
            )
        return results


def load_predictor(source: bytes | bytearray | memoryview | str | Path, *, device: str = "cpu") -> TorchPredictor:
    """Read an artifact written by ``save_artifact`` (bytes or a file path)."""
    import torch

    raw = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
    payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if payload.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"Unsupported next-action artifact format {payload.get('format')!r}.")
    vocab = Vocab(list(payload["vocab"]))
    config = dict(payload["config"])
    model_cls = __getattr__("NextActionModel")
    model = model_cls(
        int(config["vocab_size"]),
        embed_dim=int(config["embed_dim"]),
        hidden_dim=int(config["hidden_dim"]),
        num_layers=int(config.get("num_layers", 1)),
    )
    model.load_state_dict(payload["state_dict"])
    return TorchPredictor(model, vocab, device=device)


def top_k_accuracy(predictor: Any, pairs: Sequence[tuple[Sequence[str], str]], *, k: int = 3) -> float:
    """Share of (prefix, next) pairs whose true next action is in the predictor's top k."""
    if not pairs:
        return 0.0
    hits = sum(1 for prefix, target in pairs if target in [a for a, _ in predictor.predict(prefix, k)])
    return hits / len(pairs)
