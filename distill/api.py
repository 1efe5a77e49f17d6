"""The library API: what a build pipeline calls."""

from __future__ import annotations

from pathlib import Path

import benchmarks
from distill.pipeline import run_recipe
from distill.recipe import Recipe, load_recipe

RECIPES_DIR = Path(benchmarks.__file__).parent / "recipes"


def demo_recipe(quick: bool = False) -> Recipe:
    """The built-in demo recipe (with the quick overrides when `quick`)."""
    overrides = [RECIPES_DIR / "demo.quick.yaml"] if quick else []
    return load_recipe(RECIPES_DIR / "demo.yaml", overrides)


def run_demo(out_dir: str | Path, quick: bool = False, force: bool = False, resume: bool = False) -> dict:
    """Run the offline demo into `out_dir`; returns run.json's content (`resume`: see `run_recipe`)."""
    return run_recipe(demo_recipe(quick), out_dir, force=force, resume=resume)


__all__ = ["demo_recipe", "load_recipe", "run_demo", "run_recipe"]
