"""LoRA students (peft), optionally over bitsandbytes int8 / nf4 base weights, merged to plain fp32 for saving."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distill.core.errors import DistillInputError
from distill.model.encoder import anatomy
from distill.model.multitask import MultiTaskModel
from distill.recipe import LoraSpec


def _bitsandbytes(where: str) -> Any:
    try:
        import bitsandbytes
    except ImportError as exc:
        raise DistillInputError(f"{where}: low-bit base weights need bitsandbytes (pip install bitsandbytes)") from exc
    return bitsandbytes


def quantize_linears(encoder: nn.Module, bits: int, where: str = "students.lora.base_bits") -> int:
    """Replace the encoder's Linear layers by frozen bitsandbytes int8 (LLM.int8) or nf4 layers."""
    bnb = _bitsandbytes(where)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    count = 0
    for parent in list(encoder.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            if bits == 8:
                low = bnb.nn.Linear8bitLt(child.in_features, child.out_features, child.bias is not None,
                                          has_fp16_weights=False, threshold=6.0)
            else:
                low = bnb.nn.Linear4bit(child.in_features, child.out_features, child.bias is not None,
                                        compute_dtype=torch.float32, quant_type="nf4")
                # keep one weight format: the CPU inference path would repack the weights (bf16 scales, and
                # only for inputs that are a multiple of the 64-wide block)
                low.support_avx512bf16_for_cpu = False
            low.load_state_dict(child.state_dict())
            setattr(parent, name, low.to(device))  # bitsandbytes quantizes when the layer is moved
            count += 1
    return count


def default_targets(encoder: nn.Module) -> list[str]:
    """The module names of the family's attention and FFN projections (what LoRA adapts by default)."""
    family = anatomy(encoder, "students.lora.target_modules")
    paths = [*(family.separate_qkv or (family.fused_qkv,)), family.attention_output, family.ffn_in, family.ffn_out]
    return sorted({path.rpartition(".")[2] for path in paths if path})


def add_lora(model: MultiTaskModel, spec: LoraSpec) -> None:
    """Freeze the encoder and give its `target_modules` LoRA adapters (the task heads stay fully trainable)."""
    from peft import LoraConfig, get_peft_model

    if spec.base_bits:
        quantize_linears(model.encoder, spec.base_bits)
    targets = list(spec.target_modules) if spec.target_modules is not None else default_targets(model.encoder)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                        bias="none")
    try:
        model.encoder = get_peft_model(model.encoder, config)
    except ValueError as exc:
        raise DistillInputError(f"students.lora.target_modules: {exc}".replace("\n", " ")) from exc


def merged_encoder(encoder: nn.Module) -> nn.Module:
    """The plain fp32 encoder with the adapters merged into its weights (low-bit bases dequantized first)."""
    from peft import PeftModel

    if not isinstance(encoder, PeftModel):
        return encoder
    if not _has_low_bit(encoder):
        return encoder.merge_and_unload()
    from peft.tuners.lora import LoraLayer
    from peft.utils.integrations import dequantize_module_weight

    base = encoder.get_base_model()
    with torch.no_grad():
        for parent in list(base.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, LoraLayer):
                    inner = child.get_base_layer()
                    weight = dequantize_module_weight(inner).float()
                    for adapter in child.active_adapters:
                        weight = weight + child.get_delta_weight(adapter).float()
                    setattr(parent, name, _plain_linear(weight, inner.bias))
                elif _is_low_bit(child):
                    setattr(parent, name, _plain_linear(dequantize_module_weight(child).float(), child.bias))
    return base


def _plain_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device=weight.device)
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias.float())
    return layer


def _is_low_bit(module: nn.Module) -> bool:
    return type(module).__module__.startswith("bitsandbytes")


def _has_low_bit(root: nn.Module) -> bool:
    return any(_is_low_bit(m) for m in root.modules())
