"""`distill bench --predictor`: `distill.runtime.Predictor` timed end to end from raw text, as an application
calls it (tokenizer, length buckets, onnxruntime, labels and entity spans), one text at a time and in batches.

The model-only latencies of report.json leave out the tokenizer and the post-processing, and time a fixed
length; this times the test set's own texts. Each artifact runs in a process of its own (nothing else's
threads on the cores), the artifacts taking turns."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill.bench.latency import summarise
from distill.core.errors import DistillInputError
from distill.core.fileio import atomic_write_json
from distill.core.hardware import hardware
from distill.core.progress import progress
from distill.data.tasks import TaskData
from distill.recipe import Recipe

PREDICTOR_TEXTS = 200  # test texts per timing, taken in turn from every task
LARGE_BATCH = 32
WARMUP_TEXTS = 8
PREDICTOR_FILE = "predictor.json"

_PROBE = """
import json, sys
from pathlib import Path
from distill.bench.predictor_timing import time_predictor
args = json.loads(sys.argv[1])
texts = json.loads(Path(args["texts"]).read_text(encoding="utf-8"))
print(json.dumps(time_predictor(args["artifact"], args["precision"], texts, args["threads"])))
"""


def sample_test_texts(tasks: list[TaskData], count: int = PREDICTOR_TEXTS) -> list[str]:
    """Up to `count` raw test texts, taken in turn from each task (a token task's words joined by spaces)."""
    pools = [[" ".join(t) if isinstance(t, list) else str(t) for t in task.splits["test"].texts] for task in tasks]
    texts: list[str] = []
    for k in range(max(len(p) for p in pools)):
        texts += [pool[k] for pool in pools if k < len(pool)]
    return texts[:count]


def time_predictor(artifact: str | Path, precision: str, texts: list[str], threads: int) -> dict[str, Any]:
    """Milliseconds per text: `predict([text])` for each text (batch 1), then `predict(texts)` at LARGE_BATCH."""
    from distill.runtime import Predictor

    single = Predictor(artifact, precision=precision, threads=threads, batch_size=1)
    for text in texts[:WARMUP_TEXTS]:
        single.predict([text])
    times = []
    for text in texts:
        start = time.perf_counter()
        single.predict([text])
        times.append((time.perf_counter() - start) * 1000)
    del single
    batched = Predictor(artifact, precision=precision, threads=threads, batch_size=LARGE_BATCH)
    batched.predict(texts[:LARGE_BATCH])
    start = time.perf_counter()
    batched.predict(texts)
    seconds = time.perf_counter() - start
    one = summarise(np.asarray(times))
    return {"batch_1": {"p50_ms": one["p50"], "p90_ms": one["p90"], "mean_ms": one["mean"]},
            f"batch_{LARGE_BATCH}": {"ms_per_text": seconds * 1000 / len(texts), "texts_per_s": len(texts) / seconds}}


def predictor_timings(artifacts: dict[str, Path], tasks: list[TaskData], threads: int, out_dir: Path) -> dict:
    """Every artifact's int8 and fp32 models (those it has) through the Predictor, each in a fresh process;
    written to out_dir/predictor.json."""
    from distill.runtime import model_files

    texts = sample_test_texts(tasks)
    runs = [(name, precision) for name, directory in artifacts.items() for precision in ("int8", "fp32")
            if model_files(directory, precision) is not None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "texts.json"  # news texts: too long for a command line
        text_file.write_text(json.dumps(texts), encoding="utf-8")
        for name, precision in progress(runs, desc="predictor", unit="model"):
            args = {"artifact": str(artifacts[name]), "precision": precision, "texts": str(text_file),
                    "threads": threads}
            done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"the Predictor on {artifacts[name]} ({precision}) failed: "
                                   f"{done.stderr.strip()[-2000:]}")
            rows.append({"name": name, "precision": precision, **json.loads(done.stdout.strip().splitlines()[-1])})
    cpu = hardware()
    result = {"texts": len(texts), "median_chars": float(np.median([len(t) for t in texts])), "threads": threads,
              "large_batch": LARGE_BATCH, "hardware": {"cpu": cpu["cpu"], "cores": cpu["cores"]}, "models": rows}
    atomic_write_json(out_dir / PREDICTOR_FILE, result)
    return result


def run_predictor_bench(recipe: Recipe, out_dir: Path) -> dict:
    """`predictor_timings` for the finished run of `recipe` in `out_dir` (its teacher and students' artifacts)."""
    from distill.data.tasks import load_tasks

    names = ["teacher", *(s.name for s in recipe.students)]
    artifacts = {name: out_dir / "artifacts" / name for name in names}
    missing = [name for name, directory in artifacts.items() if not (directory / "manifest.json").is_file()]
    if missing:
        raise DistillInputError(f"{out_dir}: no artifact for {missing}; run `distill export` first")
    threads = recipe.bench.threads or hardware()["cores"] or 1
    return predictor_timings(artifacts, load_tasks(recipe), threads, out_dir)


def render_predictor_table(result: dict) -> list[str]:
    large = f"batch_{result['large_batch']}"
    lines = [f"Predictor end to end on {result['texts']} test texts (median {result['median_chars']:.0f} characters), "
             f"{result['threads']} threads, {result['hardware']['cpu']}:", "",
             f"| model | precision | batch 1 p50 ms | batch 1 p90 ms | batch 1 mean ms | batch {result['large_batch']} "
             "ms/text | texts/s |", "|---|---|---|---|---|---|---|"]
    for row in result["models"]:
        lines.append(f"| {row['name']} | {row['precision']} | {row['batch_1']['p50_ms']:.2f} | "
                     f"{row['batch_1']['p90_ms']:.2f} | {row['batch_1']['mean_ms']:.2f} | "
                     f"{row[large]['ms_per_text']:.2f} | {row[large]['texts_per_s']:.0f} |")
    return lines
