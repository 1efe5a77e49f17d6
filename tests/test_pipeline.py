"""The whole pipeline on a tiny model: run.json, report.json, caching, and the CLI's exit codes."""

import json
import subprocess
import sys

import pytest

from distill import load_recipe, run_recipe
from distill.cli import main
from distill.fileio import read_json

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
                     ("baseline", "baseline", "onnx-int8"), ("s2", "student", "onnx-fp32"),
                     ("s2", "student", "onnx-int8")}
    for model in report["models"]:
        assert REPORT_MODEL_KEYS <= set(model)
        assert set(model["latency_ms"]) >= {"batch", "seq_len", "p50", "p90", "p99"}
        assert model["latency_ms"]["batch"] == 1 and model["latency_ms"]["seq_len"] == 16
        assert 0 < model["latency_ms"]["p50"] <= model["latency_ms"]["p99"]
        assert set(model["scores"]) == {"sentiment", "ner"}
        assert model["mean_score"] == pytest.approx(sum(model["scores"].values()) / 2)
    teacher = next(m for m in report["models"] if m["format"] == "torch-fp32")
    assert teacher["retention"] == 1.0
    assert teacher["scores"]["sentiment"] > 0.8, "the tiny teacher learns the toy sentiment task"
    student_int8 = next(m for m in report["models"] if m["name"] == "s2" and m["format"] == "onnx-int8")
    assert student_int8["params"] < teacher["params"]
    assert (out / "report.md").read_text().count("| s2 |") == 2
    assert (out / "pareto.png").stat().st_size > 1000


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
    assert [(s["name"], s["status"]) for s in run["stages"]] == [
        ("teacher", "cached"), ("cache", "cached"), ("train:s2", "ran")]
    assert read_json(out / "students" / "s2" / "student.json") == {"teacher_layers": [0, 3]}


def test_manifest_records_parity_and_int8_delta(trained_run):
    manifest = read_json(trained_run / "out" / "artifacts" / "s2" / "manifest.json")
    checks = manifest["checks"]
    assert checks["fp32_max_abs_diff"] <= 1e-4
    assert set(checks["int8_metric_delta"]) == {"sentiment", "ner"}
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx"}
    assert manifest["versions"]["onnxruntime"]
    for name in ("tokenizer.json", "tasks.json", "model.onnx", "model.int8.onnx"):
        assert (trained_run / "out" / "artifacts" / "s2" / name).is_file()


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
    assert main(["cache", str(recipe_file()), "--out", str(tmp_path / "o")]) == 0
    run = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in run["stages"]] == ["teacher", "cache"]
    assert (tmp_path / "o" / "cache.json").is_file()
    assert not (tmp_path / "o" / "students").exists()
