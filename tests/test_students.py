import pytest
import torch
from transformers import AutoModel

from distill.data import TaskInfo
from distill.errors import DistillInputError
from students.layers import keep_layers, load_layer_map, pick_layers, save_layer_map
from teachers.multitask import MultiTaskModel

TASKS = [TaskInfo("cls", "sequence_classification", ["a", "b"], "accuracy"),
         TaskInfo("tag", "token_classification", ["O", "B-x"], "entity_f1")]


def test_pick_layers_spreads_and_keeps_the_last():
    assert pick_layers(2, 6) == [2, 5]
    assert pick_layers(3, 6) == [1, 3, 5]
    assert pick_layers(6, 6) == list(range(6))
    assert pick_layers([4, 0], 6) == [0, 4]
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
    ids = torch.tensor([[2, 10, 11, 3]])
    mask = torch.ones_like(ids)
    before = student(ids, mask).logits
    student.save(tmp_path / "s")
    save_layer_map(tmp_path / "s", [1, 3])
    plain = AutoModel.from_pretrained(tmp_path / "s")
    assert plain.config.num_hidden_layers == 2
    reloaded = MultiTaskModel.load(tmp_path / "s")
    after = reloaded(ids, mask).logits
    for name in before:
        assert torch.allclose(before[name], after[name], atol=1e-6)
    assert load_layer_map(tmp_path / "s") == [1, 3]
