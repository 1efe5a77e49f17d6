import json

from benchmarks.quick_vs_full import main, ratio_rows


def _model(name: str, role: str, fmt: str, p50: float, activations: str | None = None, kept_out: int = 0) -> dict:
    model = {"name": name, "role": role, "format": fmt, "latency_ms": {"p50": p50}}
    if activations:
        model["int8"] = {"mode": "dynamic", "activations": activations, "kept_out": kept_out}
    return model


def _report(baseline: float, l2: str, l3_p50: float) -> dict:
    return {"models": [
        _model("teacher", "teacher", "onnx-fp32", 20.0),
        _model("baseline", "baseline", "onnx-int8", baseline, "per_token"),
        _model("l2", "student", "onnx-int8", 2.0, l2),
        _model("l3", "student", "onnx-int8", l3_p50, "per_token"),
        _model("l3", "student", "onnx-fp32", 8.0),
    ]}


def test_ratios_are_judged_only_where_both_runs_shipped_the_same_graph():
    rows = {row["model"]: row for row in ratio_rows(_report(10.0, "per_tensor", 5.0), _report(10.0, "per_token", 4.0))}
    assert rows["l2/onnx-int8"]["ratios"]["baseline"]["compared"] is False, "per tensor against per token"
    l3 = rows["l3/onnx-int8"]["ratios"]
    assert l3["baseline"]["compared"] and abs(l3["baseline"]["gap"] - (0.5 - 0.4)) < 1e-12
    assert abs(l3["teacher fp32"]["gap"] - (5.0 / 20 - 4.0 / 20)) < 1e-12
    assert rows["l3/onnx-fp32"]["int8"] == ["-", "-"] and rows["l3/onnx-fp32"]["ratios"]["baseline"]["compared"]


def test_a_baseline_shipped_differently_leaves_only_the_teacher_ratio_judged():
    quick = _report(10.0, "per_token", 5.0)
    quick["models"][1]["int8"]["kept_out"] = 4
    row = next(r for r in ratio_rows(quick, _report(10.0, "per_token", 5.0)) if r["model"] == "l3/onnx-int8")
    assert not row["ratios"]["baseline"]["compared"] and row["ratios"]["teacher fp32"]["compared"]


def test_exit_status_says_whether_the_compared_ratios_agree(tmp_path, capsys):
    paths = []
    for name, l3_p50 in (("quick", 5.0), ("full", 4.8)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_report(10.0, "per_tensor", l3_p50)))
    assert main([str(p) for p in paths]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["max_abs_gap"] < 0.05
    assert main([str(p) for p in paths] + ["--max-gap", "0.01"]) == 1
