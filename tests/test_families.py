"""Every model family the encoder anatomy knows, on tiny random encoders: each student kind the family allows
physically shrinks the model, reloads with plain `AutoModel` to the same outputs, and the refused ones say why."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from distill.core.errors import DistillInputError
from distill.data.tasks import TaskInfo
from distill.model.attention import capture_qkv
from distill.model.encoder import anatomy, config_value, layer_parts
from distill.model.multitask import MultiTaskModel
from students.hidden import narrow_hidden, projection
from students.importance import score_importance
from students.layers import keep_layers
from students.pruning import HEADS_REFUSED, prune_ffn, prune_heads

SIZES = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64,
         "vocab_size": 60, "max_position_embeddings": 64, "pad_token_id": 0}
FAMILIES = {
    "bert": {},
    "roberta": {"pad_token_id": 1},
    "xlm-roberta": {"pad_token_id": 1},
    "electra": {"embedding_size": 8},
    "distilbert": {},
    "mpnet": {"pad_token_id": 1},
    "deberta-v2": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"], "position_buckets": 8,
                   "max_relative_positions": 16, "norm_rel_ebd": "layer_norm", "share_att_key": True,
                   "position_biased_input": False},
    "modernbert": {"global_attn_every_n_layers": 1, "bos_token_id": 2, "eos_token_id": 3, "cls_token_id": 2,
                   "sep_token_id": 3, "norm_bias": False},
}
TASKS = [TaskInfo("sentiment", "sequence_classification", ["neg", "pos"], "accuracy"),
         TaskInfo("ner", "token_classification", ["O", "B-per"], "entity_f1")]


def tiny_config(model_type: str) -> object:
    sizes = {**SIZES, **FAMILIES[model_type]}
    if model_type == "distilbert":
        sizes.update(dim=32, n_layers=3, n_heads=4, hidden_dim=64)
    return AutoConfig.for_model(model_type, **sizes)


def tiny_model(model_type: str, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    encoder = AutoModel.from_config(tiny_config(model_type), attn_implementation="eager")
    return MultiTaskModel(encoder, TASKS).eval()


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def outputs(model: MultiTaskModel) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return model(*inputs()).logits


def reloaded(model: MultiTaskModel, tmp_path) -> MultiTaskModel:
    """The model saved and loaded back with AutoModel only (plus its heads)."""
    model.save(tmp_path / "saved")
    return MultiTaskModel.load(tmp_path / "saved").eval()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    mask = inputs()[1].bool()
    for task in a:
        x, y = (a[task], b[task]) if a[task].ndim == 2 else (a[task][mask], b[task][mask])
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_anatomy_finds_every_part_and_the_attention_projections(model_type):
    model = tiny_model(model_type)
    family, layers = layer_parts(model.encoder, "test")
    assert len(layers) == config_value(model.encoder.config, "layers") == 3
    ids, mask = inputs()
    with capture_qkv(model.encoder, [1, 3]) as captured, torch.inference_mode():
        model(ids, mask)
    assert sorted(captured) == [1, 3]
    assert all(tensor.shape == (2, 9, 32) for parts in captured.values() for tensor in parts)
    assert family.fused_qkv is None or model_type == "modernbert"


def test_an_unknown_family_is_one_line_naming_its_model_type_and_the_stage():
    from transformers import ErnieConfig, ErnieModel

    encoder = ErnieModel(ErnieConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64))
    with pytest.raises(DistillInputError, match=r"^students\.s: model_type 'ernie' is not a family") as error:
        anatomy(encoder, "students.s")
    assert "\n" not in str(error.value)
    student = keep_layers(MultiTaskModel(encoder, TASKS), [0])  # dropping layers needs no anatomy
    assert student.num_layers == 1


@pytest.mark.parametrize("model_type", FAMILIES)
def test_ffn_pruning_shrinks_every_layer_and_reloads_with_automodel(model_type, tmp_path):
    model = tiny_model(model_type)
    scores = torch.rand(3, 64, generator=torch.Generator().manual_seed(0))
    prune_ffn(model, 40, scores)
    assert config_value(model.encoder.config, "ffn") == 40
    assert_same(outputs(model), outputs(reloaded(model, tmp_path)))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_head_pruning_reloads_with_automodel_or_is_refused_with_a_reason(model_type, tmp_path):
    model = tiny_model(model_type)
    scores = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    family = anatomy(model.encoder, "test")
    if family.family in HEADS_REFUSED:
        with pytest.raises(DistillInputError, match=r"students\.heads: .*(narrow hidden_size|prune ffn)"):
            prune_heads(model, 2, scores)
        return
    before = sum(p.numel() for p in model.encoder.parameters())
    removed = prune_heads(model, 2, scores)
    assert all(len(heads) == 2 for heads in removed.values())
    assert sum(p.numel() for p in model.encoder.parameters()) < before
    assert_same(outputs(model), outputs(reloaded(model, tmp_path)))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_narrow_hidden_keeps_head_size_and_reloads_with_automodel(model_type, tmp_path):
    model = tiny_model(model_type)
    covariance = torch.eye(32) + 0.1
    heads = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    kept = narrow_hidden(model, 16, projection(covariance, 16, "variance"), heads)
    config = model.encoder.config
    assert config_value(config, "hidden") == 16 and config_value(config, "heads") == 2
    assert all(len(k) == 2 for k in kept)
    if model_type == "mpnet":
        assert kept[0] == kept[1] == kept[2], "the relative-position bias has one column per head for every layer"
    assert_same(outputs(model), outputs(reloaded(model, tmp_path)))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_importance_scores_every_head_and_ffn_neuron(model_type):
    from distill.data.tasks import EncodedSplit, TaskData

    ids, _ = inputs()
    split = EncodedSplit([row.numpy() for row in ids], [1, 0])
    data = [TaskData(TASKS[0], {}, {"dev": split})]
    scores = score_importance(tiny_model(model_type), data, pad_id=0, examples=2)
    assert scores.heads.shape == (3, 4) and scores.ffn.shape == (3, 64)
    assert (scores.heads > 0).all() and (scores.ffn > 0).any()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_the_attention_loss_is_refused_where_qk_softmax_is_not_the_attention(model_type):
    from distill.distillation.distiller import _check_attention_loss
    from distill.recipe import LossWeights, StageSpec

    stages = [StageSpec(name="s", losses=LossWeights(kd_kl=1.0, attention=1.0))]
    config, bert = tiny_config(model_type), tiny_config("bert")
    if model_type in ("mpnet", "deberta-v2", "modernbert"):
        with pytest.raises(DistillInputError, match=r"distillation\.losses\.attention: .* teacher adds .* relations"):
            _check_attention_loss(stages, config, bert)
        # a student started from another encoder (init_from) can be of such a family under a BERT teacher
        with pytest.raises(DistillInputError, match=r"distillation\.losses\.attention: .* student adds .* relations"):
            _check_attention_loss(stages, bert, config)
    else:
        _check_attention_loss(stages, config, bert)
        _check_attention_loss(stages, bert, config)
    _check_attention_loss([StageSpec(name="s", losses=LossWeights(kd_kl=1.0, relations=1.0))], config, config)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_lora_adapts_the_family_projections_by_default(model_type):
    from students.lora import default_targets

    targets = default_targets(tiny_model(model_type).encoder)
    family = anatomy(tiny_config(model_type), "test")
    assert family.attention_output.rpartition(".")[2] in targets and family.ffn_in.rpartition(".")[2] in targets
    if model_type == "bert":
        assert targets == ["dense", "key", "query", "value"], "BERT's default is the list it always was"
