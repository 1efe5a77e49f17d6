"""What the teacher cache saves: the same students distilled from the cache and from the online teacher.

    python -m benchmarks.cache_vs_online RUN_DIR (--demo [--quick | --base] | --recipe RECIPE.yaml)
        [--students A B C] [--epochs E] [--out DIR]

Side by side in one process, on a finished run's teacher (used as is): a sweep of the named students (default:
the recipe's first three), each trained for `--epochs` (default 1) twice — once reading a freshly built teacher
cache, once with the teacher run on every batch (`teacher_source: online`). Reports per student the time of its
first epoch (training and the dev evaluation, from the training log) and its dev and test mean scores under
both sources, and for the sweep the total cost: cache build + trainings, against the online trainings. Each side
gets a fresh cache directory under OUT, so the cache's build time is counted and each side measures the
teacher's statistics (students.teacher_stats) once. Prints a markdown table and saves OUT/cache_vs_online.json
and .md (OUT defaults to RUN_DIR/cache-vs-online).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from benchmarks.loss_recipes import scores
from benchmarks.run_args import add_run_args, run_recipe_of, run_teacher_dir
from distill.core.fileio import atomic_write_json, atomic_write_text, cache_dir, cache_dir_set_to, read_json
from distill.pipeline import prepare, run_recipe
from distill.recipe import Recipe, parse_recipe

SOURCES = ("cache", "online")


def sweep_recipe(recipe: Recipe, students: list[str], teacher_dir: Path, epochs: float, source: str) -> Recipe:
    """The run's recipe with its teacher fixed, only `students`, `epochs` each, and the teacher source."""
    data = recipe.model_dump(mode="json")
    data["teacher"] = {"path": str(teacher_dir), "trust_remote_code": recipe.teacher.trust_remote_code}
    data["students"] = [s.model_dump(mode="json", exclude_defaults=True) for s in recipe.students
                        if s.name in students]
    # only what the recipe set: alpha/hidden_weight and losses/stages exclude each other
    data["distillation"] = {**recipe.distillation.model_dump(mode="json", exclude_unset=True),
                            "epochs": epochs, "teacher_source": source}
    return parse_recipe(data, recipe.base_dir, origin=f"{source} sweep")


def fresh_cache_dir(directory: Path, shared: Path) -> Path:
    """An empty cache directory that links to the shared one's downloads (the demo's data and models)."""
    if directory.exists():
        shutil.rmtree(directory)  # links are removed, not followed
    directory.mkdir(parents=True)
    for name in ("wheels", "models"):
        if (shared / name).is_dir():
            (directory / name).symlink_to((shared / name).resolve(), target_is_directory=True)
    return directory


def first_epoch_seconds(logs: Path, student: str) -> float:
    """Seconds from the start of training to the end of the first epoch's dev evaluation (first stage's log)."""
    log_path = logs / f"student-{student}.jsonl"
    if not log_path.is_file():  # a staged student: one log per stage
        log_path = sorted(logs.glob(f"student-{student}.*.jsonl"), key=lambda p: p.stat().st_mtime)[0]
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    return float(next(r["seconds"] for r in records if "dev_score" in r))


def compare(rows: dict[str, dict[str, dict[str, Any]]], cache_seconds: float) -> dict[str, Any]:
    """Ratios of the cached sweep against the online one."""
    first = next(iter(rows))
    cached = cache_seconds + sum(r["cache"]["train_seconds"] for r in rows.values())
    online = sum(r["online"]["train_seconds"] for r in rows.values())
    return {
        "first_student": first,
        "epoch_ratio": rows[first]["cache"]["epoch_seconds"] / rows[first]["online"]["epoch_seconds"],
        "epoch_ratios": {n: r["cache"]["epoch_seconds"] / r["online"]["epoch_seconds"] for n, r in rows.items()},
        "sweep_seconds": {"cache": cached, "online": online, "cache_build": cache_seconds},
        "sweep_ratio": cached / online,
        "test_mean_difference_points": {n: 100 * (r["cache"]["test"] - r["online"]["test"]) for n, r in rows.items()},
    }


def render_markdown(rows: dict[str, dict[str, dict[str, Any]]], summary: dict[str, Any]) -> str:
    lines = ["| student | epoch s (cache) | epoch s (online) | ratio | test mean (cache) | test mean (online) |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        cache, online = row["cache"], row["online"]
        lines.append(f"| {name} | {cache['epoch_seconds']:.1f} | {online['epoch_seconds']:.1f} | "
                     f"{summary['epoch_ratios'][name]:.2f} | {cache['test']:.4f} | {online['test']:.4f} |")
    sweep = summary["sweep_seconds"]
    lines.append(f"| sweep (cache build {sweep['cache_build']:.1f} s + trainings) | {sweep['cache']:.1f} | "
                 f"{sweep['online']:.1f} | {summary['sweep_ratio']:.2f} | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, "the --out directory of a finished run (teacher present)")
    parser.add_argument("--students", nargs="+", help="students of the recipe to train (default: the first three)")
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per student (default 1)")
    parser.add_argument("--out", type=Path, help="where the results go (default RUN_DIR/cache-vs-online)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = run_recipe_of(parser, args)
    students = args.students or [s.name for s in recipe.students[:3]]
    unknown = sorted(set(students) - {s.name for s in recipe.students})
    if unknown:
        parser.error(f"no student(s) {unknown} in the recipe")
    out = args.out or args.run_dir / "cache-vs-online"
    teacher_dir = run_teacher_dir(recipe, args.run_dir)
    shared_cache = cache_dir()
    state = prepare(recipe, out / "data")
    rows: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in students}
    cache_seconds = 0.0
    for source in SOURCES:
        # each side starts from an empty cache directory, so the cached sweep pays its build and each side
        # measures the teacher's statistics (importance, covariance) once
        run_dir = out / source
        with cache_dir_set_to(fresh_cache_dir(out / f"distill-cache-{source}", shared_cache)):
            run = run_recipe(sweep_recipe(recipe, students, teacher_dir, args.epochs, source), run_dir,
                             until="train")
        stages = {s["name"]: s for s in run["stages"]}
        if source == "cache":
            cache_seconds = stages["cache"]["seconds"]
        for name in students:
            row = scores(run_dir / "students" / name, state.tasks, state.pad_id)
            row["train_seconds"] = stages[f"train:{name}"]["seconds"]
            row["epoch_seconds"] = first_epoch_seconds(run_dir / "logs", name)
            rows[name][source] = row
    summary = compare(rows, cache_seconds)
    cache_entry = read_json(out / "cache" / "cache.json")
    result = {"students": rows, "epochs": args.epochs, "cache": cache_entry, **summary}
    atomic_write_json(out / "cache_vs_online.json", result)
    table = render_markdown(rows, summary)
    atomic_write_text(out / "cache_vs_online.md", table)
    print(table)
    print(json.dumps({k: summary[k] for k in ("epoch_ratio", "sweep_ratio", "test_mean_difference_points")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
