import json

import torch
from transformers import AutoModel

from benchmarks.cache_sizes import main
from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import encode_tasks, load_tasks
from distill.model.multitask import MultiTaskModel
from distill.recipe import load_recipe


def test_cache_sizes_grow_with_what_is_kept(recipe_file, tiny_base, tmp_path, capsys):
    recipe = recipe_file()
    tasks = load_tasks(load_recipe(recipe))
    tokenizer = load_tokenizer(tiny_base)
    encode_tasks(tasks, tokenizer, 32)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    MultiTaskModel(AutoModel.from_pretrained(tiny_base), [t.info for t in tasks]).save(teacher, tokenizer)
    out = tmp_path / "sizes.json"
    assert main([str(teacher), "--recipe", str(recipe), "--qkv", "--limit", "20", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["logits", "+ last hidden", "+ 4 hidden", "+ last hidden + last qkv"]
    assert all(r["examples"] == 120 for r in rows)
    per_1000 = [r["bytes_per_1000_examples"] for r in rows]
    assert per_1000[0] < per_1000[1] < per_1000[2] and per_1000[1] < per_1000[3]
    assert not list((tmp_path / "cache").rglob("*.safetensors")), "built in a temporary directory, not the cache"
    assert "| + 4 hidden | 120 |" in capsys.readouterr().out
