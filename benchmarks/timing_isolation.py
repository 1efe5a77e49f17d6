"""Does the bench time a model, or its neighbours? Each ONNX model of a finished run, at batch 1 × the recipe's
bench length, timed three ways in one run:

- bench: what `distill bench` does, a process of its own per model, the models taking turns (one pass = one turn
  each);
- alone: one fresh process per model that loads only that model and makes all of a pass's calls;
- shared: every model loaded in one process, timed in turns, threads not spinning between runs (what the bench did
  before, kept to show why it stopped).

A shared machine drifts by tens of percent over minutes, more than the effect looked for, so the passes alternate
(alone, bench, alone, ..., alone) and each bench pass is compared with the alone passes on either side of it: a
model's `bench_vs_alone` is the median over the bench passes of bench / mean(alone before, alone after) - 1 (so
it is not the ratio of the two medians printed beside it, `bench_p50_ms` and `alone_p50_ms`). The alone passes' own
spread (`alone_spread`: the largest distance of one alone p50 from their median) is the noise the comparison is
read against.

    python -m benchmarks.timing_isolation RUN_DIR (--demo [--quick | --base] | --recipe RECIPE.yaml)
        [--repeats 30] [--passes 5]

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


def paired_ratios(alone: np.ndarray, bench: np.ndarray) -> np.ndarray:
    """Per model (rows), the median over bench passes of bench / mean(the alone passes either side) - 1.

    `alone` has one more pass (column) than `bench`: they alternate, alone first and last."""
    if alone.shape != (bench.shape[0], bench.shape[1] + 1):
        raise ValueError(f"alone passes {alone.shape} do not frame bench passes {bench.shape}")
    neighbours = (alone[:, :-1] + alone[:, 1:]) / 2
    return np.median(bench / neighbours, axis=1) - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, "the --out directory of a finished run")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per model and pass")
    parser.add_argument("--passes", type=int, default=5,
                        help="bench passes, each between two alone passes (the shared process times "
                             "repeats x passes calls per model)")
    args = parser.parse_args(argv)
    if args.passes < 1 or args.repeats < 1:
        parser.error("--passes and --repeats must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = run_recipe_of(parser, args)
    state = prepare(recipe, args.run_dir)
    entries = [e for e in run_entries(recipe, args.run_dir) if e.format != "torch-fp32"]
    threads = recipe.bench.threads or hardware()["cores"] or 1
    spec = recipe.bench.model_copy(update={"batch_sizes": [1], "other_seq_lens": [], "repeats": args.repeats,
                                           "rounds": 1})
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

        alone, bench = [alone_p50s()], []
        for p in range(args.passes):
            logging.info("pass %d of %d: the bench's turns, then each model alone", p + 1, args.passes)
            bench.append([grid[0]["p50"] for grid in measure_latencies(entries, inputs, spec, threads)])
            alone.append(alone_p50s())
    alone_ms, bench_ms = np.array(alone).T, np.array(bench).T
    ratios = paired_ratios(alone_ms, bench_ms)
    shared = shared_process_p50(entries, feeds, task, threads, spec.warmup,
                                round_sizes(args.repeats * args.passes, args.passes))
    rows = {}
    for k, entry in enumerate(entries):
        alone_median = float(np.median(alone_ms[k]))
        rows[model_key({"name": entry.name, "format": entry.format})] = {
            "alone_p50_ms": alone_median, "alone_passes_ms": alone_ms[k].tolist(),
            "alone_spread": float(np.max(np.abs(alone_ms[k] / alone_median - 1))),
            "bench_p50_ms": float(np.median(bench_ms[k])), "bench_passes_ms": bench_ms[k].tolist(),
            "bench_vs_alone": float(ratios[k]),
            "shared_p50_ms": shared[k], "shared_vs_alone": shared[k] / alone_median - 1}
    out = args.run_dir / "timing-isolation"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"hardware": hardware(threads), "seq_len": spec.seq_len, "repeats": args.repeats,
               "passes": args.passes, "models": rows,
               "max_abs_bench_vs_alone": max(abs(r["bench_vs_alone"]) for r in rows.values()),
               "max_alone_spread": max(r["alone_spread"] for r in rows.values()),
               "max_abs_shared_vs_alone": max(abs(r["shared_vs_alone"]) for r in rows.values())}
    atomic_write_json(out / "summary.json", summary)
    print(f"{'model':32} {'alone ms':>9} {'spread':>7} {'bench ms':>9} {'paired':>9} {'shared ms':>10} "
          f"{'vs alone':>9}")
    for key, row in rows.items():
        print(f"{key:32} {row['alone_p50_ms']:9.2f} {row['alone_spread'] * 100:6.1f}% {row['bench_p50_ms']:9.2f} "
              f"{row['bench_vs_alone'] * 100:+8.1f}% {row['shared_p50_ms']:10.2f} "
              f"{row['shared_vs_alone'] * 100:+8.1f}%")
    print(json.dumps({k: summary[k] for k in ("max_abs_bench_vs_alone", "max_alone_spread",
                                               "max_abs_shared_vs_alone")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
