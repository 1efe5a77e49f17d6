"""The `distill` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from distill.core.errors import DistillError, DistillInputError

STAGE_HELP = {
    "teacher": "fine-tune the multi-task teacher (or check a given one)",
    "cache": "run the teacher once and fill the teacher cache",
    "train": "distil the students from the cache",
    "export": "export teacher and students to ONNX fp32 and int8, with checks",
    "bench": "measure every artifact and write report.json, report.md and the plot",
}

BEST_RULE = ("(the best student: the smallest student on the Pareto front whose retention meets --min-retention, "
             "or the smallest on the front without it; when none meets it, the student with the highest score)")


NO_VERIFY_HELP = ("skip comparing the artifacts' files with the sha256 in their manifest.json (for an artifact "
                  "changed on purpose)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Compress a multi-task transformer for the edge.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every stage of a recipe (skips stages whose inputs are unchanged)")
    _recipe_args(run)
    run.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)

    sweep = sub.add_parser("sweep", help="train, export and benchmark every student of a recipe; print the "
                           "students sorted by size with the Pareto front, and the best student")
    _recipe_args(sweep)
    sweep.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)
    sweep.add_argument("--min-retention", type=float, help=f"the retention the best student must keep {BEST_RULE}")

    demo = sub.add_parser("demo", help="run the built-in offline demo recipe")
    demo.add_argument("--quick", action="store_true", help="subsampled data and fewer epochs (minutes, not an hour)")
    demo.add_argument("--base", action="store_true", help="the base-size demo: all-mpnet-base-v2 (110M parameters) "
                      "as the teacher, students 25-60x smaller (about an hour on 2 cores)")
    demo.add_argument("--out", required=True, type=Path, help="output directory")
    demo.add_argument("--force", action="store_true", help="rerun every stage even when its inputs are unchanged")
    _resume_arg(demo)

    init = sub.add_parser("init", help="write a commented starter recipe for a fine-tuned model (or one per task) "
                          "and data files, task types guessed from the data")
    init.add_argument("--model", action="append", required=True, metavar="PATH_OR_HUB_ID|TASK=DIR",
                      help="the teacher: a model directory or hub id, or one fine-tuned checkpoint per task as "
                           "TASK=DIR (repeatable)")
    init.add_argument("--data", action="append", required=True, metavar="[TASK=]FILE",
                      help="a task's data: a .csv, .json, .jsonl or .parquet file (split 80/10/10), or a directory "
                           "with train/validation/test files; the task is named after the file unless TASK= "
                           "(repeatable)")
    init.add_argument("--out", type=Path, default=Path("recipe.yaml"), metavar="RECIPE",
                      help="the recipe to write (default: recipe.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    init.add_argument("--text-field", action="append", default=[], metavar="[TASK=]COLUMN",
                      help="the text column, when it cannot be guessed (repeatable)")
    init.add_argument("--label-field", action="append", default=[], metavar="[TASK=]COLUMN",
                      help="the label column, when it cannot be guessed (repeatable)")
    init.add_argument("--type", action="append", default=[], metavar="[TASK=]TYPE",
                      help="the task type, when it cannot be guessed: sequence_classification, "
                           "token_classification, multi_label_classification or regression (repeatable)")

    check = sub.add_parser("check", help="check a recipe and everything it names (teacher, data, students' shapes) "
                           "without running or writing anything")
    check.add_argument("recipe", type=Path, help="recipe YAML file")

    for stage, text in STAGE_HELP.items():
        cmd = sub.add_parser(stage, help=f"{text} (and the stages before it)")
        _recipe_args(cmd)
        if stage == "train":
            cmd.add_argument("--student", action="append", help="train only this student (repeatable)")
        if stage == "bench":
            cmd.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)
            cmd.add_argument("--predictor", action="store_true",
                             help="then time distill.runtime.Predictor end to end on raw test texts (tokenizer "
                                  "included), one text at a time and in batches of 32, for every artifact's int8 "
                                  "and fp32 models; writes DIR/predictor.json")
        if stage == "cache":
            cmd.add_argument("--json", action="store_true",
                             help="print run.json plus the cache entry (DIR/cache.json) as JSON, not a summary")

    predict = sub.add_parser("predict", help="predict with an exported artifact (onnxruntime only)")
    predict.add_argument("artifact", type=Path, help="an artifact directory (DIR/artifacts/NAME)")
    predict.add_argument("texts", nargs="+", help="texts to label")
    predict.add_argument("--precision", default="int8", choices=["fp32", "int8", "int8-static"])
    predict.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: all cores)")
    predict.add_argument("--batch-size", type=int, help="texts per forward pass (default: 16; for dynamic "
                         "int8 with per-tensor activations (the manifest's checks.int8.dynamic.activations), the "
                         "batch size the export checked it at, 1 unless export.check_batch_size)")
    predict.add_argument("--task", action="append", dest="tasks", metavar="NAME",
                         help="only this task (repeatable; default: every task of the artifact)")
    predict.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)

    compare = sub.add_parser("compare", help="print what changed between two reports")
    compare.add_argument("a", type=Path, help="the earlier report.json")
    compare.add_argument("b", type=Path, help="the later report.json")

    gate = sub.add_parser("gate", help="exit 1 when the chosen model misses a bound")
    gate.add_argument("report", type=Path, help="a report.json")
    gate.add_argument("--model", help=f"NAME or NAME/FORMAT (default: the best student {BEST_RULE})")
    gate.add_argument("--min-retention", type=float, help="lowest acceptable retention (0..1)")
    gate.add_argument("--max-latency-ms", type=float, help="highest acceptable p50 latency in ms")
    gate.add_argument("--max-size-mb", type=float, help="highest acceptable size on disk in MB")
    return parser


def _recipe_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("recipe", type=Path, help="recipe YAML file")
    cmd.add_argument("--out", required=True, type=Path, help="output directory")
    forced = "every stage" if cmd.prog.endswith((" run", " sweep")) else "this stage"
    cmd.add_argument("--force", action="store_true", help=f"rerun {forced} even when its inputs are unchanged")
    _resume_arg(cmd)


def _resume_arg(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--resume", action="store_true",
                     help="continue an interrupted teacher or student training from its newest checkpoint "
                          "(DIR/checkpoints/), at the exact batch")


def _main(args: argparse.Namespace) -> int:
    if args.command == "predict":
        from distill.runtime import Predictor

        if not (args.artifact / "manifest.json").is_file():
            raise DistillInputError(f"{args.artifact}: not an artifact directory (no manifest.json)")
        predictor = Predictor(args.artifact, precision=args.precision, threads=args.threads,
                              batch_size=args.batch_size, tasks=args.tasks, verify=not args.no_verify)
        print(json.dumps(predictor.predict(args.texts), indent=2, ensure_ascii=False))
        return 0
    if args.command == "check":
        from distill.pipeline import check_inputs
        from distill.recipe import load_recipe

        recipe = load_recipe(args.recipe)
        _, tasks = check_inputs(recipe)
        for task in tasks:
            sizes = ", ".join(f"{name} {len(split)}" for name, split in task.encoded.items())
            print(f"task {task.info.name} ({task.info.type}, {len(task.info.labels)} labels): {sizes}")
        print(f"students: {', '.join(s.name for s in recipe.students)}")
        print(f"{args.recipe}: ok")
        return 0
    if args.command == "init":
        from distill.init import InitOptions, write_starter_recipe

        print("\n".join(write_starter_recipe(InitOptions(
            args.model, args.data, args.out, args.force, args.text_field, args.label_field, args.type))))
        return 0
    if args.command == "compare":
        from distill.bench.compare import compare_reports

        print("\n".join(compare_reports(args.a, args.b)))
        return 0
    from distill import api
    from distill.core.processes import is_main_process

    if args.command == "gate":
        from distill.bench.gate import check_gate

        passed, lines = check_gate(args.report, args.model, args.min_retention, args.max_latency_ms, args.max_size_mb)
        print("\n".join(lines) or "no bound given")
        return 0 if passed else 1
    if args.command == "demo":
        result = api.run_demo(args.out, quick=args.quick, force=args.force, resume=args.resume, base=args.base)
    elif args.command == "sweep":
        run = api.run_recipe(api.load_recipe(args.recipe), args.out, force=args.force, resume=args.resume,
                             verify=not args.no_verify)
        if is_main_process():
            print(json.dumps(run, indent=2))
            from distill.bench.report import render_sweep_summary
            from distill.core.fileio import read_json

            report = read_json(Path(args.out) / "report.json")
            print("\n".join(render_sweep_summary(report, args.min_retention)))
        return 0
    else:
        until = "bench" if args.command == "run" else args.command
        recipe = api.load_recipe(args.recipe)
        force = args.force if args.command == "run" else (until if args.force else False)
        result = api.run_recipe(recipe, args.out, until=until, students=getattr(args, "student", None), force=force,
                                resume=args.resume, verify=not getattr(args, "no_verify", False))
    if not is_main_process():  # under torchrun / accelerate launch: the main process prints
        return 0
    cache = Path(args.out) / "cache.json"
    if args.command == "cache" and cache.is_file():
        entry = json.loads(cache.read_text(encoding="utf-8"))
        print(json.dumps({**result, "cache": entry}, indent=2) if args.json else "\n".join(_cache_summary(entry)))
        return 0
    print(json.dumps(result, indent=2))
    report = Path(args.out) / "report.md"
    if args.command in ("run", "demo", "bench") and report.is_file():
        print(report.read_text(encoding="utf-8"))
    if getattr(args, "predictor", False):
        from distill.bench.predictor_timing import render_predictor_table, run_predictor_bench

        print("\n".join(render_predictor_table(run_predictor_bench(recipe, Path(args.out)))))
    return 0


def _cache_summary(entry: dict) -> list[str]:
    rate = f"{entry['examples_per_s']:,.1f} examples/s" if entry["examples_per_s"] else "nothing to run"
    return [
        f"teacher cache: {'hit' if entry['hit'] else 'miss'} ({rate})",
        f"  key      {entry['key']}",
        f"  path     {entry['path']}",
        f"  shards   {entry['shards']} for {entry['examples']:,} examples",
        f"  on disk  {entry['bytes']:,} bytes ({entry['bytes_per_1000_examples']:,} per 1,000 examples)",
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `distill` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    other_process = os.environ.get("RANK", "0") != "0"  # torchrun / accelerate launch: rank 0 logs progress
    level = logging.DEBUG if args.verbose else logging.WARNING if other_process else logging.INFO
    logging.basicConfig(level=level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return _main(args)
    except DistillError as exc:
        print(f"distill: error: {exc}".replace("\n", " "), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("distill: interrupted; completed stages are kept and a rerun continues from there", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
