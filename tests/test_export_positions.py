import json

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from distill.export.onnx_graph import trim_positions
from distill.model.multitask import MultiTaskModel
from distill.runtime import Predictor


def test_artifacts_keep_only_max_length_position_rows(trained_run):
    artifact = trained_run / "out" / "artifacts" / "s2"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["max_length"] == 32 and manifest["positions"] == 32
    for name in ("model.onnx", "model.int8.onnx"):
        tables = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(artifact / name)).graph.initializer}
        positions = [table for key, table in tables.items() if "position_embeddings" in key]
        assert [table.shape[0] for table in positions] == [32], name
    predictor = Predictor(artifact)
    long_text = " ".join(["a very long review"] * 60)
    result = predictor.predict([long_text])[0]  # truncated to max_length, never past the kept rows
    assert set(result) == {"sentiment", "ner"} and 0 <= result["sentiment"]["score"] <= 1


def test_trimmed_model_gives_the_same_outputs_up_to_the_kept_length(trained_run):
    model = MultiTaskModel.load(trained_run / "out" / "students" / "s2").eval()
    vocab = model.encoder.config.vocab_size
    ids = torch.randint(5, vocab, (2, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        before = model(ids, mask, task="ner").logits["ner"]
        assert trim_positions(model, 24)
        after = model(ids, mask, task="ner").logits["ner"]
    assert model.encoder.embeddings.position_embeddings.num_embeddings == 24
    assert model.encoder.config.max_position_embeddings == 24
    assert np.allclose(before.numpy(), after.numpy(), atol=1e-6)
    assert not trim_positions(model, 24) and not trim_positions(model, 100), "a table no longer than asked stays"
