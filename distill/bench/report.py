"""Writing report.json, report.md, report.html and the Pareto plot (mean score against p50 latency)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from distill.bench.pareto import best_student, model_key, pareto_front
from distill.core.fileio import atomic_write_json, atomic_write_text
from distill.core.int8_presets import ACTIVATION_WORDS

PLOT_FILE = "pareto.png"


def reference_teacher(models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The PyTorch teacher's entry: what every retention is measured against."""
    return next((m for m in models if m["role"] == "teacher" and m["format"] == "torch-fp32"), None)


def add_retention(models: list[dict[str, Any]]) -> None:
    """retention = mean score / the torch-fp32 teacher's mean score."""
    teacher = reference_teacher(models)
    for model in models:
        model["retention"] = model["mean_score"] / teacher["mean_score"] if teacher and teacher["mean_score"] else None


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The report table (header, rows sorted by size), shared by the Markdown and HTML renderings."""
    tasks = [t["name"] for t in report["tasks"]]
    front = set(report.get("pareto_front", []))
    median = report.get("median_test_tokens")
    header = ["model", "role", "format", "int8", "params (M)", "size (MB)", "p50 ms", "p90 ms", "p99 ms",
              f"p50 ms at {median} tokens" if median else "p50 ms at median length", "throughput/s", "peak MB",
              "GFLOPs", "GOP/s", "% of peak", *tasks, "mean", "retention", "Pareto"]
    rows = []
    for m in sorted(report["models"], key=lambda x: x["size_bytes"]):
        lat = m["latency_ms"]
        retention = f"{m['retention']:.3f}" if m.get("retention") is not None else "-"
        rows.append([
            m["name"], m["role"], m["format"], int8_label(m), f"{m['params'] / 1e6:.1f}",
            f"{m['size_bytes'] / 1e6:.1f}",
            f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
            f"{m['latency_median_length_ms']['p50']:.2f}" if m.get("latency_median_length_ms") else "-",
            f"{m['throughput_per_s']:.1f}", f"{m.get('peak_memory_mb', 0):.0f}", f"{m.get('flops', 0) / 1e9:.2f}",
            f"{m['gops']:.0f}" if "gops" in m else "-",
            f"{100 * m['peak_share']:.1f}" if "peak_share" in m else "-",
            *[f"{m['scores'][t]:.4f}" for t in tasks], f"{m['mean_score']:.4f}", retention,
            "*" if model_key(m) in front else "",
        ])
    return header, rows


def int8_label(model: dict[str, Any]) -> str:
    """How a report row's int8 model was quantized, in words ("-" for other formats)."""
    scheme = model.get("int8")
    if not scheme:
        return "-"
    words = ACTIVATION_WORDS.get(scheme["activations"], scheme["activations"])
    kept_out = f", {scheme['kept_out']} kept out" if scheme.get("kept_out") else ""
    return f"{'static, ' if scheme['mode'] == 'static' else ''}{words}{kept_out}"


def student_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per student (its int8 model when there is one), sorted by size: how it was built and what it gives."""
    front = set(report.get("pareto_front", []))
    header = ["student", "format", "teacher layers", "heads", "FFN", "hidden", "vocab", "coverage (test)",
              "embedding bits", "QAT", "LoRA", "size (MB)", "p50 ms", "mean", "retention", "fp32 retention", "Pareto"]
    rows = []
    for m in sorted(_student_models(report), key=lambda x: x["size_bytes"]):
        built = m.get("student") or {}
        vocab = built.get("vocab") or {}
        fp32 = _fp32_of(report, m["name"])
        lora = built.get("lora")
        rows.append([
            m["name"], m["format"], _layers_kept(built),
            str(built.get("attention_heads", "-")), str(built.get("ffn", "-")), str(built.get("hidden_size", "-")),
            str(built.get("vocab_size", "-")),
            f"{vocab['coverage']['test']:.3f}" if vocab else "-",
            str(built.get("embedding_bits") or "-"),
            f"last {built['qat']['epochs']}" if built.get("qat") else "-",
            f"r={lora['r']}" + (f", {lora['base_bits']}-bit base" if lora.get("base_bits") else "") if lora else "-",
            f"{m['size_bytes'] / 1e6:.1f}", f"{m['latency_ms']['p50']:.2f}", f"{m['mean_score']:.4f}",
            _fmt(m.get("retention")), _fmt(fp32.get("retention") if fp32 else None),
            "*" if model_key(m) in front else "",
        ])
    return header, rows


def qat_comparisons(report: dict[str, Any]) -> list[str]:
    """For each QAT student with a twin built the same way without QAT: int8 retention and int8 − fp32 of both."""
    students = {m["name"]: m for m in _student_models(report) if m["format"] == "onnx-int8"}
    lines = []
    for name, m in students.items():
        built = m.get("student") or {}
        if not built.get("qat"):
            continue
        twin = next((t for t in students.values() if not (t.get("student") or {}).get("qat")
                     and _without_qat(t.get("student") or {}) == _without_qat(built)), None)
        parts = [f"{name} (QAT, last {built['qat']['epochs']} epoch(s)): {_int8_line(report, m)}"]
        parts.append(f"{twin['name']} (no QAT): {_int8_line(report, twin)}" if twin else "no twin without QAT")
        lines.append("; ".join(parts))
    return lines


def _student_models(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each student once: its dynamic int8 model, else its ONNX fp32 model."""
    chosen: dict[str, dict[str, Any]] = {}
    for m in report["models"]:
        if m["role"] != "student" or m["format"] not in ("onnx-int8", "onnx-fp32"):
            continue
        if m["name"] not in chosen or m["format"] == "onnx-int8":
            chosen[m["name"]] = m
    return list(chosen.values())


def _fp32_of(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((m for m in report["models"] if m["name"] == name and m["format"] == "onnx-fp32"), None)


def _without_qat(built: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in built.items() if k != "qat"}


def _int8_line(report: dict[str, Any], int8: dict[str, Any]) -> str:
    fp32 = _fp32_of(report, int8["name"])
    change = f", int8 − fp32 mean score {int8['mean_score'] - fp32['mean_score']:+.4f}" if fp32 else ""
    return f"int8 retention {_fmt(int8.get('retention'))}{change}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _summary(report: dict[str, Any]) -> tuple[str, str, str]:
    hw = report["hardware"]
    lat = report["models"][0]["latency_ms"]
    hardware_line = (f"Hardware: {hw['cpu']}; ISA {', '.join(hw['isa']) or 'n/a'}; {hw['threads']} threads; "
                     f"torch {hw['torch']}, onnxruntime {hw['onnxruntime']}.")
    tasks_line = "Tasks: " + ", ".join(f"{t['name']} ({t['metric']})" for t in report["tasks"])
    latency_line = (f"Latency: batch {lat['batch']} × {lat['seq_len']} tokens. int8: the activation scales, and how "
                    "many weight products the accuracy search kept out of int8. Throughput at the largest batch. "
                    "Peak MB: peak resident memory of a fresh process running the model at the largest batch. "
                    + _peak_line(report) +
                    "Pareto: no other model is both better and faster.")
    return hardware_line, tasks_line, latency_line


def _peak_line(report: dict[str, Any]) -> str:
    peak = report.get("machine_peak")
    if not peak:
        return ""
    return (f"GOP/s: the model's operations (GFLOPs) at its batch-1 p50; % of peak: against the best matrix "
            f"product onnxruntime ran on this machine at the models' shapes ({peak['int8_gops']:.0f} int8, "
            f"{peak['fp32_gops']:.0f} fp32 GOP/s). ")


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: hardware, then one table row per model, sorted by size."""
    header, rows = table_rows(report)
    hardware_line, tasks_line, latency_line = _summary(report)
    lines = ["# distill report", "", hardware_line, "", tasks_line, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", latency_line, f"Pareto plot: {PLOT_FILE}", ""]
    lines += render_students(report)
    return "\n".join(lines)


def render_students(report: dict[str, Any]) -> list[str]:
    """The Markdown "Students" section (table sorted by size) and the QAT comparisons; empty without students."""
    lines: list[str] = []
    header, rows = student_rows(report)
    if rows:
        lines += ["## Students", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", "Coverage: share of the test split's tokens whose word piece the student keeps. "
                  "Retention: against the PyTorch teacher.", ""]
    comparisons = qat_comparisons(report)
    if comparisons:
        lines += ["## Quantization-aware training", "", *[f"- {line}" for line in comparisons], ""]
    return lines


def render_sweep_summary(report: dict[str, Any], min_retention: float | None = None) -> list[str]:
    """The students table and QAT comparisons of a report, and its best student (`best_student`'s rule)."""
    lines = render_students(report)
    bound = "" if min_retention is None else f" with retention >= {min_retention}"
    if not any(m["role"] == "student" for m in report["models"]):
        return [*lines, "Best student on the Pareto front: none (the report has no student)"]
    best, on_front = best_student(report["models"], min_retention)
    retention = best.get("retention")
    found = (f"{model_key(best)}: retention {'-' if retention is None else f'{retention:.3f}'}, "
             f"p50 {best['latency_ms']['p50']:.2f} ms, {best['size_bytes'] / 1e6:.1f} MB")
    if on_front:
        return [*lines, f"Best student on the Pareto front: {found} (the smallest there{bound})"]
    return [*lines, f"Best student on the Pareto front: none{bound}; the student with the highest score: {found}"]


def render_html(report: dict[str, Any], plot_png: bytes) -> str:
    """report.html: one self-contained page (the plot embedded as a data URI)."""
    header, rows = table_rows(report)
    hardware_line, tasks_line, latency_line = _summary(report)
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    image = base64.b64encode(plot_png).decode("ascii")
    student_header, student_body = student_rows(report)
    students = ""
    if student_body:
        cells_s = "".join(f"<th>{html.escape(h)}</th>" for h in student_header)
        body_s = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in student_body)
        students = f"<h2>Students</h2><table><thead><tr>{cells_s}</tr></thead><tbody>{body_s}</tbody></table>"
    students += "".join(f"<p>{html.escape(line)}</p>" for line in qat_comparisons(report))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>distill report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}</style></head><body>"
        f"<h1>distill report</h1><p>{html.escape(hardware_line)}</p><p>{html.escape(tasks_line)}</p>"
        f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"
        f"<p>{html.escape(latency_line)}</p>{students}"
        f"<img alt=\"Pareto plot: mean score against p50 latency\" src=\"data:image/png;base64,{image}\">"
        "</body></html>\n"
    )


FORMAT_MARKERS = {"onnx-int8": "s", "onnx-int8-static": "D"}  # fp32 formats (torch, ONNX): circles


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """Mean score against p50 latency; the marker says the format, point area grows with size on disk, the
    front is joined by a line. Each model is named once (at its dynamic int8 point when it has one), so the
    names stay readable where a model's formats sit close together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    colors = {"teacher": "tab:red", "baseline": "tab:gray", "student": "tab:blue"}
    for m in report["models"]:
        ax.scatter(m["latency_ms"]["p50"], m["mean_score"], s=20 + m["size_bytes"] / 1e6 * 4,
                   c=colors.get(m["role"], "tab:green"), marker=FORMAT_MARKERS.get(m["format"], "o"),
                   alpha=0.7, edgecolors="black", linewidths=0.5)
    for m in labelled_points(report["models"]):
        ax.annotate(f"{m['name']} ({m['size_bytes'] / 1e6:.1f} MB)", (m["latency_ms"]["p50"], m["mean_score"]),
                    fontsize=7, xytext=(5, 3), textcoords="offset points")
    handles = [Line2D([], [], ls="", marker=marker, mfc="white", mec="black", label=label)
               for marker, label in (("o", "fp32 (ONNX, torch)"), ("s", "int8 dynamic"), ("D", "int8 static"))]
    front = sorted((m for m in report["models"] if model_key(m) in set(report.get("pareto_front", []))),
                   key=lambda m: m["latency_ms"]["p50"])
    if front:
        handles += ax.plot([m["latency_ms"]["p50"] for m in front], [m["mean_score"] for m in front], "--",
                           c="black", lw=0.8, label="Pareto front")
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    lat = report["models"][0]["latency_ms"]
    ax.set_xlabel(f"p50 latency, ms (batch {lat['batch']} × {lat['seq_len']} tokens)")
    ax.set_ylabel("mean task score (test)")
    ax.set_title("distill: score vs latency (area = size on disk; labels at int8 where there is one)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def labelled_points(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per model name: its dynamic int8 one, else static int8, else the first listed."""
    preference = {"onnx-int8": 0, "onnx-int8-static": 1}
    chosen: dict[str, dict[str, Any]] = {}
    for m in models:
        best = chosen.get(m["name"])
        if best is None or preference.get(m["format"], 2) < preference.get(best["format"], 2):
            chosen[m["name"]] = m
    return list(chosen.values())


def write_reports(report: dict[str, Any], out_dir: Path) -> None:
    """report.json, report.md, report.html and the Pareto PNG into `out_dir`."""
    report["pareto_front"] = sorted(pareto_front(report["models"]))
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    plot_pareto(report, out_dir / PLOT_FILE)
    atomic_write_text(out_dir / "report.html", render_html(report, (out_dir / PLOT_FILE).read_bytes()))


def kept_layers(built: dict[str, Any]) -> list[int]:
    """The teacher layers a student kept, or the layers of the encoder it was initialised from (`init_from`)."""
    init = built.get("init_from")
    return init["layers"] if init else built.get("teacher_layers", [])


def _layers_kept(built: dict[str, Any]) -> str:
    """`kept_layers` for the students' table: `init: ...` for a student initialised from another encoder."""
    layers = ",".join(str(i) for i in kept_layers(built))
    return f"init: {layers}" if built.get("init_from") else layers
