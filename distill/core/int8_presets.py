"""The int8 kernel family a CPU will use, from its ISA flags, and what that asks of the quantized weights."""

from __future__ import annotations

INT8_MAX = 127  # symmetric int8 weights and per-token activations: [-127, 127]
INT8_MAX_REDUCED = 64  # onnxruntime's reduce_range for int8 weights: [-64, 64], no u8 × s8 pair sum saturates
# export.int8_activations whose dynamic int8 gives each token its own scale (distill.export.per_token): their
# labels do not depend on the batch, and the graph is fused with MultiHeadAttention after the Q/K/V products
PER_TOKEN_ACTIVATIONS = ("per_token", "per_token_asymmetric")
ACTIVATION_WORDS = {"per_tensor": "per tensor", "per_token": "per token",
                    "per_token_asymmetric": "per token, asymmetric"}

# Without VNNI, x86 u8×s8 kernels (VPMADDUBSW) can saturate, so weights are quantised to a reduced range.
INT8_PRESETS = {
    "vnni": {"preset": "vnni", "reduce_range": False},
    "avx512": {"preset": "avx512", "reduce_range": True},
    "avx2": {"preset": "avx2", "reduce_range": True},
    "generic": {"preset": "generic", "reduce_range": False},
}


def int8_preset(isa: list[str]) -> dict:
    """The int8 kernel family a CPU with these ISA flags will use, and whether weights need a 7-bit range."""
    if "avx512_vnni" in isa or "avx_vnni" in isa or "amx_int8" in isa:
        return dict(INT8_PRESETS["vnni"])
    if "avx512f" in isa:
        return dict(INT8_PRESETS["avx512"])
    if "avx2" in isa:
        return dict(INT8_PRESETS["avx2"])
    return dict(INT8_PRESETS["generic"])


def configured_preset(isa: str) -> dict:
    """The preset of an `export.isa` setting: `auto` reads this machine's ISA flags."""
    from distill.core.hardware import hardware

    return int8_preset(hardware()["isa"]) if isa == "auto" else dict(INT8_PRESETS[isa])
