"""Does the quick demo's report tell what the full demo's does? For each student model in both reports, its p50
(batch 1 × the bench length) relative to the int8 baseline and to the fp32 ONNX teacher of its own report, side by
side, with the int8 graph each run shipped.

Ratios are compared only where both runs shipped the same graph: the same format and, for int8, the same
activation scales and the same number of products kept out of int8 (the baseline's too, for the ratio to the
baseline). Auto picks the int8 scheme per model from its own dev agreement, so a quick student trained on less
data may ship another graph than its full twin; that row's gap is the graph's, not the timing's, and is shown
but not judged; so is every int8 row of a report written before reports named the scheme (`int8`).

    python -m benchmarks.quick_vs_full QUICK_RUN/report.json FULL_RUN/report.json [--max-gap 0.05]

Prints one row per student model; exits 1 when a compared ratio differs by more than --max-gap, or when no ratio
could be compared.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from distill.bench.pareto import model_key
from distill.bench.report import int8_label
from distill.core.fileio import read_json

REFERENCES = {"baseline": "baseline/onnx-int8", "teacher fp32": "teacher/onnx-fp32"}


def _graph(model: dict[str, Any]) -> str | None:
    """What int8 graph a report row shipped ("-" for fp32), or None where the report does not say."""
    return None if model["format"].startswith("onnx-int8") and "int8" not in model else int8_label(model)


def _same_graph(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _graph(a) is not None and _graph(a) == _graph(b)


def ratio_rows(quick: dict[str, Any], full: dict[str, Any]) -> list[dict[str, Any]]:
    """Per student model in both reports and per reference: the two ratios, whether they compare, and the gap."""
    runs = [{model_key(m): m for m in report["models"]} for report in (quick, full)]
    rows = []
    for key in [k for k, m in runs[0].items() if m["role"] == "student" and k in runs[1]]:
        pair = [run[key] for run in runs]
        row = {"model": key, "int8": [int8_label(m) for m in pair], "ratios": {}}
        for name, reference in REFERENCES.items():
            if not all(reference in run for run in runs):
                continue
            ratios = [m["latency_ms"]["p50"] / run[reference]["latency_ms"]["p50"]
                      for m, run in zip(pair, runs, strict=True)]
            same = _same_graph(*pair) and _same_graph(*(run[reference] for run in runs))
            row["ratios"][name] = {"quick": ratios[0], "full": ratios[1], "gap": ratios[0] - ratios[1],
                                   "compared": same}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quick_report", type=Path, help="report.json of `distill demo --quick`")
    parser.add_argument("full_report", type=Path, help="report.json of `distill demo`")
    parser.add_argument("--max-gap", type=float, default=0.05, help="largest ratio difference that agrees")
    args = parser.parse_args(argv)
    for path in (args.quick_report, args.full_report):
        if not path.is_file():
            parser.error(f"{path}: report not found")
    quick, full = read_json(args.quick_report), read_json(args.full_report)
    rows = ratio_rows(quick, full)
    for name, reference in REFERENCES.items():
        labels = [next((int8_label(m) for m in r["models"] if model_key(m) == reference), "absent")
                  for r in (quick, full)]
        print(f"{name} ({reference}) int8: quick {labels[0]}, full {labels[1]}")
    print(f"{'model':32} {'int8 quick':>24} {'int8 full':>24} " + " ".join(
        f"{'× ' + name:>30}" for name in REFERENCES))
    for row in rows:
        cells = []
        for name in REFERENCES:
            r = row["ratios"].get(name)
            cells.append("-" if r is None else
                         f"{r['quick']:.3f} vs {r['full']:.3f} {r['gap']:+.3f}{'' if r['compared'] else ' (graph)'}")
        print(f"{row['model']:32} {row['int8'][0]:>24} {row['int8'][1]:>24} " + " ".join(f"{c:>30}" for c in cells))
    compared = [r["gap"] for row in rows for r in row["ratios"].values() if r["compared"]]
    largest = max((abs(g) for g in compared), default=None)
    summary = {"compared": len(compared), "not_compared": sum(not r["compared"] for row in rows
                                                              for r in row["ratios"].values()),
               "max_abs_gap": largest, "max_gap": args.max_gap,
               "agree": largest is not None and largest <= args.max_gap}
    print(json.dumps(summary))
    return 0 if summary["agree"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
