import json

import numpy as np
import pytest

from benchmarks.timing_isolation import main, paired_ratios


def test_each_bench_pass_is_compared_with_the_alone_passes_either_side_and_the_median_taken():
    # the machine doubles its time half way: each bench pass equals its neighbours but the last, a slow spell;
    # against the mean of every alone pass, or as a ratio of medians, the bench would look 0 % / +50 % off
    alone = np.array([[10.0, 10.0, 20.0, 20.0]])
    bench = np.array([[10.0, 15.0, 40.0]])
    assert np.allclose(paired_ratios(alone, bench), [0.0])
    with pytest.raises(ValueError, match="do not frame"):
        paired_ratios(alone[:, :3], bench)


def test_timing_isolation_times_every_onnx_model_three_ways(trained_run, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    run_dir = trained_run / "out"
    assert main([str(run_dir), "--recipe", str(trained_run / "recipe.yaml"), "--repeats", "3", "--passes", "2"]) == 0
    summary = json.loads((run_dir / "timing-isolation" / "summary.json").read_text())
    report = json.loads((run_dir / "report.json").read_text())
    onnx = {f"{m['name']}/{m['format']}" for m in report["models"] if m["format"] != "torch-fp32"}
    assert set(summary["models"]) == onnx
    for row in summary["models"].values():
        assert row["bench_p50_ms"] > 0 and row["alone_p50_ms"] > 0 and row["shared_p50_ms"] > 0
        assert len(row["alone_passes_ms"]) == 3 and len(row["bench_passes_ms"]) == 2
        alone, bench = row["alone_passes_ms"], row["bench_passes_ms"]
        paired = [bench[k] / ((alone[k] + alone[k + 1]) / 2) for k in range(2)]
        assert abs(row["bench_vs_alone"] - (float(np.median(paired)) - 1)) < 1e-9
    assert "max_abs_bench_vs_alone" in capsys.readouterr().out
