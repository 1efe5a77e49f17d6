import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel

import teachers.cache.build as runner
from distill.core.errors import DistillError, DistillInputError
from distill.core.fileio import read_json, sha256_file
from distill.core.tokenizer import load_tokenizer
from distill.data.batching import pad_batch
from distill.data.tasks import EncodedSplit, Split, TaskData, TaskInfo, encode_tasks, load_tasks
from distill.model.attention import attention_probs
from distill.model.multitask import MultiTaskModel
from distill.recipe import load_recipe
from teachers.cache.store import TeacherCache

SMALL = {"train": 40, "dev": 8, "test": 8}


def _tasks(recipe_file, tokenizer, edit=None, max_length=32):
    def change(recipe):
        for task in recipe["tasks"]:
            task["limit"] = SMALL
        if edit:
            edit(recipe)

    tasks = load_tasks(load_recipe(recipe_file(change)))
    encode_tasks(tasks, tokenizer, max_length)
    return tasks


@pytest.fixture
def setup(recipe_file, tiny_base, tmp_path):
    recipe = load_recipe(recipe_file())
    tokenizer = load_tokenizer(tiny_base)
    tasks = load_tasks(recipe)
    encode_tasks(tasks, tokenizer, recipe.max_length)
    torch.manual_seed(0)
    teacher_dir = tmp_path / "teacher"
    MultiTaskModel(AutoModel.from_pretrained(tiny_base), [t.info for t in tasks]).save(teacher_dir, tokenizer)
    return teacher_dir, tasks, recipe, tokenizer


def _build(teacher, tasks, layers=(-1,), **kw):
    return runner.build_cache(teacher, tasks, list(layers), **{"shard_size": 16, **kw})


def _shard_hashes(path: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(path.glob("*.safetensors"))}


def test_second_build_is_a_hit_even_from_elsewhere(setup, tmp_path):
    teacher_dir, tasks, _, _ = setup
    first = _build(teacher_dir, tasks)
    second = _build(teacher_dir, tasks)
    assert not first.hit and second.hit
    assert first.path == second.path and first.key == second.key
    assert first.shards == second.shards > 3
    elsewhere = tmp_path / "another-run" / "teacher"
    shutil.copytree(teacher_dir, elsewhere)
    moved = _build(elsewhere, tasks)
    assert moved.hit and moved.key == first.key


def _edit_teacher_file(name, change):
    def edit(ctx):
        path = ctx["teacher"] / name
        path.write_bytes(change(path.read_bytes()))
    return edit


def _bump_head(ctx):
    model = MultiTaskModel.load(ctx["teacher"])
    with torch.no_grad():
        model.heads["sentiment"].bias += 1
    model.save(ctx["teacher"])


def _rewrite_tokenizer_config(ctx):
    path = ctx["teacher"] / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": 99}))


def _change_data_file(ctx):
    csv = ctx["data"]["sentiment"]
    lines = csv.read_text().splitlines()
    lines[1] = "the film was a really good movie,pos"
    csv.write_text("\n".join(lines) + "\n")
    ctx["tasks"] = _tasks(ctx["recipe_file"], ctx["tokenizer"])


def _truncate_left(ctx):
    tokenizer = load_tokenizer(ctx["base"])
    tokenizer.truncation_side = "left"
    ctx["tasks"] = _tasks(ctx["recipe_file"], tokenizer, max_length=9)
    ctx["kwargs"]["max_length"] = 9
    ctx["kwargs"]["truncation"] = "left"


def _reorder_labels(ctx):
    task = ctx["tasks"][0]
    task.info.labels = task.info.labels[::-1]
    task.encoded = {}
    encode_tasks([task], ctx["tokenizer"], 32)


# One entry per key input: how to change it. Changing any one is a miss; changing none is a hit.
KEY_CHANGES = {
    "teacher weights": _bump_head,
    "teacher config": _edit_teacher_file("config.json", lambda b: b.replace(b"{", b'{"unused": 1,', 1)),
    "tokenizer files": _rewrite_tokenizer_config,
    "task definition": lambda ctx: setattr(ctx["tasks"][0].info, "metric", "macro_f1"),
    "label map": _reorder_labels,
    "data file": _change_data_file,
    "split seed": lambda ctx: ctx.update(
        tasks=_tasks(ctx["recipe_file"], ctx["tokenizer"], lambda r: r.update(seed=99)),
        kwargs={**ctx["kwargs"], "split_seed": 99}),
    "max length": lambda ctx: ctx.update(tasks=_tasks(ctx["recipe_file"], ctx["tokenizer"], max_length=9),
                                         kwargs={**ctx["kwargs"], "max_length": 9}),
    "truncation": _truncate_left,
    "hidden layers": lambda ctx: ctx.update(layers=(-1, 1)),
    "attention layers": lambda ctx: ctx["kwargs"].update(qkv_layers=[-1]),
    "dtype": lambda ctx: ctx["kwargs"].update(dtype="float32"),
    "top k": lambda ctx: ctx["kwargs"].update(top_k=1),
    "shard size": lambda ctx: ctx["kwargs"].update(shard_size=8),
}


@pytest.mark.parametrize("change", sorted(KEY_CHANGES))
def test_changing_a_key_input_is_a_miss(change, recipe_file, tiny_base, tiny_data, tmp_path):
    tokenizer = load_tokenizer(tiny_base)
    tasks = _tasks(recipe_file, tokenizer)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    MultiTaskModel(AutoModel.from_pretrained(tiny_base), [t.info for t in tasks]).save(teacher, tokenizer)
    base_kwargs = {"split_seed": 3, "max_length": 32, "truncation": "right"}
    base = _build(teacher, tasks, **base_kwargs)
    assert not base.hit and _build(teacher, tasks, **base_kwargs).hit, "nothing changed: a hit"
    ctx = {"teacher": teacher, "tasks": tasks, "tokenizer": tokenizer, "recipe_file": recipe_file,
           "data": tiny_data, "base": tiny_base, "layers": (-1,), "kwargs": dict(base_kwargs)}
    KEY_CHANGES[change](ctx)
    changed = _build(ctx["teacher"], ctx["tasks"], ctx["layers"], **ctx["kwargs"])
    assert not changed.hit and changed.key != base.key
    assert changed.path.parent == base.path.parent
    inputs = read_json(changed.path / "manifest.json")["inputs"]
    assert inputs != read_json(base.path / "manifest.json")["inputs"], "the change shows in manifest.json"


def test_manifest_keeps_the_key_inputs_readable(setup):
    teacher_dir, tasks, _, _ = setup
    built = _build(teacher_dir, tasks, qkv_layers=[-1], split_seed=3, max_length=32, truncation="right")
    manifest = read_json(built.path / "manifest.json")
    inputs = manifest["inputs"]
    assert set(inputs["teacher"]["tokenizer"]) >= {"tokenizer.json", "tokenizer_config.json"}
    assert {"config.json", "model.safetensors", "heads.safetensors", "tasks.json"} <= set(inputs["teacher"]["model"])
    assert inputs["tasks"][1] == tasks[1].info.to_json()
    sources = inputs["data"]["sentiment"]["sources"]
    assert list(sources.values()) == [sha256_file(Path(next(iter(sources))))]
    assert inputs["data"]["ner"]["splits"]["train"]["examples"] == 160
    assert (inputs["split_seed"], inputs["max_length"], inputs["truncation"]) == (3, 32, "right")
    assert (inputs["hidden_layers"], inputs["qkv_layers"], inputs["dtype"]) == ([4], [4], "float16")
    assert manifest["key"] == built.key and manifest["attention_heads"] == 2 and manifest["hidden_size"] == 32
    shard = manifest["tasks"]["ner"]["splits"]["dev"]["shards"][0]
    assert shard["sha256"] == sha256_file(built.path / shard["file"])
    assert shard["bytes"] == (built.path / shard["file"]).stat().st_size
    assert manifest["shards"] == built.shards and manifest["examples"] == built.examples == 400


def test_the_key_sees_every_label_a_student_learns_from():
    from teachers.cache.key import split_digest

    ids = [np.array([2, 5, 7]), np.array([2, 9])]
    digest = lambda labels: split_digest(EncodedSplit(ids, labels))["sha256"]  # noqa: E731
    assert digest([0.25, 1.5]) != digest([0.75, 1.25]), "regression targets that differ in their fractions"
    assert digest([1.0, 2.0]) == digest([1, 2]), "whole-number targets keep the keys they had"
    assert digest([float("nan"), 1.0]) == digest([-100, 1]), "a missing transfer label hashes as an ignored one"


def test_killed_build_resumes_to_identical_shards(setup, monkeypatch):
    teacher_dir, tasks, _, _ = setup
    whole = _build(teacher_dir, tasks)
    expected = _shard_hashes(whole.path)
    for p in whole.path.iterdir():
        p.unlink()
    real_save, calls = runner.atomic_save_safetensors, []

    def dying_save(path, tensors, metadata=None):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(path)
        real_save(path, tensors, metadata)

    monkeypatch.setattr(runner, "atomic_save_safetensors", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _build(teacher_dir, tasks)
    assert len(list(whole.path.glob("*.safetensors"))) == 3
    assert not list(whole.path.glob("*.tmp")), "no half-written shard is left behind"
    monkeypatch.setattr(runner, "atomic_save_safetensors", real_save)
    resumed = _build(teacher_dir, tasks)
    assert not resumed.hit
    assert _shard_hashes(resumed.path) == expected


def test_truncated_leftover_shard_is_rebuilt_on_resume(setup):
    teacher_dir, tasks, _, _ = setup
    built = _build(teacher_dir, tasks)
    expected = _shard_hashes(built.path)
    (built.path / "manifest.json").unlink()
    victim = sorted(built.path.glob("*.safetensors"))[1]
    victim.write_bytes(victim.read_bytes()[:-100])
    for later in sorted(built.path.glob("*.safetensors"))[5:]:
        later.unlink()
    resumed = _build(teacher_dir, tasks)
    assert not resumed.hit and _shard_hashes(resumed.path) == expected


KILL_SCRIPT = """
import os, signal, sys
import teachers.cache.build as runner
from distill.data.tasks import encode_tasks, load_tasks
from distill.recipe import load_recipe
from distill.core.tokenizer import load_tokenizer

recipe_path, teacher_dir = sys.argv[1], sys.argv[2]
tasks = load_tasks(load_recipe(recipe_path))
encode_tasks(tasks, load_tokenizer(teacher_dir), 32)
real_save, saved = runner.atomic_save_safetensors, []

def save_then_die(path, tensors, metadata=None):
    real_save(path, tensors, metadata)
    saved.append(path)
    if len(saved) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

runner.atomic_save_safetensors = save_then_die
runner.build_cache(teacher_dir, tasks, [-1], shard_size=16)
"""


def test_build_killed_with_sigkill_resumes_to_identical_shards(setup, recipe_file):
    teacher_dir, tasks, _, _ = setup
    whole = _build(teacher_dir, tasks)
    expected = _shard_hashes(whole.path)
    shutil.rmtree(whole.path)
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(recipe_file()), str(teacher_dir)],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == -9, done.stderr[-2000:]
    assert len(list(whole.path.glob("*.safetensors"))) == 2 and not (whole.path / "manifest.json").exists()
    resumed = _build(teacher_dir, tasks)
    assert not resumed.hit and _shard_hashes(resumed.path) == expected


def test_flipped_byte_is_detected_and_rebuilt(setup):
    teacher_dir, tasks, _, _ = setup
    built = _build(teacher_dir, tasks)
    expected = _shard_hashes(built.path)
    victim = sorted(built.path.glob("*.safetensors"))[2]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(DistillError, match=str(victim)):
        TeacherCache(built.path)
    rebuilt = _build(teacher_dir, tasks)
    assert not rebuilt.hit
    assert _shard_hashes(rebuilt.path) == expected
    TeacherCache(built.path)


def _is_safetensors(data: bytes) -> bool:
    (header,) = struct.unpack("<Q", data[:8])
    return 8 + header <= len(data) and json.loads(data[8 : 8 + header]) is not None


def test_cache_holds_no_pickle_and_only_real_tokens(setup):
    teacher_dir, tasks, _, _ = setup
    built = _build(teacher_dir, tasks, layers=(0, -1), qkv_layers=[2, -1])
    _build(teacher_dir, tasks, top_k=1)
    files = [p for p in built.path.parent.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        data = path.read_bytes()
        assert not data.startswith(b"\x80"), f"{path} looks like a pickle"
        if path.suffix == ".json":
            json.loads(data)
        else:
            assert path.suffix == ".safetensors" and _is_safetensors(data), path
    cache = TeacherCache(built.path)
    ner = tasks[1].encoded["train"]
    with safe_open(str(built.path / "ner.train.00000.safetensors"), "pt") as shard:
        tokens = sum(len(ids) for ids in ner.input_ids[:16])
        assert shard.get_tensor("logits").shape[0] == tokens
        assert shard.get_tensor("hidden.4").dtype == torch.float16
        assert shard.get_tensor("qkv.2.key").shape == (tokens, 32)
    assert cache.hidden_layers == [0, 4] and cache.qkv_layers == [2, 4]
    with pytest.raises(DistillError, match=r"no layer\(s\) \[3\]"):
        cache.targets("ner", "train", np.array([0]), 20, True, [], qkv_layers=[3])


def test_cached_targets_match_the_teacher(setup):
    teacher_dir, tasks, _, tokenizer = setup
    cache = TeacherCache(_build(teacher_dir, tasks, qkv_layers=[-1]).path)
    model = MultiTaskModel.load(teacher_dir)
    eager = AutoModel.from_pretrained(teacher_dir, attn_implementation="eager").eval()
    for task in tasks:
        split = task.encoded["train"]
        indices = np.array([0, 5, 17, 40])
        batch = pad_batch(task.info.name, split, indices, tokenizer.pad_token_id)
        token_level = task.info.type == "token_classification"
        targets = cache.targets(task.info.name, "train", indices, batch.input_ids.shape[1], token_level, [4],
                                qkv_layers=[4])
        ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
        with torch.no_grad():
            out = model(ids, mask, task=task.info.name, output_hidden_states=True)
            attentions = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        real = mask.bool()
        expected = out.logits[task.info.name]
        if token_level:
            assert torch.allclose(targets.logits[real], expected[real], atol=1e-2)
        else:
            assert torch.allclose(targets.logits, expected, atol=1e-2)
        assert torch.allclose(targets.hidden[4][real], out.hidden_states[4][real], atol=2e-2)
        assert targets.hidden[4][~real].abs().sum() == 0
        query, key, value = targets.qkv[4]
        assert query.dtype == torch.float32 and value.shape == (4, batch.input_ids.shape[1], 32)
        probs = attention_probs(query, key, cache.attention_heads, mask)
        difference = (probs - attentions[3]).abs().amax(dim=(1, 3))  # per example and query token
        assert difference[real].max() < 2e-3, "attention probabilities recomputed from the cached Q and K"


def test_top_k_logits_of_a_large_label_space(setup):
    teacher_dir, tasks, _, tokenizer = setup
    labels = [f"class{i:02d}" for i in range(70)]
    rng = np.random.default_rng(0)
    ids = tasks[0].encoded["train"].input_ids[:40]
    gold = [str(labels[i]) for i in rng.integers(0, 70, len(ids))]
    topic = TaskData(TaskInfo("topic", "sequence_classification", labels, "accuracy"),
                     {"train": Split(["x"] * len(ids), gold, list(range(len(ids))), "synthetic")},
                     {"train": EncodedSplit(ids, [labels.index(g) for g in gold])})
    every = [*tasks, topic]
    torch.manual_seed(1)
    model = MultiTaskModel(AutoModel.from_pretrained(teacher_dir), [t.info for t in every])
    model.save(teacher_dir, tokenizer)
    built = _build(teacher_dir, every, top_k=5)
    manifest = read_json(built.path / "manifest.json")
    assert manifest["tasks"]["topic"]["top_k"] == 5 and manifest["tasks"]["sentiment"]["top_k"] is None
    with safe_open(str(built.path / "topic.train.00000.safetensors"), "pt") as shard:
        assert shard.get_tensor("logits.values").shape == (16, 5)
        assert shard.get_tensor("logits.indices").dtype == torch.int16
        assert "logits" not in set(shard.keys())
    cache = TeacherCache(built.path)
    indices = np.array([0, 3, 39])
    dense = cache.targets("topic", "train", indices, 0, False, []).logits
    batch = pad_batch("topic", topic.encoded["train"], indices, 0)
    with torch.no_grad():
        teacher = model.eval()(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                               task="topic").logits["topic"]
    assert dense.shape == (3, 70)
    top = teacher.topk(5, dim=-1)
    assert torch.equal(dense.topk(5, dim=-1).indices, top.indices)
    assert torch.allclose(dense.gather(-1, top.indices), top.values, atol=1e-2)
    for temperature in (1.0, 2.0, 20.0):
        probs = (dense / temperature).softmax(-1)
        assert probs.gather(-1, top.indices).sum(-1).min() > 1 - 1e-6, "missing classes get ~0 probability"
        kept = (top.values / temperature).softmax(-1)
        assert torch.allclose(probs.gather(-1, top.indices), kept, atol=1e-2)


def test_bad_layers_are_input_errors(setup):
    teacher_dir, tasks, _, _ = setup
    with pytest.raises(DistillInputError, match=r"distillation\.hidden_layers"):
        _build(teacher_dir, tasks, layers=(7,))
    with pytest.raises(DistillInputError, match=r"cache\.attention_layers"):
        _build(teacher_dir, tasks, qkv_layers=[0])
    with pytest.raises(DistillInputError, match=r"cache\.attention_layers"):
        _build(teacher_dir, tasks, qkv_layers=[-5])
