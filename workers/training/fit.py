"""The training job's epoch loop: ``train_model``'s algorithm, reporting each epoch's loss as it goes.

``workers.inference.next_action.train_model`` fits the model in one call and
says nothing until it returns. The training job needs to tell operators how
far it is (epoch n of N, the loss, the time so far), so it runs the same loop
here, with the same seeds, data order, batches and optimiser, and calls
``on_epoch`` after every epoch; ``tests/workers/training`` checks that both give
the same weights. Everything else (model class, vocabulary, encoding) comes
from ``workers.inference.next_action``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch: ``loss`` is the mean cross-entropy over its training pairs, ``negative_loss``
    the mean unlikelihood loss of its pass over the rejections (None without any)."""

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


def fit(
    sequences: Sequence[Sequence[str]],
    *,
    vocab: Any,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    embed_dim: int,
    hidden_dim: int,
    negatives: Sequence[tuple[Sequence[str], str]] = (),
    negative_weight: float = 1.0,
    on_epoch: EpochCallback | None = None,
) -> tuple[Any, Any, list[EpochReport]]:
    """Fit a ``NextActionModel`` as ``train_model`` does; returns (model on CPU, vocab, one report per epoch)."""
    import torch
    from torch import nn

    from workers.inference import next_action

    context = next_action.DEFAULT_CONTEXT
    torch.manual_seed(seed)
    pairs = next_action.training_pairs(sequences, context=context)
    known = set(vocab.actions)
    negative_pairs = [(list(p)[-context:], a) for p, a in negatives if a in known and p]
    model = next_action.NextActionModel(len(vocab), embed_dim=embed_dim, hidden_dim=hidden_dim).to(device)
    reports: list[EpochReport] = []
    if not pairs:
        return model.cpu().eval(), vocab, reports
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    for epoch in range(1, epochs + 1):
        # Summed on the device and read once per epoch: no sync per batch.
        total = torch.zeros((), device=device)
        order = torch.randperm(len(pairs), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            chunk = [pairs[i] for i in order[start : start + batch_size]]
            ids = torch.tensor(next_action.encode_batch(vocab, [p for p, _ in chunk], context=context), device=device)
            targets = torch.tensor([vocab.encode([t])[0] for _, t in chunk], device=device)
            logits = model(ids)
            loss = loss_fn(logits.masked_fill(torch.isinf(logits), -1e9), targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.detach() * len(chunk)
        negative_total = torch.zeros((), device=device)
        for start in range(0, len(negative_pairs), batch_size):
            chunk = negative_pairs[start : start + batch_size]
            ids = torch.tensor(next_action.encode_batch(vocab, [p for p, _ in chunk], context=context), device=device)
            rejected = torch.tensor([vocab.encode([a])[0] for _, a in chunk], device=device)
            logits = model(ids)
            logits = logits.masked_fill(torch.isinf(logits), -1e9)
            p_rejected = torch.softmax(logits, dim=-1).gather(1, rejected.unsqueeze(1)).squeeze(1)
            loss = -negative_weight * torch.log1p(-p_rejected.clamp(max=1 - 1e-6)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            negative_total += loss.detach() * len(chunk)
        report = EpochReport(
            epoch=epoch,
            epochs=epochs,
            loss=float(total.item()) / len(pairs),
            negative_loss=float(negative_total.item()) / len(negative_pairs) if negative_pairs else None,
            elapsed_s=time.perf_counter() - started,
        )
        reports.append(report)
        if on_epoch is not None:
            on_epoch(report)
    return model.cpu().eval(), vocab, reports
