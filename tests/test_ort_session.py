"""ONNX Runtime sessions: provider choice (mocked at the onnxruntime boundary) and load errors.

In the style of immich's ``TestOrtSession``: availability comes from a patched
``onnxruntime.get_available_providers``, and ``InferenceSession`` is replaced by a recorder where the
test is about what we pass to it, so CUDA paths are tested on a CPU-only machine.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnxruntime
import pytest

from pmllm_batch.errors import ModelLoadError
from pmllm_batch.runtime import ort_session
from pmllm_batch.runtime.ort_session import DEFAULT_PROVIDERS, choose_providers, create_session

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@pytest.fixture
def available(monkeypatch):
    """Set what ``onnxruntime.get_available_providers()`` reports."""

    def set_available(*names: str) -> None:
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(names))

    return set_available


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    """A valid one-node ONNX model (Identity), y = x."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    save(model, str(path))
    return path


class RecordingSession:
    """Stands in for ``onnxruntime.InferenceSession`` and keeps what it was given."""

    last: RecordingSession | None = None

    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        self.path, self.sess_options, self.providers = path, sess_options, providers
        RecordingSession.last = self

    def get_providers(self) -> list[str]:
        return [p[0] if isinstance(p, tuple) else p for p in self.providers]


class TestChooseProviders:
    def test_sets_cuda_provider_if_available(self, available):
        available(CUDA, CPU)
        assert choose_providers() == [CUDA, CPU]

    def test_falls_back_to_cpu_without_cuda(self, available):
        available(CPU)
        assert choose_providers() == [CPU]
        assert choose_providers([CUDA]) == [CPU]

    def test_cpu_is_always_last(self, available):
        available(CPU, CUDA)
        assert choose_providers([CPU, CUDA]) == [CUDA, CPU]
        assert choose_providers([CPU, CPU]) == [CPU]
        assert choose_providers([]) == [CPU]

    def test_keeps_preferred_order(self, available):
        available(CPU, "CoreMLExecutionProvider", CUDA)
        assert choose_providers(["CoreMLExecutionProvider", CUDA]) == ["CoreMLExecutionProvider", CUDA, CPU]

    def test_ignores_unsupported_providers(self, available, caplog):
        available("TensorrtExecutionProvider", CUDA, CPU)
        with caplog.at_level(logging.WARNING, logger="pmllm_batch"):
            chosen = choose_providers(["FooExecutionProvider", "TensorrtExecutionProvider", CUDA, CPU])
        assert chosen == [CUDA, CPU]
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        supported = ", ".join(ort_session.SUPPORTED_PROVIDERS)
        assert warned == [
            f"ignoring execution provider FooExecutionProvider: pmllm-batch supports {supported}",
            f"ignoring execution provider TensorrtExecutionProvider: pmllm-batch supports {supported}",
        ]

    def test_explicit_availability_skips_onnxruntime(self, monkeypatch):
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: pytest.fail("must not be called"))
        assert choose_providers(DEFAULT_PROVIDERS, available=[CPU, CUDA]) == [CUDA, CPU]


class TestCreateSession:
    def test_corrupt_file_is_a_model_load_error(self, tmp_path):
        bad = tmp_path / "vision.onnx"
        bad.write_bytes(b"\x08\x01garbage that is not a protobuf")
        with pytest.raises(ModelLoadError) as err:
            create_session(bad, providers=[CPU])
        message = str(err.value)
        # onnxruntime's own words in the parenthesis vary between its versions
        assert message.startswith(f"cannot load ONNX model {bad} (") and "\n" not in message
        assert message.endswith("); delete it to have it re-exported.")

    def test_missing_file_is_a_model_load_error(self, tmp_path):
        with pytest.raises(ModelLoadError) as err:
            create_session(tmp_path / "nope.onnx")
        assert str(err.value) == f"ONNX model {tmp_path / 'nope.onnx'} does not exist."

    def test_runs_a_valid_model_on_cpu(self, tiny_onnx, available):
        available(CPU)
        import numpy as np

        session = create_session(tiny_onnx)
        assert session.get_providers() == [CPU]
        x = np.arange(3, dtype=np.float32)
        assert (session.run(None, {"x": x})[0] == x).all()

    def test_session_options(self, tiny_onnx, available, monkeypatch):
        available(CPU)
        monkeypatch.setattr(onnxruntime, "InferenceSession", RecordingSession)
        create_session(tiny_onnx, intra_op_threads=3, inter_op_threads=1)
        opts = RecordingSession.last.sess_options
        assert opts.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert opts.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)

    def test_passes_cuda_first_when_driver_present(self, tiny_onnx, available, monkeypatch, caplog):
        available(CUDA, CPU)
        monkeypatch.setattr(ort_session, "_cuda_driver_present", lambda: True)
        monkeypatch.setattr(onnxruntime, "InferenceSession", RecordingSession)
        with caplog.at_level(logging.INFO, logger="pmllm_batch"):
            create_session(tiny_onnx)
        names = [p[0] for p in RecordingSession.last.providers]
        assert names == [CUDA, CPU]
        assert dict(RecordingSession.last.providers)[CUDA]["arena_extend_strategy"] == "kSameAsRequested"
        assert any(CUDA in r.getMessage() for r in caplog.records)  # the choice is logged

    def test_drops_cuda_without_a_driver(self, tiny_onnx, available, monkeypatch):
        available(CUDA, CPU)
        monkeypatch.setattr(ort_session, "_cuda_driver_present", lambda: False)
        monkeypatch.setattr(onnxruntime, "InferenceSession", RecordingSession)
        create_session(tiny_onnx)
        assert [p[0] for p in RecordingSession.last.providers] == [CPU]
