"""Writing report.json, report.md and the Pareto plot (mean score against p50 latency)."""

from __future__ import annotations

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
    front = set()
    for m in models:
        dominated = any(o is not m and o["mean_score"] >= m["mean_score"] and o["latency_ms"]["p50"] <= m["latency_ms"]["p50"]
                        and (o["mean_score"] > m["mean_score"] or o["latency_ms"]["p50"] < m["latency_ms"]["p50"])
                        for o in models)
        if not dominated:
            front.add(model_key(m))
    return front


def model_key(model: dict[str, Any]) -> str:
    return f"{model['name']}/{model['format']}"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: hardware, then one table row per model, sorted by size."""
    hw = report["hardware"]
    tasks = [t["name"] for t in report["tasks"]]
    front = set(report.get("pareto_front", []))
    lines = [
        "# distill report", "",
        f"Hardware: {hw['cpu']}; ISA {', '.join(hw['isa']) or 'n/a'}; {hw['threads']} threads; "
        f"torch {hw['torch']}, onnxruntime {hw['onnxruntime']}.", "",
        "Tasks: " + ", ".join(f"{t['name']} ({t['metric']})" for t in report["tasks"]), "",
        "| model | role | format | params (M) | size (MB) | p50 ms | p90 ms | p99 ms | throughput/s | "
        + " | ".join(tasks) + " | mean | retention | Pareto |",
        "|" + "---|" * (11 + len(tasks)),
    ]
    for m in sorted(report["models"], key=lambda x: x["size_bytes"]):
        lat = m["latency_ms"]
        retention = f"{m['retention']:.3f}" if m.get("retention") is not None else "-"
        lines.append(
            f"| {m['name']} | {m['role']} | {m['format']} | {m['params'] / 1e6:.1f} | {m['size_bytes'] / 1e6:.1f} | "
            f"{lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | {m['throughput_per_s']:.1f} | "
            + " | ".join(f"{m['scores'][t]:.4f}" for t in tasks)
            + f" | {m['mean_score']:.4f} | {retention} | {'*' if model_key(m) in front else ''} |"
        )
    lat = report["models"][0]["latency_ms"]
    lines += ["", f"Latency: batch {lat['batch']} × {lat['seq_len']} tokens. Throughput at the largest batch.",
              f"Pareto plot: {PLOT_FILE}", ""]
    return "\n".join(lines)


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
    """report.json, report.md and the Pareto PNG into `out_dir`."""
    report["pareto_front"] = sorted(pareto_front(report["models"]))
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))
    plot_pareto(report, out_dir / PLOT_FILE)
