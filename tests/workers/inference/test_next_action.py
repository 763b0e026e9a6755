"""The next-action model, its artifact round trip, and the frequency baseline."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from workers.inference.next_action import (
    FrequencyBaseline,
    Vocab,
    load_predictor,
    save_artifact,
    top_k_accuracy,
    train_model,
    training_pairs,
)

# Two recurring patterns; after "open_doc" the next action depends on what came
# before it, which a bigram baseline cannot see and a sequence model can.
PATTERNS = [["search", "open_doc", "edit", "save"], ["browse", "open_doc", "comment", "share"]]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # These models are tiny: one thread is faster than two on a shared 2-core box.
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _sequences(n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [sum((list(rng.choice(PATTERNS)) for _ in range(5)), []) for _ in range(n)]


def test_vocab_reserves_padding_and_unknown():
    vocab = Vocab.from_sequences([["b", "a"], ["a", "c"]])
    assert vocab.tokens[:2] == ["<pad>", "<unk>"]
    assert vocab.actions == ["a", "b", "c"]
    assert vocab.encode(["a", "zzz"]) == [2, 1]


def test_baseline_follows_transitions_then_frequency():
    baseline = FrequencyBaseline.fit([["open_doc", "comment"], ["open_doc", "comment"], ["open_doc", "share"]])
    ranked = baseline.predict(["open_doc"], 2)
    assert [a for a, _ in ranked] == ["comment", "share"]
    assert ranked[0][1] > ranked[1][1]
    # An action never seen before falls back to overall frequency.
    assert baseline.predict(["never_seen"], 1)[0][0] in {"open_doc", "comment"}
    assert FrequencyBaseline().predict(["x"], 3) == []


def test_trained_model_round_trips_and_beats_the_baseline_on_patterned_data(tmp_path):
    train, held_out = _sequences(30, seed=1), _sequences(20, seed=2)
    model, vocab = train_model(train, epochs=3, seed=0)
    path = tmp_path / "model.pt"
    data = save_artifact(model, vocab, path)
    assert path.read_bytes() == data

    predictor = load_predictor(data)
    from_path = load_predictor(path)
    pairs = training_pairs(held_out)
    model_acc = top_k_accuracy(predictor, pairs, k=1)
    baseline_acc = top_k_accuracy(FrequencyBaseline.fit(train), pairs, k=1)
    assert model_acc >= baseline_acc + 0.1, (model_acc, baseline_acc)
    assert predictor.predict(["search", "open_doc"], 1)[0][0] == "edit"
    assert from_path.predict(["browse", "open_doc"], 1)[0][0] == "comment"
    ranked = predictor.predict(["search"], 3)
    assert len(ranked) == 3 and all(0.0 <= p <= 1.0 for _, p in ranked)
    assert ranked == sorted(ranked, key=lambda item: -item[1])


def test_unknown_and_empty_histories_still_rank_real_actions():
    model, vocab = train_model(_sequences(10, seed=3), epochs=1)
    predictor = load_predictor(save_artifact(model, vocab))
    for history in ([], ["never_seen_action"]):
        ranked = predictor.predict(history, 2)
        assert len(ranked) == 2
        assert all(action in vocab.actions for action, _ in ranked)


def test_corrupt_artifact_is_refused():
    with pytest.raises(Exception):  # noqa: B017 - torch raises one of several unpickling errors
        load_predictor(b"not a model")


def test_module_does_not_import_torch_until_needed():
    # apps.ai uses the baseline from this module in the web process, where torch must not load.
    code = (
        "import sys; import workers.inference.next_action as m; "
        "m.FrequencyBaseline.fit([['a','b']]).predict(['a'], 1); "
        "assert 'torch' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
