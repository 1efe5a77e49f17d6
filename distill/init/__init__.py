"""`distill init`: a commented starter recipe from a model and data files, task types guessed from the data.

The recipe is rendered as YAML text with a comment on every guessed value, validated by the recipe loader and
checked like `distill check` (teacher, tokenizer, students' shapes, data) before it is written.

The flow (`write_starter_recipe`): the --data values name the tasks and their files (`data_guess.parse_data`); a
sample of each task's train file gives its text and label fields and its type (`data_guess.guess_task`); --model
gives the teacher section and the config the students are sized from (`teacher_choice.choose_teacher`); a sweep of
students is sized from it (`student_plan.plan_students`); `render.render_recipe` writes the commented YAML, which is
loaded as a recipe and checked before it is written. `arguments` reads the `[TASK=]VALUE` flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill.core.errors import DistillInputError
from distill.core.fileio import atomic_write_text
from distill.init.arguments import per_task_values
from distill.init.data_guess import TASK_TYPES, guess_task, parse_data
from distill.init.render import render_recipe
from distill.init.student_plan import plan_students
from distill.init.teacher_choice import TeacherChoice, choose_teacher
from distill.recipe import Recipe, parse_recipe

__all__ = ["InitOptions", "write_starter_recipe"]


@dataclass
class InitOptions:
    """What `distill init` was given on the command line."""

    models: list[str]
    data: list[str]
    out: Path = Path("recipe.yaml")
    force: bool = False
    text_fields: list[str] = field(default_factory=list)
    label_fields: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)


def write_starter_recipe(options: InitOptions) -> list[str]:
    """Guess, check and write the starter recipe; returns the lines to print."""
    out = options.out
    if out.is_dir():
        raise DistillInputError(f"--out: {out} is a directory; give the recipe file to write")
    if out.exists() and not options.force:
        raise DistillInputError(f"--out: {out} exists; pass --force to overwrite it")
    files = parse_data(options.data)
    names = list(files)
    texts = per_task_values(options.text_fields, names, "--text-field")
    labels = per_task_values(options.label_fields, names, "--label-field")
    types = per_task_values(options.types, names, "--type")
    unknown = sorted(set(types.values()) - set(TASK_TYPES))
    if unknown:
        raise DistillInputError(f"--type: unknown task type {unknown[0]!r}; types are {', '.join(TASK_TYPES)}")
    tasks = [guess_task(n, files[n], texts.get(n), labels.get(n), types.get(n)) for n in names]
    base_dir = out.expanduser().resolve().parent
    teacher = choose_teacher(options.models, tasks, base_dir)
    students = plan_students(teacher.config)
    text = render_recipe(tasks, teacher, students, base_dir, out, _command(options))
    created = [d for d in (base_dir, *base_dir.parents) if not d.exists()]
    base_dir.mkdir(parents=True, exist_ok=True)  # the recipe's relative paths start there
    try:
        recipe = parse_recipe(yaml.safe_load(text), base_dir, origin=f"{out} (as written)")
        checked = _check(recipe, teacher)
    except BaseException:
        for directory in created:  # a refused recipe leaves nothing behind
            directory.rmdir()
        raise
    atomic_write_text(out, text)
    summary = ", ".join(f"{t.name} ({t.type}: {t.text_field} -> {t.label_field})" for t in tasks)
    return [f"wrote {out}: task(s) {summary}; teacher {next(iter(teacher.section))}; students "
            f"{', '.join(s.name for s in students)}", *checked,
            f"next: distill run {out} --out runs/mine"]


def _check(recipe: Recipe, teacher: TeacherChoice) -> list[str]:
    """Check the recipe as `distill check` does; without a readable teacher, only its data."""
    if not teacher.readable:
        from distill.data.tasks import load_tasks

        load_tasks(recipe)
        return [f"the data reads; the teacher {teacher.section['base_model']} could not be read here: run "
                "`distill check` where it can be, and adjust the students to its size"]
    from distill.pipeline import check_inputs

    _, tasks = check_inputs(recipe)
    return [f"checked: task {t.info.name}: "
            + (f"{len(t.info.labels)} labels, " if t.info.labels else "")
            + ", ".join(f"{split} {len(data)}" for split, data in t.encoded.items()) for t in tasks]


def _command(options: InitOptions) -> str:
    parts = ["distill init", *(f"--model {m}" for m in options.models), *(f"--data {d}" for d in options.data)]
    parts += [f"--text-field {v}" for v in options.text_fields] + [f"--label-field {v}" for v in options.label_fields]
    parts += [f"--type {v}" for v in options.types]
    return " ".join(parts)
