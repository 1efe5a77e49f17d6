"""The command-line arguments that name a finished run and its recipe, shared by the benchmark scripts."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.api import demo_recipe
from distill.bench.measure import ModelEntry
from distill.bench.suite import model_entries
from distill.recipe import Recipe, load_recipe


def add_run_args(parser: argparse.ArgumentParser, run_help: str) -> None:
    """RUN_DIR, and --recipe or --demo [--quick | --base]."""
    parser.add_argument("run_dir", type=Path, help=run_help)
    parser.add_argument("--recipe", type=Path, help="the recipe the run used")
    parser.add_argument("--demo", action="store_true", help="the run was `distill demo`")
    parser.add_argument("--quick", action="store_true", help="... with --quick")
    parser.add_argument("--base", action="store_true", help="... with --base (the base-size demo)")


def run_recipe_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Recipe:
    """The recipe the arguments name (an argparse error when neither --demo nor --recipe is given)."""
    if not args.demo and args.recipe is None:
        parser.error("give --demo or --recipe RECIPE")
    return demo_recipe(args.quick, args.base) if args.demo else load_recipe(args.recipe)


def run_entries(recipe: Recipe, run_dir: Path) -> list[ModelEntry]:
    """The finished run's models as `distill bench` measures them: the teacher, then each artifact's ONNX files."""
    models = {"teacher": run_teacher_dir(recipe, run_dir),
              **{s.name: run_dir / "students" / s.name for s in recipe.students}}
    artifacts = {name: run_dir / "artifacts" / name for name in models}
    return model_entries(models["teacher"], artifacts, models)


def run_teacher_dir(recipe: Recipe, run_dir: Path) -> Path:
    """The run's teacher: the recipe's given teacher, or the one the run fine-tuned."""
    if recipe.teacher.path:
        return Path(recipe.resolve(recipe.teacher.path, "teacher.path", hub=False))
    return run_dir / "teacher"
