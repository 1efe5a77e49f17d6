"""The built-in demo recipes: the YAML files beside this module."""

from __future__ import annotations

from pathlib import Path

from distill.core.errors import DistillInputError
from distill.recipe import Recipe, load_recipe

RECIPES_DIR = Path(__file__).parent


def demo_recipe(quick: bool = False, base: bool = False) -> Recipe:
    """The built-in demo recipe (with the quick overrides when `quick`), or the base-size one (`base`)."""
    if base:
        if quick:
            raise DistillInputError("--quick and --base: the base-size demo has no quick variant; choose one")
        return load_recipe(RECIPES_DIR / "demo-base.yaml")
    overrides = [RECIPES_DIR / "demo.quick.yaml"] if quick else []
    return load_recipe(RECIPES_DIR / "demo.yaml", overrides)
