"""`distill sweep` and the report's student section."""

import shutil

from distill.bench.report import labelled_points, qat_comparisons, render_markdown, student_rows
from distill.cli import main


def _model(name, fmt, size, score, p50, student=None, role="student"):
    return {"name": name, "role": role, "format": fmt, "params": size, "size_bytes": size,
            "latency_ms": {"batch": 1, "seq_len": 8, "p50": p50, "p90": p50, "p99": p50, "mean": p50},
            "throughput_per_s": 1.0, "scores": {"t": score}, "mean_score": score, "retention": score,
            **({"student": student} if student else {})}


def _report():
    base = {"teacher_layers": [1, 3], "attention_heads": 8, "ffn": 768, "hidden_size": 384, "vocab_size": 8000,
            "vocab": {"coverage": {"test": 0.94}}}
    qat = {**base, "qat": {"epochs": 1}}
    models = [
        _model("teacher", "torch-fp32", 90e6, 1.0, 10, role="teacher"),
        _model("big", "onnx-int8", 17e6, 0.99, 3.7, {"teacher_layers": [1, 3, 5], "attention_heads": 12}),
        _model("big", "onnx-fp32", 68e6, 0.99, 6.0, {"teacher_layers": [1, 3, 5]}),
        _model("small", "onnx-int8", 6e6, 0.95, 2.0, base),
        _model("small", "onnx-fp32", 24e6, 0.97, 3.0, base),
        _model("small-qat", "onnx-int8", 6e6, 0.965, 2.0, qat),
        _model("small-qat", "onnx-fp32", 24e6, 0.97, 3.0, qat),
    ]
    return {"hardware": {"cpu": "x", "isa": [], "threads": 1, "torch": "t", "onnxruntime": "o"},
            "tasks": [{"name": "t", "type": "sequence_classification", "metric": "accuracy"}], "models": models,
            "pareto_front": ["small-qat/onnx-int8", "big/onnx-int8", "teacher/torch-fp32"]}


def test_student_table_is_sorted_by_size_with_structure_and_the_pareto_front():
    header, rows = student_rows(_report())
    assert [r[0] for r in rows][-1] == "big" and {r[0] for r in rows[:2]} == {"small", "small-qat"}
    assert all(r[1] == "onnx-int8" for r in rows), "each student once, as its int8 model"
    small = next(r for r in rows if r[0] == "small")
    column = dict(zip(header, small, strict=True))
    assert column["heads"] == "8" and column["FFN"] == "768" and column["vocab"] == "8000"
    assert column["coverage (test)"] == "0.940" and column["fp32 retention"] == "0.970" and column["Pareto"] == ""
    assert dict(zip(header, rows[-1], strict=True))["Pareto"] == "*"


def test_the_plot_names_each_model_once_at_its_int8_point():
    models = [*_report()["models"], _model("small", "onnx-int8-static", 6e6, 0.94, 2.2)]
    named = {m["name"]: m["format"] for m in labelled_points(models)}
    assert named == {"teacher": "torch-fp32", "big": "onnx-int8", "small": "onnx-int8", "small-qat": "onnx-int8"}


def test_qat_student_is_compared_with_its_twin_without_qat():
    lines = qat_comparisons(_report())
    assert len(lines) == 1
    assert lines[0].startswith("small-qat (QAT, last 1 epoch(s)): int8 retention 0.965, int8 − fp32 mean score "
                               "-0.0050; small (no QAT): int8 retention 0.950, int8 − fp32 mean score -0.0200")
    text = render_markdown(_report())
    assert "## Students" in text and "## Quantization-aware training" in text


def test_sweep_trains_exports_benchmarks_and_prints_the_students(trained_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"  # a copy: the session's shared run stays as the pipeline wrote it
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("data"))
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(run / "cache"))
    assert main(["sweep", str(trained_run / "recipe.yaml"), "--out", str(run / "out")]) == 0
    out = capsys.readouterr().out
    assert '"status": "cached"' in out and "## Students" in out and "| s2 | onnx-int8 | 1,3 |" in out
    assert "Best student on the Pareto front: " in out
    assert "## Students" in (run / "out" / "report.md").read_text()


def test_flops_estimate_counts_only_the_heads_a_pruned_model_keeps(tmp_path):
    import json

    from distill.bench.measure import flops_estimate

    config = {"hidden_size": 384, "num_hidden_layers": 3, "intermediate_size": 768, "num_attention_heads": 12}
    (tmp_path / "config.json").write_text(json.dumps(config))
    whole = flops_estimate(tmp_path, 128)
    config["pruned_heads"] = {str(layer): [0, 1, 2, 3] for layer in range(3)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    attention_share = (2 * 128 * 4 * 384 * 384 + 4 * 128 * 128 * 384) * 3
    assert flops_estimate(tmp_path, 128) == whole - attention_share / 3
