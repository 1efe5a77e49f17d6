"""`distill gate`: fail a build when the chosen model of a report misses an accuracy, latency or size bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import DistillInputError
from distill.fileio import read_json


def best_student(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The student with the highest mean score (int8 preferred on ties, then the fastest)."""
    students = [m for m in models if m["role"] == "student"]
    if not students:
        raise DistillInputError("the report has no student")
    return max(students, key=lambda m: (m["mean_score"], m["format"] == "onnx-int8", -m["latency_ms"]["p50"]))


def check_gate(report_path: Path, model: str | None = None, min_retention: float | None = None,
               max_latency_ms: float | None = None, max_size_mb: float | None = None) -> tuple[bool, list[str]]:
    """(passed, one line per bound) for the chosen model: NAME or NAME/FORMAT, default the best student."""
    if not Path(report_path).is_file():
        raise DistillInputError(f"{report_path}: report not found")
    models = read_json(report_path)["models"]
    if model is None:
        chosen = best_student(models)
    else:
        name, _, fmt = model.partition("/")
        matches = [m for m in models if m["name"] == name and (not fmt or m["format"] == fmt)]
        if not matches:
            raise DistillInputError(f"--model: no model {model!r} in {report_path}")
        chosen = max(matches, key=lambda m: m["format"] == "onnx-int8")
    label = f"{chosen['name']}/{chosen['format']}"
    lines, passed = [], True
    bounds = (("retention", chosen.get("retention"), min_retention, ">="),
              ("p50 latency ms", chosen["latency_ms"]["p50"], max_latency_ms, "<="),
              ("size MB", chosen["size_bytes"] / 1e6, max_size_mb, "<="))
    for what, value, bound, op in bounds:
        if bound is None:
            continue
        ok = value is not None and (value >= bound if op == ">=" else value <= bound)
        passed &= ok
        lines.append(f"{'PASS' if ok else 'FAIL'} {label}: {what} {value if value is None else f'{value:.4f}'} "
                     f"(bound {op} {bound})")
    return passed, lines
