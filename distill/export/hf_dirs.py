"""Per-task directories the Hugging Face ecosystem loads as they are: `optimum.onnxruntime`'s
ORTModelForSequenceClassification / ORTModelForTokenClassification `.from_pretrained(dir)`, and through them a
transformers `pipeline(...)`.

Each holds `model.onnx` (the artifact's graph cut down to one task, its logits renamed `logits`), a config.json
(the encoder's, with the task's architecture, labels and problem type) and the tokenizer files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from distill.core.fileio import atomic_write_json, sha256_file
from distill.core.manifest import HF_DIR
from distill.core.tokenizer import TOKENIZER_FILES
from distill.runtime import output_name

HF_OUTPUT = "logits"
ARCHITECTURE_SUFFIX = {"sequence_classification": "ForSequenceClassification",
                       "multi_label_classification": "ForSequenceClassification",
                       "regression": "ForSequenceClassification",
                       "token_classification": "ForTokenClassification"}
PROBLEM_TYPES = {"sequence_classification": "single_label_classification",
                 "multi_label_classification": "multi_label_classification", "regression": "regression"}


def write_hf_dirs(artifact: Path, model_dir: Path, graphs: Path | dict[str, Path],
                  tasks: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """`artifact`/hf/TASK/ for every task, from `graphs` (one graph with every task's logits, or one per task);
    returns {task: {file: sha256}} for the manifest."""
    encoder_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    written: dict[str, dict[str, str]] = {}
    for task in tasks:
        name = task["name"]
        directory = artifact / HF_DIR / name
        directory.mkdir(parents=True, exist_ok=True)
        source = graphs[name] if isinstance(graphs, dict) else graphs
        single_task_graph(source, output_name(name), directory / "model.onnx")
        atomic_write_json(directory / "config.json", task_config(encoder_config, task))
        for file in TOKENIZER_FILES:
            if (model_dir / file).is_file():
                shutil.copy2(model_dir / file, directory / file)
        written[name] = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}
    return written


def task_config(encoder_config: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The encoder's config.json as one task's classification model: architecture, labels, problem type."""
    family = encoder_config.get("architectures", [""])[0].removesuffix("Model") or _family(encoder_config)
    labels = list(task.get("labels") or [])
    config = {key: value for key, value in encoder_config.items() if key not in ("id2label", "label2id")}
    config["architectures"] = [family + ARCHITECTURE_SUFFIX[task["type"]]]
    config["num_labels"] = max(len(labels), 1)
    config["id2label"] = {str(i): label for i, label in enumerate(labels)} or {"0": "value"}
    config["label2id"] = {label: i for i, label in enumerate(labels)} or {"value": 0}
    if task["type"] in PROBLEM_TYPES:
        config["problem_type"] = PROBLEM_TYPES[task["type"]]
    return config


def _family(encoder_config: dict[str, Any]) -> str:
    from transformers import CONFIG_MAPPING

    return type(CONFIG_MAPPING[encoder_config["model_type"]]()).__name__.removesuffix("Config")


def single_task_graph(source: Path, output: str, target: Path) -> None:
    """`source` with only `output` kept, renamed `logits`, and the nodes and weights no longer needed removed."""
    import onnx

    model = onnx.load(str(source))
    graph = model.graph
    kept_output = onnx.ValueInfoProto()
    kept_output.CopyFrom(next(o for o in graph.output if o.name == output))
    needed, nodes = {output}, []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    nodes.reverse()
    for node in nodes:
        node.output[:] = [HF_OUTPUT if name == output else name for name in node.output]
        node.input[:] = [HF_OUTPUT if name == output else name for name in node.input]
    kept_output.name = HF_OUTPUT
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(kept_output)
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_info = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    onnx.save(model, str(target))
