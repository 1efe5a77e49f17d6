"""Does the bench time a model, or its neighbours? Each ONNX model of a finished run timed among all the others
(one process, every session open, timed in turns: what `distill bench` does) and alone (a fresh process that
loads only that model), at batch 1 × the recipe's bench length.

    python -m benchmarks.timing_isolation RUN_DIR (--demo [--quick | --base] | --recipe RECIPE.yaml)
        [--repeats 60] [--rounds 3]

"alone" uses the bench's session settings (intra-op threads that do not spin between runs); "alone, spinning"
is onnxruntime's default, what a single Predictor gets. Prints one row per model and saves
RUN_DIR/timing-isolation/summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.run_args import add_run_args, run_recipe_of
from distill.bench.latency import bench_inputs
from distill.bench.measure import measure_latencies, model_forward, onnx_files
from distill.bench.pareto import model_key
from distill.bench.suite import model_entries
from distill.core.fileio import atomic_write_json
from distill.core.hardware import hardware
from distill.pipeline import prepare
from students.vocab_map import student_inputs

_ALONE = """
import json, sys
import numpy as np
from distill.bench.latency import measure
from distill.runtime import OnnxForward
args = json.loads(sys.argv[1])
files = args["files"] if isinstance(args["files"], str) else dict(args["files"])
forward = OnnxForward(files, args["threads"], args["level"], spinning=args["spinning"])
ids = np.load(args["ids"])
print(json.dumps(measure(lambda: forward(args["task"], ids, np.ones_like(ids)), args["warmup"], args["repeats"])))
"""


def alone_p50(files: Path | dict[str, Path], level: str, ids_file: Path, task: str, threads: int, warmup: int,
              repeats: int, spinning: bool) -> float:
    """p50 ms of one model in a fresh process that loads nothing else."""
    args = {"files": str(files) if isinstance(files, Path) else {k: str(v) for k, v in files.items()},
            "level": level, "ids": str(ids_file), "task": task, "threads": threads, "warmup": warmup,
            "repeats": repeats, "spinning": spinning}
    done = subprocess.run([sys.executable, "-c", _ALONE, json.dumps(args)], capture_output=True, text=True,
                          check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["p50"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, "the --out directory of a finished run")
    parser.add_argument("--repeats", type=int, default=60, help="timed calls per model and setting")
    parser.add_argument("--rounds", type=int, default=3, help="turns over all models when timed together")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = run_recipe_of(parser, args)
    state = prepare(recipe, args.run_dir)
    models = {"teacher": args.run_dir / "teacher", **{s.name: args.run_dir / "students" / s.name
                                                      for s in recipe.students}}
    artifacts = {name: args.run_dir / "artifacts" / name for name in models}
    entries = [e for e in model_entries(models["teacher"], artifacts, models) if e.format != "torch-fp32"]
    threads = recipe.bench.threads or hardware()["cores"] or 1
    spec = recipe.bench.model_copy(update={"batch_sizes": [1], "other_seq_lens": [], "repeats": args.repeats,
                                           "rounds": args.rounds})
    inputs = [student_inputs(entry.model_dir, state.tasks, state.pad_id) for entry in entries]
    among = measure_latencies([model_forward(entry, threads) for entry in entries], inputs, spec)
    task = state.tasks[0].info.name
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (entry, (tasks, pad)) in enumerate(zip(entries, inputs, strict=True)):
            sample = [ids for t in tasks for ids in t.encoded["test"].input_ids[:64]]
            ids, _ = bench_inputs(sample, 1, spec.seq_len, pad)
            ids_file = Path(tmp) / f"{k}.npy"
            np.save(ids_file, ids)
            alone = {flag: alone_p50(onnx_files(entry), entry.optimization_level, ids_file, task, threads,
                                     spec.warmup, args.repeats, flag) for flag in (False, True)}
            key = model_key({"name": entry.name, "format": entry.format})
            rows[key] = {"among_p50_ms": among[k][0]["p50"], "alone_p50_ms": alone[False],
                         "alone_spinning_p50_ms": alone[True],
                         "among_vs_alone": among[k][0]["p50"] / alone[False] - 1}
    out = args.run_dir / "timing-isolation"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"hardware": hardware(threads), "seq_len": spec.seq_len, "repeats": args.repeats, "models": rows,
               "max_abs_among_vs_alone": max(abs(r["among_vs_alone"]) for r in rows.values())}
    atomic_write_json(out / "summary.json", summary)
    print(f"{'model':32} {'among ms':>9} {'alone ms':>9} {'among/alone':>12} {'alone, spinning ms':>19}")
    for key, row in rows.items():
        print(f"{key:32} {row['among_p50_ms']:9.2f} {row['alone_p50_ms']:9.2f} "
              f"{row['among_vs_alone'] * 100:+11.1f}% {row['alone_spinning_p50_ms']:19.2f}")
    print(json.dumps({"max_abs_among_vs_alone": summary["max_abs_among_vs_alone"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
