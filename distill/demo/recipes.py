"""The built-in demo recipes: the YAML files beside this module."""

from __future__ import annotations

from pathlib import Path

from distill.recipe import Recipe, load_recipe

RECIPES_DIR = Path(__file__).parent


def demo_recipe(quick: bool = False) -> Recipe:
    """The built-in demo recipe (with the quick overrides when `quick`)."""
    overrides = [RECIPES_DIR / "demo.quick.yaml"] if quick else []
    return load_recipe(RECIPES_DIR / "demo.yaml", overrides)
