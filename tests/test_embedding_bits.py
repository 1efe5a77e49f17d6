"""Students trained with 4-bit word embeddings: the saved table is on the grid, the export packs it losslessly."""

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_recipe_dict, write_tiny_data
from onnx import TensorProto, helper, numpy_helper
from transformers import AutoModel

from distill.core.errors import DistillInputError
from distill.export.artifact import export_artifact
from distill.export.embeddings import on_int4_grid, pack_int4_rows, quantize_embedding_rows, quantize_rows
from distill.model.multitask import MultiTaskModel
from distill.recipe import ExportSpec, StudentSpec, parse_recipe
from distill.runtime import OnnxForward
from students.build import build_student
from students.modules import fake_quant_rows
from students.vocab_map import student_inputs


def _lookup_graph(table: np.ndarray, path) -> None:
    """A graph that only looks rows up: ids -> Gather(table)."""
    node = helper.make_node("Gather", ["table", "ids"], ["rows"], name="word_embeddings/Gather", axis=0)
    graph = helper.make_graph([node], "lookup", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None])],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, None, table.shape[1]])],
                              [numpy_helper.from_array(table, "table")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _lookup(path, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


def test_a_table_on_the_4_bit_grid_is_packed_two_values_a_byte_and_read_back_exactly(tmp_path):
    latent = torch.from_numpy(np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32))
    latent[5] = 0
    table = fake_quant_rows(latent, bits=4).numpy()
    assert on_int4_grid(table) and not on_int4_grid(latent.numpy())
    packed, scales = pack_int4_rows(table)
    assert packed.dtype == np.uint8 and packed.shape == (40, 8) and scales.shape == (40, 1)
    _lookup_graph(table, tmp_path / "model.onnx")
    assert quantize_embedding_rows(tmp_path / "model.onnx") == {"table": 4}
    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "model.onnx")).graph.initializer}
    assert "table" not in stored and stored["table_int4_rows"].shape == (40, 8)
    ids = np.array([[0, 5, 39, 7, 7, 12]], dtype=np.int64)
    assert np.allclose(_lookup(tmp_path / "model.onnx", ids), table[ids], atol=1e-6)


def test_a_table_off_the_grid_stays_per_row_int8(tmp_path):
    table = np.random.default_rng(1).normal(size=(30, 16)).astype(np.float32)
    _lookup_graph(table, tmp_path / "model.onnx")
    assert quantize_embedding_rows(tmp_path / "model.onnx") == {"table": 8}
    rows, scales = quantize_rows(table)
    ids = np.array([[1, 2, 29]], dtype=np.int64)
    assert np.allclose(_lookup(tmp_path / "model.onnx", ids), (rows * scales)[ids], atol=1e-6)


def test_student_with_4_bit_embeddings_trains_saves_and_exports_on_the_grid(tiny_teacher, tmp_path):
    recipe, teacher_dir, tokenizer, tasks = tiny_teacher
    spec = StudentSpec(name="e4", layers=2, vocab=14, embedding_bits=4)
    built = build_student(recipe, spec, tasks, teacher_dir, tokenizer)
    table = built.model.encoder.get_input_embeddings()
    with torch.no_grad():
        table.weight.add_(0.01)  # a training step's worth of change: the forward still reads grid values
    enc = tokenizer(["the film was good", "alice went to rome"], padding=True, return_tensors="pt")
    built.model.eval()
    with torch.no_grad():
        in_training = built.model(enc["input_ids"], enc["attention_mask"]).logits
    built.save(built.model, tmp_path / "e4", tokenizer)
    plain = AutoModel.from_pretrained(tmp_path / "e4")
    assert on_int4_grid(plain.get_input_embeddings().weight.detach().numpy())
    assert plain.get_input_embeddings().weight.shape[0] == 14
    student_tasks, pad = student_inputs(tmp_path / "e4", tasks, tokenizer.pad_token_id)
    ids = torch.from_numpy(np.stack([built.vocab.to_student(enc["input_ids"][i].numpy()) for i in range(2)]))
    with torch.no_grad():
        saved = MultiTaskModel.load(tmp_path / "e4")(ids, enc["attention_mask"]).logits
    for name in in_training:
        assert torch.allclose(in_training[name], saved[name], atol=1e-5)
    manifest = export_artifact(tmp_path / "e4", tmp_path / "a", student_tasks, ExportSpec(quantization=["dynamic"]),
                               recipe.max_length, pad)
    assert manifest["checks"]["int8"]["dynamic"]["word_embedding_bits"] == 4
    stored = {i.name: numpy_helper.to_array(i)
              for i in onnx.load(str(tmp_path / "a" / "model.int8.onnx")).graph.initializer}
    packed = [v for k, v in stored.items() if k.endswith("_int4_rows")]
    assert len(packed) == 1 and packed[0].shape == (14, plain.config.hidden_size // 2)
    mask = np.ones_like(ids.numpy())
    fp32 = OnnxForward(tmp_path / "a" / "model.onnx")("sentiment", ids.numpy(), mask)
    int8 = OnnxForward(tmp_path / "a" / "model.int8.onnx")("sentiment", ids.numpy(), mask)
    assert np.abs(fp32 - saved["sentiment"].numpy()).max() < 1e-4 and np.abs(int8 - fp32).max() < 0.5


def test_embedding_bits_needs_per_row_int8_embeddings(tmp_path, tiny_base):
    data = tiny_recipe_dict(tiny_base, write_tiny_data(tmp_path / "data"))
    data["students"] = [{"name": "e4", "layers": 2, "embedding_bits": 4}]
    data["export"] = {"int8_embeddings": "per_tensor"}
    with pytest.raises(DistillInputError, match="embedding_bits"):
        parse_recipe(data, tmp_path)


def test_rounding_the_looked_up_rows_equals_looking_up_the_rounded_table():
    from students.modules import StudentEmbedding

    torch.manual_seed(0)
    source = torch.nn.Embedding(50, 16, padding_idx=0)
    ids = torch.tensor([[0, 3, 49, 3], [7, 7, 1, 0]])
    for bits, fake_quant in ((4, None), (8, None), (None, "per_row")):
        table = StudentEmbedding(source, fake_quant=fake_quant, snap_bits=bits)
        expected = fake_quant_rows(source.weight.detach(), bits or 8)[ids]
        assert torch.allclose(table(ids), expected, atol=1e-7)
    table = StudentEmbedding(source, snap_bits=4)
    table(ids).sum().backward()
    assert source.weight.grad is not None and source.weight.grad[3].abs().sum() > 0, "gradients pass straight through"
