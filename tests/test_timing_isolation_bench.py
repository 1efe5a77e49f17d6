import json

from benchmarks.timing_isolation import main


def test_timing_isolation_times_every_onnx_model_three_ways(trained_run, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    run_dir = trained_run / "out"
    assert main([str(run_dir), "--recipe", str(trained_run / "recipe.yaml"), "--repeats", "3", "--rounds", "1"]) == 0
    summary = json.loads((run_dir / "timing-isolation" / "summary.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    onnx = {f"{m['name']}/{m['format']}" for m in report["models"] if m["format"] != "torch-fp32"}
    assert set(summary["models"]) == onnx
    for row in summary["models"].values():
        assert row["bench_p50_ms"] > 0 and row["alone_p50_ms"] > 0 and row["shared_p50_ms"] > 0
        assert abs(row["bench_vs_alone"] - (row["bench_p50_ms"] / row["alone_p50_ms"] - 1)) < 1e-9
        assert row["alone_p50_ms"] == (row["alone_before_ms"] + row["alone_after_ms"]) / 2
    assert "max_abs_bench_vs_alone" in capsys.readouterr().out
