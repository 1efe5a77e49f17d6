"""`distill bench --predictor` and the int8-defaults benchmark on a finished tiny run."""

import json

from benchmarks.int8_defaults import main as int8_defaults
from distill.cli import main as cli


def test_bench_predictor_times_every_artifact_from_raw_text(trained_run, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    run_dir = trained_run / "out"
    assert cli(["bench", str(trained_run / "recipe.yaml"), "--out", str(run_dir), "--predictor"]) == 0
    result = json.loads((run_dir / "predictor.json").read_text())
    recipe_names = {"teacher", *(d.name for d in (run_dir / "artifacts").iterdir())}
    assert {row["name"] for row in result["models"]} == recipe_names
    assert {row["precision"] for row in result["models"]} == {"int8", "fp32"}
    assert result["texts"] > 0 and result["large_batch"] == 32
    for row in result["models"]:
        assert 0 < row["batch_1"]["p50_ms"] <= row["batch_1"]["p90_ms"]
        assert row["batch_32"]["texts_per_s"] > 0
    out = capsys.readouterr().out
    assert "Predictor end to end" in out and "| teacher | int8 |" in out


def test_int8_defaults_reports_each_artifacts_agreement(trained_run, capsys):
    run_dir = trained_run / "out"
    code = int8_defaults([str(run_dir), "--recipe", str(trained_run / "recipe.yaml"), "--min", "0"])
    assert code == 0
    summary = json.loads((run_dir / "int8-defaults.json").read_text())
    assert summary["passed"] and {row["artifact"] for row in summary["rows"]} >= {"teacher"}
    assert all(0 <= share <= 1 for row in summary["rows"] for share in row["test_label_agreement"].values())
    assert int8_defaults([str(run_dir), "--recipe", str(trained_run / "recipe.yaml"), "--min", "1.01"]) == 1
    assert "export settings changed from the defaults" in capsys.readouterr().out
