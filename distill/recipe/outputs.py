"""The recipe's `export:` and `bench:` sections: what the artifacts hold and how they are measured."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from distill.recipe.common import Strict


class ExportSpec(Strict):
    """What the exporter writes and how strictly it checks it."""

    fp32: bool = True
    int8: bool = True
    hf_dirs: bool = Field(
        default=False, description="also write hf/TASK/ per task: model.onnx (int8, dynamic when exported, with a "
                                   "`logits` output), config.json with the labels, and the tokenizer, which "
                                   "optimum.onnxruntime's ORTModelFor*Classification.from_pretrained loads as is")
    fuse: bool = Field(
        default=True, description="fuse each fp32 graph with onnxruntime's transformer optimizer first (Attention, "
                                  "SkipLayerNormalization, BiasGelu, and EmbedLayerNormalization unless "
                                  "int8_embeddings is per_row): the fused graph is the fp32 model; per-token "
                                  "dynamic int8 quantizes the same fusions with MultiHeadAttention after the Q/K/V "
                                  "MatMuls (per-tensor: the fused graph, QAttention); static int8 quantizes the "
                                  "unfused graph, whose QDQ "
                                  "products onnxruntime fuses itself when a session opens. A graph whose fused "
                                  "logits differ from PyTorch by more than parity_tolerance ships unfused; the "
                                  "manifest counts the fused operators per graph")
    graphs: Literal["combined", "per_task"] = Field(
        default="combined", description="one graph with every task's logits as a named output, or one graph per task")
    quantization: list[Literal["dynamic", "static"]] = Field(
        default=["dynamic"], description="int8 modes: dynamic (weights only) and/or static (calibrated, QDQ)")
    int8_activations: Literal["auto", "per_tensor", "per_token", "per_token_asymmetric"] = Field(
        default="auto", description="activation scales of dynamic int8: per_tensor (onnxruntime's "
                                    "DynamicQuantizeLinear, one scale per tensor and batch, with the fused "
                                    "QAttention: the fewest operators, labels that depend on the batch), per_token "
                                    "(each token's row quantized by its own max |x|, symmetric: a few large tokens "
                                    "no longer coarsen the rest, and an example's labels do not depend on the "
                                    "batch; the graph is fused with MultiHeadAttention after the Q/K/V MatMuls, "
                                    "since Attention's int8 form takes one scale), per_token_asymmetric (each "
                                    "token's [min, max] on the 254 levels, centred: up to 2x finer steps where a "
                                    "token's values are lopsided, at two more element-wise passes per product; "
                                    "not smoothed) or auto (the first of per_tensor, per_token and "
                                    "per_token_asymmetric whose graph with every product in int8 reaches "
                                    "int8_min_agreement on dev at check_batch_size; where none does, the "
                                    "accuracy search on the fastest of them whose dev agreement is within 0.001 "
                                    "of the best; per_token without a target)")
    per_channel: bool = Field(default=True, description="int8 weights with one scale per output channel (a "
                                                        "column whose values are small keeps its precision)")
    keep_fp32: list[str] = Field(
        default=[], description="regular expressions over ONNX node names; matching nodes stay fp32 in int8 models "
                                "(e.g. 'layer\\.\\d+/output/dense' keeps every FFN output projection in fp32)")
    int8_embeddings: Literal["per_row", "per_tensor", "fp32"] = Field(
        default="per_row", description="embedding tables in int8 models: int8 with one scale per row, "
                                       "onnxruntime's one scale per table, or kept fp32")
    int8_heads: bool = Field(
        default=False, description="quantize the task heads (the last Linear before each output) too; by default "
                                   "they stay fp32: a few KB, and their rounding would land on the logits directly")
    int8_min_agreement: float | None = Field(
        default=0.996, gt=0, le=1, description="take the weight MatMuls with the most int8 noise out of the int8 "
                                               "scheme (1, 2, 4, ... then bisected) until int8 and fp32 agree on "
                                               "this share of every task's dev labels (null turns it off), in fp32 "
                                               "where int8_fallback cannot reach it; searched in the first "
                                               "quantization mode, the other modes take the same nodes out (none "
                                               "after a dynamic graph int8_activations: auto found on target "
                                               "with every product in int8)")
    int8_agreement: Literal["expected", "labels"] = Field(
        default="expected", description="what int8_min_agreement bounds on dev: expected (each dev margin meets "
                                        "the int8 shifts of the decisions nearest to it in margin: the expected "
                                        "share of agreeing labels, with far less sampling noise where int8 flips "
                                        "a few in a thousand; see distill.export.agreement) or labels (agreeing "
                                        "labels counted)")
    int8_fallback: Literal["outliers", "block_int8", "fp32"] = Field(
        default="outliers", description="what those MatMuls become: int8 with their int8_outlier_channels largest "
                                        "input channels in fp32 (LLM.int8-style split), 8-bit weights and "
                                        "activations quantized per block of 128 (onnxruntime MatMulNBits), or fp32")
    int8_outlier_channels: int = Field(
        default=8, ge=1, description="input channels per MatMul, the largest on a dev sample, that int8_fallback: "
                                     "outliers computes in fp32")
    int8_max_fallback_nodes: int = Field(default=8, ge=0, description="most MatMuls int8_min_agreement may take out")
    int8_smoothing: float | None = Field(
        default=0.7, ge=0, le=1, description="SmoothQuant migration strength alpha: before int8, each MatMul input is "
                                             "divided per channel by s = max|x|^alpha / max|w|^(1-alpha) and the "
                                             "weight rows multiplied by it (same fp32 function, flatter activations "
                                             "for the int8 scale of a token or tensor; per_token_asymmetric graphs "
                                             "are not smoothed); null turns it off")
    check_batch_size: int = Field(
        default=1, gt=0, description="examples per forward pass in the int8 checks and the fallback search: 1 runs "
                                     "each example alone, as an edge device does; dynamic int8 scales its "
                                     "activations over the whole batch (padding included), so a larger batch "
                                     "changes some int8 labels with the company an example keeps")
    calibration_examples: int = Field(default=256, gt=0, description="dev examples per task for static int8")
    isa: Literal["auto", "avx2", "avx512", "vnni", "generic"] = "auto"
    positions: Literal["max_length", "all"] = Field(
        default="max_length", description="position-embedding rows the ONNX graphs keep: max_length (the runtime "
                                          "truncates inputs there; MiniLM's 512-row table becomes 128 rows, 0.6 MB "
                                          "less) or all of the model's")
    optimization_level: Literal["disable", "basic", "extended", "all"] = "all"
    opset: int = Field(default=17, ge=14)
    parity_tolerance: float = Field(default=1e-4, gt=0)
    max_int8_drop: float | None = Field(default=None, ge=0, description="fail when int8 loses more dev score")

    def dynamic_int8_activations(self) -> str:
        """The activation scales of the dynamic int8 graph, or per_tensor where none is built (static int8's fixed
        scales are one per tensor too): what QAT of a Linear's input simulates. `auto` is decided per model at
        export; QAT simulates per_token for it and for per_token_asymmetric (one scale per token as both; the
        simulation does not centre)."""
        if not (self.int8 and "dynamic" in self.quantization):
            return "per_tensor"
        return "per_tensor" if self.int8_activations == "per_tensor" else "per_token"

    @field_validator("keep_fp32")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from exc
        return value

    @field_validator("quantization")
    @classmethod
    def _modes(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError("a non-empty list of distinct modes: dynamic, static")
        return value


class BenchSpec(Strict):
    batch_sizes: list[int] = Field(default=[1, 8])
    seq_len: int | None = Field(default=None, gt=0, description="tokens per input when timing (default: max_length)")
    other_seq_lens: list[int] = Field(default=[], description="more sequence lengths timed at batch 1")
    repeats: int = Field(default=50, gt=0, description="timed calls per model and input shape")
    rounds: int = Field(default=5, gt=0, description="the timed calls are spread over this many rounds, "
                        "models taking turns, so a slow spell of a shared machine hits all models alike")
    warmup: int = Field(default=10, ge=0)
    threads: int | None = Field(default=None, gt=0)

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 for b in value):
            raise ValueError("a non-empty list of positive batch sizes")
        return value
