"""Quieting a library's logger for a while: where distill reports a failure itself, in one line."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def logger_level(level: int, name: str | None = None) -> Iterator[None]:
    """Raise logger `name` (the root logger when None) to at least `level` inside the block."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, before))
    try:
        yield
    finally:
        logger.setLevel(before)
