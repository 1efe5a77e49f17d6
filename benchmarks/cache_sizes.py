"""Bytes on disk per 1,000 examples of a teacher cache, with more or fewer teacher outputs kept.

    python -m benchmarks.cache_sizes TEACHER_DIR (--demo [--quick] | --recipe RECIPE.yaml) [--qkv] [--limit N]
                                     [--out cache_sizes.json]

Builds one cache entry per variant into a temporary cache directory (removed afterwards): logits only;
+ the last hidden layer; + the last four hidden layers; with --qkv also + the last layer's query/key/value.
The recipe gives the data and the `cache` settings (dtype, shard size, top-k). Prints a table and writes
the rows as JSON.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from transformers import AutoConfig

from distill.api import demo_recipe
from distill.core.fileio import atomic_write_json
from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import TaskData, encode_tasks, load_tasks
from distill.recipe import Recipe, load_recipe
from teachers.cache.build import build_cache


def variants(num_layers: int, qkv: bool) -> dict[str, tuple[list[int], list[int]]]:
    """Variant name -> (hidden layers, query/key/value layers)."""
    last_four = list(range(-min(4, num_layers), 0))
    out = {"logits": ([], []), "+ last hidden": ([-1], []), f"+ {len(last_four)} hidden": (last_four, [])}
    if qkv:
        out["+ last hidden + last qkv"] = ([-1], [-1])
    return out


def measure_cache_sizes(teacher_dir: Path, tasks: list[TaskData], recipe: Recipe, qkv: bool = False) -> list[dict]:
    """One row per variant: what was kept, examples, shards, bytes and bytes per 1,000 examples."""
    num_layers = AutoConfig.from_pretrained(teacher_dir).num_hidden_layers
    spec = recipe.cache
    rows = []
    with tempfile.TemporaryDirectory(prefix="cache-sizes-") as root:
        for name, (hidden, attention) in variants(num_layers, qkv).items():
            started = time.perf_counter()
            result = build_cache(teacher_dir, tasks, hidden, qkv_layers=attention, dtype=spec.dtype,
                                 shard_size=spec.shard_size, batch_size=spec.batch_size, top_k=spec.top_k,
                                 trust_remote_code=recipe.teacher.trust_remote_code, root=Path(root))
            rows.append({"variant": name, "hidden_layers": hidden, "qkv_layers": attention, "dtype": spec.dtype,
                         "examples": result.examples, "shards": result.shards, "bytes": result.bytes,
                         "bytes_per_1000_examples": result.bytes_per_1000_examples,
                         "seconds": round(time.perf_counter() - started, 2)})
    return rows


def _limit(tasks: list[TaskData], count: int) -> None:
    for task in tasks:
        for split in task.encoded.values():
            del split.input_ids[count:]
            del split.labels[count:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("teacher", type=Path, help="a multi-task teacher directory (e.g. RUN_DIR/teacher)")
    parser.add_argument("--recipe", type=Path, help="the recipe whose data and cache settings to use")
    parser.add_argument("--demo", action="store_true", help="use the demo recipe")
    parser.add_argument("--quick", action="store_true", help="... with --quick")
    parser.add_argument("--qkv", action="store_true", help="add a variant with the last layer's query/key/value")
    parser.add_argument("--limit", type=int, help="at most this many examples per split and task")
    parser.add_argument("--out", type=Path, default=Path("cache_sizes.json"), help="where to write the rows")
    args = parser.parse_args(argv)
    if args.demo == bool(args.recipe):
        parser.error("give exactly one of --demo or --recipe")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = demo_recipe(args.quick) if args.demo else load_recipe(args.recipe)
    tasks = load_tasks(recipe)
    encode_tasks(tasks, load_tokenizer(args.teacher, recipe.teacher.trust_remote_code), recipe.max_length)
    if args.limit:
        _limit(tasks, args.limit)
    rows = measure_cache_sizes(args.teacher, tasks, recipe, args.qkv)
    atomic_write_json(args.out, {"teacher": str(args.teacher), "rows": rows})
    print("| variant | examples | shards | bytes | bytes per 1,000 examples | seconds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['examples']:,} | {row['shards']} | {row['bytes']:,} | "
              f"{row['bytes_per_1000_examples']:,} | {row['seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
