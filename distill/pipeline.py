"""`distill run`: every stage in order, each skipped when its inputs have not changed (like make)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.core.errors import DistillInputError
from distill.core.fileio import atomic_write_json, read_json, sha256_json
from distill.core.processes import is_main_process, process_device, wait_for_everyone
from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import TaskData, encode_tasks, load_tasks
from distill.demo.assets import demo_model_path
from distill.recipe import Recipe
from distill.stage_inputs import (
    bench_hash_inputs,
    export_hash_inputs,
    online_source_key,
    per_task_hash_inputs,
    student_hash_inputs,
    teacher_hash_inputs,
)

if TYPE_CHECKING:
    from teachers.cache.store import TeacherSource

log = logging.getLogger(__name__)
STAGES = ("teacher", "cache", "train", "export", "bench")
STATE_DIR = ".distill"
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class RunState:
    """What the stages share: the recipe, the output directory, the data, and what each stage produced."""

    recipe: Recipe
    out_dir: Path
    force: bool | str = False
    resume: bool = False
    verify: bool = True  # bench: compare each artifact's files with its manifest's sha256 first
    tasks: list[TaskData] = field(default_factory=list)
    tokenizer: Any = None
    teacher_dir: Path | None = None
    teacher_checkpoints: dict[str, Path] | None = None  # per-task teachers: {task: checkpoint directory}
    cache: Any = None  # the TeacherSource: a TeacherCache, or an OnlineTeacher when the recipe says online
    source_key: str = ""  # what identifies the teacher outputs (the cache key, or the online teacher's hash)
    student_dirs: dict[str, Path] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def run_stage(self, name: str, input_hash: str | None, outputs: list[Path], body: Callable[[], object],
                  every_process: bool = False, intact: Callable[[], bool] | None = None) -> None:
        """Run `body` unless a record says it already ran on the same inputs and its outputs exist.

        With `input_hash` None the body always runs and says itself whether it found its result already made
        (returns True: a content-addressed cache hit). Under several processes (torchrun, accelerate launch)
        only the main one runs the body, unless `every_process` (training); every process waits for the stage
        to end, and only the main one writes records. `intact`, when given, also has to say the outputs are
        unchanged for the stage to count as done."""
        main = is_main_process()
        record_path = self.out_dir / STATE_DIR / "stages" / f"{name.replace(':', '-')}.json"
        started = time.perf_counter()
        record = read_json(record_path) if record_path.is_file() else {}
        forced = self.force is True or self.force == name.split(":")[0]
        if input_hash is not None and not forced and record.get("input_hash") == input_hash and all(
                p.exists() for p in outputs) and (intact is None or intact()):
            status = "cached"
        else:
            log.info("stage %s: running", name)
            result = body() if main or every_process else None
            status = "cached" if input_hash is None and result is True else "ran"
            if main:
                atomic_write_json(record_path, {"input_hash": input_hash, "finished": time.time()})
        wait_for_everyone()
        self.stages.append({"name": name, "status": status, "seconds": round(time.perf_counter() - started, 3)})
        log.info("stage %s: %s (%.1fs)", name, status, self.stages[-1]["seconds"])
        self.write_run_json()

    def run_json(self) -> dict:
        """What run.json holds: the stages so far and their total time."""
        return {"stages": self.stages, "seconds": round(sum(s["seconds"] for s in self.stages), 3)}

    def write_run_json(self) -> None:
        if is_main_process():
            atomic_write_json(self.out_dir / "run.json", self.run_json())


def _per_task_checkpoints(recipe: Recipe) -> dict[str, Path]:
    """Each task's fine-tuned checkpoint as a local directory, in the recipe's task order."""
    from teachers.per_task import resolve_checkpoint

    assert recipe.teacher.per_task is not None
    per_task = recipe.teacher.per_task
    return {t.name: resolve_checkpoint(recipe.resolve(per_task[t.name], f"teacher.per_task.{t.name}"))
            for t in recipe.tasks}


def _teacher_source(recipe: Recipe) -> Path | str:
    """Where the tokenizer (and the students' starting weights) come from."""
    spec = recipe.teacher
    if spec.per_task:
        return next(iter(_per_task_checkpoints(recipe).values()))
    if spec.path:
        from distill.model.multitask import HEADS_FILE, TASKS_FILE

        path = Path(recipe.resolve(spec.path, "teacher.path", hub=False))
        missing = [name for name in ("config.json", HEADS_FILE, TASKS_FILE) if not (path / name).is_file()]
        if missing:
            raise DistillInputError(f"teacher.path: {path} is not a teacher saved by distill (no "
                                    f"{', '.join(missing)}); give a fine-tuned model as teacher.base_model or "
                                    "teacher.per_task instead")
        return path
    assert spec.base_model is not None
    if spec.base_model.startswith("demo:"):
        return demo_model_path(spec.base_model)
    return recipe.resolve(spec.base_model, "teacher.base_model")


def check_inputs(recipe: Recipe, out_dir: Path | None = None) -> tuple[Any, list[TaskData]]:
    """Everything a run reads from the user, checked without writing anything: the output directory, the
    teacher (or per-task checkpoints) and its tokenizer, the students' shapes against it, and every task's
    data (read, split, labels checked, tokenised). Returns the tokenizer and the encoded tasks."""
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise DistillInputError(f"--out: {out_dir} is a file; give a directory (new, or one of an earlier run)")
    source = _teacher_source(recipe)
    tokenizer = load_tokenizer(source, recipe.teacher.trust_remote_code)
    _check_against_teacher_config(recipe, source)
    _check_init_from(recipe, tokenizer)
    tasks = load_tasks(recipe)
    if recipe.teacher.per_task:
        from teachers.per_task import check_per_task

        check_per_task(_per_task_checkpoints(recipe), tasks, recipe.teacher.trust_remote_code)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    return tokenizer, tasks


def prepare(recipe: Recipe, out_dir: Path, force: bool | str = False, resume: bool = False) -> RunState:
    """Check the inputs (`check_inputs`: nothing is written before they pass) and set up the run state."""
    tokenizer, tasks = check_inputs(recipe, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(recipe, out_dir, force, resume)
    state.tokenizer, state.tasks = tokenizer, tasks
    return state


def _check_against_teacher_config(recipe: Recipe, source: Path | str) -> None:
    """Every student's shape, and max_length, against what the teacher's config.json allows."""
    from transformers import AutoConfig

    from distill.model.encoder import usable_positions
    from students.build import check_student_shape

    try:
        config = AutoConfig.from_pretrained(str(source), trust_remote_code=recipe.teacher.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DistillInputError(f"{source}: no readable config.json: {exc}".replace("\n", " ")) from exc
    for spec in recipe.students:
        check_student_shape(spec, config)
    positions = usable_positions(config)
    if positions is not None and recipe.max_length > positions:
        raise DistillInputError(f"max_length: {recipe.max_length} tokens, but the teacher {source} has "
                                f"{positions} positions; set max_length to {positions} or less")


def _check_init_from(recipe: Recipe, tokenizer: Any) -> None:
    """Every student started from another pretrained encoder: that encoder exists, is deep and long enough, and
    reads the teacher's word pieces."""
    if any(spec.init_from for spec in recipe.students):
        from students.pretrained import check_init_from

        for spec in recipe.students:
            if spec.init_from:
                check_init_from(recipe, spec, tokenizer)


def stage_teacher(state: RunState) -> None:
    from teachers.finetune import fine_tune_teacher

    recipe = state.recipe
    if recipe.teacher.per_task:
        state.teacher_dir = state.out_dir / "teacher"
        _stage_per_task_teacher(state)
        return
    source = _teacher_source(recipe)
    if recipe.teacher.path:
        state.teacher_dir = Path(source)
        _check_teacher_tasks(state.teacher_dir, state.tasks)
        state.run_stage("teacher", None, [], lambda: True, every_process=True)
        return
    state.teacher_dir = state.out_dir / "teacher"
    inputs = teacher_hash_inputs(recipe, source, state.tasks)
    state.run_stage("teacher", sha256_json(inputs), [state.teacher_dir / "heads.safetensors"],
                    lambda: fine_tune_teacher(recipe, state.tasks, str(source), state.tokenizer, state.teacher_dir,
                                              state.out_dir / "logs" / "teacher.jsonl",
                                              state.out_dir / CHECKPOINTS_DIR / "teacher", state.resume),
                    every_process=True)


def _stage_per_task_teacher(state: RunState) -> None:
    """Save the students' starting point (first encoder + heads) as the teacher (`prepare` checked the
    checkpoints)."""
    from teachers.per_task import assemble_init_model

    recipe = state.recipe
    checkpoints = _per_task_checkpoints(recipe)
    state.teacher_checkpoints = checkpoints
    inputs = per_task_hash_inputs(recipe, checkpoints, state.tasks)
    state.run_stage("teacher", sha256_json(inputs), [state.teacher_dir / "heads.safetensors"],
                    lambda: assemble_init_model(checkpoints, state.tasks, state.tokenizer, state.teacher_dir,
                                                recipe.teacher.trust_remote_code, recipe.seed))


def _check_teacher_tasks(teacher_dir: Path, tasks: list[TaskData]) -> None:
    """A given teacher must have a head for every task of the recipe, with the same labels in the same order."""
    from distill.model.multitask import TASKS_FILE, load_task_infos

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
    from transformers import AutoConfig

    from distill.distillation.layer_map import needed_teacher_layers
    from distill.model.layer_numbers import normalise_attention_layers
    from teachers.cache.build import build_cache
    from teachers.cache.store import TeacherCache

    recipe = state.recipe
    config, spec = recipe.distillation, recipe.cache
    if config.teacher_source == "online":
        if state.teacher_checkpoints:
            raise DistillInputError("distillation.teacher_source: online needs one multi-task teacher; with "
                                    "teacher.per_task the students learn from the cache")
        # The teacher runs on every training batch instead; nothing to build.
        state.source_key = online_source_key(state.teacher_dir, state.tasks)
        state.stages.append({"name": "cache", "status": "skipped", "seconds": 0.0})
        state.write_run_json()
        return
    teacher_layers = int(AutoConfig.from_pretrained(state.teacher_dir, trust_remote_code=recipe.teacher
                                                    .trust_remote_code).num_hidden_layers)
    hidden, qkv = needed_teacher_layers(config, recipe.students, teacher_layers)
    qkv_layers = sorted(set(normalise_attention_layers(spec.attention_layers, teacher_layers)) | set(qkv))
    result = {}

    def body() -> bool:
        # every process takes part: under torchrun / accelerate launch they share the shards out
        built = build_cache(state.teacher_checkpoints or state.teacher_dir, state.tasks, config.hidden_layers + hidden,
                            qkv_layers=qkv_layers, dtype=spec.dtype, shard_size=spec.shard_size,
                            batch_size=spec.batch_size, top_k=spec.top_k, split_seed=recipe.seed,
                            max_length=recipe.max_length, truncation=state.tokenizer.truncation_side,
                            trust_remote_code=recipe.teacher.trust_remote_code)
        result["value"] = built
        if is_main_process():
            atomic_write_json(state.out_dir / "cache.json", built.to_json())
        return built.hit

    # The cache entry is content-addressed: the stage always asks it, and a hit is reported as cached.
    state.run_stage("cache", None, [], body, every_process=True)
    # build_cache has just checked every shard's sha256 (hit) or written them (miss)
    state.cache = TeacherCache(result["value"].path, verify=False)
    state.source_key = state.cache.manifest["key"]


def _training_source(state: RunState) -> TeacherSource:
    """The teacher source the students learn from: the cache, or the teacher itself (loaded once, on first use)."""
    if state.cache is None:
        from distill.model.multitask import MultiTaskModel
        from teachers.cache.online import OnlineTeacher

        device = process_device()
        teacher = MultiTaskModel.load(state.teacher_dir, state.recipe.teacher.trust_remote_code)
        state.cache = OnlineTeacher(teacher, state.tasks, state.pad_id, device)
    return state.cache


def stage_train(state: RunState, only: list[str] | None) -> None:
    from distill.distillation.distiller import train_student

    recipe = state.recipe
    for spec in recipe.students:
        directory = state.out_dir / "students" / spec.name
        state.student_dirs[spec.name] = directory
        if only and spec.name not in only:
            continue
        inputs = student_hash_inputs(recipe, spec, state.source_key)
        state.run_stage(f"train:{spec.name}", sha256_json(inputs), [directory / "heads.safetensors"],
                        lambda spec=spec, directory=directory: train_student(
                            recipe, state.tasks, state.teacher_dir, _training_source(state), spec, state.tokenizer,
                            directory, state.out_dir / "logs" / f"student-{spec.name}.jsonl",
                            state.out_dir / CHECKPOINTS_DIR / f"student-{spec.name}", state.resume),
                        every_process=True)


def stage_export(state: RunState) -> None:
    from distill.export.artifact import export_artifact
    from students.vocab_map import student_inputs

    recipe = state.recipe
    models = {"teacher": state.teacher_dir, **state.student_dirs}
    for name, model_dir in models.items():
        directory = state.out_dir / "artifacts" / name
        state.artifacts[name] = directory
        if not model_dir.is_dir():
            raise DistillInputError(f"export: {model_dir} does not exist; run `distill train` for it first")
        inputs = export_hash_inputs(recipe, model_dir, state.tasks)
        # a vocab-pruned student reads its own token ids: its checks and calibration data are remapped
        tasks, pad_id = student_inputs(model_dir, state.tasks, state.pad_id)
        state.run_stage(f"export:{name}", sha256_json(inputs), [directory / "manifest.json"],
                        lambda model_dir=model_dir, directory=directory, tasks=tasks, pad_id=pad_id: export_artifact(
                            model_dir, directory, tasks, recipe.export, recipe.max_length, pad_id),
                        intact=lambda directory=directory: _artifact_intact(directory))


def _artifact_intact(directory: Path) -> bool:
    """Whether an artifact's files are still the ones its manifest records; a changed one is exported again."""
    from distill.core.manifest import verify_artifact

    try:
        verify_artifact(directory)
    except DistillInputError as exc:
        log.warning("%s; exporting it again", exc)
        return False
    return True


def stage_bench(state: RunState) -> None:
    from distill.bench.model_card import write_model_cards
    from distill.bench.suite import model_entries, run_benchmarks

    recipe = state.recipe
    inputs = bench_hash_inputs(recipe, state.artifacts, state.teacher_dir, state.tasks)

    def body() -> None:
        from distill.core.manifest import verify_artifact

        if state.verify:
            for directory in state.artifacts.values():
                verify_artifact(directory)
        models = {"teacher": state.teacher_dir, **state.student_dirs}
        entries = model_entries(state.teacher_dir, state.artifacts, models)
        report = run_benchmarks(state.tasks, entries, recipe.bench, state.pad_id, state.out_dir)
        teacher_sizes = _teacher_sizes(state.teacher_dir, recipe.teacher.trust_remote_code)
        write_model_cards(report, state.artifacts, _hub_base_model(recipe), teacher_sizes)

    state.run_stage("bench", sha256_json(inputs), [state.out_dir / "report.json"], body)


def _hub_base_model(recipe: Recipe) -> str | None:
    """The teacher's hub id, for the model cards (None for a local model, which a card cannot link to)."""
    from distill.demo.assets import DEMO_HUB_IDS

    spec = recipe.teacher
    if spec.base_model and spec.base_model.startswith("demo:"):
        return DEMO_HUB_IDS.get(spec.base_model)
    for value in [spec.base_model] if spec.base_model else list((spec.per_task or {}).values()):
        if not (recipe.base_dir / value).exists() and not Path(value).expanduser().exists():
            return value  # a hub id: the checks before the run found no such path
    return None


def _teacher_sizes(teacher_dir: Path, trust_remote_code: bool) -> dict[str, int | None]:
    """The teacher's sizes for the model cards (None where its config holds none)."""
    from transformers import AutoConfig

    from distill.model.encoder import config_sizes

    config = AutoConfig.from_pretrained(str(teacher_dir), trust_remote_code=trust_remote_code)
    return {key: value or None for key, value in config_sizes(config).items()}


def run_recipe(recipe: Recipe, out_dir: str | Path, until: str = "bench", students: list[str] | None = None,
               force: bool | str = False, resume: bool = False, verify: bool = True) -> dict:
    """Run the stages of `recipe` up to and including `until`; returns the content of run.json.

    `force=True` reruns every stage; a stage name (e.g. "bench") reruns only that stage. `resume=True`
    continues an interrupted teacher or student training from its newest checkpoint. `verify=False` lets the
    bench measure artifacts whose files no longer match their manifest's sha256."""
    if until not in STAGES:
        raise DistillInputError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
    unknown = set(students or []) - {s.name for s in recipe.students}
    if unknown:
        raise DistillInputError(f"--student: no student named {sorted(unknown)} in the recipe")
    state = prepare(recipe, Path(out_dir), force, resume)
    state.verify = verify
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
    return state.run_json()
