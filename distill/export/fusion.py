"""Fused graphs: onnxruntime's transformer optimizer on an exported encoder, before int8.

`onnxruntime.transformers.optimizer` rewrites the attention block (Q/K/V projections, scores, softmax, context)
into one `Attention` node, residual + LayerNorm into `SkipLayerNormalization`, bias + GELU into `BiasGelu`, and
embeddings + LayerNorm into `EmbedLayerNormalization`. Dynamic int8 then turns `Attention` into `QAttention`
(one int8 product for Q, K and V, the rest in one kernel): on the quick demo's 3-layer student 4.57 -> 4.01 ms
int8 at batch 1 x 128 (2 threads, AMD EPYC), and what a user who does not distil would take for the teacher
(optimum's O2 level). The patterns are BERT's, which RoBERTa, XLM-R and ELECTRA share; in other families
(DistilBERT's mask applied by Where, MPNet's relative position bias, DeBERTa's disentangled attention,
ModernBERT's rotary attention) only the layer norms and GELUs fuse, and the counts in the manifest say which.
Heads and widths are read from each layer's graph, so students with pruned heads (a different number per layer)
fuse too.

Embedding tables stay unfused where the int8 export stores them per row (`export.int8_embeddings: per_row`, the
4-bit tables of `embedding_bits: 4` included): `EmbedLayerNormalization` would take the table out of the Gather
that the per-row quantization rewrites."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from distill.core.logs import logger_level

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

OPTIMIZER_MODEL_TYPE = "bert"  # the fusion patterns of every family distill exports are BERT's (optimum maps them so)
# its input[1] is the packed Q/K/V weight, one row per input channel like a MatMul's: smoothing, the int8 noise
# ranking treat it as one weight product; it can leave int8 only whole, so the fallback search takes it only with
# int8_fallback: fp32
FUSED_ATTENTION = "Attention"
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu",
             "Gelu", "FastGelu", "LayerNormalization", "SkipSimplifiedLayerNormalization", "RotaryEmbedding")


@dataclass
class Fusion:
    """What fusing one graph did, for the manifest."""

    fused: bool
    ops: dict[str, int] = field(default_factory=dict)  # fused operators in the graph, by type
    note: str = ""

    def as_dict(self) -> dict:
        return {"fused": self.fused, "ops": self.ops, **({"note": self.note} if self.note else {})}


def fuse_graphs(graphs: dict[str | None, Path], unfused: dict[str | None, Path],
                fuse_embeddings: bool) -> dict[str | None, Fusion]:
    """Fuse each graph in place, its unfused copy moved to `unfused[task]` (static int8 quantizes that one)."""
    fusions = {}
    for task, path in graphs.items():
        path.replace(unfused[task])
        fusions[task] = fuse_graph(unfused[task], path, fuse_embeddings)
        if not fusions[task].fused:
            shutil.copyfile(unfused[task], path)
    return fusions


def unfuse_graphs(graphs: dict[str | None, Path], unfused: dict[str | None, Path],
                  reason: str) -> dict[str | None, Fusion]:
    """Put the unfused graphs back, the fusion undone for `reason`."""
    for task, path in graphs.items():
        shutil.copyfile(unfused[task], path)
    return {task: Fusion(False, {}, reason) for task in graphs}


def matching_nodes(source: Path, target: Path, nodes: list[str]) -> list[str]:
    """The nodes of graph `target` that `nodes` of graph `source` stand for, when one of the two is fused: the
    node of the same name, or between the k-th fused Attention and the k-th set of weight MatMuls that read one
    input (Q, K and V)."""
    import onnx

    names = {n.name for n in onnx.load(str(target), load_external_data=False).graph.node}
    source_units, target_units = _attention_units(source), _attention_units(target)
    matched: list[str] = []
    for name in nodes:
        unit = next((k for k, members in enumerate(source_units) if name in members), None)
        if name in names:
            matched.append(name)
        elif unit is not None and len(source_units) == len(target_units):
            matched += target_units[unit]
        else:
            log.warning("int8 fallback node %s has no counterpart in %s; it stays int8 there", name, target.name)
    return list(dict.fromkeys(matched))


def _attention_units(path: Path) -> list[list[str]]:
    """Each attention block's weight products in graph order: [its fused Attention], or the weight MatMuls that
    read one input (Q, K and V; an FFN or output projection is the only weight reader of its input)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    fused = [[n.name] for n in graph.node if n.op_type == FUSED_ATTENTION]
    if fused:
        return fused
    weights = {i.name for i in graph.initializer}
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            readers.setdefault(node.input[0], []).append(node.name)
    return [members for members in readers.values() if len(members) > 1]


def per_token_graphs(graphs: dict[str | None, Path], unfused: dict[str | None, Path],
                     fusions: dict[str | None, Fusion], fuse_embeddings: bool) -> dict[str | None, tuple[Path, Fusion]]:
    """The graph per-token int8 quantizes for each fp32 graph (see `distill.export.per_token`), and what fused in
    it: a graph whose attention fused into `Attention` (whose int8 form takes one scale per tensor) is fused again
    from its unfused copy with `MultiHeadAttention` instead, the Q, K and V projections left as weight MatMuls
    before it (a new file beside it, `<stem>.per-token.onnx`, for the caller to remove); where that does not fuse,
    the unfused copy; the others as they are."""
    sources = {}
    for task, path in graphs.items():
        fusion = fusions.get(task) or Fusion(False, {}, "export.fuse is false")
        if not fusion.fused or not fusion.ops.get(FUSED_ATTENTION):
            sources[task] = (path, fusion)
            continue
        target = path.with_name(f"{path.stem}.per-token.onnx")
        apart = fuse_graph(unfused[task], target, fuse_embeddings, projections=True)
        sources[task] = (target, apart) if apart.fused else (unfused[task], apart)
    return sources


def attention_projections(model_path: Path, names: list[str]) -> list[str]:
    """`names` with each `MultiHeadAttention` node among them replaced by the weight MatMuls that make its query,
    key and value (through a bias Add, if any): what keeping that attention in fp32 means in a per-token graph."""
    import onnx

    if not names:  # the usual case (no keep_fp32): no graph to read
        return []
    graph = onnx.load(str(model_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    kinds = {node.name: node for node in graph.node}
    expanded: list[str] = []
    for name in names:
        node = kinds.get(name)
        if node is None or node.op_type != "MultiHeadAttention":
            expanded.append(name)
            continue
        for tensor in node.input[:3]:
            source = producers.get(tensor)
            if source is not None and source.op_type == "Add":
                source = next((producers[i] for i in source.input if i in producers
                               and producers[i].op_type == "MatMul"), None)
            if source is not None and source.op_type == "MatMul" and source.input[1] in weights:
                expanded.append(source.name)
    return list(dict.fromkeys(expanded))


def fuse_graph(source: Path, target: Path, fuse_embeddings: bool, projections: bool = False) -> Fusion:
    """Write `source` fused to `target`; the counts of fused operators say what fused (none: `target` not
    written, and `fused` False). Level 0: only the transformer fusions, the runtime does the rest when a session
    opens. With `projections`, an attention block fuses into `MultiHeadAttention` after its own Q, K and V
    MatMuls rather than into `Attention`, which holds them."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(OPTIMIZER_MODEL_TYPE)
    options.enable_embed_layer_norm = fuse_embeddings
    options.use_multi_head_attention = projections
    options.enable_gelu_approximation = False  # an approximation would change the function, not only its graph
    # the optimizer logs each fusion and warns on every pattern a family does not have
    with logger_level(logging.ERROR):  # its modules log under their own top-level names
        optimized = optimize_model(str(source), model_type=OPTIMIZER_MODEL_TYPE, num_heads=0, hidden_size=0,
                                   optimization_options=options, opt_level=0)
        ops = fused_op_counts(optimized.model)
        if not ops:
            return Fusion(False, {}, "no subgraph matched onnxruntime's transformer fusions")
        optimized.save_model_to_file(str(target))
    return Fusion(True, ops)


def fused_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(node.op_type for node in model.graph.node
                     if node.domain == "com.microsoft" and node.op_type in FUSED_OPS)
    return dict(sorted(counts.items()))
