import json

import yaml

from benchmarks.cache_vs_online import main


def test_cache_vs_online_trains_each_student_both_ways(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    for task in recipe["tasks"]:
        task["limit"] = {"train": 32, "dev": 16, "test": 16}
    recipe["students"] = [{"name": "a", "layers": 2}, {"name": "b", "layers": 1}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "bench"
    assert main([str(trained_run / "out"), "--recipe", str(path), "--out", str(out)]) == 0
    result = json.loads((out / "cache_vs_online.json").read_text())
    assert set(result["students"]) == {"a", "b"}
    for row in result["students"].values():
        assert set(row) == {"cache", "online"}
        assert all(r["epoch_seconds"] > 0 and 0 <= r["test"] <= 1 for r in row.values())
    assert result["cache"]["hit"] is False, "the cached sweep pays for building its cache"
    assert str(out) in result["cache"]["path"]
    sweep = result["sweep_seconds"]
    assert abs(result["sweep_ratio"] - sweep["cache"] / sweep["online"]) < 1e-9
    stages = json.loads((out / "online" / "run.json").read_text())["stages"]
    assert ("cache", "skipped") in [(s["name"], s["status"]) for s in stages]
    assert "| sweep" in capsys.readouterr().out
