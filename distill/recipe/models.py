"""The recipe's `teacher:` and `students:` sections: what is compressed, and into what."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.recipe.common import Strict, StudentName


class TeacherSpec(Strict):
    """The teacher: a base model to fine-tune, a fine-tuned multi-task teacher, or one checkpoint per task."""

    base_model: str | None = Field(default=None, description="path, hub id, or demo:all-MiniLM-L6-v2")
    path: str | None = Field(default=None, description="a fine-tuned teacher saved by distill")
    per_task: dict[str, str] | None = Field(
        default=None, description="task name -> a fine-tuned Hugging Face classification checkpoint (path or hub id)"
    )
    epochs: float = Field(default=3, gt=0)
    batch_size: int = Field(default=32, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    head_learning_rate: float | None = Field(
        default=None, gt=0, description="learning rate of the task heads (new layers, randomly initialised) while "
                                        "the encoder trains at learning_rate; unset: learning_rate. A pretrained "
                                        "encoder wants a small rate, a fresh head on few steps a larger one")
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if sum(x is not None for x in (self.base_model, self.path, self.per_task)) != 1:
            raise ValueError("give exactly one of 'base_model' (to fine-tune), 'path' (fine-tuned teacher) or "
                             "'per_task' (one fine-tuned checkpoint per task)")
        return self


class PruningSpec(Strict):
    """How heads and FFN neurons are ranked before they are removed."""

    examples: int = Field(default=256, gt=0, description="dev examples per task for the importance scores")
    schedule: Literal["one_shot", "iterative"] = Field(
        default="one_shot", description="one_shot: prune the teacher copy once before distilling; iterative: "
        "prune → distil → prune, a step at the start of each of the first `rounds` epochs, re-scoring the student")
    rounds: int = Field(default=2, ge=1, description="iterative only: pruning steps (the last reaches the target)")


class LoraSpec(Strict):
    """Train low-rank adapters (peft) instead of the encoder's weights; merged into the weights before saving."""

    r: int = Field(default=8, gt=0, description="adapter rank")
    alpha: float = Field(default=16, gt=0, description="adapter scale numerator (scale = alpha / r)")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter input")
    target_modules: list[str] | None = Field(
        default=None, description="names of the Linear modules that get adapters; default: the family's attention "
                                  "and FFN projections (BERT: query, key, value, dense)")
    base_bits: Literal[8, 4] | None = Field(
        default=None, description="hold the frozen base weights in bitsandbytes int8 or nf4 (QLoRA style)")


class StudentSpec(Strict):
    """A student: which teacher layers it keeps and how it is narrowed, pruned, quantized or adapted."""

    name: StudentName
    layers: int | list[int] = Field(description="how many teacher layers to keep, or their 0-based indices")
    layer_strategy: Literal["uniform", "top", "bottom"] = Field(
        default="uniform", description="with a layer count: uniform (spread, ending at the last), top or bottom")
    heads: int | None = Field(default=None, gt=0, description="attention heads kept per layer (by importance)")
    ffn: int | None = Field(default=None, gt=0, description="FFN neurons kept per layer (by importance)")
    hidden_size: int | None = Field(default=None, gt=0, description="a narrower hidden size than the teacher's")
    hidden_init: Literal["variance", "pca", "random"] = Field(
        default="variance", description="narrow hidden init: top-variance dimensions, PCA projection, or random")
    vocab: Literal["corpus"] | int | None = Field(
        default=None, description="keep the word pieces seen in the train split (corpus) or the N most frequent")
    vocab_dropped: Literal["nearest", "unk"] = Field(
        default="nearest", description="a dropped piece reads the kept piece nearest to it in the teacher's "
                                       "embedding space (of the same kind: word start or ##continuation), or [UNK]")
    embedding_bits: Literal[4, 8] | None = Field(
        default=None, description="train the word-embedding table as 4- or 8-bit values with one scale per row "
                                  "(straight-through); the int8 export then stores it at that width with no loss "
                                  "of its own: 4 bits halve the table against int8")
    pruning: PruningSpec = PruningSpec()
    qat_epochs: int = Field(default=0, ge=0, description="fake-quantize int8 during the last N epochs")
    qat_activations: bool = Field(default=False, description="QAT also fake-quantizes Linear inputs as the export's "
                                  "dynamic int8 will (export.int8_activations)")
    lora: LoraSpec | None = Field(default=None, description="train LoRA adapters, merged before saving")
    init_from: str | None = Field(
        default=None, min_length=1,
        description="start from this pretrained, smaller encoder (path, hub id or demo:all-MiniLM-L6-v2; its "
                    "tokenizer of the teacher's kind) instead of the teacher's layers: `layers` picks among its "
                    "layers, its word embeddings are mapped onto the teacher's vocabulary, the task heads start new")

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: int | list[int]) -> int | list[int]:
        if isinstance(value, int) and value < 1:
            raise ValueError("keep at least one layer")
        if isinstance(value, list) and (not value or len(set(value)) != len(value) or min(value) < 0):
            raise ValueError("a non-empty list of distinct, non-negative layer indices")
        return value

    @field_validator("vocab")
    @classmethod
    def _vocab(cls, value: str | int | None) -> str | int | None:
        if isinstance(value, int) and value < 8:
            raise ValueError("keep at least 8 word pieces (or 'corpus')")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> StudentSpec:
        if isinstance(self.layers, list) and "layer_strategy" in self.model_fields_set:
            raise ValueError("layer_strategy applies to a layer count, not to a list of layer indices")
        if "hidden_init" in self.model_fields_set and self.hidden_size is None:
            raise ValueError("hidden_init needs hidden_size")
        if self.lora is not None and self.qat_epochs:
            raise ValueError("qat_epochs and lora do not combine: QAT needs the full weights being trained")
        if self.lora is not None and self.prunes and self.pruning.schedule == "iterative":
            raise ValueError("lora and pruning.schedule: iterative do not combine (the adapters wrap the masked "
                             "layers); prune one_shot")
        if self.init_from is not None and (self.prunes or self.hidden_size is not None):
            raise ValueError("init_from takes the pretrained encoder's own width: heads, ffn and hidden_size cut "
                             "the teacher's layers by its importance scores; leave them out (or init_from)")
        if self.pruning.schedule == "iterative" and not self.prunes:
            raise ValueError("pruning.schedule iterative needs heads or ffn to prune")
        if self.hidden_init == "random" and self.hidden_size is not None and (self.heads or self.ffn):
            raise ValueError("a random narrow student has no importance scores to prune by; "
                             "leave heads and ffn out, or use hidden_init variance or pca")
        return self

    @property
    def prunes(self) -> bool:
        """Whether heads or FFN neurons are removed by importance."""
        return self.heads is not None or self.ffn is not None
