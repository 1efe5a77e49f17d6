"""The training engine on a toy model: sampling, accumulation, checkpoints and resume, guards, early stopping."""

import json
import logging
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.core.errors import DistillError, DistillInputError
from distill.data.batching import pad_batch, slice_batches, training_batches
from distill.data.tasks import EncodedSplit
from distill.recipe import TrainingSpec
from distill.train.loop import train_loop
from distill.train.settings import TrainSettings, make_optimizer


class Toy(nn.Module):
    """Bag of embeddings, dropout (so the random state matters) and one head per task."""

    def __init__(self):
        super().__init__()
        self.embed = nn.EmbeddingBag(32, 8)
        self.dropout = nn.Dropout(0.3)
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 2), "b": nn.Linear(8, 3)})

    def forward(self, input_ids, attention_mask, task):
        return self.heads[task](self.dropout(self.embed(input_ids)))


def toy_data(sizes=(("a", 40, 2), ("b", 24, 3))) -> dict[str, EncodedSplit]:
    rng = np.random.default_rng(0)
    data = {}
    for task, n, classes in sizes:
        ids = [rng.integers(1, 32, size=rng.integers(3, 7)) for _ in range(n)]
        data[task] = EncodedSplit(ids, [int(x[0]) % classes for x in ids])
    return data


def toy_loss(model, batch):
    logits = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask), batch.task)
    return F.cross_entropy(logits, torch.from_numpy(batch.labels))


class Recorder:
    """evaluate_fn / save_fn that keep what they saw: the weights after each epoch, the saved epochs."""

    def __init__(self, data, scores=None):
        self.data, self.scores = data, scores
        self.weights, self.saved = [], []

    def evaluate(self, model):
        model.eval()
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if self.scores is not None:
            return self.scores[len(self.weights) - 1], {}
        metrics = {}
        with torch.no_grad():
            for task, split in self.data.items():
                batch = pad_batch(task, split, np.arange(len(split)), 0)
                logits = model(torch.from_numpy(batch.input_ids), None, task)
                metrics[task] = {"accuracy": float((logits.argmax(-1).numpy() == batch.labels).mean())}
        return float(np.mean([m["accuracy"] for m in metrics.values()])), metrics

    def save(self, model):
        self.saved.append(len(self.weights))


def settings(**engine) -> TrainSettings:
    return TrainSettings(epochs=3, batch_size=8, learning_rate=0.05, warmup_ratio=0.1, seed=5,
                         engine=TrainingSpec(**engine), batch_size_key="distillation.batch_size")


def run(tmp_path, engine=None, loss_fn=toy_loss, resume=False, recorder=None, epochs=3):
    torch.manual_seed(0)
    model = Toy()
    data = toy_data()
    recorder = recorder or Recorder(data)
    spec = settings(**(engine or {}))
    spec.epochs = epochs
    summary = train_loop(model, data, 0, loss_fn, recorder.evaluate, recorder.save, spec, tmp_path / "log.jsonl",
                         "toy", tmp_path / "checkpoints", resume)
    return summary, recorder, model


class Interrupted(Exception):
    pass


def interrupt_at(call: int):
    count = {"n": 0}

    def loss_fn(model, batch):
        count["n"] += 1
        if count["n"] == call:
            raise Interrupted
        return toy_loss(model, batch)

    return loss_fn


def test_sampling_strategies_keep_the_epoch_length():
    data = toy_data((("big", 400, 2), ("small", 40, 2)))
    proportional = training_batches(data, 10, seed=1)
    assert len(proportional) == 44
    assert Counter(t for t, _ in proportional) == {"big": 40, "small": 4}
    seen = np.sort(np.concatenate([i for t, i in proportional if t == "small"]))
    assert seen.tolist() == list(range(40)), "proportional: every example exactly once"
    hot = training_batches(data, 10, seed=1, strategy="temperature", temperature=1000.0)
    assert len(hot) == 44 and 12 <= Counter(t for t, _ in hot)["small"] <= 32, "T → ∞ is close to uniform"
    cold = training_batches(data, 10, seed=1, strategy="temperature", temperature=1.0)
    assert Counter(t for t, _ in cold)["small"] <= 10, "T = 1 samples like the task sizes"
    robin = training_batches(data, 10, seed=1, strategy="round_robin")
    assert [t for t, _ in robin[:4]] == ["big", "small", "big", "small"] and len(robin) == 44
    small = [i for t, i in robin if t == "small"]
    assert all(len(set(i.tolist())) == len(i) for i in small), "no example twice in one batch"
    assert set(np.concatenate(small[:4]).tolist()) == set(range(40)), "each pass over a task is a permutation"
    again = training_batches(data, 10, seed=1, strategy="temperature", temperature=2.0)
    assert [(t, i.tolist()) for t, i in again] == [
        (t, i.tolist()) for t, i in training_batches(data, 10, seed=1, strategy="temperature", temperature=2.0)]


def test_processes_share_each_single_process_batch():
    plan = [("a", np.arange(0, 8)), ("b", np.arange(8, 13)), ("a", np.arange(13, 14))]
    shares = [slice_batches(plan, rank, 2) for rank in range(2)]
    assert [len(s) for s in shares] == [3, 3], "every process runs every step"
    for step in range(3):
        assert shares[0][step][0] == shares[1][step][0] == plan[step][0], "one task per step, as one process"
        together = np.concatenate([shares[0][step][1], shares[1][step][1]])
        assert sorted(set(together.tolist())) == plan[step][1].tolist()
    assert shares[1][2][1].tolist() == [13], "a one-example batch: the other process repeats it"
    assert slice_batches(plan, 0, 1) == plan


def test_resume_continues_at_the_exact_batch_and_ends_identical(tmp_path):
    engine = {"checkpoint_every_steps": 2, "gradient_accumulation_steps": 2, "uncertainty_weighting": True}
    whole, whole_rec, _ = run(tmp_path / "whole", engine)
    assert not (tmp_path / "whole" / "checkpoints").exists(), "checkpoints go once training has finished"

    # 8 batches per epoch → 4 steps; batch 13 is in epoch 2, after the step-6 checkpoint
    with pytest.raises(Interrupted):
        run(tmp_path / "cut", engine, loss_fn=interrupt_at(13))
    kept = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert kept == ["step-00000004", "step-00000006"], "an epoch-end and a mid-epoch checkpoint; the last two kept"
    files = {p.name for p in (tmp_path / "cut" / "checkpoints" / "step-00000006").iterdir()}
    assert files == {"model.safetensors", "task_weighting.safetensors", "optimizer.safetensors", "rng.safetensors",
                     "state.json"}, "no pickle: safetensors and JSON only"
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert (state["loop"]["epoch"], state["loop"]["position"], state["loop"]["step"]) == (2, 4, 6)

    resumed, resumed_rec, _ = run(tmp_path / "cut", engine, resume=True)
    assert resumed.resumed_from.endswith("step-00000006")
    final, expected = resumed_rec.weights[-1], whole_rec.weights[-1]
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final), "bit-identical to the uninterrupted run"
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in whole.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == strip
    lines = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3], "one log line per epoch, none twice"
    assert resumed.best_score == whole.best_score
    weights = whole.history[-1]["task_weights"]
    assert set(weights) == {"a", "b"} and all(w != 1.0 for w in weights.values()), "uncertainty weights learnt"


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    with pytest.raises(Interrupted):
        run(tmp_path, {"checkpoint_every_steps": 2}, loss_fn=interrupt_at(5))
    with pytest.raises(DistillInputError, match=r"other training settings.*without --resume"):
        run(tmp_path, {"checkpoint_every_steps": 2, "gradient_accumulation_steps": 2}, resume=True)


def test_resume_without_a_checkpoint_starts_from_the_beginning(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        summary, _, _ = run(tmp_path, resume=True, epochs=1)
    assert summary.resumed_from is None and "starting from the beginning" in caplog.text


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tmp_path):
    count = {"n": 0}

    def loss_fn(model, batch):
        count["n"] += 1
        loss = toy_loss(model, batch)
        return loss * float("nan") if count["n"] == 11 else loss

    with pytest.raises(DistillError) as info:
        run(tmp_path, {"checkpoint_every_steps": 3}, loss_fn=loss_fn)
    message = str(info.value)
    checkpoint = tmp_path / "checkpoints" / "step-00000009"
    assert "the loss became nan at step 11 (task" in message
    assert f"the last good checkpoint is kept: {checkpoint}" in message and "--resume" in message
    assert (checkpoint / "model.safetensors").is_file()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")])
def test_out_of_memory_names_the_setting_to_lower(tmp_path, error):
    def loss_fn(model, batch):
        raise error

    with pytest.raises(DistillError) as info:
        run(tmp_path, {"gradient_accumulation_steps": 2}, loss_fn=loss_fn)
    message = str(info.value)
    assert "out of memory at distillation.batch_size 8; lower distillation.batch_size" in message
    assert "training.gradient_accumulation_steps" in message and "(8 × 2 examples per step)" in message


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path):
    recorder = Recorder(toy_data(), scores=[0.5, 0.7, 0.6, 0.65, 0.9, 0.95])
    summary, recorder, _ = run(tmp_path, {"early_stopping_patience": 2}, recorder=recorder, epochs=6)
    assert summary.stopped_early and len(summary.history) == 4
    assert (summary.best_score, summary.best_epoch) == (0.7, 2)
    assert recorder.saved == [1, 2], "the best model is saved at each improvement only"


def test_gradient_accumulation_takes_one_step_per_group(tmp_path):
    plain, _, _ = run(tmp_path / "1", epochs=2)
    accumulated, _, _ = run(tmp_path / "3", {"gradient_accumulation_steps": 3}, epochs=2)
    assert [r["step"] for r in plain.history] == [8, 16]
    assert [r["step"] for r in accumulated.history] == [3, 6], "8 batches per epoch → groups of 3, 3, 2"
    assert accumulated.history[-1]["train_loss"] != plain.history[-1]["train_loss"]


def test_per_task_metrics_and_learning_rate_are_logged(tmp_path):
    run(tmp_path, epochs=1)
    record = json.loads((tmp_path / "log.jsonl").read_text())
    assert set(record["dev"]) == {"a", "b"} and "accuracy" in record["dev"]["a"]
    assert {"epoch", "step", "train_loss", "dev_score", "learning_rate", "seconds"} <= set(record)


def _autocast_seen(tmp_path, monkeypatch, native: bool, mixed_precision: str) -> tuple[set, set, set]:
    """What the training steps and the evaluations saw: CPU autocast on or off, and the heads' output dtypes."""
    monkeypatch.setattr("distill.train.settings.native_bf16", lambda: native)
    steps, evaluations, dtypes = set(), set(), set()

    def loss_fn(model, batch):
        steps.add(torch.is_autocast_enabled("cpu"))
        logits = model(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask), batch.task)
        dtypes.add(logits.dtype)
        return F.cross_entropy(logits.float(), torch.from_numpy(batch.labels))

    class Seeing(Recorder):
        def evaluate(self, model):
            evaluations.add(torch.is_autocast_enabled("cpu"))
            return super().evaluate(model)

    summary, _, model = run(tmp_path, {"mixed_precision": mixed_precision}, loss_fn, recorder=Seeing(toy_data()),
                            epochs=1)
    assert math.isfinite(summary.best_score) and model.heads["a"].weight.dtype == torch.float32
    return steps, evaluations, dtypes


@pytest.mark.parametrize(("flags", "native"), [
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, True), ({"avx2", "amx_int8", "amx_bf16"}, True),
    ({"asimd", "bf16"}, True), ({"avx2", "avx512f", "avx512_vnni"}, False), ({"asimd"}, False)])
def test_native_bfloat16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    import distill.core.hardware as hardware

    monkeypatch.setattr(hardware, "_cpuinfo", lambda: ("a CPU", flags))
    assert hardware.native_bf16() is native
    assert ("avx512_bf16" in hardware.hardware()["isa"]) is ("avx512_bf16" in flags), "the report lists it"


def test_bf16_autocasts_the_training_steps_on_a_cpu_with_native_bfloat16(tmp_path, monkeypatch, caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with caplog.at_level(logging.INFO):
        steps, evaluations, dtypes = _autocast_seen(tmp_path, monkeypatch, True, "bf16")
    assert steps == {True} and dtypes == {torch.bfloat16}, "every step in bfloat16"
    assert evaluations == {False}, "evaluation in fp32"
    assert "training steps autocast to bfloat16 on this CPU" in caplog.text


@pytest.mark.parametrize(("native", "mixed_precision", "why"), [
    (False, "bf16", "it has no native bfloat16"), (True, "fp16", "use bf16 on a CPU with native bfloat16")])
def test_mixed_precision_this_cpu_cannot_speed_up_trains_in_fp32_with_a_log_line(tmp_path, monkeypatch, caplog,
                                                                                  native, mixed_precision, why):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with caplog.at_level(logging.INFO):
        steps, evaluations, dtypes = _autocast_seen(tmp_path, monkeypatch, native, mixed_precision)
    assert steps == evaluations == {False} and dtypes == {torch.float32}
    assert f"training.mixed_precision {mixed_precision} is ignored on this CPU ({why}); training in fp32" \
        in caplog.text


def test_tensorboard_writes_events_or_says_what_is_missing(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(DistillError, match=r"training\.tensorboard: the tensorboard package is not installed"):
            run(tmp_path, {"tensorboard": True}, epochs=1)
        return
    run(tmp_path, {"tensorboard": True}, epochs=1)
    assert list((tmp_path / "tensorboard" / "log").glob("events.out.tfevents.*"))


def test_training_recipe_section_validates(recipe_file):
    from distill.recipe import load_recipe

    recipe = load_recipe(recipe_file(lambda r: r.update(training={
        "sampling": {"strategy": "temperature", "temperature": 3}, "mixed_precision": False,
        "gradient_accumulation_steps": 4})))
    assert recipe.training.sampling.strategy == "temperature" and recipe.training.mixed_precision == "no"
    spec = TrainSettings.from_recipe(recipe, "teacher")
    assert spec.batch_size_key == "teacher.batch_size" and spec.engine.gradient_accumulation_steps == 4
    with pytest.raises(DistillInputError, match=r"training\.sampling\.strategy"):
        load_recipe(recipe_file(lambda r: r.update(training={"sampling": {"strategy": "random"}})))


def test_students_mix_tasks_by_distillation_sampling_and_the_teacher_by_training_sampling(recipe_file):
    from distill.recipe import load_recipe
    from distill.stage_inputs import _distillation_inputs

    plain = load_recipe(recipe_file(lambda r: None))
    assert "sampling" not in _distillation_inputs(plain), "recipes without it keep their student stage hashes"
    assert TrainSettings.from_recipe(plain, "student").engine.sampling.strategy == "proportional"

    def students_by_temperature(r):
        r["distillation"]["sampling"] = {"strategy": "temperature", "temperature": 2}

    recipe = load_recipe(recipe_file(students_by_temperature))
    student = TrainSettings.from_recipe(recipe, "student").engine
    assert student.sampling.strategy == "temperature" and student.sampling.temperature == 2
    assert TrainSettings.from_recipe(recipe, "teacher").engine.sampling.strategy == "proportional"
    assert _distillation_inputs(recipe)["sampling"]["strategy"] == "temperature"


def test_fused_optimizer_takes_the_same_steps_as_the_per_tensor_loop():
    torch.manual_seed(0)
    weights = [torch.randn(6, 4), torch.randn(4)]
    grads = [torch.randn_like(w) for w in weights]
    results = []
    for make in (lambda groups: make_optimizer(groups, 1e-2), lambda groups: torch.optim.AdamW(groups, lr=1e-2)):
        params = [nn.Parameter(w.clone()) for w in weights]
        optimizer = make([{"params": params}])
        for _ in range(3):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        results.append(params)
        if len(results) == 1:
            assert optimizer.defaults["fused"], "CPU float32 parameters get the fused kernel"
    for fused, loop in zip(*results, strict=True):
        assert torch.allclose(fused, loop, atol=1e-6)


def test_the_heads_train_at_head_learning_rate_and_the_rest_at_learning_rate(tmp_path, recipe_file):
    from distill.recipe import load_recipe
    from distill.stage_inputs import student_hash_inputs, teacher_hash_inputs

    plain = load_recipe(recipe_file(lambda r: None))
    assert TrainSettings.from_recipe(plain, "teacher").head_learning_rate is None
    assert "head_learning_rate" not in teacher_hash_inputs(plain, "base", [])["teacher"], \
        "recipes without it keep their teacher stage hashes"
    recipe = load_recipe(recipe_file(lambda r: r["teacher"].update(head_learning_rate=1e-3)))
    assert TrainSettings.from_recipe(recipe, "teacher").head_learning_rate == 1e-3
    assert TrainSettings.from_recipe(recipe, "student").head_learning_rate is None, "the students' rate is theirs"
    assert teacher_hash_inputs(recipe, "base", [])["teacher"]["head_learning_rate"] == 1e-3
    assert "head_learning_rate" not in student_hash_inputs(plain, plain.students[0], "cache")["distillation"], \
        "recipes without it keep their student stage hashes"
    students = load_recipe(recipe_file(lambda r: r["distillation"].update(head_learning_rate=2e-3)))
    assert TrainSettings.from_recipe(students, "student").head_learning_rate == 2e-3
    assert TrainSettings.from_recipe(students, "teacher").head_learning_rate is None
    assert student_hash_inputs(students, students.students[0], "cache")["distillation"]["head_learning_rate"] == 2e-3

    # a tiny head rate leaves the heads nearly where they started while the embeddings move at 0.05
    torch.manual_seed(0)
    model = Toy()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    spec = settings()
    spec.head_learning_rate, spec.epochs = 1e-9, 1
    data = toy_data()
    recorder = Recorder(data)
    train_loop(model, data, 0, toy_loss, recorder.evaluate, recorder.save, spec, tmp_path / "log.jsonl", "toy", None)
    moved = {k: float((v - start[k]).abs().max()) for k, v in model.state_dict().items()}
    assert moved["embed.weight"] > 1e-2
    assert max(v for k, v in moved.items() if k.startswith("heads.")) < 1e-6
