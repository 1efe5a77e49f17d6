"""The kinds of task distill trains and serves: one list for the recipe, the models and the runtime."""

from typing import Literal

TaskType = Literal["sequence_classification", "token_classification", "multi_label_classification", "regression"]
