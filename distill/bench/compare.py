"""`distill compare`: what changed between two reports, model by model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.bench.report import int8_label, model_key
from distill.core.errors import DistillInputError
from distill.core.fileio import read_json

FIELDS = (("mean_score", "mean", 1.0, "{:.4f}"), ("retention", "retention", 1.0, "{:.3f}"),
          ("p50", "p50 ms", 1.0, "{:.2f}"), ("size_bytes", "size MB", 1e-6, "{:.2f}"))


def _value(model: dict[str, Any], field: str) -> float | None:
    return model["latency_ms"]["p50"] if field == "p50" else model.get(field)


def compare_reports(a_path: Path, b_path: Path) -> list[str]:
    """One line per model: each field in A, in B, and the change (B relative to A for latency and size)."""
    reports = []
    for path in (a_path, b_path):
        if not Path(path).is_file():
            raise DistillInputError(f"{path}: report not found")
        reports.append({model_key(m): m for m in read_json(path)["models"]})
    a, b = reports
    lines = [f"A = {a_path}", f"B = {b_path}"]
    for key in [k for k in a if k in b]:
        parts = []
        for field, label, scale, fmt in FIELDS:
            x, y = _value(a[key], field), _value(b[key], field)
            if x is None or y is None:
                continue
            change = f"{(y - x) * scale:+.4f}" if field in ("mean_score", "retention") else f"{(y / x - 1) * 100:+.1f}%"
            parts.append(f"{label} {fmt.format(x * scale)} -> {fmt.format(y * scale)} ({change})")
        if "int8" in a[key] and "int8" in b[key] and int8_label(a[key]) != int8_label(b[key]):
            parts.append(f"int8 {int8_label(a[key])} -> {int8_label(b[key])}")
        lines.append(f"{key}: " + "; ".join(parts))
    lines += [f"{key}: only in A" for key in a if key not in b]
    lines += [f"{key}: only in B" for key in b if key not in a]
    return lines
