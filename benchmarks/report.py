"""Writing report.json, report.md, report.html and the Pareto plot (mean score against p50 latency)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from distill.fileio import atomic_write_json, atomic_write_text

PLOT_FILE = "pareto.png"


def add_retention(models: list[dict[str, Any]]) -> None:
    """retention = mean score / the torch-fp32 teacher's mean score."""
    teacher = next((m for m in models if m["role"] == "teacher" and m["format"] == "torch-fp32"), None)
    for model in models:
        model["retention"] = model["mean_score"] / teacher["mean_score"] if teacher and teacher["mean_score"] else None


def pareto_front(models: list[dict[str, Any]]) -> set[str]:
    """Names of models that no other model beats on both mean score and p50 latency."""
    points = [(m["mean_score"], m["latency_ms"]["p50"], model_key(m)) for m in models]
    return {key for score, latency, key in points
            if not any(s >= score and t <= latency and (s > score or t < latency) for s, t, _ in points)}


def model_key(model: dict[str, Any]) -> str:
    return f"{model['name']}/{model['format']}"


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The report table (header, rows sorted by size), shared by the Markdown and HTML renderings."""
    tasks = [t["name"] for t in report["tasks"]]
    front = set(report.get("pareto_front", []))
    header = ["model", "role", "format", "params (M)", "size (MB)", "p50 ms", "p90 ms", "p99 ms", "throughput/s",
              "peak MB", "GFLOPs", *tasks, "mean", "retention", "Pareto"]
    rows = []
    for m in sorted(report["models"], key=lambda x: x["size_bytes"]):
        lat = m["latency_ms"]
        retention = f"{m['retention']:.3f}" if m.get("retention") is not None else "-"
        rows.append([
            m["name"], m["role"], m["format"], f"{m['params'] / 1e6:.1f}", f"{m['size_bytes'] / 1e6:.1f}",
            f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{m['throughput_per_s']:.1f}",
            f"{m.get('peak_memory_mb', 0):.0f}", f"{m.get('flops', 0) / 1e9:.2f}",
            *[f"{m['scores'][t]:.4f}" for t in tasks], f"{m['mean_score']:.4f}", retention,
            "*" if model_key(m) in front else "",
        ])
    return header, rows


def _summary(report: dict[str, Any]) -> tuple[str, str, str]:
    hw = report["hardware"]
    lat = report["models"][0]["latency_ms"]
    hardware_line = (f"Hardware: {hw['cpu']}; ISA {', '.join(hw['isa']) or 'n/a'}; {hw['threads']} threads; "
                     f"torch {hw['torch']}, onnxruntime {hw['onnxruntime']}.")
    tasks_line = "Tasks: " + ", ".join(f"{t['name']} ({t['metric']})" for t in report["tasks"])
    latency_line = (f"Latency: batch {lat['batch']} × {lat['seq_len']} tokens. Throughput at the largest batch. "
                    "Peak MB: peak resident memory of a fresh process running the model at the largest batch. "
                    "Pareto: no other model is both better and faster.")
    return hardware_line, tasks_line, latency_line


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: hardware, then one table row per model, sorted by size."""
    header, rows = table_rows(report)
    hardware_line, tasks_line, latency_line = _summary(report)
    lines = ["# distill report", "", hardware_line, "", tasks_line, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", latency_line, f"Pareto plot: {PLOT_FILE}", ""]
    return "\n".join(lines)


def render_html(report: dict[str, Any], plot_png: bytes) -> str:
    """report.html: one self-contained page (the plot embedded as a data URI)."""
    header, rows = table_rows(report)
    hardware_line, tasks_line, latency_line = _summary(report)
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    image = base64.b64encode(plot_png).decode("ascii")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>distill report</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}</style></head><body>"
        f"<h1>distill report</h1><p>{html.escape(hardware_line)}</p><p>{html.escape(tasks_line)}</p>"
        f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"
        f"<p>{html.escape(latency_line)}</p>"
        f"<img alt=\"Pareto plot: mean score against p50 latency\" src=\"data:image/png;base64,{image}\">"
        "</body></html>\n"
    )


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """Mean score against p50 latency; point area grows with size on disk; the front is joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    colors = {"teacher": "tab:red", "baseline": "tab:gray", "student": "tab:blue"}
    for m in report["models"]:
        x, y = m["latency_ms"]["p50"], m["mean_score"]
        marker = "s" if m["format"] == "onnx-int8" else "o"
        ax.scatter(x, y, s=20 + m["size_bytes"] / 1e6 * 4, c=colors.get(m["role"], "tab:green"), marker=marker,
                   alpha=0.7, edgecolors="black", linewidths=0.5)
        ax.annotate(f"{m['name']} ({m['format']}, {m['size_bytes'] / 1e6:.1f} MB)", (x, y), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    front = sorted((m for m in report["models"] if model_key(m) in set(report.get("pareto_front", []))),
                   key=lambda m: m["latency_ms"]["p50"])
    if front:
        ax.plot([m["latency_ms"]["p50"] for m in front], [m["mean_score"] for m in front], "--", c="black", lw=0.8,
                label="Pareto front")
        ax.legend(loc="lower right")
    lat = report["models"][0]["latency_ms"]
    ax.set_xlabel(f"p50 latency, ms (batch {lat['batch']} × {lat['seq_len']} tokens)")
    ax.set_ylabel("mean task score (test)")
    ax.set_title("distill: score vs latency (circle = fp32, square = int8; area = size)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_reports(report: dict[str, Any], out_dir: Path) -> None:
    """report.json, report.md, report.html and the Pareto PNG into `out_dir`."""
    report["pareto_front"] = sorted(pareto_front(report["models"]))
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    plot_pareto(report, out_dir / PLOT_FILE)
    atomic_write_text(out_dir / "report.html", render_html(report, (out_dir / PLOT_FILE).read_bytes()))
