"""Loss settings of a recipe: validation, the layer map, the layers a recipe needs cached, projections."""

import pytest
import torch
from torch import nn

from distill.core.errors import DistillInputError
from distill.distillation.layer_map import layer_pairs, needed_teacher_layers, uniform_layers
from distill.distillation.projections import HiddenProjections, attached
from distill.recipe import DistillationSpec, StudentSpec, TemperatureSchedule, load_recipe


@pytest.mark.parametrize(
    ("distillation", "message"),
    [
        ({"losses": {"hard": 1, "kd": 1}}, "distillation.losses: Value error, unknown loss 'kd'; losses are hard,"),
        ({"losses": {"hard": 0}}, "give at least one loss a positive weight"),
        ({"losses": {"hard": -1}}, "distillation.losses.hard"),
        ({"losses": {"hard": 1}, "alpha": 0.3}, "give either losses or alpha"),
        ({"stages": [{"name": "a", "epochs": 0, "losses": {"hard": 1}}]}, "distillation.stages.0.epochs"),
        ({"stages": [{"name": "a", "epochs": 1, "losses": {"hard": 1}}], "hidden_weight": 2},
         "stages set their own losses; remove hidden_weight"),
        ({"stages": [{"name": "a", "epochs": 1, "losses": {"hard": 1}}] * 2}, "duplicate stage name"),
        ({"stages": []}, "give at least one stage"),
        ({"stages": [{"name": "a", "epochs": 1, "losses": {"relation": 1}}]}, "unknown loss 'relation'"),
        ({"temperature": {"start": 4.0}}, "distillation.temperature"),
        ({"layer_map": "first"}, "distillation.layer_map"),
        ({"teacher_source": "live"}, "distillation.teacher_source"),
        ({"relation_heads": 0}, "distillation.relation_heads"),
    ],
)
def test_bad_loss_settings_name_the_key(recipe_file, distillation, message):
    path = recipe_file(lambda r: r["distillation"].update(distillation))
    with pytest.raises(DistillInputError, match="^" + str(path).replace("\\", "\\\\") + ": ") as info:
        load_recipe(path)
    assert message in str(info.value)


def test_legacy_weights_are_the_defaults_of_the_loss_weights():
    plan = DistillationSpec(alpha=0.3, hidden_weight=2.0, epochs=5).stage_plan()
    assert len(plan) == 1 and plan[0].epochs == 5
    assert plan[0].losses.active() == {"hard": 0.3, "kd_kl": 0.7, "hidden_mse": 2.0}
    explicit = DistillationSpec(losses={"kd_mse": 1.0, "relations": 0.5}).stage_plan()[0].losses
    assert explicit.active() == {"kd_mse": 1.0, "relations": 0.5}
    staged = DistillationSpec(epochs=4, stages=[{"name": "intermediate", "epochs": 1, "losses": {"hidden_mse": 1}},
                                                {"name": "prediction", "losses": {"kd_kl": 1}}]).stage_plan()
    assert [(s.name, s.epochs) for s in staged] == [("intermediate", 1), ("prediction", 4)]


def test_temperature_schedule_is_linear_and_clamped():
    schedule = TemperatureSchedule(start=4.0, end=1.0)
    assert [schedule.at(f) for f in (-1, 0, 0.5, 1, 2)] == [4.0, 4.0, 2.5, 1.0, 1.0]


def test_layer_maps():
    assert uniform_layers(2, 6) == [3, 6]
    assert uniform_layers(3, 4) == [1, 3, 4]
    assert layer_pairs("last", 2, 6) == [(2, 6)]
    assert layer_pairs("all", 2, 6, [1, 4]) == [(1, 2), (2, 5)], "the teacher layer each one was copied from"
    assert layer_pairs("all", 2, 6) == [(1, 3), (2, 6)], "uniform when not copied"
    assert layer_pairs({-1: -2, 1: 1}, 3, 6) == [(1, 1), (3, 5)]
    for bad, message in (({3: 1}, "student layer 3 is outside 1..2"), ({1: 0}, "teacher layer 0"),
                         ({1: 2, -2: 3}, "maps a student layer twice"), ({}, "at least one")):
        with pytest.raises(DistillInputError, match=message):
            layer_pairs(bad, 2, 6)


def test_needed_teacher_layers_is_the_union_over_students_and_stages():
    students = [StudentSpec(name="a", layers=2), StudentSpec(name="b", layers=[0, 3])]
    # the default (uniform) map: a keeps teacher layers [2, 5] -> hidden states 3, 6; b keeps [0, 3] -> 1, 4
    assert needed_teacher_layers(DistillationSpec(), students, 6) == ([1, 3, 4, 6], [])
    assert needed_teacher_layers(DistillationSpec(layer_map="last"), students, 6) == ([6], [])
    logits_only = DistillationSpec(losses={"kd_kl": 1}, layer_map="all")
    assert needed_teacher_layers(logits_only, students, 6) == ([], [])
    staged = DistillationSpec(layer_map="all", stages=[
        {"name": "intermediate", "epochs": 1, "losses": {"hidden_cosine": 1, "embedding": 1, "relations": 1}},
        {"name": "prediction", "epochs": 1, "losses": {"kd_kl": 1}}])
    assert needed_teacher_layers(staged, students, 6) == ([0, 1, 3, 4, 6], [1, 3, 4, 6])


def test_projections_map_widths_and_detach_after_training():
    projections = HiddenProjections(4, 6, [0, 2, 2])
    assert sorted(projections.maps) == ["0", "2"]
    assert projections(2, torch.zeros(1, 3, 4)).shape == (1, 3, 6)
    same = HiddenProjections(4, 4, [1])
    states = torch.randn(1, 2, 4)
    assert len(same.maps) == 0 and same(1, states) is states
    model = nn.Sequential(nn.Linear(4, 4))
    with attached(model, projections):
        assert {n for n, _ in model.named_parameters()} >= {"distill_projections.maps.2.weight"}
    assert all(not n.startswith("distill_projections") for n, _ in model.named_parameters())
