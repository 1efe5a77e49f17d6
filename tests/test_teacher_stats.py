"""Teacher statistics are measured once per teacher, data and setting, and never trusted when they do not match."""

from __future__ import annotations

import shutil

import torch

import students.build as build
from distill.recipe import StudentSpec
from students.build import build_student
from students.teacher_stats import TeacherStats, stats_dir


def _count_calls(monkeypatch, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(build, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(build, name, counted)
    return calls


def test_a_sweep_measures_the_teacher_once_and_builds_the_same_students(tiny_teacher, monkeypatch):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    importance = _count_calls(monkeypatch, "score_importance")
    covariance = _count_calls(monkeypatch, "hidden_covariance")
    effect = _count_calls(monkeypatch, "_teacher_vocab_effect")
    narrow = StudentSpec(name="n", layers=2, hidden_size=16, ffn=16, vocab=40, pruning={"examples": 16})
    first = build_student(recipe, narrow, tasks, teacher_dir, tokenizer)
    again = build_student(recipe, narrow.model_copy(update={"name": "n2"}), tasks, teacher_dir, tokenizer)
    other = build_student(recipe, StudentSpec(name="f", layers=3, ffn=16, vocab=40, pruning={"examples": 16}),
                          tasks, teacher_dir, tokenizer)
    assert (len(importance), len(covariance), len(effect)) == (1, 1, 1)
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert first.details["vocab"] == again.details["vocab"] == other.details["vocab"]
    assert sorted(p.name.split("-")[0] for p in stats_dir().iterdir()) == ["hidden", "importance", "vocab"]

    build_student(recipe, StudentSpec(name="g", layers=2, ffn=16, pruning={"examples": 8}), tasks, teacher_dir,
                  tokenizer)
    assert len(importance) == 2, "another number of examples is another measurement"


def test_another_teacher_or_a_damaged_file_is_measured_again(tiny_teacher, tmp_path):
    _, teacher_dir, _, tasks = tiny_teacher
    calls: list[int] = []

    def measure() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"value": torch.arange(4.0)}

    stats = TeacherStats(teacher_dir, tasks)
    assert torch.equal(stats.tensors("importance", {"examples": 4}, measure)["value"], torch.arange(4.0))
    assert torch.equal(stats.tensors("importance", {"examples": 4}, measure)["value"], torch.arange(4.0))
    assert len(calls) == 1

    (stored,) = stats_dir().iterdir()
    stored.write_bytes(stored.read_bytes()[:20])
    stats.tensors("importance", {"examples": 4}, measure)
    assert len(calls) == 2, "a file that does not read back is measured again"

    changed = tmp_path / "teacher"
    shutil.copytree(teacher_dir, changed)
    (changed / "tasks.json").write_text((changed / "tasks.json").read_text() + "\n")
    TeacherStats(changed, tasks).tensors("importance", {"examples": 4}, measure)
    assert len(calls) == 3, "another teacher's files are another key"

    stored_json = TeacherStats(teacher_dir, tasks).json("vocab-effect", {"vocab": "a"}, lambda: {"score": 1})
    assert stored_json == {"score": 1}
    assert TeacherStats(teacher_dir, tasks).json("vocab-effect", {"vocab": "a"}, lambda: {"score": 2}) == {"score": 1}
    assert TeacherStats(teacher_dir, tasks).json("vocab-effect", {"vocab": "b"}, lambda: {"score": 2}) == {"score": 2}


def test_a_cache_directory_that_cannot_be_written_only_costs_time(tiny_teacher, monkeypatch, caplog):
    import students.teacher_stats as teacher_stats

    _, teacher_dir, _, tasks = tiny_teacher

    def refuse(*_args, **_kwargs):
        raise OSError("read-only file system")

    monkeypatch.setattr(teacher_stats, "atomic_save_safetensors", refuse)
    value = TeacherStats(teacher_dir, tasks).tensors("importance", {"examples": 4}, lambda: {"v": torch.ones(2)})
    assert torch.equal(value["v"], torch.ones(2))
    assert "could not keep the teacher statistics" in caplog.text
