from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel

import teachers.runner as runner
from distill.batching import pad_batch
from distill.cache import TeacherCache
from distill.data import encode_tasks, load_tasks
from distill.errors import DistillError
from distill.fileio import sha256_file
from distill.recipe import load_recipe
from distill.tokenizer import load_tokenizer
from teachers.multitask import MultiTaskModel


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


def _build(teacher_dir, tasks, layers=(-1,), **kw):
    return runner.build_cache(teacher_dir, tasks, list(layers), shard_size=16, **kw)


def _shard_hashes(path: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(path.glob("*.safetensors"))}


def test_second_build_is_a_hit_even_from_elsewhere(setup):
    teacher_dir, tasks, _, _ = setup
    first = _build(teacher_dir, tasks)
    second = _build(teacher_dir, tasks)
    assert not first.hit and second.hit
    assert first.path == second.path and first.key == second.key
    assert first.shards == second.shards > 3


def test_each_key_input_changes_the_key(setup, recipe_file, tiny_base):
    teacher_dir, tasks, _, tokenizer = setup
    base = _build(teacher_dir, tasks).key
    assert _build(teacher_dir, tasks, layers=(-1, 1)).key != base
    assert _build(teacher_dir, tasks, dtype="float32").key != base
    other = load_tasks(load_recipe(recipe_file(lambda r: r.update(seed=99))))
    encode_tasks(other, tokenizer, 32)
    assert _build(teacher_dir, other).key != base
    shorter = load_tasks(load_recipe(recipe_file()))
    encode_tasks(shorter, tokenizer, 9)
    assert _build(teacher_dir, shorter).key != base
    model = MultiTaskModel.load(teacher_dir)
    with torch.no_grad():
        model.heads["sentiment"].bias += 1
    model.save(teacher_dir)
    assert _build(teacher_dir, tasks).key != base
    assert _build(teacher_dir, tasks).hit


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


def test_flipped_byte_is_detected_and_rebuilt(setup):
    teacher_dir, tasks, _, _ = setup
    built = _build(teacher_dir, tasks)
    expected = _shard_hashes(built.path)
    victim = sorted(built.path.glob("*.safetensors"))[2]
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(DistillError, match=victim.name):
        TeacherCache(built.path)
    rebuilt = _build(teacher_dir, tasks)
    assert not rebuilt.hit
    assert _shard_hashes(rebuilt.path) == expected


def test_cache_holds_no_pickle_and_only_real_tokens(setup):
    teacher_dir, tasks, _, _ = setup
    built = _build(teacher_dir, tasks, layers=(0, -1))
    for path in built.path.iterdir():
        assert path.suffix in (".safetensors", ".json")
        assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"
    cache = TeacherCache(built.path)
    ner = tasks[1].encoded["train"]
    from safetensors import safe_open

    with safe_open(str(built.path / "ner.train.00000.safetensors"), "pt") as shard:
        assert shard.get_tensor("logits").shape[0] == sum(len(ids) for ids in ner.input_ids[:16])
        assert shard.get_tensor("hidden.4").dtype == torch.float16
    assert cache.hidden_layers == [0, 4]


def test_cached_targets_match_the_teacher(setup):
    teacher_dir, tasks, _, tokenizer = setup
    cache = TeacherCache(_build(teacher_dir, tasks).path)
    model = MultiTaskModel.load(teacher_dir)
    for task in tasks:
        split = task.encoded["train"]
        indices = np.array([0, 5, 17, 40])
        batch = pad_batch(task.info.name, split, indices, tokenizer.pad_token_id)
        token_level = task.info.type == "token_classification"
        targets = cache.targets(task.info.name, "train", indices, batch.input_ids.shape[1], token_level, [4])
        with torch.no_grad():
            out = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                        task=task.info.name, output_hidden_states=True)
        mask = torch.from_numpy(batch.attention_mask).bool()
        expected = out.logits[task.info.name]
        if token_level:
            assert torch.allclose(targets.logits[mask], expected[mask], atol=1e-2)
        else:
            assert torch.allclose(targets.logits, expected, atol=1e-2)
        assert torch.allclose(targets.hidden[4][mask], out.hidden_states[4][mask], atol=2e-2)
        assert targets.hidden[4][~mask].abs().sum() == 0
