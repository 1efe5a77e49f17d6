"""The distiller end to end on the tiny model: the online teacher, staged training, projections, the cache's layers."""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModel, BertConfig, BertModel

import distill.distillation.distiller as distiller
from distill import load_recipe, run_recipe
from distill.core.errors import DistillInputError
from distill.core.fileio import read_json
from distill.core.tokenizer import load_tokenizer
from distill.data.batching import pad_batch
from distill.data.tasks import encode_tasks, load_tasks
from distill.distillation.projections import HiddenProjections
from distill.model.multitask import MultiTaskModel
from teachers.cache.build import build_cache
from teachers.cache.online import OnlineTeacher
from teachers.cache.store import TeacherCache

LIMIT = {"train": 48, "dev": 16, "test": 16}


def _small(recipe: dict, **distillation) -> None:
    for task in recipe["tasks"]:
        task["limit"] = LIMIT
    recipe["distillation"].update(distillation)


@pytest.fixture
def setup(recipe_file, tiny_base, tmp_path):
    def make(**distillation):
        recipe = load_recipe(recipe_file(lambda r: _small(r, **distillation)))
        tokenizer = load_tokenizer(tiny_base)
        tasks = load_tasks(recipe)
        encode_tasks(tasks, tokenizer, recipe.max_length)
        torch.manual_seed(0)
        teacher_dir = tmp_path / "teacher"
        MultiTaskModel(AutoModel.from_pretrained(tiny_base), [t.info for t in tasks]).save(teacher_dir, tokenizer)
        return recipe, tasks, tokenizer, teacher_dir

    return make


def test_online_teacher_gives_the_cache_targets(setup):
    _, tasks, tokenizer, teacher_dir = setup()
    cache = TeacherCache(build_cache(teacher_dir, tasks, [0, 2, 4]).path)
    teacher = MultiTaskModel.load(teacher_dir)
    online = OnlineTeacher(teacher, tasks, tokenizer.pad_token_id)
    assert online.hidden_layers == [0, 1, 2, 3, 4]
    for task in tasks:
        token_level = task.info.type == "token_classification"
        indices = np.array([0, 5, 17, 40])
        width = pad_batch(task.info.name, task.encoded["train"], indices, tokenizer.pad_token_id).input_ids.shape[1]
        cached = cache.targets(task.info.name, "train", indices, width, token_level, [0, 2, 4])
        live = online.targets(task.info.name, "train", indices, width, token_level, [0, 2, 4], qkv_layers=[3])
        assert live.logits.dtype == torch.float32 and live.logits.shape == cached.logits.shape
        assert torch.allclose(live.logits, cached.logits, atol=1e-2)
        for layer in (0, 2, 4):
            assert torch.allclose(live.hidden[layer], cached.hidden[layer], atol=2e-2), "fp16 cache vs fp32 live"
        # query/key/value of layer 3 are that layer's projections of hidden state 2, zero on padding
        batch = pad_batch(task.info.name, task.encoded["train"], indices, tokenizer.pad_token_id)
        mask = torch.from_numpy(batch.attention_mask)
        with torch.no_grad():
            out = teacher(torch.from_numpy(batch.input_ids), mask, output_hidden_states=True)
            attention = teacher.encoder.encoder.layer[2].attention.self
            expected = [attention.query(out.hidden_states[2]), attention.key(out.hidden_states[2]),
                        attention.value(out.hidden_states[2])]
        real = mask.bool()
        for got, want in zip(live.qkv[3], expected, strict=True):
            assert got.shape == (4, width, 32)
            assert torch.allclose(got[real], want[real], atol=1e-5) and got[~real].abs().sum() == 0
        wider = online.targets(task.info.name, "train", indices, width + 3, token_level, [2])
        assert wider.hidden[2].shape[1] == width + 3 and wider.hidden[2][:, width:].abs().sum() == 0


def test_narrow_student_trains_its_projections_and_saves_without_them(setup, tmp_path, monkeypatch):
    recipe, tasks, tokenizer, teacher_dir = setup(
        losses={"hard": 1, "kd_kl": 1, "hidden_mse": 1, "relations": 1, "embedding": 1}, layer_map="all")
    teacher = MultiTaskModel.load(teacher_dir)
    torch.manual_seed(1)
    config = BertConfig(vocab_size=teacher.encoder.config.vocab_size, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=24, max_position_embeddings=64)
    student = MultiTaskModel(BertModel(config), [t.info for t in tasks])
    created = []

    def recording(*args):
        created.append(HiddenProjections(*args))
        created.append({k: v.clone() for k, v in created[-1].state_dict().items()})
        return created[0]

    monkeypatch.setattr(distiller, "HiddenProjections", recording)
    source = OnlineTeacher(teacher, tasks, tokenizer.pad_token_id)
    out = tmp_path / "student"
    distiller.distil(student, teacher.encoder.config, recipe, tasks, source, tokenizer, out, tmp_path / "log.jsonl",
                     "narrow")
    projections, initial = created
    assert sorted(projections.maps) == ["0", "1", "2"], "embeddings and both layers, 16 -> 32"
    trained = projections.state_dict()
    assert all(not torch.equal(trained[k], initial[k]) for k in initial), "every projection is trained"
    assert not hasattr(student, "distill_projections")
    for file in out.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            names = list(handle.keys())
            assert not [k for k in names if "projection" in k]
            assert all(32 not in handle.get_slice(k).get_shape() for k in names), "no 16 -> 32 map"
    assert MultiTaskModel.load(out).encoder.config.hidden_size == 16
    terms = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert set(next(r for r in terms if "loss_terms" in r)["loss_terms"]) == {
        "hard", "kd_kl", "hidden_mse", "relations", "embedding"}
    recipe.distillation.losses.attention = 1.0
    with pytest.raises(DistillInputError, match="as many student heads as teacher heads"):
        distiller.distil(student, teacher.encoder.config, recipe, tasks, source, tokenizer, tmp_path / "x",
                         tmp_path / "log2.jsonl", "narrow")


def test_a_narrow_student_distils_under_bf16_autocast(setup, tmp_path, monkeypatch):
    """Every loss (logits, hidden states through projections, relations from captured Q/K/V) takes the
    bfloat16 forward pass of a CPU with native bf16 and gives finite fp32 terms."""
    recipe, tasks, tokenizer, teacher_dir = setup(
        losses={"hard": 1, "kd_kl": 1, "hidden_mse": 1, "relations": 1, "embedding": 1}, layer_map="all")
    recipe.training.mixed_precision = "bf16"
    monkeypatch.setattr("distill.train.settings.native_bf16", lambda: True)
    teacher = MultiTaskModel.load(teacher_dir)
    torch.manual_seed(1)
    config = BertConfig(vocab_size=teacher.encoder.config.vocab_size, hidden_size=16, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=24, max_position_embeddings=64)
    student = MultiTaskModel(BertModel(config), [t.info for t in tasks])
    dtypes = set()
    student.encoder.encoder.layer[0].attention.self.query.register_forward_hook(
        lambda _m, _i, out: dtypes.add((student.training, out.dtype)))
    source = OnlineTeacher(teacher, tasks, tokenizer.pad_token_id)
    distiller.distil(student, teacher.encoder.config, recipe, tasks, source, tokenizer, tmp_path / "student",
                     tmp_path / "log.jsonl", "narrow")
    assert dtypes == {(True, torch.bfloat16), (False, torch.float32)}, "bf16 steps, fp32 evaluation"
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    terms = next(r for r in records if "loss_terms" in r)["loss_terms"]
    assert set(terms) == {"hard", "kd_kl", "hidden_mse", "relations", "embedding"}
    assert all(np.isfinite(v) and v > 0 for v in terms.values())
    batch = pad_batch(tasks[0].info.name, tasks[0].encoded["train"], np.arange(4), tokenizer.pad_token_id)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = student(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask),
                      output_hidden_states=True)
    assert {t.dtype for t in (*out.logits.values(), *out.hidden_states)} == {torch.float32}, "what losses see"
    assert MultiTaskModel.load(tmp_path / "student").encoder.embeddings.word_embeddings.weight.dtype == torch.float32


def test_two_stage_online_run_trains_and_saves_a_student(trained_run, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(trained_run / "cache"))
    recipe = yaml.safe_load((trained_run / "recipe.yaml").read_text())
    recipe["teacher"] = {"path": str(trained_run / "out" / "teacher")}
    _small(recipe, teacher_source="online", layer_map="all", temperature={"start": 4.0, "end": 1.0}, stages=[
        {"name": "intermediate", "losses": {"hidden_mse": 1, "attention": 1, "relations": 1, "embedding": 1}},
        {"name": "prediction", "epochs": 2, "losses": {"hard": 0.5, "kd_kl": 0.5}}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    real_train_loop, calls = distiller.train_loop, []

    def first_layer(model):
        return model.encoder.encoder.layer[0].output.dense.weight.detach().clone()

    def recording_train_loop(model, *args, **kwargs):
        before = first_layer(model)
        summary = real_train_loop(model, *args, **kwargs)
        calls.append({"epochs": args[5].epochs, "saves": args[4] is not distiller._keep_in_memory,
                      "before": before, "after": first_layer(model)})
        return summary

    monkeypatch.setattr(distiller, "train_loop", recording_train_loop)
    run = run_recipe(load_recipe(path), tmp_path / "out", until="train")
    assert [(s["name"], s["status"]) for s in run["stages"]] == [
        ("teacher", "cached"), ("cache", "skipped"), ("train:s2", "ran")]
    assert [(c["epochs"], c["saves"]) for c in calls] == [(1, False), (2, True)], "only the last stage saves"
    assert torch.equal(calls[1]["before"], calls[0]["after"]), "the prediction stage continues the intermediate one"
    assert not torch.equal(calls[0]["before"], calls[0]["after"])
    assert not (tmp_path / "out" / "cache.json").exists()
    student = tmp_path / "out" / "students" / "s2"
    assert read_json(student / "student.json")["teacher_layers"] == [1, 3]
    logs = tmp_path / "out" / "logs"
    records = [json.loads(line) for stage in ("intermediate", "prediction")
               for line in (logs / f"student-s2.{stage}.jsonl").read_text().splitlines()]
    assert [r["losses"] for r in records if "loss_terms" in r][::2] == [
        {"hidden_mse": 1, "attention": 1, "relations": 1, "embedding": 1}, {"hard": 0.5, "kd_kl": 0.5}]
    terms = [(r["stage"], sorted(r["loss_terms"]), r["temperature"]) for r in records if "loss_terms" in r]
    assert terms[0][:2] == ("intermediate", ["attention", "embedding", "hidden_mse", "relations"])
    assert [t[:2] for t in terms[1:]] == [("prediction", ["hard", "kd_kl"])] * 2
    assert terms[-1][2] == 1.0 and 1.0 < terms[1][2] < 4.0, "the temperature falls linearly over the stage"
    epochs = [r for r in records if "dev_score" in r]
    assert len(epochs) == 3
    teacher = MultiTaskModel.load(trained_run / "out" / "teacher")
    saved = MultiTaskModel.load(student)
    assert not torch.equal(saved.encoder.encoder.layer[0].output.dense.weight,
                           teacher.encoder.encoder.layer[1].output.dense.weight), "the student was trained"
    again = run_recipe(load_recipe(path), tmp_path / "out", until="train")
    assert [s["status"] for s in again["stages"]] == ["cached", "skipped", "cached"]


def test_cache_stage_builds_the_layers_the_losses_need(recipe_file, tmp_path):
    path = recipe_file(lambda r: _small(r, layer_map="all", hidden_layers=[0],
                                        losses={"kd_kl": 1, "hidden_cosine": 1}))
    run_recipe(load_recipe(path), tmp_path / "out", until="cache")
    cache = TeacherCache(read_json(tmp_path / "out" / "cache.json")["path"])
    assert cache.hidden_layers == [0, 2, 4], "s2 keeps teacher layers 1 and 3 (hidden states 2, 4), plus layer 0"
