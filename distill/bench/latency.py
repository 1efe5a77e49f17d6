"""Latency and throughput of a model on fixed-size inputs, with warm-up and percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable

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


def interleaved(runs: list[Callable[[], object]], warmup: int, repeats: int, rounds: int) -> list[dict[str, float]]:
    """Time several models in turn, `rounds` times, `repeats` calls each in all, so that a slow spell of a
    shared machine hits every model alike instead of whichever model was being timed then."""
    rounds = max(1, min(rounds, repeats))
    per_round = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    samples: list[list[np.ndarray]] = [[] for _ in runs]
    for r, count in enumerate(per_round):
        for k, run in enumerate(runs):
            samples[k].append(timed_calls(run, warmup if r == 0 else 1, count))
    return [summarise(np.concatenate(s)) for s in samples]
