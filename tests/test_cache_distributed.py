"""Building one cache entry with two processes under `torchrun`.

(`accelerate launch --cpu --num_processes 2` starts a single process unless MPI is set up; torchrun starts two.)"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModel

import teachers.cache.build as runner
from distill.core.fileio import read_json
from distill.core.tokenizer import load_tokenizer
from distill.data.tasks import encode_tasks, load_tasks
from distill.model.multitask import MultiTaskModel
from distill.recipe import load_recipe

TORCHRUN = Path(sys.executable).with_name("torchrun")
BUILD_SCRIPT = """
import json, sys
from accelerate import PartialState
import teachers.cache.build as runner
from distill.data.tasks import encode_tasks, load_tasks
from distill.recipe import load_recipe
from distill.core.tokenizer import load_tokenizer

recipe_path, teacher_dir, out = sys.argv[1:]
tasks = load_tasks(load_recipe(recipe_path))
encode_tasks(tasks, load_tokenizer(teacher_dir), 32)
real_save, written = runner.atomic_save_safetensors, []

def recording_save(path, tensors, metadata=None):
    written.append(path.name)
    real_save(path, tensors, metadata)

runner.atomic_save_safetensors = recording_save
result = runner.build_cache(teacher_dir, tasks, [-1], qkv_layers=[-1], shard_size=16)
rank = PartialState().process_index
with open(f"{out}.{rank}.json", "w") as handle:
    json.dump({"written": written, **result.to_json()}, handle)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_build_the_same_shards_as_one(recipe_file, tiny_base, tmp_path, monkeypatch):
    recipe = recipe_file()
    tokenizer = load_tokenizer(tiny_base)
    tasks = load_tasks(load_recipe(recipe))
    encode_tasks(tasks, tokenizer, 32)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    MultiTaskModel(AutoModel.from_pretrained(tiny_base), [t.info for t in tasks]).save(teacher, tokenizer)
    single = runner.build_cache(teacher, tasks, [-1], qkv_layers=[-1], shard_size=16)

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache-2"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    script = tmp_path / "build.py"
    script.write_text(BUILD_SCRIPT)
    command = [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script), str(recipe),
               str(teacher), str(tmp_path / "result")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"result.{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0]["key"] == results[1]["key"] == single.key
    assert not results[0]["hit"] and results[0]["shards"] == single.shards
    written = [set(r["written"]) for r in results]
    assert written[0] and written[1] and not written[0] & written[1], "each process builds its own shards"
    assert written[0] | written[1] == {p.name for p in single.path.glob("*.safetensors")}
    manifest = read_json(Path(results[0]["path"]) / "manifest.json")
    expected = read_json(single.path / "manifest.json")
    assert manifest["tasks"] == expected["tasks"], "the same shards, byte for byte (sha256)"
    assert manifest["inputs"] == expected["inputs"] and manifest["build"]["processes"] == 2
