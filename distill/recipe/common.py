"""What every recipe section shares: no unknown keys, and names that are safe as one directory level."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from distill.core.fileio import check_name


class Strict(BaseModel):
    """A recipe section: an unknown key is an error, and so is a number that is NaN or infinite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def safe_name(key: str) -> AfterValidator:
    """A validator that refuses a name unusable as one directory level, naming the recipe `key`."""
    return AfterValidator(partial(check_name, what=key))


TaskName = Annotated[str, safe_name("tasks.name")]
StudentName = Annotated[str, safe_name("students.name")]
StageName = Annotated[str, safe_name("distillation.stages.name")]
