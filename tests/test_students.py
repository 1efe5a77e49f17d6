import numpy as np
import pytest
import torch
from transformers import AutoModel

from distill.core.errors import DistillInputError
from distill.data.tasks import TaskInfo
from distill.export.onnx_graph import export_onnx
from distill.model.multitask import MultiTaskModel
from distill.recipe import StudentSpec
from distill.runtime import OnnxForward
from students.build import build_student
from students.hidden import projection
from students.importance import score_importance
from students.layers import keep_layers, load_layer_map, pick_layers, save_layer_map
from students.pruning import prune_ffn, prune_heads

TASKS = [TaskInfo("cls", "sequence_classification", ["a", "b"], "accuracy"),
         TaskInfo("tag", "token_classification", ["O", "B-x"], "entity_f1")]
IDS = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 14, 15, 3, 0, 0]])
MASK = (IDS != 0).long()


def _logits(model, ids=IDS, mask=MASK):
    model.eval()
    with torch.no_grad():
        return model(ids, mask).logits


def _assert_same(a: dict, b: dict, atol: float = 1e-5):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol), (name, (a[name] - b[name]).abs().max())


def test_pick_layers_spreads_and_keeps_the_last():
    assert pick_layers(2, 6) == [2, 5]
    assert pick_layers(3, 6) == [1, 3, 5]
    assert pick_layers(6, 6) == list(range(6))
    assert pick_layers([4, 0], 6) == [0, 4]
    assert pick_layers(2, 6, "top") == [4, 5]
    assert pick_layers(2, 6, "bottom") == [0, 1]
    with pytest.raises(DistillInputError):
        pick_layers(7, 6)
    with pytest.raises(DistillInputError):
        pick_layers([6], 6)


def test_student_copies_teacher_layers_and_reloads_with_plain_transformers(tiny_base, tmp_path):
    torch.manual_seed(0)
    teacher = MultiTaskModel(AutoModel.from_pretrained(tiny_base), TASKS).eval()
    student = keep_layers(teacher, [1, 3]).eval()
    assert student.num_layers == 2
    assert torch.equal(student.encoder.encoder.layer[1].output.dense.weight,
                       teacher.encoder.encoder.layer[3].output.dense.weight)
    assert teacher.num_layers == 4, "the teacher is left whole"
    before = _logits(student)
    student.save(tmp_path / "s")
    save_layer_map(tmp_path / "s", [1, 3])
    plain = AutoModel.from_pretrained(tmp_path / "s")
    assert plain.config.num_hidden_layers == 2
    _assert_same(before, _logits(MultiTaskModel.load(tmp_path / "s")), 1e-6)
    assert load_layer_map(tmp_path / "s") == [1, 3]


def test_pruning_removes_the_least_important_heads_and_neurons(tiny_base):
    model = MultiTaskModel(AutoModel.from_pretrained(tiny_base), TASKS)
    heads = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.4], [0.5, 0.1]])
    assert prune_heads(model, 1, heads) == {0: [0], 1: [1], 2: [0], 3: [1]}
    assert model.encoder.encoder.layer[0].attention.self.query.out_features == 16
    ffn = torch.arange(4 * 64, dtype=torch.float).reshape(4, 64).flip(1)  # neuron 0 is the most important
    up = model.encoder.encoder.layer[2].intermediate.dense.weight[:8].clone()
    prune_ffn(model, 8, ffn)
    assert model.encoder.config.intermediate_size == 8
    assert torch.equal(model.encoder.encoder.layer[2].intermediate.dense.weight, up)
    with pytest.raises(DistillInputError, match="pruned already"):
        prune_heads(model, 1, heads)
    fresh = MultiTaskModel(AutoModel.from_pretrained(tiny_base), TASKS)
    with pytest.raises(DistillInputError, match="3 is more than the teacher's 2 attention heads"):
        prune_heads(fresh, 3, heads)


def test_importance_scores_cover_every_head_and_neuron(tiny_teacher):
    _, teacher_dir, tokenizer, tasks = tiny_teacher
    teacher = MultiTaskModel.load(teacher_dir)
    scores = score_importance(teacher, tasks, tokenizer.pad_token_id, examples=16)
    assert scores.heads.shape == (4, 2) and scores.ffn.shape == (4, 64)
    assert (scores.heads > 0).all() and (scores.ffn >= 0).all() and scores.ffn.sum() > 0
    assert all(p.grad is None for p in teacher.parameters()), "scoring leaves no gradients behind"
    assert scores.select([1, 3]).heads.shape == (2, 2)


def test_pruned_student_reloads_with_plain_automodel_and_gives_the_same_outputs(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    spec = StudentSpec(name="p", layers=3, heads=1, ffn=16, pruning={"examples": 16})
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    before = _logits(built.model)
    encoder_before = built.model.encoder(input_ids=IDS, attention_mask=MASK).last_hidden_state
    built.save(built.model, tmp_path / "p", tokenizer)
    plain = AutoModel.from_pretrained(tmp_path / "p").eval()
    assert type(plain).__name__ == "BertModel"
    assert plain.config.intermediate_size == 16 and plain.config.num_hidden_layers == 3
    assert {int(k): len(v) for k, v in plain.config.pruned_heads.items()} == {0: 1, 1: 1, 2: 1}
    assert plain.encoder.layer[0].attention.self.query.out_features == 16
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=IDS, attention_mask=MASK).last_hidden_state, encoder_before, atol=1e-5)
    _assert_same(before, _logits(MultiTaskModel.load(tmp_path / "p")))
    saved = (tmp_path / "p" / "student.json").read_text()
    assert '"attention_heads": 1' in saved and '"ffn": 16' in saved and '"removed_heads"' in saved


def test_head_and_ffn_pruning_shrinks_the_onnx_graph(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    full = build_student(recipe, StudentSpec(name="f", layers=4), tasks, teacher_dir, tokenizer).model.eval()
    pruned = build_student(recipe, StudentSpec(name="p", layers=4, heads=1, ffn=16, pruning={"examples": 16}),
                           tasks, teacher_dir, tokenizer).model.eval()
    export_onnx(full, tmp_path / "full.onnx", 17)
    export_onnx(pruned, tmp_path / "pruned.onnx", 17)
    full_size, pruned_size = (tmp_path / "full.onnx").stat().st_size, (tmp_path / "pruned.onnx").stat().st_size
    assert pruned_size < 0.8 * full_size, (pruned_size, full_size)
    got = OnnxForward(tmp_path / "pruned.onnx").run_all(IDS.numpy(), MASK.numpy())
    expected = _logits(pruned)
    for array, name in zip(got, pruned.heads, strict=True):
        assert np.allclose(array[MASK.numpy().astype(bool)] if array.ndim == 3 else array,
                           expected[name].numpy()[MASK.numpy().astype(bool)] if array.ndim == 3
                           else expected[name].numpy(), atol=1e-4)


@pytest.mark.parametrize("method", ["variance", "pca"])
def test_narrow_hidden_student_is_a_vanilla_model(tiny_teacher, tmp_path, method):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    spec = StudentSpec(name="n", layers=2, hidden_size=16, hidden_init=method, pruning={"examples": 16})
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    assert built.model.encoder.config.hidden_size == 16 and built.model.encoder.config.num_attention_heads == 1
    before = _logits(built.model)
    built.save(built.model, tmp_path / "n", tokenizer)
    assert AutoModel.from_pretrained(tmp_path / "n").config.hidden_size == 16
    _assert_same(before, _logits(MultiTaskModel.load(tmp_path / "n")))


def test_projections_are_orthonormal_and_variance_keeps_the_widest_dimensions():
    covariance = torch.diag(torch.tensor([1.0, 5.0, 0.1, 3.0]))
    assert torch.equal(projection(covariance, 2, "variance"), torch.eye(4)[:, [1, 3]])
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))[0]
    pca = projection(rotation @ covariance @ rotation.T, 2, "pca")
    assert torch.allclose(pca.T @ pca, torch.eye(2), atol=1e-5)
    assert torch.allclose((pca @ pca.T) @ rotation[:, 1], rotation[:, 1], atol=1e-5), "top direction kept"


def test_random_narrow_student_and_bad_sizes(tiny_teacher):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    spec = StudentSpec(name="r", layers=2, hidden_size=16, hidden_init="random")
    model = build_student(recipe, spec, tasks, teacher_dir, tokenizer).model
    assert model.encoder.config.hidden_size == 16 and model.num_layers == 2
    too_wide = r"students\.x\.hidden_size: 24 must be below the teacher's hidden size 32 and a multiple of its " \
               r"attention head size 16"
    with pytest.raises(DistillInputError, match=too_wide):
        build_student(recipe, StudentSpec(name="x", layers=2, hidden_size=24), tasks, teacher_dir, tokenizer)
    with pytest.raises(DistillInputError, match=r"students\.x\.ffn: 128 is more than the teacher's FFN width 64"):
        build_student(recipe, StudentSpec(name="x", layers=2, ffn=128, pruning={"examples": 4}), tasks, teacher_dir,
                      tokenizer)


def test_iterative_pruning_masks_in_rounds_and_saves_the_final_size(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    recipe = recipe.model_copy(update={"distillation": recipe.distillation.model_copy(update={"epochs": 3})})
    spec = StudentSpec(name="i", layers=2, heads=1, ffn=16, pruning={"schedule": "iterative", "rounds": 2,
                                                                     "examples": 16})
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    unpruned = build_student(recipe, StudentSpec(name="u", layers=2), tasks, teacher_dir, tokenizer).model
    _assert_same(_logits(built.model), _logits(unpruned))
    evaluate = built.eligible(lambda model: (0.7, {}))
    built.on_epoch_start(1, built.model)
    layer = built.model.encoder.encoder.layer[0]
    assert int(layer.intermediate.dense.mask.sum()) == 40 and int(layer.attention.self.value.mask.sum()) == 16
    assert evaluate(built.model) == (-1.0, {"not_eligible": {"dev_score": 0.7, "first_eligible_epoch": 2}})
    alive = layer.intermediate.dense.mask.clone()
    built.on_epoch_start(2, built.model)
    assert int(layer.intermediate.dense.mask.sum()) == 16 and int(layer.attention.self.value.mask.sum()) == 16
    assert (layer.intermediate.dense.mask <= alive).all(), "a pruned neuron stays pruned"
    assert evaluate(built.model) == (0.7, {})
    built.on_epoch_start(3, built.model)
    assert int(layer.intermediate.dense.mask.sum()) == 16
    masked = _logits(built.model)
    built.save(built.model, tmp_path / "i", tokenizer)
    plain = AutoModel.from_pretrained(tmp_path / "i")
    assert plain.config.intermediate_size == 16
    assert [len(v) for v in plain.config.pruned_heads.values()] == [1, 1]
    _assert_same(masked, _logits(MultiTaskModel.load(tmp_path / "i")))
