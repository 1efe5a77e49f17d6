"""Training-time student parts: the epoch hook, QAT fake quantization, LoRA and bitsandbytes base weights."""

import numpy as np
import pytest
import torch
from transformers import AutoModel

from distill.data.tasks import EncodedSplit
from distill.model.multitask import MultiTaskModel
from distill.recipe import StudentSpec
from distill.train.loop import train_loop
from distill.train.settings import TrainSettings
from students.build import build_student
from students.modules import StudentEmbedding, StudentLinear, fake_quant_int8, fake_quant_uint8

IDS = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 14, 15, 3, 0, 0]])
MASK = (IDS != 0).long()


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(IDS, MASK).logits


def test_train_loop_calls_the_epoch_hook_before_each_epoch(tmp_path):
    model = torch.nn.Linear(2, 1)
    seen = []
    train = {"t": EncodedSplit([np.array([1, 2])] * 4, [0] * 4)}
    train_loop(model, train, 0, lambda m, b: (m.weight ** 2).sum(), lambda m: (0.0, {}), lambda m: None,
               TrainSettings(2, 2, 0.1, 0.0, 0), tmp_path / "log.jsonl", "t",
               on_epoch_start=lambda epoch, m: seen.append((epoch, m is model)))
    assert seen == [(1, True), (2, True)]


def test_fake_quant_rounds_like_onnxruntime_and_passes_gradients_straight_through():
    weight = torch.tensor([[0.5, -1.27, 0.003], [1.0, 0.2, -0.7]], requires_grad=True)
    quantized = fake_quant_int8(weight, reduce_range=False, per_channel=False)
    scale = 1.27 / 127
    assert torch.allclose(quantized, torch.round(weight.detach() / scale) * scale, atol=1e-7)
    quantized.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight))
    reduced = fake_quant_int8(weight.detach(), reduce_range=True, per_channel=False)
    assert len(torch.unique(torch.round(reduced / (1.27 / 64)))) <= 129
    per_channel = fake_quant_int8(weight.detach(), reduce_range=False, per_channel=True)
    assert torch.allclose(per_channel[1], torch.round(weight[1].detach() / (1.0 / 127)) * (1.0 / 127), atol=1e-7)
    values = torch.tensor([-0.5, 0.0, 2.0, 1.3])
    scale_u8 = 2.5 / 255
    zero = round(0.5 / scale_u8)
    expected = (torch.clamp(torch.round(values / scale_u8) + zero, 0, 255) - zero) * scale_u8
    assert torch.allclose(fake_quant_uint8(values), expected, atol=1e-6)


def test_qat_starts_in_the_last_epochs_and_the_saved_student_is_plain(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    recipe = recipe.model_copy(update={"distillation": recipe.distillation.model_copy(update={"epochs": 3})})
    spec = StudentSpec(name="q", layers=2, vocab="corpus", qat_epochs=1, qat_activations=True)
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    model = built.model
    float_logits = _logits(model)
    evaluate = built.eligible(lambda m: (0.5, {}))
    built.on_epoch_start(2, model)
    assert evaluate(model)[0] == -1.0, "an epoch without fake quantization is not kept as the QAT student"
    assert not any(isinstance(m, StudentLinear) for m in model.modules())
    params = {id(p) for p in model.parameters()}
    built.on_epoch_start(3, model)
    quantized = [m for m in model.modules() if isinstance(m, StudentLinear) and m.fake_quant]
    assert len(quantized) == 2 * 6 + 1  # 6 per layer + pooler
    assert {m.activations for m in quantized} == {"per_token"}, "inputs rounded as the default export rounds them"
    assert all(m.fake_quant == "per_row" for m in model.modules() if isinstance(m, StudentEmbedding))
    assert {id(p) for p in model.parameters()} == params, "the optimizer keeps the same parameters"
    assert evaluate(model) == (0.5, {})
    quant_logits = _logits(model)
    assert not torch.allclose(quant_logits["sentiment"], float_logits["sentiment"], atol=1e-7)
    assert torch.allclose(quant_logits["sentiment"], float_logits["sentiment"], atol=0.1)
    built.save(model, tmp_path / "q", tokenizer)
    assert isinstance(model.encoder.encoder.layer[0].intermediate.dense, StudentLinear), "training copy untouched"
    reloaded = MultiTaskModel.load(tmp_path / "q")
    assert not any(isinstance(m, StudentLinear | StudentEmbedding) for m in reloaded.modules())
    assert (tmp_path / "q" / "student.json").read_text().count('"from_epoch": 3') == 1


def _perturb_adapters(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)


def test_merged_lora_student_gives_the_unmerged_outputs(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    spec = StudentSpec(name="l", layers=2, lora={"r": 4, "target_modules": ["query", "value", "dense"]})
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("heads.") for n in trainable)
    _perturb_adapters(built.model)
    unmerged = _logits(built.model)
    plain = built.plain_model(built.model)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    merged = _logits(plain)
    for name in unmerged:
        assert torch.allclose(unmerged[name], merged[name], atol=1e-5)
    built.save(built.model, tmp_path / "l", tokenizer)
    assert type(AutoModel.from_pretrained(tmp_path / "l")).__name__ == "BertModel"
    reloaded = _logits(MultiTaskModel.load(tmp_path / "l"))
    for name in unmerged:
        assert torch.allclose(unmerged[name], reloaded[name], atol=1e-5)


@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_lora_student_trains_and_merges_on_cpu(tiny_teacher, tmp_path, bits):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    spec = StudentSpec(name="b", layers=2, lora={"r": 4, "base_bits": bits})
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    low_bit = [m for m in built.model.modules() if type(m).__module__.startswith("bitsandbytes")]
    assert low_bit and low_bit[0].weight.dtype == (torch.int8 if bits == 8 else torch.uint8)
    model = built.model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(IDS, MASK, task="sentiment").logits["sentiment"].logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n and "heads." not in n)
    _perturb_adapters(model)
    unmerged = _logits(model)
    built.save(model, tmp_path / "b", tokenizer)
    reloaded = MultiTaskModel.load(tmp_path / "b")
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())
    merged = _logits(reloaded)
    for name in unmerged:  # int8 LLM.int8 matmuls quantize activations too; nf4 runs on dequantized weights
        assert torch.allclose(unmerged[name], merged[name], atol=0.05 if bits == 8 else 1e-4), name
