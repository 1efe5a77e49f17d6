"""The Pareto front of a report (mean score against p50 latency) and the one rule for "the best student"."""

from __future__ import annotations

from typing import Any

from distill.core.errors import DistillInputError


def model_key(model: dict[str, Any]) -> str:
    """A model's identity in a report: NAME/FORMAT."""
    return f"{model['name']}/{model['format']}"


def pareto_front(models: list[dict[str, Any]]) -> set[str]:
    """Keys of the models that no other model beats on both mean score and p50 latency."""
    points = [(m["mean_score"], m["latency_ms"]["p50"], model_key(m)) for m in models]
    return {key for score, latency, key in points
            if not any(s >= score and t <= latency and (s > score or t < latency) for s, t, _ in points)}


def best_student(models: list[dict[str, Any]], min_retention: float | None = None) -> tuple[dict[str, Any], bool]:
    """The smallest student on the Pareto front whose retention is at least `min_retention` (any, when None),
    and True; when no student on the front meets it, the student with the highest mean score (int8 first on
    ties, then the fastest), and False."""
    students = [m for m in models if m["role"] == "student"]
    if not students:
        raise DistillInputError("the report has no student")
    front = pareto_front(models)
    bound = 0.0 if min_retention is None else min_retention
    meeting = [m for m in students if model_key(m) in front and (m.get("retention") or 0.0) >= bound]
    if meeting:
        return min(meeting, key=lambda m: (m["size_bytes"], -m["mean_score"])), True
    return max(students, key=lambda m: (m["mean_score"], m["format"] == "onnx-int8", -m["latency_ms"]["p50"])), False
