"""The students of the starter recipe: a sweep sized from the teacher's config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distill.model.encoder import config_value, find_anatomy
from distill.recipe import StudentSpec

VOCAB_STUDENT_MIN_VOCAB = 15000
VOCAB_STUDENT_SIZE = 12000


@dataclass
class StudentPlan:
    name: str
    spec: dict[str, Any]
    note: str


def _int8_size(config: Any, layers: int, ffn: int, vocab: int, embedding_bits: int = 8) -> str:
    """Rough int8 size: word embeddings at `embedding_bits`, each layer's attention and FFN weights at a byte."""
    hidden = config_value(config, "hidden")
    family = find_anatomy(config)
    ffn_matrices = 3 if family is not None and family.ffn_glu else 2
    size = vocab * hidden * embedding_bits / 8 + layers * (4 * hidden * hidden + ffn_matrices * hidden * ffn)
    return f"~{size / 1e6:.1f} MB int8" if size >= 1e5 else f"~{size / 1e3:.0f} KB int8"


def _layers(count: int) -> str:
    return f"{count} layer{'s' if count != 1 else ''}"


def plan_students(config: Any) -> list[StudentPlan]:
    """A sweep of 3-4 students sized from the teacher: half the layers (rounded up); a third with the FFN halved;
    the same with 4-bit embeddings; a quarter (at least 2) with a 12,000-piece vocabulary (large vocabularies only).
    Each passes the student-shape check against the teacher's config."""
    from students.build import check_student_shape

    layers = config_value(config, "layers")
    ffn = config_value(config, "ffn", default=0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    half, third, quarter = (layers + 1) // 2, max(1, layers // 3), min(layers, max(2, layers // 4))
    prunable = find_anatomy(config) is not None and ffn >= 2
    narrow = ffn // 2 if prunable else ffn
    small = f"l{third}-f{narrow}" if prunable else f"l{third}"
    small_spec: dict[str, Any] = {"layers": third, "ffn": narrow} if prunable else {"layers": third}
    shrink = f"FFN {ffn} -> {narrow} (by importance)" if prunable else "full width (FFN pruning needs a known family)"
    plans = [
        StudentPlan(f"l{half}", {"layers": half}, f"{half} of {_layers(layers)}, full width: the accuracy end "
                    f"({_int8_size(config, half, ffn, vocab)})"),
        StudentPlan(small, small_spec, f"{_layers(third)}, {shrink} ({_int8_size(config, third, narrow, vocab)})"),
        StudentPlan(f"{small}-e4", {**small_spec, "embedding_bits": 4},
                    f"the same with 4-bit word embeddings ({_int8_size(config, third, narrow, vocab, 4)})"),
    ]
    if vocab > VOCAB_STUDENT_MIN_VOCAB:
        plans.append(StudentPlan(f"l{quarter}-v12k", {"layers": quarter, "vocab": VOCAB_STUDENT_SIZE},
                                 f"{_layers(quarter)}, the {VOCAB_STUDENT_SIZE:,} most frequent of {vocab:,} word "
                                 f"pieces ({_int8_size(config, quarter, ffn, VOCAB_STUDENT_SIZE)})"))
    unique = list({plan.name: plan for plan in plans}.values())
    for plan in unique:
        check_student_shape(StudentSpec(name=plan.name, **plan.spec), config)
    return unique
