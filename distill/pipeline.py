"""`distill run`: every stage in order, each skipped when its inputs have not changed (like make)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.data import TaskData, encode_tasks, fingerprint, load_tasks
from distill.demo_assets import demo_model_path
from distill.errors import DistillInputError
from distill.fileio import atomic_write_json, read_json, sha256_dir, sha256_json
from distill.recipe import Recipe
from distill.tokenizer import load_tokenizer

log = logging.getLogger(__name__)
STAGES = ("teacher", "cache", "train", "export", "bench")
STATE_DIR = ".distill"


@dataclass
class RunState:
    """What the stages share: the recipe, the output directory, the data, and what each stage produced."""

    recipe: Recipe
    out_dir: Path
    force: bool | str = False
    tasks: list[TaskData] = field(default_factory=list)
    tokenizer: Any = None
    teacher_dir: Path | None = None
    cache: Any = None
    student_dirs: dict[str, Path] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def run_stage(self, name: str, input_hash: str | None, outputs: list[Path], body: Callable[[], object]) -> None:
        """Run `body` unless a record says it already ran on the same inputs and its outputs exist.

        With `input_hash` None the body always runs and says itself whether it found its result already made
        (returns True: a content-addressed cache hit)."""
        record_path = self.out_dir / STATE_DIR / "stages" / f"{name.replace(':', '-')}.json"
        started = time.perf_counter()
        record = read_json(record_path) if record_path.is_file() else {}
        forced = self.force is True or self.force == name.split(":")[0]
        if input_hash is not None and not forced and record.get("input_hash") == input_hash and all(
                p.exists() for p in outputs):
            status = "cached"
        else:
            log.info("stage %s: running", name)
            result = body()
            status = "cached" if input_hash is None and result is True else "ran"
            atomic_write_json(record_path, {"input_hash": input_hash, "finished": time.time()})
        self.stages.append({"name": name, "status": status, "seconds": round(time.perf_counter() - started, 3)})
        log.info("stage %s: %s (%.1fs)", name, status, self.stages[-1]["seconds"])
        self.write_run_json()

    def write_run_json(self) -> None:
        atomic_write_json(self.out_dir / "run.json",
                          {"stages": self.stages, "seconds": round(sum(s["seconds"] for s in self.stages), 3)})


def _teacher_source(recipe: Recipe) -> Path | str:
    spec = recipe.teacher
    if spec.path:
        path = Path(recipe.resolve(spec.path))
        if not path.is_dir():
            raise DistillInputError(f"teacher.path: {path} does not exist")
        return path
    assert spec.base_model is not None
    if spec.base_model.startswith("demo:"):
        return demo_model_path(spec.base_model)
    return recipe.resolve(spec.base_model)


def prepare(recipe: Recipe, out_dir: Path, force: bool | str = False) -> RunState:
    """Load and tokenise the data, and set up the run state."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(recipe, out_dir, force)
    source = _teacher_source(recipe)
    state.tokenizer = load_tokenizer(source, recipe.teacher.trust_remote_code)
    state.tasks = load_tasks(recipe)
    encode_tasks(state.tasks, state.tokenizer, recipe.max_length)
    return state


def stage_teacher(state: RunState) -> None:
    from teachers.finetune import fine_tune_teacher

    recipe = state.recipe
    source = _teacher_source(recipe)
    if recipe.teacher.path:
        state.teacher_dir = Path(source)
        _check_teacher_tasks(state.teacher_dir, state.tasks)
        state.run_stage("teacher", None, [], lambda: True)
        return
    state.teacher_dir = state.out_dir / "teacher"
    inputs = {"teacher": recipe.teacher.model_dump(), "base": str(source), "data": fingerprint(state.tasks),
              "seed": recipe.seed, "weights": [t.weight for t in recipe.tasks]}
    state.run_stage("teacher", sha256_json(inputs), [state.teacher_dir / "heads.safetensors"],
                    lambda: fine_tune_teacher(recipe, state.tasks, str(source), state.tokenizer, state.teacher_dir,
                                              state.out_dir / "logs" / "teacher.jsonl"))


def _check_teacher_tasks(teacher_dir: Path, tasks: list[TaskData]) -> None:
    """A given teacher must have a head for every task of the recipe, with the same labels in the same order."""
    from teachers.multitask import TASKS_FILE, load_task_infos

    if not (teacher_dir / TASKS_FILE).is_file():
        raise DistillInputError(f"teacher.path: {teacher_dir} is not a distill teacher (no {TASKS_FILE})")
    heads = {t.name: t for t in load_task_infos(teacher_dir)}
    for task in tasks:
        head = heads.get(task.info.name)
        if head is None or head.type != task.info.type or head.labels != task.info.labels:
            raise DistillInputError(
                f"teacher.path: the teacher in {teacher_dir} has no {task.info.type} head for task "
                f"{task.info.name!r} with labels {task.info.labels}"
            )


def stage_cache(state: RunState) -> None:
    from distill.cache import TeacherCache
    from teachers.runner import build_cache

    result = {}

    def body() -> bool:
        built = build_cache(state.teacher_dir, state.tasks, state.recipe.distillation.hidden_layers)
        result["value"] = built
        atomic_write_json(state.out_dir / "cache.json", built.to_json())
        return built.hit

    # The cache entry is content-addressed: the stage always asks it, and a hit is reported as cached.
    state.run_stage("cache", None, [], body)
    state.cache = TeacherCache(result["value"].path)


def stage_train(state: RunState, only: list[str] | None) -> None:
    from distill.distiller import train_student

    recipe = state.recipe
    for spec in recipe.students:
        directory = state.out_dir / "students" / spec.name
        state.student_dirs[spec.name] = directory
        if only and spec.name not in only:
            continue
        inputs = {"cache": state.cache.manifest["key"], "student": spec.model_dump(),
                  "distillation": recipe.distillation.model_dump(), "seed": recipe.seed,
                  "weights": [t.weight for t in recipe.tasks]}
        state.run_stage(f"train:{spec.name}", sha256_json(inputs), [directory / "heads.safetensors"],
                        lambda spec=spec, directory=directory: train_student(
                            recipe, state.tasks, state.teacher_dir, state.cache, spec, state.tokenizer, directory,
                            state.out_dir / "logs" / f"student-{spec.name}.jsonl"))


def stage_export(state: RunState) -> None:
    from distill.exporter import export_artifact
    from students.vocab import student_inputs

    recipe = state.recipe
    models = {"teacher": state.teacher_dir, **state.student_dirs}
    for name, model_dir in models.items():
        directory = state.out_dir / "artifacts" / name
        state.artifacts[name] = directory
        if not model_dir.is_dir():
            raise DistillInputError(f"export: {model_dir} does not exist; run `distill train` for it first")
        inputs = {"model": sha256_dir(model_dir), "export": recipe.export.model_dump(), "max_length": recipe.max_length}
        # a vocab-pruned student reads its own token ids: its checks and calibration data are remapped
        tasks, pad_id = student_inputs(model_dir, state.tasks, state.pad_id)
        state.run_stage(f"export:{name}", sha256_json(inputs), [directory / "manifest.json"],
                        lambda model_dir=model_dir, directory=directory, tasks=tasks, pad_id=pad_id: export_artifact(
                            model_dir, directory, tasks, recipe.export, recipe.max_length, pad_id))


def stage_bench(state: RunState) -> None:
    from benchmarks.suite import model_entries, run_benchmarks

    recipe = state.recipe
    manifests = {name: sha256_dir(path) for name, path in state.artifacts.items()}
    inputs = {"artifacts": manifests, "teacher": sha256_dir(state.teacher_dir), "bench": recipe.bench.model_dump(),
              "data": fingerprint(state.tasks)}

    def body() -> None:
        models = {"teacher": state.teacher_dir, **state.student_dirs}
        entries = model_entries(state.teacher_dir, state.artifacts, models)
        run_benchmarks(state.tasks, entries, recipe.bench, state.pad_id, state.out_dir)

    state.run_stage("bench", sha256_json(inputs), [state.out_dir / "report.json"], body)


def run_recipe(recipe: Recipe, out_dir: str | Path, until: str = "bench", students: list[str] | None = None,
               force: bool | str = False) -> dict:
    """Run the stages of `recipe` up to and including `until`; returns the content of run.json.

    `force=True` reruns every stage; a stage name (e.g. "bench") reruns only that stage."""
    if until not in STAGES:
        raise DistillInputError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
    unknown = set(students or []) - {s.name for s in recipe.students}
    if unknown:
        raise DistillInputError(f"--student: no student named {sorted(unknown)} in the recipe")
    state = prepare(recipe, Path(out_dir), force)
    last = STAGES.index(until)
    stage_teacher(state)
    if last >= 1:
        stage_cache(state)
    if last >= 2:
        stage_train(state, students)
    if last >= 3:
        stage_export(state)
    if last >= 4:
        stage_bench(state)
    state.write_run_json()
    return read_json(state.out_dir / "run.json")
