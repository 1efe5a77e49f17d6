"""Which teacher layer each student layer learns from, and which teacher layers a recipe's losses need.

Layers are numbered like hidden states: 0 is the embedding output, 1 the first transformer layer, and the
last layer has the model's layer count. Layer losses (hidden, attention, relations) use layers 1 and up;
the embedding loss is hidden state 0.
"""

from __future__ import annotations

from distill.core.errors import DistillInputError
from distill.model.layer_numbers import absolute_layer
from distill.recipe import DistillationSpec, StudentSpec
from students.layers import pick_layers

LayerMapSetting = str | dict[int, int]


def uniform_layers(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher hidden layer round(j · T / k) for each student hidden layer j = 1..k."""
    return [round(j * teacher_layers / student_layers) for j in range(1, student_layers + 1)]


def layer_pairs(setting: LayerMapSetting, student_layers: int, teacher_layers: int,
                copied_from: list[int] | None = None) -> list[tuple[int, int]]:
    """(student hidden layer, teacher hidden layer) pairs for the layer losses.

    `last`: the last layers; `all`: every student layer and the teacher layer it was copied from
    (`copied_from`, 0-based teacher layer indices), or the uniform map when it was not copied; a mapping:
    as given, negative numbers counting from the end (-1 is the last layer)."""
    if setting == "last":
        return [(student_layers, teacher_layers)]
    if setting == "all":
        teacher = [i + 1 for i in copied_from] if copied_from else uniform_layers(student_layers, teacher_layers)
        return list(zip(range(1, student_layers + 1), teacher, strict=True))
    if not isinstance(setting, dict):
        raise DistillInputError(f"distillation.layer_map: {setting!r} is not last, all or a mapping")
    if not setting:
        raise DistillInputError("distillation.layer_map: map at least one student layer to a teacher layer")
    pairs = sorted((_layer(s, student_layers, "student"), _layer(t, teacher_layers, "teacher"))
                   for s, t in setting.items())
    students = [s for s, _ in pairs]
    if len(set(students)) != len(students):
        raise DistillInputError(f"distillation.layer_map: {setting} maps a student layer twice")
    return pairs


def _layer(number: int, count: int, side: str) -> int:
    layer = absolute_layer(number, count)
    if not 1 <= layer <= count:
        raise DistillInputError(f"distillation.layer_map: {side} layer {number} is outside 1..{count} (or -{count}..-1;"
                                " the embeddings are the `embedding` loss)")
    return layer


def needed_teacher_layers(config: DistillationSpec, students: list[StudentSpec],
                          teacher_layers: int) -> tuple[list[int], list[int]]:
    """The teacher hidden layers and query/key/value layers every student's losses need, over all stages."""
    hidden: set[int] = set()
    qkv: set[int] = set()
    for spec in students:
        if spec.init_from is None:
            keep = pick_layers(spec.layers, teacher_layers, spec.layer_strategy)
            mapped = [t for _, t in layer_pairs(config.layer_map, len(keep), teacher_layers, keep)]
        else:  # layers of another encoder: the uniform map
            count = len(spec.layers) if isinstance(spec.layers, list) else spec.layers
            mapped = [t for _, t in layer_pairs(config.layer_map, count, teacher_layers)]
        for stage in config.stage_plan():
            if stage.losses.needs_hidden:
                hidden.update(mapped)
            if stage.losses.embedding > 0:
                hidden.add(0)
            if stage.losses.needs_qkv:
                qkv.update(mapped)
    return sorted(hidden), sorted(qkv)
