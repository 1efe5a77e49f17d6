"""Is int8 safe with the export defaults? For every artifact of a finished run, each int8 mode's test-label
agreement with fp32 per task (from the checks its manifest records), the fused operators of its graph, and the
export settings the recipe changed from the defaults; then whether every task reaches --min in the int8 modes
of --modes (default: the default modes; the others are shown).

    python -m benchmarks.int8_defaults RUN_DIR (--demo [--quick | --base] | --recipe RECIPE.yaml) [--min 0.995]
        [--modes dynamic static]

`benchmarks/recipes/untuned-sentiment.yaml` is a recipe the defaults were not tuned on (one demo task, another
seed and student). Prints one row per artifact and int8 mode, saves RUN_DIR/int8-defaults.json; exits 1 when a
task is below --min.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.run_args import add_run_args, run_recipe_of
from distill.core.fileio import atomic_write_json
from distill.core.manifest import fallback_node_count, read_manifest
from distill.recipe import ExportSpec


def changed_defaults(spec: ExportSpec) -> dict:
    """The export settings that differ from ExportSpec's defaults."""
    defaults = ExportSpec().model_dump()
    return {key: value for key, value in spec.model_dump().items() if defaults[key] != value}


def artifact_rows(run_dir: Path, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        manifest = read_manifest(run_dir / "artifacts" / name)
        for mode, check in manifest.checks.get("int8", {}).items():
            rows.append({"artifact": name, "mode": mode, "graph": check.get("graph", "unfused"),
                         "fused_ops": {g: f.get("ops", {}) for g, f in manifest.fusion.items()},
                         "test_label_agreement": check["test_label_agreement_vs_fp32"],
                         "fallback_nodes": fallback_node_count(check)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, "the --out directory of a finished run")
    parser.add_argument("--min", type=float, default=0.995, help="the test agreement every task must reach")
    parser.add_argument("--modes", nargs="+", default=ExportSpec().quantization,
                        help="the int8 modes held to --min (default: the default modes; the others are shown)")
    args = parser.parse_args(argv)
    recipe = run_recipe_of(parser, args)
    rows = artifact_rows(args.run_dir, ["teacher", *(s.name for s in recipe.students)])
    changed = changed_defaults(recipe.export)
    print(f"export settings changed from the defaults: {changed or 'none'}")
    print("| artifact | int8 | graph | fallback nodes | test labels equal to fp32's |")
    print("|---|---|---|---|---|")
    for row in rows:
        shares = ", ".join(f"{task} {100 * share:.2f} %" for task, share in row["test_label_agreement"].items())
        print(f"| {row['artifact']} | {row['mode']} | {row['graph']} | {row['fallback_nodes']} | {shares} |")
    lowest = min((share for row in rows if row["mode"] in args.modes
                  for share in row["test_label_agreement"].values()), default=1.0)
    passed = lowest >= args.min
    verdict = "every task reaches" if passed else "below"
    print(f"lowest agreement of {', '.join(args.modes)} int8: {100 * lowest:.2f} %: {verdict} {100 * args.min:.2f} %")
    atomic_write_json(args.run_dir / "int8-defaults.json", {"changed_from_defaults": changed, "min": args.min,
                                                            "modes": args.modes, "lowest": lowest, "passed": passed,
                                                            "rows": rows})
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
