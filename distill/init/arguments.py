"""The `[TASK=]VALUE` arguments of `distill init`: which task a flag's value is for."""

from __future__ import annotations

import re

from distill.core.errors import DistillInputError


def split_assignment(value: str) -> tuple[str | None, str]:
    """`TASK=VALUE` as (TASK, VALUE); a value without a task name before '=' as (None, value)."""
    name, sep, rest = value.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) and rest:
        return name, rest
    return None, value


def per_task_values(values: list[str], tasks: list[str], flag: str) -> dict[str, str]:
    """`[TASK=]VALUE` flags as {task: value}: a value without a task applies to every task."""
    chosen: dict[str, str] = {}
    for value in values:
        name, rest = split_assignment(value)
        if name is not None and name not in tasks:
            raise DistillInputError(f"{flag}: no task {name!r} (tasks: {', '.join(tasks)})")
        chosen.update({name: rest} if name else dict.fromkeys(tasks, rest))
    return chosen
