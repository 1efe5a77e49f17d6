"""Latency and throughput of a model on fixed-size inputs, with warm-up and percentiles."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def bench_inputs(token_ids: list[np.ndarray], batch: int, seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch of real token ids, cycled or cut to exactly `seq_len` tokens (no padding)."""
    rows = []
    for k in range(batch):
        ids = token_ids[k % len(token_ids)]
        repeats = -(-seq_len // len(ids))
        rows.append(np.tile(ids, repeats)[:seq_len])
    input_ids = np.stack(rows).astype(np.int64)
    return input_ids, np.ones_like(input_ids)


def timed_calls(run: Callable[[], object], warmup: int, repeats: int) -> np.ndarray:
    """Wall-clock milliseconds of `repeats` calls of `run()` after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        run()
        times[i] = (time.perf_counter() - start) * 1000.0
    return times


def summarise(times: np.ndarray) -> dict[str, float]:
    """p50/p90/p99 and mean of a set of timings (ms)."""
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90)),
            "p99": float(np.percentile(times, 99)), "mean": float(times.mean()), "samples": int(times.size)}


def measure(run: Callable[[], object], warmup: int, repeats: int) -> dict[str, float]:
    """p50/p90/p99 wall-clock milliseconds of `run()` over `repeats` calls after `warmup` calls."""
    return summarise(timed_calls(run, warmup, repeats))


_PROBE = """
import json, sys
import numpy as np
args = json.loads(sys.argv[1])
task = args["task"]
if args["format"] == "torch-fp32":
    import torch
    from distill.data.evaluation import torch_forward
    from distill.model.multitask import MultiTaskModel
    torch.set_num_threads(args["threads"])
    model = MultiTaskModel.load(args["path"])
    if task is None:
        def forward(ids, mask):
            with torch.inference_mode():
                model(torch.from_numpy(ids), torch.from_numpy(mask))
    else:
        one_task = torch_forward(model)
        def forward(ids, mask):
            return one_task(task, ids, mask)
else:
    from distill.runtime import OnnxForward, model_files
    onnx = OnnxForward(model_files(args["path"], args["format"].removeprefix("onnx-")), args["threads"],
                       args["level"])
    def forward(ids, mask):
        return onnx.run_all(ids, mask) if task is None else onnx(task, ids, mask)
from distill.bench.latency import timed_calls
times = []
for feed in args["feeds"]:
    ids = np.load(feed)
    mask = np.ones_like(ids)
    times.append(timed_calls(lambda: forward(ids, mask), args["warmup"], args["repeats"]).tolist())
peak_mb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"times": times, "peak_mb": peak_mb}))
"""


def run_in_fresh_process(model: dict[str, Any], feeds: list[Path], task: str | None, warmup: int,
                         repeats: int) -> tuple[list[np.ndarray], float]:
    """Run `model` ({format, path, threads, level}) in a new process that loads only it, as deployed (onnxruntime's
    default session settings): at each feed (a saved input_ids array) `warmup` untimed then `repeats` timed calls
    of one task's output (`task`) or of every task's (None). Returns the milliseconds per feed and the process's
    peak resident memory in MB (VmHWM: getrusage's ru_maxrss would carry the parent's high-water mark over the
    exec). Nothing else's threads share the cores while it runs."""
    args = {**model, "path": str(model["path"]), "feeds": [str(f) for f in feeds], "task": task, "warmup": warmup,
            "repeats": repeats}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"running {model['path']} ({model['format']}) failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return [np.asarray(t) for t in result["times"]], float(result["peak_mb"])


def round_sizes(repeats: int, rounds: int) -> list[int]:
    """`repeats` timed calls spread over `rounds` rounds (at most one round per call)."""
    rounds = max(1, min(rounds, repeats))
    return [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
