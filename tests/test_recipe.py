from pathlib import Path

import pytest

from distill.core.errors import DistillInputError
from distill.recipe import deep_merge, load_recipe


def test_valid_recipe_loads_with_defaults(recipe_file):
    recipe = load_recipe(recipe_file())
    assert [t.name for t in recipe.tasks] == ["sentiment", "ner"]
    assert recipe.tasks[0].metric == "accuracy"
    assert recipe.tasks[1].metric == "entity_f1"
    assert recipe.distillation.temperature == 2.0
    assert recipe.export.parity_tolerance == 1e-4


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["distillation"].update(tempreature=3), "distillation.tempreature: unknown key"),
        (lambda r: r["distillation"].update(epochs="many"), "distillation.epochs"),
        (lambda r: r["students"][0].update(layers=0), "students.0.layers"),
        (lambda r: r["tasks"][0].update(type="ranking"), "tasks.0.type"),
        (lambda r: r["tasks"][0]["source"].update(hub="glue"), "give exactly one of 'demo', 'files' or 'hub'"),
        (lambda r: r["teacher"].update(path="/x"), "give exactly one of 'base_model'"),
        (lambda r: r["students"].append({"name": "s2", "layers": 1}), "duplicate name"),
        (lambda r: r["students"][0].update(name="../evil"), "not a valid name"),
        (lambda r: r["tasks"][1].update(metric="accuracy"), "does not fit task type"),
        (lambda r: r.update(cache={"attention_layers": [0, -1]}), "cache.attention_layers"),
        (lambda r: r.update(cache={"dtype": "bfloat16"}), "cache.dtype"),
        (lambda r: r.update(cache={"top_k": 0}), "cache.top_k"),
        (lambda r: r["teacher"].update(per_task={"sentiment": "a", "ner": "b"}), "give exactly one of 'base_model'"),
        (lambda r: r["students"][0].update(layers=[0, 2], layer_strategy="top"),
         "students.0: Value error, layer_strategy applies to a layer count"),
        (lambda r: r["students"][0].update(layer_strategy="middle"), "students.0.layer_strategy"),
        (lambda r: r["students"][0].update(heads=0), "students.0.heads"),
        (lambda r: r["students"][0].update(ffn=-4), "students.0.ffn"),
        (lambda r: r["students"][0].update(hidden_init="pca"), "hidden_init needs hidden_size"),
        (lambda r: r["students"][0].update(hidden_size=16, hidden_init="random", heads=1), "a random narrow student"),
        (lambda r: r["students"][0].update(vocab=4), "students.0.vocab"),
        (lambda r: r["students"][0].update(vocab="all"), "students.0.vocab"),
        (lambda r: r["students"][0].update(qat_epochs=2), "students.s2.qat_epochs: 2 is more than the 1"),
        (lambda r: r["students"][0].update(qat_epochs=1, lora={"r": 2}), "qat_epochs and lora do not combine"),
        (lambda r: r["students"][0].update(lora={"r": 0}), "students.0.lora.r"),
        (lambda r: r["students"][0].update(lora={"base_bits": 2}), "students.0.lora.base_bits"),
        (lambda r: r["students"][0].update(lora={"rank": 2}), "students.0.lora.rank: unknown key"),
        (lambda r: r["students"][0].update(pruning={"examples": 0}), "students.0.pruning.examples"),
        (lambda r: r["students"][0].update(pruning={"schedule": "iterative"}), "iterative needs heads or ffn"),
        (lambda r: r["students"][0].update(ffn=8, pruning={"schedule": "iterative", "rounds": 3}),
         "students.s2.pruning.rounds: 3 is more than the 1"),
        (lambda r: r["bench"].update(other_seq_lens=[8, 64]), "sequence length(s) [64] exceed max_length 32"),
        (lambda r: r["bench"].update(seq_len=33), "sequence length(s) [33] exceed max_length 32"),
    ],
)
def test_bad_recipe_names_the_key(recipe_file, edit, message):
    path = recipe_file(edit)
    with pytest.raises(DistillInputError) as info:
        load_recipe(path)
    text = str(info.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


def test_long_bench_sequences_need_every_position_row(recipe_file):
    def edit(r):
        r["bench"].update(other_seq_lens=[64])
        r["export"]["positions"] = "all"

    assert load_recipe(recipe_file(edit)).bench.other_seq_lens == [64]


def test_bench_times_max_length_tokens_unless_told(recipe_file):
    assert load_recipe(recipe_file(lambda r: r["bench"].pop("seq_len"))).bench.seq_len == 32
    assert load_recipe(recipe_file()).bench.seq_len == 16


def test_missing_recipe_file_is_input_error(tmp_path: Path):
    with pytest.raises(DistillInputError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_deep_merge_merges_named_lists_by_name():
    base = {"tasks": [{"name": "a", "x": 1}, {"name": "b", "x": 2}], "teacher": {"epochs": 3, "lr": 1}}
    merged = deep_merge(base, {"tasks": [{"name": "b", "limit": 5}], "teacher": {"epochs": 1}})
    assert merged["tasks"] == [{"name": "a", "x": 1}, {"name": "b", "x": 2, "limit": 5}]
    assert merged["teacher"] == {"epochs": 1, "lr": 1}
    dropped = deep_merge(base, {"tasks": [{"name": "a", "drop": True}]})
    assert dropped["tasks"] == [{"name": "b", "x": 2}]


def test_demo_recipes_validate():
    from distill.api import demo_recipe

    full, quick = demo_recipe(), demo_recipe(quick=True)
    assert len(full.students) >= 2
    assert quick.tasks[0].limit["train"] < full.tasks[0].limit["train"]
    assert quick.distillation.epochs < full.distillation.epochs
