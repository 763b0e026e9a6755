"""Training and backfill throughput, and the trained model's accuracy beside the baseline.

Run::

    .venv/bin/python bench/training.py [--sessions 300] [--text-every 6] [--epochs 8]

What it does, in a database of its own (``bench_training``, created and
dropped here; Redis keys under the ``ce_test_bench_training`` prefix; no broker
traffic: the jobs run in this process through ``job_execute``, as
``run_job`` does):

1. writes ``--sessions`` synthetic sessions (``apps.batch.synthetic``) through
   the real context services: ``user_action`` events, plus a
   ``context_update`` text every ``--text-every`` actions;
2. runs the ``embedding_backfill`` job over the texts (chunks of 64, the
   real embedding path: content hash, PostgreSQL, micro-batcher, MiniLM) and,
   as its baseline in the same run, the bare encoder on a sample of the same
   texts (the model-only ceiling);
3. runs the ``train_next_action`` job: time to load the events, train, and
   evaluate; events/s; top-1 and top-3 accuracy of the trained model beside
   the frequency baseline on the held-out sessions;
4. repeats the training on CUDA when ``AI_DEVICE=cuda`` (or ``auto``) finds a
   GPU; otherwise the CUDA column says why it is empty.

Writes ``bench/results/training.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # bench/ first on sys.path would let bench/queue.py shadow the stdlib's queue
    sys.path[:] = [str(Path(__file__).resolve().parents[1]), *sys.path[1:]]

from bench._lib import support

# In-process only, on the test settings: no broker, no child processes.
BENCH = support.Resources("bench_training", settings="project.settings.test")
os.environ.update(
    BENCH.env(
        TEST_RUN_ID=BENCH.name,
        DATABASE_URL=os.environ.get("BENCH_DATABASE_URL", BENCH.database_url),
        LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
        # The test settings derive the Redis prefix from TEST_RUN_ID; DEBUG and the broker stay as they are.
        REDIS_KEY_PREFIX=None,
        DEBUG=None,
        BROKER_URL=None,
    )
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--text-every", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--raw-sample", type=int, default=256, help="texts for the bare-encoder baseline")
    args = parser.parse_args()

    BENCH.setup(vhost=False)
    try:
        run(args)
    finally:
        BENCH.teardown(vhost=False)


def run(args: argparse.Namespace) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    load_before = os.getloadavg()
    t = time.perf_counter()
    call_command("migrate", verbosity=0)
    print(f"migrated in {time.perf_counter() - t:.1f} s", flush=True)

    from apps.batch.jobs import job_execute
    from apps.batch.synthetic import SyntheticConfig, training_data_generate
    from apps.context.models import ContextEvent

    config = SyntheticConfig(sessions=args.sessions, seed=7)
    t = time.perf_counter()
    counts = training_data_generate(config=config, users=10, text_every=args.text_every)
    gen_s = time.perf_counter() - t
    actions = ContextEvent.objects.filter(event_type="user_action").count()
    texts = ContextEvent.objects.exclude(event_type="user_action").count()
    print(f"generated {counts} in {gen_s:.1f} s ({counts['events'] / gen_s:.0f} events/s appended)", flush=True)

    # --- embedding backfill vs the bare encoder ---------------------------------
    from workers.inference.runtime import runtime

    t = time.perf_counter()
    rt = runtime()
    rt.encoder.warm()
    warm_s = time.perf_counter() - t
    t = time.perf_counter()
    backfill = job_execute(name="embedding_backfill", params={"chunk_size": 64})
    backfill_s = time.perf_counter() - t
    backfill_rate = backfill.progress_done / backfill_s if backfill_s else 0.0
    print(f"backfill: {backfill.result} in {backfill_s:.1f} s ({backfill_rate:.0f} events/s)", flush=True)
    # The baseline runs after the backfill so both see a warm model and the same machine state.
    sample = [
        d["text"]
        for d in ContextEvent.objects.exclude(event_type="user_action").values_list("data", flat=True)[
            : args.raw_sample
        ]
    ]
    t = time.perf_counter()
    for start in range(0, len(sample), 64):
        rt.encoder.encode(sample[start : start + 64])
    raw_s = time.perf_counter() - t
    raw_rate = len(sample) / raw_s if raw_s else 0.0
    print(f"bare encoder: {len(sample)} texts in {raw_s:.1f} s ({raw_rate:.0f}/s)", flush=True)
    t = time.perf_counter()
    again = job_execute(name="embedding_backfill", params={"full": True, "chunk_size": 64})
    rescan_s = time.perf_counter() - t
    print(f"rescan with nothing to embed: {again.result} in {rescan_s:.1f} s", flush=True)

    # --- training ---------------------------------------------------------------
    def train(device: str) -> dict:
        started = time.perf_counter()
        run = job_execute(name="train_next_action", params={"epochs": args.epochs, "device": device})
        wall = time.perf_counter() - started
        metrics = run.result["metrics"]
        return {
            "wall": wall,
            "metrics": metrics,
            "promoted": run.result["promoted"],
            "version": run.result["model_version"],
            "rate": metrics["events"] / wall,
        }

    cpu = train("cpu")
    m = cpu["metrics"]
    print(
        f"training (cpu): {cpu['wall']:.1f} s, {cpu['rate']:.0f} events/s, top-1 {m['candidate_top1']:.3f} "
        f"vs baseline {m['baseline_top1']:.3f}, top-3 {m['candidate_topk']:.3f} vs {m['baseline_topk']:.3f}, "
        f"{m['decision']}",
        flush=True,
    )

    import torch

    from apps.batch.selectors import action_sequences_by_session
    from workers.inference.next_action import FrequencyBaseline

    sequences = [a for _, a in action_sequences_by_session(max_sessions=5000)]
    t = time.perf_counter()
    FrequencyBaseline.fit(sequences)
    baseline_fit_s = time.perf_counter() - t

    cuda = None
    cuda_note = "not measured: no CUDA device on this machine (torch.cuda.is_available() is False)"
    if os.environ.get("AI_DEVICE", "auto") in ("auto", "cuda") and torch.cuda.is_available():
        cuda = train("cuda")
        cuda_note = torch.cuda.get_device_name(0)

    load_after = os.getloadavg()
    write_report(
        args=args,
        counts=counts,
        actions=actions,
        texts=texts,
        gen_s=gen_s,
        warm_s=warm_s,
        raw=(len(sample), raw_s, raw_rate),
        backfill=(backfill, backfill_s, backfill_rate),
        rescan=(again, rescan_s),
        cpu=cpu,
        cuda=cuda,
        cuda_note=cuda_note,
        baseline_fit_s=baseline_fit_s,
        loads=(load_before, load_after),
        threads=torch.get_num_threads(),
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_report(**r: object) -> None:
    args, cpu, cuda = r["args"], r["cpu"], r["cuda"]
    m = cpu["metrics"]
    backfill, backfill_s, backfill_rate = r["backfill"]
    rescan, rescan_s = r["rescan"]
    raw_n, raw_s, raw_rate = r["raw"]
    cm = cuda["metrics"] if cuda else None

    def col(key: str, digits: int = 3) -> str:
        return _fmt(cm[key], digits) if cm else "-"

    lines = [
        "# Training and backfill benchmark",
        "",
        f"Command: `.venv/bin/python bench/training.py --sessions {args.sessions} --text-every {args.text_every} "
        f"--epochs {args.epochs}`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({support.cpu_model()}), torch {__import__('torch').__version__} "
        f"(training uses {m['config']['threads']} intra-op thread; see TrainingConfig.threads). "
        f"Load average before/after: {r['loads'][0][0]:.1f} / {r['loads'][1][0]:.1f} "
        "(the machine is shared with other test runs; figures are lower bounds).",
        "",
        "## Data",
        "",
        f"- {r['counts']['sessions']} synthetic sessions, {r['counts']['users']} users: {r['actions']} `user_action` "
        f"events and {r['texts']} `context_update` texts ({r['counts']['events']} events), written through the "
        f"context services in {r['gen_s']:.1f} s ({r['counts']['events'] / r['gen_s']:.0f} events/s).",
        f"- Held-out: {m['eval_sessions']} sessions ({m['eval_pairs']} next-action pairs); "
        f"training: {m['train_sessions']} sessions.",
        "",
        "## Next-action training (`train_next_action` job)",
        "",
        "| | CPU | CUDA |",
        "|---|---|---|",
        f"| job wall time (s) | {cpu['wall']:.2f} | {_fmt(cuda['wall'], 2) if cuda else '-'} |",
        f"| load events (s) | {m['load_seconds']:.2f} | {col('load_seconds', 2)} |",
        f"| train, {args.epochs} epochs (s) | {m['train_seconds']:.2f} | {col('train_seconds', 2)} |",
        f"| events/s through the job | {cpu['rate']:.0f} | {_fmt(cuda['rate'], 0) if cuda else '-'} |",
        f"| top-1 accuracy, trained model | {m['candidate_top1']:.3f} | {col('candidate_top1')} |",
        f"| top-1 accuracy, frequency baseline | {m['baseline_top1']:.3f} | {col('baseline_top1')} |",
        f"| top-3 accuracy, trained model | {m['candidate_topk']:.3f} | {col('candidate_topk')} |",
        f"| top-3 accuracy, frequency baseline | {m['baseline_topk']:.3f} | {col('baseline_topk')} |",
        f"| decision | {m['decision']} | {cm['decision'] if cm else '-'} |",
        "",
        f"CUDA: {r['cuda_note']}.",
        "",
        f"Ratios: top-1 {m['candidate_top1'] / m['baseline_top1']:.2f}x the baseline "
        f"(+{m['candidate_top1'] - m['baseline_top1']:.3f}), top-3 +{m['candidate_topk'] - m['baseline_topk']:.3f}. "
        f"Fitting the baseline itself on the same sequences takes {r['baseline_fit_s'] * 1000:.0f} ms.",
        "",
        "## Embedding backfill (`embedding_backfill` job)",
        "",
        "| | texts | seconds | per second |",
        "|---|---|---|---|",
        f"| backfill job (chunks of 64: read, hash, lookup, embed, store, checkpoint) | {backfill.progress_done} | "
        f"{backfill_s:.2f} | {backfill_rate:.0f} |",
        f"| baseline: bare encoder, batches of 64, same texts (model-only ceiling) | {raw_n} | {raw_s:.2f} | "
        f"{raw_rate:.0f} |",
        f"| rescan (`full=true`), everything already embedded | {rescan.progress_done} | {rescan_s:.2f} | "
        f"{rescan.progress_done / rescan_s:.0f} |",
        "",
        f"The backfill runs at {backfill_rate / raw_rate:.2f}x the bare encoder: the model dominates; the rest is "
        f"the per-chunk transaction and lookups. Model load and warm-up ({r['warm_s']:.1f} s) are excluded from "
        "both. Backfill result: " + str(backfill.result) + ".",
        "",
        "Earlier design, measured with this script on 2026-11-26 before the change: the backfill sent each text "
        "through the realtime micro-batcher (batches capped at AI_MAX_BATCH=32) and ran at 26 texts/s beside the "
        "bare encoder's 48/s (0.54x); one encoder call per chunk closed that gap.",
        "",
    ]
    support.write_results("training", "\n".join(lines))


if __name__ == "__main__":
    main()
