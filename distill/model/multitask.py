"""A multi-task model: one shared encoder (any `AutoModel`) plus a linear head per task.

Saved as a plain Hugging Face model directory (the encoder) with `heads.safetensors` and `tasks.json`
beside it, so the encoder loads with `transformers.AutoModel` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, PreTrainedModel

from distill.core.errors import DistillInputError
from distill.core.fileio import atomic_save_safetensors, atomic_write_json, read_json
from distill.data.tasks import TaskInfo

HEADS_FILE = "heads.safetensors"
TASKS_FILE = "tasks.json"


@dataclass
class ModelOutputs:
    """What losses see of any model (the adaptor): logits per task, hidden states, and the token mask."""

    logits: dict[str, torch.Tensor]
    hidden_states: tuple[torch.Tensor, ...] | None
    attention_mask: torch.Tensor


class MultiTaskModel(nn.Module):
    """Shared encoder + one head per task (first token for sequence-level tasks, every token for token tasks).

    A head has one output per label (sigmoid ones for multi-label tasks), or a single one for regression."""

    def __init__(self, encoder: PreTrainedModel, tasks: list[TaskInfo], dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.tasks = {t.name: t for t in tasks}
        self.dropout = nn.Dropout(dropout)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({t.name: nn.Linear(hidden, t.num_outputs) for t in tasks})

    @property
    def num_layers(self) -> int:
        return int(self.encoder.config.num_hidden_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, task: str | None = None,
                output_hidden_states: bool = False) -> ModelOutputs:
        """Logits for one task (or all when `task` is None), and hidden states on request."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=output_hidden_states, return_dict=True)
        sequence = self.dropout(out.last_hidden_state)
        names = [task] if task else list(self.heads)
        logits = {}
        for name in names:
            features = sequence if self.tasks[name].token_level else sequence[:, 0]
            logits[name] = self.heads[name](features).float()  # fp32 for the losses under bf16 autocast
        hidden = tuple(h.float() for h in out.hidden_states) if output_hidden_states else None
        return ModelOutputs(logits, hidden, attention_mask)

    def save(self, directory: Path, tokenizer=None) -> None:
        """Write the encoder (save_pretrained), the heads (safetensors), tasks.json and the tokenizer."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory, safe_serialization=True)
        heads = {k: v.detach().cpu() for k, v in self.heads.state_dict().items()}
        atomic_save_safetensors(directory / HEADS_FILE, heads)
        atomic_write_json(directory / TASKS_FILE, {"tasks": [t.to_json() for t in self.tasks.values()]})
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    @classmethod
    def load(cls, directory: Path, trust_remote_code: bool = False) -> MultiTaskModel:
        """Load a model saved by `save` (the encoder through `AutoModel.from_pretrained`)."""
        directory = Path(directory)
        for required in (TASKS_FILE, HEADS_FILE, "config.json"):
            if not (directory / required).is_file():
                raise DistillInputError(f"{directory}: not a distill model directory (no {required})")
        tasks = load_task_infos(directory)
        encoder = AutoModel.from_pretrained(directory, trust_remote_code=trust_remote_code)
        model = cls(encoder, tasks)
        model.heads.load_state_dict(load_file(directory / HEADS_FILE))
        return model.eval()


def load_task_infos(directory: Path) -> list[TaskInfo]:
    """Task definitions from a model's tasks.json."""
    return [TaskInfo(**t) for t in read_json(Path(directory) / TASKS_FILE)["tasks"]]
