"""Train the same student with four loss recipes on a finished run's teacher and compare them.

    python -m benchmarks.loss_recipes RUN_DIR (--demo [--quick | --base] | --recipe RECIPE.yaml) [--layers 2]
        [--epochs E] [--source cache|online] [--out DIR]

The recipes, each with the run recipe's epochs, temperature, optimiser and layer map (α = alpha, β =
hidden_weight): `logits` (α·CE + (1−α)·KD), `hidden` (+ β·hidden MSE), `relations` (+ β·hidden MSE +
self-attention relations), `two_stage` (TinyBERT: hidden MSE + relations, then α·CE + (1−α)·KD; the epochs
split evenly between the two stages, so every recipe trains as long). The teacher is used as is and the
teacher cache is reused where it holds what a recipe needs. Prints a markdown table and saves
OUT/loss_recipes.json and OUT/loss_recipes.md (OUT defaults to RUN_DIR/loss-recipes).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from benchmarks.run_args import add_run_args, run_recipe_of, run_teacher_dir
from distill.core.fileio import atomic_write_json, atomic_write_text, read_json
from distill.data.evaluation import evaluate, primary_scores, torch_forward
from distill.data.metrics import mean_score
from distill.data.tasks import TaskData
from distill.model.multitask import MultiTaskModel
from distill.pipeline import prepare, run_recipe
from distill.recipe import Recipe, parse_recipe

RECIPES = ("logits", "hidden", "relations", "two_stage")


def loss_variants(recipe: Recipe, epochs: float) -> dict[str, dict[str, Any]]:
    """The `distillation` overrides of each recipe (losses or stages, and epochs)."""
    alpha, beta = recipe.distillation.alpha, recipe.distillation.hidden_weight or 1.0
    logits = {"hard": alpha, "kd_kl": 1 - alpha}
    intermediate = {"hidden_mse": beta, "relations": 1.0}
    return {
        "logits": {"losses": logits, "epochs": epochs},
        "hidden": {"losses": {**logits, "hidden_mse": beta}, "epochs": epochs},
        "relations": {"losses": {**logits, **intermediate}, "epochs": epochs},
        "two_stage": {"epochs": epochs, "stages": [
            {"name": "intermediate", "epochs": epochs / 2, "losses": intermediate},
            {"name": "prediction", "epochs": epochs / 2, "losses": logits}]},
    }


def variant_recipe(recipe: Recipe, name: str, distillation: dict[str, Any], teacher_dir: Path, layers: int,
                   source: str | None) -> Recipe:
    """The run's recipe with its teacher fixed, one student `name`, and these loss settings."""
    data = recipe.model_dump(mode="json")
    data["teacher"] = {"path": str(teacher_dir), "trust_remote_code": recipe.teacher.trust_remote_code}
    data["students"] = [{"name": name, "layers": layers}]
    base = {k: v for k, v in data["distillation"].items()
            if k not in ("alpha", "hidden_weight", "losses", "stages", "epochs")}
    data["distillation"] = {**base, **distillation, **({"teacher_source": source} if source else {})}
    return parse_recipe(data, recipe.base_dir, origin=f"loss recipe {name}")


def scores(model_dir: Path, tasks: list[TaskData], pad_id: int) -> dict[str, float]:
    """Mean primary score on dev and test (a vocabulary-pruned student reads its own token ids)."""
    from students.vocab_map import student_inputs

    tasks, pad_id = student_inputs(model_dir, tasks, pad_id)
    forward = torch_forward(MultiTaskModel.load(model_dir))
    return {split: mean_score(primary_scores(tasks, evaluate(forward, tasks, split, pad_id, desc=split)))
            for split in ("dev", "test")}


def render_markdown(rows: list[dict[str, Any]], teacher: dict[str, float]) -> str:
    lines = ["| recipe | dev mean | test mean | retention | training s |", "|---|---|---|---|---|",
             f"| teacher | {teacher['dev']:.4f} | {teacher['test']:.4f} | 1.000 | |"]
    lines += [f"| {r['recipe']} | {r['dev']:.4f} | {r['test']:.4f} | {r['retention']:.3f} | {r['train_seconds']:.1f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, "the --out directory of a finished run (teacher present)")
    parser.add_argument("--layers", type=int, default=2, help="student layers (kept from the teacher)")
    parser.add_argument("--epochs", type=float, help="training epochs per recipe (default: the recipe's)")
    parser.add_argument("--source", choices=("cache", "online"), help="teacher outputs (default: the recipe's)")
    parser.add_argument("--out", type=Path, help="where the results go (default RUN_DIR/loss-recipes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    recipe = run_recipe_of(parser, args)
    out = args.out or args.run_dir / "loss-recipes"
    teacher_dir = run_teacher_dir(recipe, args.run_dir)
    state = prepare(recipe, out)
    teacher = scores(teacher_dir, state.tasks, state.pad_id)
    rows = []
    for name, distillation in loss_variants(recipe, args.epochs or recipe.distillation.epochs).items():
        variant = variant_recipe(recipe, name, distillation, teacher_dir, args.layers, args.source)
        run = run_recipe(variant, out / name, until="train")
        seconds = next(s["seconds"] for s in run["stages"] if s["name"] == f"train:{name}")
        student = scores(out / name / "students" / name, state.tasks, state.pad_id)
        rows.append({"recipe": name, "distillation": distillation, **student,
                     "retention": student["test"] / teacher["test"], "train_seconds": seconds,
                     "teacher_layers": read_json(out / name / "students" / name / "student.json")["teacher_layers"]})
    atomic_write_json(out / "loss_recipes.json", {"teacher": teacher, "recipes": rows})
    table = render_markdown(rows, teacher)
    atomic_write_text(out / "loss_recipes.md", table)
    print(table)
    print(json.dumps({"best": max(rows, key=lambda r: r["dev"])["recipe"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
