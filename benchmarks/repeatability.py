"""Run the bench stage of a finished run several times and compare the latency medians.

    python -m benchmarks.repeatability RUN_DIR (--demo [--quick | --base] | --recipe RECIPE.yaml) [--runs 2]

Prints one row per model (p50 of each run and the largest relative spread) and saves
RUN_DIR/repeatability/summary.json; each run's full report goes to RUN_DIR/repeatability/run-N/.
"""

from __future__ import annotations

import argparse
import json
import logging

from benchmarks.run_args import add_run_args, run_entries, run_recipe_of
from distill.bench.report import model_key
from distill.bench.suite import run_benchmarks
from distill.core.fileio import atomic_write_json
from distill.pipeline import prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, "the --out directory of a finished run")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = run_recipe_of(parser, args)
    state = prepare(recipe, args.run_dir)
    entries = run_entries(recipe, args.run_dir)
    medians: dict[str, list[float]] = {}
    for run in range(1, args.runs + 1):
        out = args.run_dir / "repeatability" / f"run-{run}"
        out.mkdir(parents=True, exist_ok=True)
        report = run_benchmarks(state.tasks, entries, recipe.bench, state.pad_id, out)
        for model in report["models"]:
            medians.setdefault(model_key(model), []).append(model["latency_ms"]["p50"])
    rows = {key: {"p50_ms": values, "spread": max(values) / min(values) - 1} for key, values in medians.items()}
    atomic_write_json(args.run_dir / "repeatability" / "summary.json", rows)
    print(f"{'model':32} " + " ".join(f"run{r} p50 ms" for r in range(1, args.runs + 1)) + "  spread")
    for key, row in rows.items():
        print(f"{key:32} " + " ".join(f"{v:11.2f}" for v in row["p50_ms"]) + f"  {row['spread'] * 100:5.1f}%")
    print(json.dumps({"max_spread": max(r["spread"] for r in rows.values())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
