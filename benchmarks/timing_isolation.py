"""Does the bench time a model, or its neighbours? Each ONNX model of a finished run, at batch 1 × the recipe's
bench length, timed three ways in one run:

- bench: what `distill bench` does, a process of its own per model and round, the models taking turns;
- alone: one fresh process that loads only that model and makes every call, once before and once after the bench's
  timing (their mean; `drift` is after / before - 1: how much the shared machine itself moved meanwhile);
- shared: every model loaded in one process, timed in turns, threads not spinning between runs (what the
  bench did before, kept to show why it stopped).

    python -m benchmarks.timing_isolation RUN_DIR (--demo [--quick | --base] | --recipe RECIPE.yaml)
        [--repeats 60] [--rounds 3]

Prints one row per model and saves RUN_DIR/timing-isolation/summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.run_args import add_run_args, run_entries, run_recipe_of
from distill.bench.latency import round_sizes, run_in_fresh_process, timed_calls
from distill.bench.measure import bench_feed, deployed_model, measure_latencies, model_forward
from distill.bench.pareto import model_key
from distill.core.fileio import atomic_write_json
from distill.core.hardware import hardware
from distill.pipeline import prepare
from students.vocab_map import student_inputs


def shared_process_p50(entries: list, feeds: list[np.ndarray], task: str, threads: int, warmup: int,
                       sizes: list[int]) -> list[float]:
    """p50 ms of each model with every model loaded in this process, timed in turns."""
    forwards = [model_forward(entry, threads) for entry in entries]
    times: list[list[np.ndarray]] = [[] for _ in entries]
    for r, count in enumerate(sizes):
        for k, (forward, ids) in enumerate(zip(forwards, feeds, strict=True)):
            mask = np.ones_like(ids)
            times[k].append(timed_calls(lambda f=forward, i=ids, m=mask: f(task, i, m), warmup if r == 0 else 1,
                                        count))
    return [float(np.percentile(np.concatenate(t), 50)) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, "the --out directory of a finished run")
    parser.add_argument("--repeats", type=int, default=60, help="timed calls per model and setting")
    parser.add_argument("--rounds", type=int, default=3, help="turns over all models when timed together")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = run_recipe_of(parser, args)
    state = prepare(recipe, args.run_dir)
    entries = [e for e in run_entries(recipe, args.run_dir) if e.format != "torch-fp32"]
    threads = recipe.bench.threads or hardware()["cores"] or 1
    spec = recipe.bench.model_copy(update={"batch_sizes": [1], "other_seq_lens": [], "repeats": args.repeats,
                                           "rounds": args.rounds})
    inputs = [student_inputs(entry.model_dir, state.tasks, state.pad_id) for entry in entries]
    task = state.tasks[0].info.name
    feeds = [bench_feed(tasks, pad, 1, spec.seq_len) for tasks, pad in inputs]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for k, ids in enumerate(feeds):
            files.append(Path(tmp) / f"{k}.npy")
            np.save(files[-1], ids)

        def alone_p50s() -> list[float]:
            return [float(np.percentile(run_in_fresh_process(deployed_model(entry, threads), [ids_file], task,
                                                             spec.warmup, args.repeats)[0][0], 50))
                    for entry, ids_file in zip(entries, files, strict=True)]

        # alone before and after the bench's own timing: a slow spell of a shared machine shows as drift
        before = alone_p50s()
        bench = measure_latencies(entries, inputs, spec, threads)
        after = alone_p50s()
    rows = {}
    for k, entry in enumerate(entries):
        rows[model_key({"name": entry.name, "format": entry.format})] = {
            "bench_p50_ms": bench[k][0]["p50"], "alone_p50_ms": (before[k] + after[k]) / 2,
            "alone_before_ms": before[k], "alone_after_ms": after[k], "alone_drift": after[k] / before[k] - 1}
    shared = shared_process_p50(entries, feeds, task, threads, spec.warmup, round_sizes(args.repeats, args.rounds))
    for row, p50 in zip(rows.values(), shared, strict=True):
        row["shared_p50_ms"] = p50
        row["bench_vs_alone"] = row["bench_p50_ms"] / row["alone_p50_ms"] - 1
        row["shared_vs_alone"] = p50 / row["alone_p50_ms"] - 1
    out = args.run_dir / "timing-isolation"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"hardware": hardware(threads), "seq_len": spec.seq_len, "repeats": args.repeats, "models": rows,
               "max_abs_bench_vs_alone": max(abs(r["bench_vs_alone"]) for r in rows.values()),
               "max_abs_alone_drift": max(abs(r["alone_drift"]) for r in rows.values()),
               "max_abs_shared_vs_alone": max(abs(r["shared_vs_alone"]) for r in rows.values())}
    atomic_write_json(out / "summary.json", summary)
    print(f"{'model':32} {'alone ms':>9} {'drift':>7} {'bench ms':>9} {'vs alone':>9} {'shared ms':>10} "
          f"{'vs alone':>9}")
    for key, row in rows.items():
        print(f"{key:32} {row['alone_p50_ms']:9.2f} {row['alone_drift'] * 100:+6.1f}% {row['bench_p50_ms']:9.2f} "
              f"{row['bench_vs_alone'] * 100:+8.1f}% {row['shared_p50_ms']:10.2f} "
              f"{row['shared_vs_alone'] * 100:+8.1f}%")
    print(json.dumps({k: summary[k] for k in ("max_abs_bench_vs_alone", "max_abs_alone_drift",
                                               "max_abs_shared_vs_alone")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
