"""The machine's peak: a second measurement can only raise it."""

from distill.bench.peak import achieved, best_peak


def _peak(int8: list[float], fp32: list[float]) -> dict:
    shapes = [{"m": 128, "k": 384, "n": n, "int8_gops": a, "fp32_gops": b}
              for n, a, b in zip((384, 1536), int8, fp32, strict=True)]
    return {"threads": 2, "int8_gops": max(int8), "fp32_gops": max(fp32), "shapes": shapes}


def test_each_shape_keeps_its_faster_measurement_and_the_peak_is_the_best_shape():
    slow_spell, quiet = _peak([400.0, 435.0], [100.0, 113.0]), _peak([800.0, 790.0], [200.0, 90.0])
    peak = best_peak(slow_spell, quiet)
    assert [(s["int8_gops"], s["fp32_gops"]) for s in peak["shapes"]] == [(800.0, 200.0), (790.0, 113.0)]
    assert (peak["int8_gops"], peak["fp32_gops"]) == (800.0, 200.0)
    assert best_peak(quiet, slow_spell) == peak
    # 1 GFLOP in 2 ms is 500 GOP/s: 62.5 % of the best int8 product, not 115 % of the slow spell's
    assert achieved(1e9, 2.0, "onnx-int8", peak)["peak_share"] == 0.625
