import json

import numpy as np
import pytest

from benchmarks.latency_estimators import ESTIMATORS, main, ratio_spread


def test_a_slow_spell_that_hits_both_models_alike_leaves_every_estimator_s_ratio_unmoved():
    rng = np.random.default_rng(0)
    spell = [1.0, 1.4, 1.0, 2.0, 1.1, 1.0]  # the machine's speed per round
    reference = [10.0 * s * (1 + 0.01 * rng.random(20)) for s in spell]
    times = {"m": [r / 2 for r in reference], "ref": reference}
    spread = ratio_spread(times, [("m", "ref")], picks=3, draws=50)
    assert set(spread) == set(ESTIMATORS)
    for ratios in spread.values():
        assert ratios["m / ref"]["median"] == pytest.approx(0.5) and ratios["m / ref"]["std"] < 1e-9


def test_each_estimator_reads_the_rounds_its_own_way():
    # two rounds of one model against a reference of ones: every estimate is the model's value itself
    times = {"m": [np.array([1.0, 2.0, 9.0]), np.array([4.0, 5.0, 6.0])], "ref": [np.ones(3), np.ones(3)]}
    spread = ratio_spread(times, [("m", "ref")], picks=2, draws=1)
    assert {name: ratios["m / ref"]["median"] for name, ratios in spread.items()} == pytest.approx({
        "pooled": 4.5, "median_of_rounds": 3.5, "fastest_round": 2.0, "p25": 2.5})


def test_latency_estimators_times_the_run_s_models_and_saves_every_round(trained_run, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    run_dir = trained_run / "out"
    assert main([str(run_dir), "--recipe", str(trained_run / "recipe.yaml"), "--rounds", "2", "--calls", "2",
                 "--picks", "1", "--draws", "3"]) == 0
    saved = json.loads((run_dir / "latency-estimators.json").read_text())
    assert set(saved["times_ms"]) == {"baseline/onnx-int8", "teacher/onnx-fp32", "s2/onnx-int8", "s2/onnx-fp32"}
    assert all(len(rounds) == 2 and len(rounds[0]) == 2 for rounds in saved["times_ms"].values())
    assert set(saved["ratios"]["pooled"]) == {"s2/onnx-int8 / baseline/onnx-int8", "s2/onnx-fp32 / teacher/onnx-fp32"}
    assert "fastest_round" in capsys.readouterr().out
    before = (run_dir / "latency-estimators.json").read_text()
    assert main([str(run_dir), "--saved", "--calls-used", "1", "--picks", "2", "--draws", "3"]) == 0
    assert (run_dir / "latency-estimators.json").read_text() == before, "--saved times nothing and saves nothing"
    assert "s2/onnx-int8 / baseline/onnx-int8" in capsys.readouterr().out
