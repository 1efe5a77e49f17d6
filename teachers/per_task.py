"""Per-task teachers: one fine-tuned Hugging Face classification checkpoint per task instead of one multi-task teacher.

Each checkpoint runs on its own task only and fills that task's part of the one multi-task cache. They must
share one tokenizer and one shape (layers, width, heads), and each one's labels must be the task's labels
(in any order: its logits are reordered to the task's). Students start from the first task's checkpoint:
its encoder plus a head per task, copied from each checkpoint's classifier where the shapes fit
(`assemble_init_model`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

from distill.core.errors import DistillInputError
from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import TaskData, TaskInfo
from distill.model.multitask import MultiTaskModel

log = logging.getLogger(__name__)
AUTO_CLASSES = {"sequence_classification": AutoModelForSequenceClassification,
                "token_classification": AutoModelForTokenClassification}
ARCHITECTURE_SUFFIX = {"sequence_classification": "ForSequenceClassification",
                       "token_classification": "ForTokenClassification"}
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads")


def resolve_checkpoint(name: str) -> Path:
    """A local directory for a checkpoint path or hub id (hub ids are fetched: JSON, text and safetensors only)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors"]))
    except Exception as exc:
        raise DistillInputError(f"teacher.per_task: {name!r} is neither a directory nor a reachable hub model: "
                                f"{exc}".replace("\n", " ")) from exc


def label_order(config: AutoConfig, info: TaskInfo, where: Path) -> list[int]:
    """For each of the task's labels, the checkpoint's logit column (matched by name, then ignoring case)."""
    names = [str(config.id2label[i]) for i in range(len(config.id2label))]
    for fold in (str, str.lower):
        column = {fold(name): i for i, name in enumerate(names)}
        if len(column) == len(names) and sorted(column) == sorted(fold(label) for label in info.labels):
            return [column[fold(label)] for label in info.labels]
    raise DistillInputError(
        f"teacher.per_task.{info.name}: {where} predicts labels {names} (config.id2label) but the task's labels "
        f"are {info.labels}; give its config.json an id2label with the data's label names"
    )


def check_per_task(checkpoints: dict[str, Path], tasks: list[TaskData], trust_remote_code: bool = False) -> None:
    """Refuse checkpoints of the wrong kind, with other labels, another shape or another tokenizer."""
    configs = {}
    for task in tasks:
        path = checkpoints[task.info.name]
        if not any(path.glob("*.safetensors")):
            pickled = sorted(p.name for p in path.glob("*.bin")) or sorted(p.name for p in path.glob("*.pt*"))
            raise DistillInputError(
                f"teacher.per_task.{task.info.name}: {path} has no *.safetensors weights"
                + (f" ({', '.join(pickled)} is a pickle, which distill never loads: save the model again with "
                   "save_pretrained(..., safe_serialization=True))" if pickled else ""))
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise DistillInputError(f"teacher.per_task.{task.info.name}: {path}: no readable config.json "
                                    f"({exc})".replace("\n", " ")) from exc
        suffix = ARCHITECTURE_SUFFIX[task.info.type]
        if config.architectures and not any(a.endswith(suffix) for a in config.architectures):
            raise DistillInputError(f"teacher.per_task.{task.info.name}: {path} is a {config.architectures[0]}; "
                                    f"a {task.info.type} task needs a *{suffix} checkpoint")
        label_order(config, task.info, path)
        configs[task.info.name] = config
    first = tasks[0].info.name
    for name, config in configs.items():
        for key in SHAPE_KEYS:
            if getattr(config, key) != getattr(configs[first], key):
                raise DistillInputError(
                    f"teacher.per_task: {name}'s checkpoint has {key}={getattr(config, key)} but {first}'s has "
                    f"{getattr(configs[first], key)}; per-task teachers must share one shape"
                )
    _check_tokenizers(checkpoints, [t.info.name for t in tasks], trust_remote_code)


def _check_tokenizers(checkpoints: dict[str, Path], names: list[str], trust_remote_code: bool) -> None:
    def spec(name: str) -> dict:
        return json.loads(load_tokenizer(checkpoints[name], trust_remote_code).backend_tokenizer.to_str())

    first = spec(names[0])
    for name in names[1:]:
        other = spec(name)
        differ = [part for part in sorted(set(first) | set(other)) if first.get(part) != other.get(part)]
        if differ:
            raise DistillInputError(
                f"teacher.per_task: the tokenizer of {name} ({checkpoints[name]}) differs from the tokenizer of "
                f"{names[0]} ({checkpoints[names[0]]}) in {', '.join(differ)}; per-task teachers must share one "
                "tokenizer"
            )


def load_task_checkpoint(path: Path, info: TaskInfo, trust_remote_code: bool = False) -> nn.Module:
    """A per-task checkpoint in eval mode; refused when it lacks weights for its task head."""
    model, loading = AUTO_CLASSES[info.type].from_pretrained(
        path, trust_remote_code=trust_remote_code, use_safetensors=True, output_loading_info=True)
    if loading["missing_keys"]:
        raise DistillInputError(f"teacher.per_task.{info.name}: {path} has no weights for "
                                f"{', '.join(sorted(loading['missing_keys'])[:3])}: not a fine-tuned {info.type} model")
    return model.eval()


def _classifier(model: nn.Module, classes: int, hidden: int) -> nn.Linear | None:
    """The checkpoint's last Linear from `hidden` features to `classes` logits, if it has one."""
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == classes
             and m.in_features == hidden]
    return found[-1] if found else None


def assemble_init_model(checkpoints: dict[str, Path], tasks: list[TaskData], tokenizer, out_dir: Path,
                        trust_remote_code: bool = False, seed: int = 0) -> None:
    """Save the students' starting point: the first task's encoder plus one head per task.

    Heads are copied from each checkpoint's classifier (reordered to the task's labels) where one maps the
    hidden size to the labels; others start fresh. It is an initialisation, not a teacher: the cache is
    filled by each task's own checkpoint."""
    from distill.core.fileio import atomic_directory

    torch.manual_seed(seed)
    first = load_task_checkpoint(checkpoints[tasks[0].info.name], tasks[0].info, trust_remote_code)
    model = MultiTaskModel(first.base_model, [t.info for t in tasks])
    hidden = first.config.hidden_size
    for task in tasks:
        info = task.info
        checkpoint = first if info.name == tasks[0].info.name else load_task_checkpoint(
            checkpoints[info.name], info, trust_remote_code)
        source = _classifier(checkpoint, len(info.labels), hidden)
        if source is None:
            log.warning("teacher.per_task.%s: no classifier to copy; its student head starts fresh", info.name)
            continue
        order = label_order(checkpoint.config, info, checkpoints[info.name])
        with torch.no_grad():
            model.heads[info.name].weight.copy_(source.weight[order])
            if source.bias is not None:
                model.heads[info.name].bias.copy_(source.bias[order])
    with atomic_directory(out_dir) as tmp:
        model.save(tmp, tokenizer)
