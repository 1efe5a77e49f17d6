import json

import numpy as np

from benchmarks.timing_isolation import main, paired_ratios


def test_each_bench_pass_is_compared_with_the_alone_passes_either_side():
    # the machine slows down steadily: alone 10 -> 12 -> 14 ms; bench passes at 11 and 13 ms agree exactly
    alone = np.array([[10.0, 12.0, 14.0], [2.0, 2.0, 2.0]])
    bench = np.array([[11.0, 13.0], [2.2, 2.4]])
    ratios = paired_ratios(alone, bench)
    assert np.allclose(ratios, [0.0, 0.15])


def test_timing_isolation_times_every_onnx_model_three_ways(trained_run, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    run_dir = trained_run / "out"
    assert main([str(run_dir), "--recipe", str(trained_run / "recipe.yaml"), "--repeats", "3", "--passes", "1"]) == 0
    summary = json.loads((run_dir / "timing-isolation" / "summary.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    onnx = {f"{m['name']}/{m['format']}" for m in report["models"] if m["format"] != "torch-fp32"}
    assert set(summary["models"]) == onnx
    for row in summary["models"].values():
        assert row["bench_p50_ms"] > 0 and row["alone_p50_ms"] > 0 and row["shared_p50_ms"] > 0
        assert len(row["alone_passes_ms"]) == 2 and len(row["bench_passes_ms"]) == 1
        before, after = row["alone_passes_ms"]
        assert abs(row["bench_vs_alone"] - (row["bench_p50_ms"] / ((before + after) / 2) - 1)) < 1e-9
    assert "max_abs_bench_vs_alone" in capsys.readouterr().out
