import json

import yaml

from benchmarks.loss_recipes import RECIPES, main


def test_loss_recipes_benchmark_trains_and_compares_four_recipes(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    for task in recipe["tasks"]:
        task["limit"] = {"train": 32, "dev": 16, "test": 16}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "bench"
    assert main([str(trained_run / "out"), "--recipe", str(path), "--epochs", "1", "--source", "online",
                 "--out", str(out)]) == 0
    result = json.loads((out / "loss_recipes.json").read_text())
    assert [r["recipe"] for r in result["recipes"]] == list(RECIPES)
    for row in result["recipes"]:
        assert 0 <= row["dev"] <= 1 and 0 <= row["test"] <= 1 and row["train_seconds"] > 0
        assert abs(row["retention"] - row["test"] / result["teacher"]["test"]) < 1e-9
        assert row["teacher_layers"] == [1, 3]
    two_stage = result["recipes"][-1]["distillation"]["stages"]
    assert [(s["name"], s["epochs"]) for s in two_stage] == [("intermediate", 0.5), ("prediction", 0.5)]
    log = (out / "two_stage" / "logs" / "student-two_stage.intermediate.jsonl").read_text()
    assert '"stage": "intermediate"' in log and '"relations"' in log
    table = (out / "loss_recipes.md").read_text()
    assert table.count("\n") == 2 + 1 + len(RECIPES) and table in capsys.readouterr().out
