"""`distill gate`: fail a build when the chosen model of a report misses an accuracy, latency or size bound."""

from __future__ import annotations

from pathlib import Path

from distill.bench.pareto import best_student
from distill.core.errors import DistillInputError
from distill.core.fileio import read_json


def check_gate(report_path: Path, model: str | None = None, min_retention: float | None = None,
               max_latency_ms: float | None = None, max_size_mb: float | None = None) -> tuple[bool, list[str]]:
    """(passed, one line per bound) for the chosen model: NAME or NAME/FORMAT, default the best student (the
    smallest on the Pareto front whose retention meets `min_retention`; see `best_student`)."""
    if not Path(report_path).is_file():
        raise DistillInputError(f"{report_path}: report not found")
    models = read_json(report_path)["models"]
    if model is None:
        chosen, _ = best_student(models, min_retention)
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
