"""Property tests that hunt for what nobody listed: a valid recipe, valid data files and a valid artifact,
mutated at random (wrong types, out-of-range numbers, missing and extra keys, empty / NaN / None cells,
truncated files, random bytes); every run must end with exit 0, or exit 2 and one `distill: error:` line,
never a traceback. Bounded examples and a fixed seed keep them deterministic and under two minutes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_recipe_dict, write_tiny_data
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from distill.cli import main

# no shrinking: a failure is reported as drawn (shrinking a slow CLI run can take minutes)
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                             phases=[Phase.explicit, Phase.generate],
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", "../..", "/etc/passwd", "demo:nothing", "~", "0", "-1", "1e309"]),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def ends_cleanly(args: list[Any], capsys: pytest.CaptureFixture) -> None:
    """The CLI returned 0, or 2 with one error line (an exception escaping `main` fails the test by itself)."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("distill: error:")]
    assert "Traceback" not in err
    assert code == 0 or (code == 2 and len(errors) == 1), (code, err[-2000:])


def key_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in a nested recipe (dict keys and list indices)."""
    paths = [prefix] if prefix else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in children:
        paths += key_paths(child, (*prefix, key))
    return paths


def mutate(recipe: dict, path: tuple, action: str, value: Any) -> dict:
    mutated = copy.deepcopy(recipe)
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "delete":
        if isinstance(parent, list) and len(parent) > 1:
            parent.pop(last)
        elif isinstance(parent, dict):
            del parent[last]
    elif action == "extra" and isinstance(parent, dict):
        parent[f"{last}_extra"] = value
    else:
        parent[last] = value
    return mutated


@pytest.fixture(scope="module")
def valid_recipe(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("property-recipe")
    return tiny_recipe_dict(tiny_base, write_tiny_data(root / "data", n=60)), root


@PROPERTY_SETTINGS
@given(data=st.data())
def test_mutated_recipes_end_in_exit_0_or_one_line(valid_recipe, capsys, data):
    recipe, root = valid_recipe
    path = data.draw(st.sampled_from(key_paths(recipe)), label="path")
    action = data.draw(st.sampled_from(["replace", "delete", "extra"]), label="action")
    value = data.draw(ODD_VALUES, label="value")
    file = root / "recipe.yaml"
    file.write_text(yaml.safe_dump(mutate(recipe, path, action, value), allow_unicode=True))
    ends_cleanly(["check", file], capsys)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    return text if "," not in text and "\n" not in text and '"' not in text else json.dumps(text)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_mutated_data_files_end_in_exit_0_or_one_line(valid_recipe, capsys, data):
    recipe, root = valid_recipe
    files = write_tiny_data(root / "mutated", n=60, seed=1)
    target = data.draw(st.sampled_from(["sentiment", "ner"]), label="file")
    lines = files[target].read_text(encoding="utf-8").splitlines()
    row = data.draw(st.integers(1, len(lines) - 1), label="row")
    how = data.draw(st.sampled_from(["cell", "truncate", "bytes", "drop header", "empty"]), label="how")
    value = data.draw(ODD_VALUES, label="value")
    if how == "cell" and target == "sentiment":
        text, _label = lines[row].rsplit(",", 1)
        lines[row] = data.draw(st.sampled_from([f"{text},{_csv_cell(value)}", f"{_csv_cell(value)},pos"]))
    elif how == "cell":
        record = json.loads(lines[row])
        field = data.draw(st.sampled_from(["tokens", "tags"]))
        if data.draw(st.booleans(), label="whole field"):
            record[field] = value
        elif record[field]:
            record[field][0] = value
        lines[row] = json.dumps(record)
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw)), label="cut")]
    elif how == "bytes":
        at = data.draw(st.integers(0, len(raw)), label="at")
        raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=16), label="bytes") + raw[at:]
    elif how == "drop header":
        raw = raw.split(b"\n", 1)[1]
    elif how == "empty":
        raw = b""
    files[target].write_bytes(raw)
    mutated = copy.deepcopy(recipe)
    mutated["tasks"][0]["source"]["files"] = str(files["sentiment"])
    mutated["tasks"][1]["source"]["files"] = str(files["ner"])
    file = root / "recipe-data.yaml"
    file.write_text(yaml.safe_dump(mutated))
    ends_cleanly(["check", file], capsys)


@pytest.fixture(scope="module")
def pristine_artifact(trained_run: Path) -> Path:
    return trained_run / "out" / "artifacts" / "s2"


@PROPERTY_SETTINGS
@given(data=st.data())
def test_mutated_artifacts_end_in_exit_0_or_one_line(pristine_artifact, tmp_path_factory, capsys, data):
    artifact = Path(shutil.copytree(pristine_artifact, tmp_path_factory.mktemp("artifact") / "s2"))
    names = sorted(str(p.relative_to(artifact)) for p in artifact.rglob("*") if p.is_file())
    target = artifact / data.draw(st.sampled_from(names), label="file")
    how = data.draw(st.sampled_from(["truncate", "flip", "delete", "json field"]), label="how")
    raw = target.read_bytes()
    if how == "truncate":
        target.write_bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)), label="cut")])
    elif how == "flip":
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        target.write_bytes(raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:])
    elif how == "delete":
        target.unlink()
    elif target.suffix == ".json":
        content = json.loads(raw)
        path = data.draw(st.sampled_from(key_paths(content) or [()]), label="path")
        if path:
            content = mutate(content, path, data.draw(st.sampled_from(["replace", "delete"])), data.draw(ODD_VALUES))
        target.write_text(json.dumps(content, allow_nan=True))
    verify = data.draw(st.sampled_from([[], ["--no-verify"]]), label="verify")
    precision = data.draw(st.sampled_from(["int8", "fp32", "int8-static"]), label="precision")
    texts = data.draw(st.lists(st.text(max_size=30), min_size=1, max_size=3), label="texts")
    ends_cleanly(["predict", artifact, "--precision", precision, *verify, "--", *texts], capsys)

