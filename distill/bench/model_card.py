"""Model cards: a README.md in the Hugging Face model-card format in every artifact directory, written from the
artifact's manifest and the bench report (the numbers are the report's, so the card and the report agree)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distill.bench.report import kept_layers, reference_teacher
from distill.core.fileio import atomic_write_text
from distill.core.int8_presets import ACTIVATION_WORDS
from distill.core.manifest import activation_scales, fallback_node_count, read_manifest, read_tasks
from distill.demo.assets import DEMO_HUB_IDS
from distill.runtime import MODEL_FILES, model_files

CARD_FILE = "README.md"
PIPELINE_TAGS = {"sequence_classification": "text-classification", "token_classification": "token-classification",
                 "multi_label_classification": "text-classification", "regression": "text-classification"}
# the format whose scores the card's model-index reports: what `Predictor` runs by default
CARD_FORMAT = "onnx-int8"
FORMAT_PREFERENCE = (CARD_FORMAT, "onnx-int8-static", "onnx-fp32")


def report_name(artifact: str) -> str:
    """The report's name for an artifact's int8 models: the teacher's int8 files are the `baseline`."""
    return "baseline" if artifact == "teacher" else artifact


def artifact_models(report: dict[str, Any], artifact: str) -> list[dict[str, Any]]:
    """The report entries of an artifact's ONNX files (the teacher's fp32 one and its int8 `baseline` ones)."""
    names = {report_name(artifact), artifact}
    return [m for m in report["models"] if m["name"] in names and m["format"].startswith("onnx")]


def card_model(report: dict[str, Any], artifact: str) -> dict[str, Any] | None:
    """The report entry the card's model-index describes: the artifact's int8 model, else its fp32 one."""
    by_format = {m["format"]: m for m in artifact_models(report, artifact)}
    return next((by_format[f] for f in FORMAT_PREFERENCE if f in by_format), None)


def write_model_cards(report: dict[str, Any], artifacts: dict[str, Path], base_model: str | None,
                      teacher: dict[str, Any]) -> None:
    """A README.md model card in each artifact directory (see `model_card`)."""
    for name, directory in artifacts.items():
        if card_model(report, name) is not None:
            atomic_write_text(Path(directory) / CARD_FILE, model_card(report, name, Path(directory), base_model,
                                                                      teacher))


def model_card(report: dict[str, Any], artifact: str, directory: Path, base_model: str | None,
               teacher: dict[str, Any]) -> str:
    """The card of one artifact: YAML front matter (library, pipeline tag, tags, base model, model-index with the
    test scores of its int8 model) and a body with its structure, size, latency, scores, int8 checks and usage.
    `teacher`: the teacher's sizes (layers, hidden, heads, ffn, vocab) for the structure table."""
    manifest = read_manifest(directory)
    tasks = read_tasks(directory)
    chosen = card_model(report, artifact)
    assert chosen is not None, f"no ONNX model of {artifact} in the report"
    front = _front_matter(report, artifact, chosen, tasks, base_model)
    body = [f"# {artifact}", "", _summary(artifact, chosen, base_model), ""]
    body += _structure(report, artifact, teacher)
    body += _formats(report, artifact, directory)
    body += _scores(report, chosen)
    body += _int8_checks(manifest.checks, manifest.fusion)
    body += _usage(directory, tasks)
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)


def _front_matter(report: dict[str, Any], artifact: str, chosen: dict[str, Any], tasks: list[dict[str, Any]],
                  base_model: str | None) -> dict[str, Any]:
    kinds = [PIPELINE_TAGS[t["type"]] for t in tasks]
    front: dict[str, Any] = {
        "library_name": "onnx",
        "pipeline_tag": kinds[0],
        "tags": ["distill", "onnx", "int8", "knowledge-distillation" if artifact != "teacher" else "fine-tuned",
                 *sorted(set(kinds))],
    }
    if base_model:
        front["base_model"] = base_model
    metric_of = {t["name"]: t["metric"] for t in report["tasks"]}
    front["model-index"] = [{"name": artifact, "results": [
        {"task": {"type": PIPELINE_TAGS[t["type"]], "name": t["name"]},
         "dataset": {"name": t["name"], "type": t["name"], "split": "test"},
         "metrics": [{"type": metric_of[t["name"]], "value": round(float(chosen["scores"][t["name"]]), 4),
                      "name": f"test {metric_of[t['name']]} ({chosen['format']})"}]}
        for t in tasks if t["name"] in chosen["scores"]]}]
    return front


def _summary(artifact: str, chosen: dict[str, Any], base_model: str | None) -> str:
    source = f" ({base_model})" if base_model else ""
    if artifact == "teacher":
        return (f"The multi-task teacher{source}, exported to ONNX by distill: fp32, and int8 as the `baseline` "
                "every student is compared with.")
    retention = chosen.get("retention")
    kept = f", keeping {retention:.3f} of its mean test score" if retention is not None else ""
    return f"A student distilled by distill from a multi-task teacher{source}{kept} ({chosen['format']})."


def _structure(report: dict[str, Any], artifact: str, teacher: dict[str, Any]) -> list[str]:
    built = next((m.get("student") for m in report["models"] if m["name"] == artifact and m.get("student")), None)
    teacher_params = (reference_teacher(report["models"]) or {}).get("params")
    init = (built or {}).get("init_from")
    layers = kept_layers(built or {})
    rows = [("layers", teacher.get("layers"), len(layers) if built else None),
            ("hidden size", teacher.get("hidden"), built.get("hidden_size") if built else None),
            ("attention heads", teacher.get("heads"), built.get("attention_heads") if built else None),
            ("FFN width", teacher.get("ffn"), built.get("ffn") if built else None),
            ("vocabulary", teacher.get("vocab"), built.get("vocab_size") if built else None),
            ("parameters (M)", _millions(teacher_params), _millions(built.get("params")) if built else None)]
    lines = ["## Structure", ""]
    if built is None:
        lines += ["| | teacher |", "|---|---|", *[f"| {k} | {_cell(t)} |" for k, t, _ in rows]]
    else:
        origin = (f"Initialised from {DEMO_HUB_IDS.get(init['model'], init['model'])} (not the teacher), its layers"
                  if init else "Teacher layers kept:")
        lines += [f"{origin} {', '.join(str(i) for i in layers)}"
                  + (f"; word embeddings trained at {built['embedding_bits']} bits"
                     if built.get("embedding_bits") else "")
                  + (f"; QAT in the last {built['qat']['epochs']} epoch(s)" if built.get("qat") else "") + ".", "",
                  "| | teacher | this student |", "|---|---|---|",
                  *[f"| {k} | {_cell(t)} | {_cell(s)} |" for k, t, s in rows]]
    return [*lines, ""]


def _formats(report: dict[str, Any], artifact: str, directory: Path) -> list[str]:
    hardware = report.get("hardware", {})
    median = report.get("median_test_tokens", "the median")
    peak = report.get("machine_peak") or {}
    models = artifact_models(report, artifact)
    lines = ["## Files, size and latency", "",
             f"Measured by `distill bench` on {hardware.get('cpu', 'an unknown CPU')} "
             f"({hardware.get('threads', '?')} threads, onnxruntime {hardware.get('onnxruntime', '?')}); "
             f"latency is the median of single requests, at the bench's length and at the test texts' median "
             f"length; GOP/s is the model's operations at its batch-1 p50"
             + (f", against the {peak['int8_gops']:.0f} int8 / {peak['fp32_gops']:.0f} fp32 GOP/s the machine "
                "reached in one matrix product" if peak else "") + ".", "",
             f"| format | file | size (MB) | p50 ms | batch × tokens | p50 ms at {median} tokens | GOP/s (% of peak) "
             "| mean test score | retention |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in sorted(models, key=lambda x: x["size_bytes"]):
        files = model_files(directory, m["format"].removeprefix("onnx-"))
        file = ", ".join(f"`{p.name}`" for p in (files.values() if isinstance(files, dict) else [files] if files
                                                  else []))
        lat, at_median = m["latency_ms"], m.get("latency_median_length_ms") or {}
        gops = f"{m['gops']:.0f} ({100 * m['peak_share']:.1f} %)" if "gops" in m else "-"
        lines.append(f"| {m['format']} | {file} | {m['size_bytes'] / 1e6:.1f} | {lat['p50']:.2f} | "
                     f"{lat['batch']} × {lat['seq_len']} | {_cell(at_median.get('p50'), 2)} | {gops} | "
                     f"{m['mean_score']:.4f} | {_cell(m.get('retention'), 3)} |")
    return [*lines, ""]


def _scores(report: dict[str, Any], chosen: dict[str, Any]) -> list[str]:
    teacher = reference_teacher(report["models"])
    lines = [f"## Test scores ({chosen['format']})", "", "| task | metric | teacher | this model | retention |",
             "|---|---|---|---|---|"]
    for task in report["tasks"]:
        name = task["name"]
        mine, theirs = chosen["scores"].get(name), (teacher or {}).get("scores", {}).get(name)
        retention = mine / theirs if mine is not None and theirs else None
        lines.append(f"| {name} | {task['metric']} | {_cell(theirs, 4)} | {_cell(mine, 4)} | {_cell(retention, 3)} |")
    return [*lines, ""]


def _int8_checks(checks: dict[str, Any], fusion: dict[str, Any]) -> list[str]:
    lines = ["## Export checks", "",
             f"ONNX fp32 against PyTorch: largest logit difference {checks.get('fp32_max_abs_diff', float('nan')):.1e} "
             f"(tolerance {checks.get('parity_tolerance', float('nan')):.0e})."]
    for graph, done in fusion.items():
        what = ", ".join(f"{op} {count}" for op, count in done.get("ops", {}).items())
        lines.append(f"- {graph}: fused by onnxruntime's transformer optimizer ({what})" if done.get("fused")
                     else f"- {graph}: not fused ({done.get('note', '')})")
    for mode, check in (checks.get("int8") or {}).items():
        agreement = check.get("test_label_agreement_vs_fp32", {})
        shares = ", ".join(f"{task} {100 * share:.2f} %" for task, share in agreement.items())
        fallback = fallback_node_count(check)
        scheme = activation_scales(check)
        scales = f" (activations {ACTIVATION_WORDS.get(scheme, scheme)})"
        lines.append(f"- {mode} int8{scales}: test labels equal to fp32's: {shares}"
                     + (f"; {fallback} weight product(s) kept out of int8 by the accuracy search" if fallback
                        else ""))
    return [*lines, ""]


def _usage(directory: Path, tasks: list[dict[str, Any]]) -> list[str]:
    task = tasks[0]["name"]
    files = model_files(directory, "int8") or model_files(directory, "fp32")
    graph = files[task] if isinstance(files, dict) else files
    return [
        "## How to run it", "",
        "With distill's runtime (onnxruntime and tokenizers only; checks every file's sha256 first):", "",
        "```python", "from distill.runtime import Predictor", "",
        f'predictor = Predictor("{directory.name}")  # this directory; precision="int8" by default',
        'print(predictor.predict(["an example text"]))', "```", "",
        "With onnxruntime directly (inputs `input_ids` and `attention_mask`; one output `logits_TASK` per task):",
        "", "```python", "import numpy as np", "import onnxruntime as ort", "from tokenizers import Tokenizer", "",
        f'tokenizer = Tokenizer.from_file("{directory.name}/tokenizer.json")',
        'encoding = tokenizer.encode("an example text")',
        f'session = ort.InferenceSession("{directory.name}/{graph.name if graph else MODEL_FILES["fp32"]}")',
        'feeds = {"input_ids": np.array([encoding.ids], dtype=np.int64),',
        '         "attention_mask": np.array([encoding.attention_mask], dtype=np.int64)}',
        f'logits = session.run(["logits_{task}"], feeds)[0]', "```", "",
        "The labels of each task, in logit order, are in `tasks.json`; `manifest.json` records how the files were "
        "made and checked.", ""]


def _millions(value: float | None) -> str | None:
    return f"{value / 1e6:.1f}" if value else None


def _cell(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
