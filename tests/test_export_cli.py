"""`pmllm-batch export-onnx` writes the graph pair and the preprocessing JSON (issue 2, item 9)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort


def test_export_onnx_writes_fp32_int8_and_preprocessing(env, tmp_path):
    out = tmp_path / "onnx"
    code, stdout, err = env.run_cli("--preset", "demo", "export-onnx", "--out", str(out))
    assert code == 0, err
    for name in ("vision.onnx", "vision.int8.onnx", "preprocess_cfg.json"):
        assert (out / name).is_file(), name
    pre = json.loads((out / "preprocess_cfg.json").read_text())
    sess = ort.InferenceSession(str(out / "vision.int8.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["pixel_values"]
    assert [o.name for o in sess.get_outputs()] == ["features"]
    x = np.zeros((3, 3, pre["image_size"], pre["image_size"]), np.float32)
    # the demo tower's features (the projector is not in the graph): (96 / 12)^2 = 64 patches, 64 dims each
    assert pre["image_size"] == 96
    assert sess.run(None, {"pixel_values": x})[0].shape == (3, 64, 64)
