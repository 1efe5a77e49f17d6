"""The whole pipeline on a tiny model: run.json, report.json, caching, and the CLI's exit codes."""

import json
import subprocess
import sys

import pytest

from distill import load_recipe, run_recipe
from distill.bench.report import int8_label
from distill.cli import main
from distill.core.errors import DistillInputError
from distill.core.fileio import read_json
from distill.core.manifest import fallback_node_count

REPORT_MODEL_KEYS = {"name", "role", "format", "params", "size_bytes", "latency_ms", "throughput_per_s", "scores",
                     "mean_score", "retention"}


def test_run_writes_run_json_and_a_valid_report(trained_run):
    out = trained_run / "out"
    run = read_json(out / "run.json")
    names = [s["name"] for s in run["stages"]]
    assert names == ["teacher", "cache", "train:s2", "export:teacher", "export:s2", "bench"]
    assert all(s["status"] == "ran" for s in run["stages"])
    assert run["seconds"] == pytest.approx(sum(s["seconds"] for s in run["stages"]), abs=0.01)
    report = read_json(out / "report.json")
    assert set(report["hardware"]) >= {"cpu", "isa", "threads", "torch", "onnxruntime"}
    assert report["tasks"] == [{"name": "sentiment", "type": "sequence_classification", "metric": "accuracy"},
                               {"name": "ner", "type": "token_classification", "metric": "entity_f1"}]
    kinds = {(m["name"], m["role"], m["format"]) for m in report["models"]}
    assert kinds == {("teacher", "teacher", "torch-fp32"), ("teacher", "teacher", "onnx-fp32"),
                     ("baseline", "baseline", "onnx-int8"), ("baseline", "baseline", "onnx-int8-static"),
                     ("s2", "student", "onnx-fp32"), ("s2", "student", "onnx-int8"),
                     ("s2", "student", "onnx-int8-static")}
    for model in report["models"]:
        assert set(model) >= REPORT_MODEL_KEYS
        assert set(model["latency_ms"]) >= {"batch", "seq_len", "p50", "p90", "p99"}
        assert model["latency_ms"]["batch"] == 1 and model["latency_ms"]["seq_len"] == 16
        assert 0 < model["latency_ms"]["p50"] <= model["latency_ms"]["p99"]
        assert set(model["scores"]) == {"sentiment", "ner"}
        assert model["mean_score"] == pytest.approx(sum(model["scores"].values()) / 2)
        median = report["median_test_tokens"]
        assert [(x["batch"], x["seq_len"]) for x in model["latencies"]] == [(1, 16), (2, 16), (1, 8)] + (
            [(1, median)] if median not in (8, 16) else [])
        assert model["latency_median_length_ms"]["seq_len"] == median and model["latency_median_length_ms"]["p50"] > 0
        assert model["peak_memory_mb"] > 10 and model["flops"] > 0
        assert model["gops"] == pytest.approx(model["flops"] / model["latency_ms"]["p50"] / 1e6)
        peak = report["machine_peak"]["int8_gops" if "int8" in model["format"] else "fp32_gops"]
        assert model["peak_share"] == pytest.approx(model["gops"] / peak)
    assert 3 <= report["median_test_tokens"] <= 16
    shapes = {(s["m"], s["k"], s["n"]) for s in report["machine_peak"]["shapes"]}
    assert shapes == {(16, 32, 32), (16, 32, 64)}, "hidden × hidden and hidden × FFN of the tiny models"
    assert all(s["int8_gops"] > 0 and s["fp32_gops"] > 0 for s in report["machine_peak"]["shapes"])
    teacher = next(m for m in report["models"] if m["format"] == "torch-fp32")
    assert teacher["retention"] == 1.0
    assert teacher["scores"]["sentiment"] > 0.8, "the tiny teacher learns the toy sentiment task"
    student_int8 = next(m for m in report["models"] if m["name"] == "s2" and m["format"] == "onnx-int8")
    assert student_int8["params"] < teacher["params"]
    checks = read_json(out / "artifacts" / "s2" / "manifest.json")["checks"]["int8"]
    student_static = next(m for m in report["models"] if m["name"] == "s2" and m["format"] == "onnx-int8-static")
    assert student_int8["int8"] == {"mode": "dynamic", "activations": checks["dynamic"]["activations"],
                                    "kept_out": fallback_node_count(checks["dynamic"])}
    assert student_static["int8"] == {"mode": "static", "activations": "per_tensor",
                                      "kept_out": fallback_node_count(checks["static"])}
    assert {m["format"] for m in report["models"] if "int8" in m} == {"onnx-int8", "onnx-int8-static"}
    table = (out / "report.md").read_text()
    assert "| model | role | format | int8 |" in table
    assert f"| s2 | student | onnx-int8-static | {int8_label(student_static)} |" in table
    assert int8_label(student_static).startswith("static, per tensor")
    assert (out / "report.md").read_text().count("| s2 |") == 3 + 1  # three formats, then the students table
    png = (out / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_html_report_is_self_contained_and_parses(trained_run):
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.rows, self.images = [], 0, []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.rows += tag == "tr"
            if tag == "img":
                self.images.append(dict(attrs)["src"])

    parser = Collect()
    parser.feed((trained_run / "out" / "report.html").read_text())
    report = read_json(trained_run / "out" / "report.json")
    students = len({m["name"] for m in report["models"] if m["role"] == "student"})
    assert parser.rows == len(report["models"]) + 1 + students + 1  # the models table, then the students table
    assert len(parser.images) == 1 and parser.images[0].startswith("data:image/png;base64,")
    assert "script" not in parser.tags and "link" not in parser.tags


def test_second_run_is_all_cached(trained_run, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    run = run_recipe(load_recipe(trained_run / "recipe.yaml"), trained_run / "out")
    assert [s["status"] for s in run["stages"]] == ["cached"] * 6


def test_changed_student_reruns_only_what_depends_on_it(trained_run, tmp_path, monkeypatch):
    import shutil

    import yaml

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    out = tmp_path / "out"
    shutil.copytree(trained_run / "out", out)
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    recipe["students"][0]["layers"] = [0, 3]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = run_recipe(load_recipe(path), out, until="train")
    # the uniform layer map pairs the new layers with other teacher layers, so the cache holds other layers too
    assert [(s["name"], s["status"]) for s in run["stages"]] == [
        ("teacher", "cached"), ("cache", "ran"), ("train:s2", "ran")]
    assert read_json(out / "students" / "s2" / "student.json")["teacher_layers"] == [0, 3]


def test_manifest_records_the_export_checks(trained_run):
    manifest = read_json(trained_run / "out" / "artifacts" / "s2" / "manifest.json")
    checks = manifest["checks"]
    assert checks["fp32_max_abs_diff"] <= 1e-4
    assert checks["test_label_agreement_fp32_vs_torch"] == {"sentiment": 1.0, "ner": 1.0}
    for mode in ("dynamic", "static"):
        int8 = checks["int8"][mode]
        assert set(int8["metric_delta"]) == {"sentiment", "ner"}
        assert int8["metric_delta"]["sentiment"] == pytest.approx(
            int8["dev"]["sentiment"] - checks["dev_torch_fp32"]["sentiment"])
        assert all(0.0 <= v <= 1.0 for v in int8["test_label_agreement_vs_fp32"].values())
        assert set(int8["test_expected_agreement_vs_fp32"]) == {"sentiment", "ner"}
        assert all(0.0 <= v <= 1.0 for v in int8["test_expected_agreement_vs_fp32"].values())
    assert {n for n in manifest["files"] if n.endswith(".onnx")} == {"model.onnx", "model.int8.onnx",
                                                                      "model.int8-static.onnx"}
    assert {"tokenizer.json", "tasks.json"} <= set(manifest["files"]), "every file of the artifact is recorded"
    assert manifest["versions"]["onnxruntime"]
    assert manifest["cpu"]["preset"] in ("vnni", "avx512", "avx2", "generic")
    assert isinstance(manifest["cpu"]["reduce_range"], bool)
    assert manifest["inputs"]["model_sha256"]
    for name in ("tokenizer.json", "tasks.json", "model.onnx", "model.int8.onnx"):
        assert (trained_run / "out" / "artifacts" / "s2" / name).is_file()


def test_int8_drop_warns_then_fails(caplog):
    import logging
    from pathlib import Path

    from distill.core.errors import DistillError
    from distill.export.artifact import _check_int8_drop

    with caplog.at_level(logging.WARNING):
        _check_int8_drop(Path("m"), "static", {"a": 0.01, "b": -0.005}, None)
        assert not caplog.text
        _check_int8_drop(Path("m"), "static", {"a": 0.01, "b": -0.03}, 0.05)
        assert "static int8 loses 0.0300 dev b score" in caplog.text
    with pytest.raises(DistillError, match=r"loses 0\.0300 dev b score \(> export\.max_int8_drop 0\.02\)"):
        _check_int8_drop(Path("m"), "static", {"a": 0.01, "b": -0.03}, 0.02)


def test_export_fails_above_the_parity_tolerance(trained_run, tmp_path):
    from distill.core.errors import DistillError
    from distill.core.tokenizer import load_tokenizer
    from distill.data.tasks import encode_tasks, load_tasks
    from distill.export.artifact import export_artifact
    from distill.recipe import ExportSpec

    recipe = load_recipe(trained_run / "recipe.yaml")
    tasks = load_tasks(recipe)
    tokenizer = load_tokenizer(trained_run / "out" / "teacher")
    encode_tasks(tasks, tokenizer, recipe.max_length)
    with pytest.raises(DistillError, match="parity_tolerance"):
        export_artifact(trained_run / "out" / "students" / "s2", tmp_path / "a", tasks,
                        ExportSpec(parity_tolerance=1e-12, int8=False), recipe.max_length, tokenizer.pad_token_id)
    assert not (tmp_path / "a").exists(), "a failed export leaves no artifact behind"


def test_compare_prints_changes(trained_run, tmp_path, capsys):
    import json as _json

    report = read_json(trained_run / "out" / "report.json")
    for model in report["models"]:
        model["latency_ms"]["p50"] *= 2
    report["models"] = report["models"][1:]
    baseline = next(m for m in report["models"] if m["name"] == "baseline" and m["format"] == "onnx-int8")
    baseline["int8"] = {**baseline["int8"], "activations": "per_token_asymmetric", "kept_out": 3}
    later = tmp_path / "report.json"
    later.write_text(_json.dumps(report))
    assert main(["compare", str(trained_run / "out" / "report.json"), str(later)]) == 0
    out = capsys.readouterr().out
    assert "(+100.0%)" in out
    assert "teacher/torch-fp32: only in A" in out
    before = next(m for m in read_json(trained_run / "out" / "report.json")["models"]
                  if m["name"] == "baseline" and m["format"] == "onnx-int8")
    assert "baseline/onnx-int8: " in out and f"int8 {int8_label(before)} -> per token, asymmetric, 3 kept out" in out


def test_predict_cli_prints_json(trained_run, capsys):
    artifact = trained_run / "out" / "artifacts" / "s2"
    assert main(["predict", str(artifact), "great fun", "bob in rome", "--precision", "fp32"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and set(out[0]) == {"sentiment", "ner"}
    assert main(["predict", str(artifact), "great fun", "--task", "ner"]) == 0
    assert set(json.loads(capsys.readouterr().out)[0]) == {"ner"}
    assert main(["predict", str(artifact), "x", "--task", "nope"]) == 2
    assert main(["predict", str(trained_run / "out"), "x"]) == 2


def test_stage_force_reruns_only_that_stage(trained_run, monkeypatch, capsys):
    import shutil

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    out = trained_run / "forced"
    shutil.copytree(trained_run / "out", out)
    assert main(["bench", str(trained_run / "recipe.yaml"), "--out", str(out), "--force"]) == 0
    run = read_json(out / "run.json")
    assert [s["status"] for s in run["stages"]] == ["cached"] * 5 + ["ran"]


def test_gate_passes_and_fails(trained_run, capsys):
    report = trained_run / "out" / "report.json"
    assert main(["gate", str(report), "--min-retention", "0.0", "--max-latency-ms", "10000"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["gate", str(report), "--model", "teacher/torch-fp32", "--max-size-mb", "0.0001"]) == 1
    assert "FAIL teacher/torch-fp32: size MB" in capsys.readouterr().out
    assert main(["gate", str(report), "--model", "nobody"]) == 2


def test_cli_bad_recipe_exits_2_with_one_line(recipe_file, tmp_path):
    path = recipe_file(lambda r: r.update(epochz=1))
    done = subprocess.run([sys.executable, "-m", "distill.cli", "run", str(path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == f"distill: error: {path}: epochz: unknown key"


def test_cli_missing_path_exits_2(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.yaml: recipe file not found" in capsys.readouterr().err


def test_cli_help_lists_every_stage():
    done = subprocess.run([sys.executable, "-m", "distill.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("run", "demo", "teacher", "cache", "train", "export", "bench", "gate"):
        assert command in done.stdout


def test_cli_stage_command_stops_after_that_stage(recipe_file, tmp_path, capsys):
    assert main(["cache", str(recipe_file()), "--out", str(tmp_path / "o"), "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in run["stages"]] == ["teacher", "cache"]
    assert run["cache"]["hit"] is False and run["cache"]["shards"] == 6 and run["cache"]["bytes"] > 0
    assert run["cache"]["examples_per_s"] > 0 and len(run["cache"]["key"]) == 64
    assert (tmp_path / "o" / "cache.json").is_file()
    assert not (tmp_path / "o" / "students").exists()
    assert run["cache"]["examples"] == 400 and run["cache"]["bytes_per_1000_examples"] > 0
    assert main(["cache", str(recipe_file()), "--out", str(tmp_path / "o")]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("teacher cache: hit") and run["cache"]["key"] in summary
    assert "shards   6 for 400 examples" in summary and "per 1,000 examples" in summary


def test_given_teacher_is_used_as_is_and_checked(trained_run, tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    recipe["teacher"] = {"path": str(trained_run / "out" / "teacher")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = run_recipe(load_recipe(path), tmp_path / "out", until="cache")
    assert [(s["name"], s["status"]) for s in run["stages"]] == [("teacher", "cached"), ("cache", "cached")]
    recipe["tasks"] = recipe["tasks"][:1]
    recipe["tasks"][0]["name"] = "other"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(DistillInputError, match="no sequence_classification head for task 'other'"):
        run_recipe(load_recipe(path), tmp_path / "out2", until="cache")
