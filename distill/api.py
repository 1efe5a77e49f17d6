"""The library API: what a build pipeline calls."""

from __future__ import annotations

from pathlib import Path

from distill.demo.recipes import demo_recipe
from distill.pipeline import run_recipe
from distill.recipe import load_recipe


def run_demo(out_dir: str | Path, quick: bool = False, force: bool = False, resume: bool = False,
             base: bool = False) -> dict:
    """Run the offline demo (`base`: the base-size one) into `out_dir`; returns run.json's content (`resume`: see
    `run_recipe`)."""
    return run_recipe(demo_recipe(quick, base), out_dir, force=force, resume=resume)


__all__ = ["demo_recipe", "load_recipe", "run_demo", "run_recipe"]
