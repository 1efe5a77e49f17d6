"""Hostile but fair input: every mistake in a recipe, a data file, an argument or an artifact ends as one line
`distill: error: ...` and exit 2, nothing is written before the inputs pass, and tampered artifacts do not run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import tiny_recipe_dict, write_tiny_data

from distill.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    """Exit code and the `distill: error:` lines of one CLI call (a traceback fails the test on its own)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("distill: error:")]
    return code, errors


def expect_error(args: list[str], capsys: pytest.CaptureFixture, *words: str) -> str:
    code, errors = run_cli(args, capsys)
    assert code == 2 and len(errors) == 1, (code, errors)
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def refused_run(recipe: Path, capsys: pytest.CaptureFixture, *words: str) -> str:
    """`distill run` refuses the recipe in one line, before writing anything."""
    out = recipe.parent / "refused-out"
    line = expect_error(["run", recipe, "--out", out], capsys, *words)
    assert not out.exists()
    return line


def write_recipe(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def recipe_data(tiny_base: Path, tiny_data: dict[str, Path]) -> dict:
    return tiny_recipe_dict(tiny_base, tiny_data)


# --- recipes: values outside their domain, unknown keys, paths ---

@pytest.mark.parametrize("temperature", [-2, 0, {"start": 0, "end": 2}, ".nan"])
def test_a_temperature_that_is_not_positive_is_refused(tmp_path, recipe_data, capsys, temperature):
    recipe_data["distillation"]["temperature"] = float("nan") if temperature == ".nan" else temperature
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data)
    refused_run(recipe, capsys, "distillation.temperature")


@pytest.mark.parametrize("rate", [float("inf"), float("nan"), 0, -1e-4])
def test_a_learning_rate_that_is_not_finite_and_positive_is_refused(tmp_path, recipe_data, capsys, rate):
    recipe_data["distillation"]["learning_rate"] = rate
    refused_run(write_recipe(tmp_path / "r.yaml", recipe_data), capsys, "distillation.learning_rate")


def test_base_dir_is_not_a_recipe_key(tmp_path, recipe_data, capsys):
    recipe_data["base_dir"] = "/somewhere"
    refused_run(write_recipe(tmp_path / "r.yaml", recipe_data), capsys, "base_dir", "unknown key")


def test_relative_data_paths_start_at_the_recipe_never_at_the_current_directory(tmp_path, recipe_data, capsys,
                                                                                 monkeypatch):
    write_tiny_data(tmp_path / "data")  # ./data/sentiment.csv exists beside the current directory only
    monkeypatch.chdir(tmp_path)
    recipe_data["tasks"][0]["source"]["files"] = "data/sentiment.csv"
    line = refused_run(write_recipe(tmp_path / "sub" / "r.yaml", recipe_data), capsys,
                        "tasks.sentiment.source.files", str(tmp_path / "sub" / "data" / "sentiment.csv"),
                        str(tmp_path / "data" / "sentiment.csv"))
    assert "relative paths start at the recipe's directory" in line


def test_a_missing_model_path_is_an_error_not_a_hub_id(tmp_path, recipe_data, capsys):
    recipe_data["teacher"]["base_model"] = "./models/mine"
    refused_run(write_recipe(tmp_path / "r.yaml", recipe_data), capsys, "teacher.base_model", "mine")


# --- data: null tags and labels, splits too small ---

def test_a_null_token_tag_is_refused_with_its_row(tmp_path, recipe_data, capsys):
    ner = Path(recipe_data["tasks"][1]["source"]["files"])
    rows = ner.read_text().splitlines()
    row = json.loads(rows[4])
    row["tags"][0] = None
    rows[4] = json.dumps(row)
    ner.write_text("\n".join(rows) + "\n")
    refused_run(write_recipe(tmp_path / "r.yaml", recipe_data), capsys, "row 5", "tag 1", "None")


def test_an_empty_class_label_is_refused_with_its_row(tmp_path, recipe_data, capsys):
    csv = Path(recipe_data["tasks"][0]["source"]["files"])
    lines = csv.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ","
    csv.write_text("\n".join(lines) + "\n")
    refused_run(write_recipe(tmp_path / "r.yaml", recipe_data), capsys, "row 3", "label")


def test_a_data_file_that_is_not_utf8_names_its_line(tmp_path, recipe_data, capsys):
    ner = Path(recipe_data["tasks"][1]["source"]["files"])
    lines = ner.read_bytes().split(b"\n")
    lines[6] = lines[6].replace(b"[", b"[\"\xab\xf5\", ", 1)
    ner.write_bytes(b"\n".join(lines))
    refused_run(write_recipe(tmp_path / "r.yaml", recipe_data), capsys, "ner.jsonl", "line 7", "UTF-8")


def test_a_data_file_too_small_for_dev_and_test_is_refused_before_any_work(tmp_path, recipe_data, capsys):
    csv = Path(recipe_data["tasks"][0]["source"]["files"])
    csv.write_text("\n".join(csv.read_text().splitlines()[:4]) + "\n")
    out = tmp_path / "out"
    expect_error(["run", write_recipe(tmp_path / "r.yaml", recipe_data), "--out", out], capsys,
                 "tasks.sentiment", "no examples")
    assert not out.exists()


# --- arguments and models: refused in one line, before anything is written ---

def test_out_pointing_at_a_file_is_refused_and_the_file_kept(tmp_path, recipe_data, capsys):
    out = tmp_path / "out"
    out.write_text("mine")
    expect_error(["run", write_recipe(tmp_path / "r.yaml", recipe_data), "--out", out], capsys, "--out", "a file")
    assert out.read_text() == "mine"


def test_teacher_path_that_is_not_a_distill_teacher_is_refused(tmp_path, recipe_data, capsys, tiny_base):
    recipe_data["teacher"] = {"path": str(tiny_base)}
    refused_run(write_recipe(tmp_path / "r.yaml", recipe_data), capsys, "teacher.path",
                 "not a teacher saved by distill")


def test_a_student_wider_than_the_teacher_is_refused_before_any_work(tmp_path, recipe_data, capsys):
    recipe_data["students"][0]["hidden_size"] = 64  # the tiny teacher is 32 wide
    out = tmp_path / "out"
    expect_error(["run", write_recipe(tmp_path / "r.yaml", recipe_data), "--out", out], capsys,
                 "students.s2.hidden_size", "64")
    assert not out.exists()


def test_a_max_length_longer_than_the_teachers_positions_is_refused_before_any_work(tmp_path, recipe_data, capsys):
    recipe_data["max_length"] = 100  # the tiny teacher has 64 positions
    out = tmp_path / "out"
    expect_error(["run", write_recipe(tmp_path / "r.yaml", recipe_data), "--out", out], capsys,
                 "max_length", "64 positions")
    assert not out.exists()


def test_a_pickled_per_task_checkpoint_is_refused(tmp_path, recipe_data, capsys, tiny_base):
    checkpoint = tmp_path / "pickled"
    shutil.copytree(tiny_base, checkpoint)
    (checkpoint / "model.safetensors").unlink()
    (checkpoint / "pytorch_model.bin").write_bytes(b"not loaded")
    recipe_data["teacher"] = {"per_task": {"sentiment": str(checkpoint), "ner": str(checkpoint)}}
    refused_run(write_recipe(tmp_path / "r.yaml", recipe_data), capsys, "teacher.per_task",
                 "pytorch_model.bin", "safetensors")


def test_check_accepts_a_good_recipe(tmp_path, recipe_data, capsys):
    code, errors = run_cli(["check", write_recipe(tmp_path / "r.yaml", recipe_data)], capsys)
    assert code == 0 and not errors


# --- artifacts: verified before they run ---

@pytest.fixture
def artifact(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run's s2 artifact, free to tamper with."""
    return Path(shutil.copytree(trained_run / "out" / "artifacts" / "s2", tmp_path / "s2"))


def flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_changed_model_file_does_not_run(artifact, capsys):
    flip_byte(artifact / "model.int8.onnx")
    expect_error(["predict", artifact, "good film"], capsys, "model.int8.onnx", "sha256", "--no-verify")


def test_no_verify_runs_an_artifact_changed_on_purpose(artifact, capsys):
    manifest = json.loads((artifact / "manifest.json").read_text())
    (artifact / "tokenizer_config.json").write_text((artifact / "tokenizer_config.json").read_text() + "\n")
    (artifact / "tasks.json").write_text(json.dumps(json.loads((artifact / "tasks.json").read_text()), indent=4))
    assert manifest["files"]["tasks.json"]
    expect_error(["predict", artifact, "good film"], capsys, "tasks.json", "sha256")
    code, errors = run_cli(["predict", artifact, "good film", "--no-verify"], capsys)
    assert code == 0 and not errors


def test_a_truncated_model_file_is_one_line_even_unverified(artifact, capsys):
    model = artifact / "model.int8.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    expect_error(["predict", artifact, "good film"], capsys, "sha256")
    expect_error(["predict", artifact, "good film", "--no-verify"], capsys, "model.int8.onnx", "cannot load")


@pytest.mark.parametrize("change", ["drop max_length", "turbo", "files escape", "checked batch size"])
def test_a_manifest_field_missing_or_wrong_is_one_line_naming_it(artifact, capsys, change):
    manifest = json.loads((artifact / "manifest.json").read_text())
    if change == "drop max_length":
        del manifest["max_length"]
        field = "max_length"
    elif change == "turbo":
        manifest["optimization_level"] = "turbo"
        field = "optimization_level"
    elif change == "files escape":
        manifest["files"]["../../etc/passwd"] = "0" * 64
        field = "files"
    else:
        manifest["checks"]["int8"]["dynamic"]["batch_size"] = "many"
        field = "batch_size"
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    expect_error(["predict", artifact, "good film"], capsys, "manifest.json", field)


def test_task_names_from_tasks_json_cannot_leave_the_artifact(artifact, capsys):
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["graphs"] = "per_task"
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    tasks = json.loads((artifact / "tasks.json").read_text())
    tasks["tasks"][0]["name"] = "../../outside"
    (artifact / "tasks.json").write_text(json.dumps(tasks))
    expect_error(["predict", artifact, "good film", "--no-verify"], capsys, "tasks.json", "../../outside")


def test_text_that_is_not_utf8_is_one_line(artifact, capsys):
    expect_error(["predict", artifact, "caf\udce9"], capsys, "text 1", "UTF-8")


def test_export_rerun_replaces_a_changed_artifact_instead_of_reporting_it_cached(trained_run, tmp_path, capsys):
    out = Path(shutil.copytree(trained_run / "out", tmp_path / "out"))
    recipe = trained_run / "recipe.yaml"  # its data paths are absolute
    good = (out / "artifacts" / "s2" / "model.onnx").read_bytes()
    flip_byte(out / "artifacts" / "s2" / "model.onnx")
    code, _ = run_cli(["export", recipe, "--out", out], capsys)
    run = json.loads((out / "run.json").read_text())
    statuses = {s["name"]: s["status"] for s in run["stages"]}
    assert code == 0 and statuses["export:s2"] == "ran" and statuses["export:teacher"] == "cached"
    assert (out / "artifacts" / "s2" / "model.onnx").read_bytes() == good


# --- leftovers ---

def test_a_killed_export_leaves_nothing_that_a_rerun_keeps(tmp_path):
    from distill.core.fileio import atomic_directory

    target = tmp_path / "artifacts" / "s2"
    stale = tmp_path / "artifacts" / ".s2.abc123.tmp"
    stale.mkdir(parents=True)
    (stale / "model.onnx").write_bytes(b"half")
    with atomic_directory(target) as tmp:
        (tmp / "model.onnx").write_bytes(b"whole")
    assert sorted(p.name for p in target.parent.iterdir()) == ["s2"]


def test_training_leaves_no_empty_checkpoints_folder(trained_run):
    assert not (trained_run / "out" / "checkpoints").exists()


def test_an_unreadable_cache_manifest_is_rebuilt_not_stuck(tmp_path, recipe_data, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data)
    out = tmp_path / "out"
    assert run_cli(["cache", recipe, "--out", out], capsys)[0] == 0
    entry = Path(json.loads((out / "cache.json").read_text())["path"])
    (entry / "manifest.json").write_text("{not json")
    assert run_cli(["cache", recipe, "--out", out, "--force"], capsys)[0] == 0
    assert json.loads((entry / "manifest.json").read_text())["shards"] > 0
