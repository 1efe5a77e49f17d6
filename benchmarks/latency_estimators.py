"""Which latency estimate holds still on a shared machine? A finished run's int8 baseline, fp32 ONNX teacher and
each student's int8 and fp32 models take turns for many short rounds (a fresh process each, at batch 1 × the
recipe's bench length); then bench runs of --picks rounds are simulated by drawing rounds at random, and each
estimator's student / baseline (and fp32 student / fp32 teacher) ratio is computed per draw. The estimator whose
ratios spread least is the one a report should use.

Estimators: pooled (the median of every call of the picked rounds: what `distill bench` reports),
median_of_rounds (the median of the rounds' medians), fastest_round (the lowest round median), p25 (the 25th
percentile of every call).

    python -m benchmarks.latency_estimators RUN_DIR (--demo [--quick | --base] | --recipe RECIPE.yaml)
        [--rounds 16] [--calls 20] [--picks 3] [--draws 400] [--saved] [--calls-used N]

Prints one row per estimator and ratio and saves RUN_DIR/latency-estimators.json (the raw timings included).
`--saved` simulates again from those timings without timing anything (with `--calls-used N`: only the first N
calls of each round, e.g. 4 rounds of 5 calls against 2 rounds of 10 from the same timings).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.run_args import add_run_args, run_entries, run_recipe_of
from distill.bench.latency import run_in_fresh_process
from distill.bench.measure import bench_feed, deployed_model
from distill.bench.pareto import model_key
from distill.core.fileio import atomic_write_json, read_json
from distill.core.hardware import hardware
from distill.core.progress import progress
from distill.pipeline import prepare
from students.vocab_map import student_inputs

SAVED_FILE = "latency-estimators.json"
BASELINE, TEACHER = "baseline/onnx-int8", "teacher/onnx-fp32"
ESTIMATORS: dict[str, Callable[[list[np.ndarray]], float]] = {
    "pooled": lambda rounds: float(np.median(np.concatenate(rounds))),
    "median_of_rounds": lambda rounds: float(np.median([np.median(r) for r in rounds])),
    "fastest_round": lambda rounds: float(min(np.median(r) for r in rounds)),
    "p25": lambda rounds: float(np.percentile(np.concatenate(rounds), 25)),
}


def ratio_spread(times: dict[str, list[np.ndarray]], pairs: list[tuple[str, str]], picks: int, draws: int,
                 seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Per estimator and (model, reference) pair: the median, standard deviation and range of the ratio over
    `draws` random choices of `picks` rounds (the same rounds for both models of a draw)."""
    rounds = len(next(iter(times.values())))
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(rounds, min(picks, rounds), replace=False) for _ in range(draws)]
    result: dict[str, dict[str, dict[str, float]]] = {}
    for name, estimate in ESTIMATORS.items():
        result[name] = {}
        for model, reference in pairs:
            ratios = np.array([estimate([times[model][i] for i in pick]) / estimate([times[reference][i] for i in pick])
                               for pick in chosen])
            result[name][f"{model} / {reference}"] = {"median": float(np.median(ratios)), "std": float(ratios.std()),
                                                      "min": float(ratios.min()), "max": float(ratios.max())}
    return result


def time_rounds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict[str, list[np.ndarray]],
                                                                                dict[str, Any]]:
    """Every ONNX fp32 and dynamic int8 model of the run, `args.rounds` turns of `args.calls` timed calls each (a
    fresh process per model and round); and what to save beside the timings."""
    recipe = run_recipe_of(parser, args)
    state = prepare(recipe, args.run_dir)
    entries = {model_key({"name": e.name, "format": e.format}): e for e in run_entries(recipe, args.run_dir)
               if e.format in ("onnx-fp32", "onnx-int8")}
    if BASELINE not in entries or TEACHER not in entries:
        parser.error(f"{args.run_dir}: the run has no exported int8 baseline and fp32 teacher; export it first")
    threads = recipe.bench.threads or hardware()["cores"] or 1
    task = state.tasks[0].info.name
    times: dict[str, list[np.ndarray]] = {key: [] for key in entries}
    with tempfile.TemporaryDirectory() as tmp:
        feeds = {}
        for key, entry in entries.items():
            tasks, pad = student_inputs(entry.model_dir, state.tasks, state.pad_id)
            feeds[key] = Path(tmp) / f"{len(feeds)}.npy"
            np.save(feeds[key], bench_feed(tasks, pad, 1, recipe.bench.seq_len))
        with progress(total=args.rounds * len(entries), desc="rounds", unit="model") as bar:
            for _ in range(args.rounds):
                for key, entry in entries.items():
                    got, _ = run_in_fresh_process(deployed_model(entry, threads), [feeds[key]], task,
                                                  recipe.bench.warmup, args.calls)
                    times[key].append(got[0])
                    bar.update(1)
    return times, {"hardware": hardware(threads), "seq_len": recipe.bench.seq_len}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, "the --out directory of a finished run")
    parser.add_argument("--rounds", type=int, default=16, help="turns over all the models")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per model and round")
    parser.add_argument("--picks", type=int, default=3, help="rounds in one simulated bench run")
    parser.add_argument("--draws", type=int, default=400, help="simulated bench runs")
    parser.add_argument("--saved", action="store_true",
                        help=f"read the timings of an earlier run from RUN_DIR/{SAVED_FILE} instead of timing")
    parser.add_argument("--calls-used", type=int, help="simulate with only the first N calls of each round")
    args = parser.parse_args(argv)
    counts = [args.rounds, args.calls, args.picks, args.draws] + ([] if args.calls_used is None else [args.calls_used])
    if min(counts) < 1:
        parser.error("--rounds, --calls, --calls-used, --picks and --draws must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    saved_path = args.run_dir / SAVED_FILE
    if args.saved:
        if not saved_path.is_file():
            parser.error(f"{saved_path}: not found; run without --saved first")
        times = {key: [np.asarray(r) for r in rounds] for key, rounds in read_json(saved_path)["times_ms"].items()}
    else:
        times, about = time_rounds(parser, args)
    if args.picks > len(next(iter(times.values()))):
        parser.error(f"--picks {args.picks} is more than the {len(next(iter(times.values())))} rounds timed")
    used = {key: [r[: args.calls_used] for r in rounds] for key, rounds in times.items()}
    pairs = [(key, BASELINE if key.endswith("int8") else TEACHER) for key in times if key not in (BASELINE, TEACHER)]
    spread = ratio_spread(used, pairs, args.picks, args.draws)
    if not args.saved:
        atomic_write_json(saved_path, {
            **about, "rounds": args.rounds, "calls": args.calls, "picks": args.picks, "draws": args.draws,
            "ratios": spread, "round_p50_ms": {key: [float(np.median(t)) for t in rounds]
                                               for key, rounds in times.items()},
            "times_ms": {key: [t.tolist() for t in rounds] for key, rounds in times.items()}})
    print(f"{'estimator':18} {'ratio':52} {'median':>7} {'std':>7} {'range':>15}")
    for name, ratios in spread.items():
        for pair, r in ratios.items():
            print(f"{name:18} {pair:52} {r['median']:7.3f} {r['std']:7.3f} {r['min']:7.3f}-{r['max']:.3f}")
    print(json.dumps({name: max(r["std"] for r in ratios.values()) for name, ratios in spread.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
