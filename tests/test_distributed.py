"""Two training processes over gloo (CPU), started by `accelerate launch`, against a one-process run."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from distill.data.batching import training_batches
from distill.data.tasks import EncodedSplit, load_tasks
from distill.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _launcher(kind: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """accelerate's command line and environment for two CPU processes."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kind == "mpirun":
        # `--cpu --num_processes N` starts N processes through mpirun when given a hostfile
        if shutil.which("mpirun") is None:
            pytest.skip("mpirun is not installed (apt-get install openmpi-bin)")
        hostfile = tmp_path / "hostfile"
        hostfile.write_text("localhost slots=2\n")
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_btl": "self,tcp"}
        return [*launch, "--cpu", "--mpirun_hostfile", str(hostfile)], env
    # --multi_gpu is accelerate's torchrun launcher; without a GPU the processes train on the CPU over gloo
    return [*launch, "--multi_gpu"], env | {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("kind", ["torchrun", "mpirun"])
def test_two_processes_train_and_save_like_one(trained_run, tmp_path, kind):
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    # checkpoints gather every process's random state; uncertainty weights are all-reduced by hand
    recipe["training"] = {"checkpoint_every_steps": 3, "uncertainty_weighting": True}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    launch, env = _launcher(kind, tmp_path)
    command = [*launch, "-m", "distill.cli", "train", str(path), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    run = json.loads(done.stdout)  # printed by the main process only
    assert [s["name"] for s in run["stages"]] == ["teacher", "cache", "train:s2"]
    assert (out / "students" / "s2" / "heads.safetensors").is_file()
    assert (out / "teacher" / "heads.safetensors").is_file()
    assert not (out / "checkpoints" / "teacher").exists() and not (out / "checkpoints" / "student-s2").exists()

    single_teacher = _log(trained_run / "out" / "logs" / "teacher.jsonl")
    teacher = _log(out / "logs" / "teacher.jsonl")
    assert [r["epoch"] for r in teacher] == [1, 2, 3, 4], "one line per epoch, from the main process only"
    # each step is one single-process batch of 2 x batch_size, split between the processes
    loaded = load_tasks(load_recipe(path))
    splits = {t.info.name: EncodedSplit([np.zeros(1)] * len(t.splits["train"].texts), []) for t in loaded}
    per_epoch = len(training_batches(splits, 2 * recipe["teacher"]["batch_size"], seed=0))
    assert [r["step"] for r in teacher] == [per_epoch * k for k in range(1, 5)]
    assert len(teacher) == len(single_teacher)
    single = _log(trained_run / "out" / "logs" / "student-s2.jsonl")[-1]
    student = _log(out / "logs" / "student-s2.jsonl")[-1]
    assert set(student["dev"]) == {"sentiment", "ner"} and set(student["task_weights"]) == {"sentiment", "ner"}
    assert abs(student["dev_score"] - single["dev_score"]) < 0.25, (student["dev_score"], single["dev_score"])
