"""ONNX vision export and runners: graph contract, parity with torch, int8 fidelity, artefact cache.

The tiny ``demo`` model with an untrained adapter (``checkpoint="none"``: random, non-trivial projector; the
session's read-only ``demo_model``, or ``fresh_demo_model`` where a test changes it) is exported once per module
with the default (dynamo) exporter. Tests of the cache logic export through
the TorchScript fallback instead, which is ~10x faster and also proves that the fallback yields a valid graph.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pmllm_batch.contracts import FeatureEncoder
from pmllm_batch.errors import ConfigError, ModelLoadError
from pmllm_batch.model.checkpoint import vision_fingerprint
from pmllm_batch.runtime import onnx_export
from pmllm_batch.runtime.onnx_export import (
    INPUT_NAME,
    META_FILE,
    OUTPUT_NAME,
    PREPROCESS_FILE,
    VISION_FP32,
    VISION_INT8,
    ensure_vision_onnx,
    export_tower,
    export_vision_onnx,
    meta_fingerprint,
    meta_num_features,
)
from pmllm_batch.runtime.preprocess import PreprocessCfg, preprocess_batch
from pmllm_batch.runtime.vision_runner import (
    OnnxVisionRunner,
    TorchVisionRunner,
    load_vision_runner,
)

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

REPO = Path(__file__).resolve().parents[1]
SHARED_JPG = Path(__file__).resolve().parents[2] / "shared" / "data" / "exif-samples" / "jpg"
PARITY_ATOL = 1e-4


def cosine_per_feature(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching features. Args: a, b (B, N, D). Returns: (B, N)."""
    num = (a * b).sum(-1)
    return num / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def feature_shape(model) -> tuple[int, int]:
    """(N, D) of what the vision runners output: the tower's features per photo and its width (before the projector)."""
    return model.tower.num_features(model.preprocess.image_size), int(model.tower.width)


def real_photos() -> list[Image.Image]:
    """Upright RGB photos from examples/photos, else ../shared/data/exif-samples; skips when neither exists."""
    paths = sorted((REPO / "examples" / "photos").glob("*.jpg"))
    if not paths:
        paths = [p for p in sorted(SHARED_JPG.glob("*.jpg")) if p.name != "corrupted.jpg"]
    images = []
    for p in paths:
        try:
            with Image.open(p) as im:
                images.append(ImageOps.exif_transpose(im).convert("RGB"))
        except OSError:
            continue  # a deliberately broken sample; the decode tests cover those
    if len(images) < 2:
        pytest.skip("no real photos (examples/photos or ../shared/data/exif-samples/jpg)")
    return images


@pytest.fixture(scope="module")
def exported(demo_model_base, tmp_path_factory) -> dict[str, Path]:
    model = demo_model_base
    return export_tower(model.exportable_tower(), tmp_path_factory.mktemp("onnx") / "demo",
                        fingerprint=vision_fingerprint(model))


@pytest.fixture(scope="module")
def pixels(demo_model_base) -> np.ndarray:
    """(8, 3, S, S) float32, normalised random pixels."""
    model = demo_model_base
    return np.random.default_rng(0).standard_normal(
        (8, 3, model.preprocess.image_size, model.preprocess.image_size), dtype=np.float32
    )


@pytest.fixture(scope="module")
def runners(demo_model_base, exported) -> dict[str, FeatureEncoder]:
    model = demo_model_base
    onnx_dir = exported["meta"].parent
    return {
        "fp32": OnnxVisionRunner(onnx_dir, "fp32", providers=["CPUExecutionProvider"]),
        "int8": OnnxVisionRunner(onnx_dir, "int8", providers=["CPUExecutionProvider"]),
        "torch": TorchVisionRunner(model.exportable_tower(), vision_fingerprint(model)),
    }


def _fast_exports(monkeypatch) -> None:
    """Make the dynamo exporter fail so exports take the (fast) TorchScript fallback."""

    def refuse(*args, **kwargs):
        raise RuntimeError("dynamo disabled for this test")

    monkeypatch.setattr(onnx_export, "_export_dynamo", refuse)


# --------------------------------------------------------------------------------------------------
# graph contract and parity
# --------------------------------------------------------------------------------------------------


class TestGraphContract:
    @pytest.mark.parametrize("variant", [VISION_FP32, VISION_INT8])
    def test_io_names_and_dynamic_batch_axis(self, exported, demo_model, variant):
        graph = onnx.load(str(exported["meta"].parent / variant)).graph
        assert [i.name for i in graph.input] == [INPUT_NAME]
        assert [o.name for o in graph.output] == [OUTPUT_NAME]
        s = demo_model.preprocess.image_size
        in_dims = graph.input[0].type.tensor_type.shape.dim
        out_dims = graph.output[0].type.tensor_type.shape.dim
        assert in_dims[0].dim_param == "batch" and out_dims[0].dim_param == "batch"
        assert [d.dim_value for d in in_dims[1:]] == [3, s, s]
        assert [d.dim_value for d in out_dims[1:]] == list(feature_shape(demo_model))

    def test_artefact_folder_contents(self, exported, demo_model):
        meta = json.loads(exported["meta"].read_text())
        assert set(exported) == {"fp32", "int8", "preprocess", "meta"}
        assert (meta["num_features"], meta["dim"]) == feature_shape(demo_model)
        assert meta["image_size"] == demo_model.preprocess.image_size
        assert meta["graph_ids"]["fp32"] == onnx_export.graph_id(exported["fp32"])
        assert meta["graph_ids"]["int8"] == onnx_export.graph_id(exported["int8"])
        assert meta["graph_ids"]["fp32"] != meta["graph_ids"]["int8"]
        assert meta["preset"] == "demo" and meta["exporter"] == "dynamo"
        assert meta["vision_fingerprint"] == meta_fingerprint(meta) == vision_fingerprint(demo_model)
        assert PreprocessCfg.load_json(exported["preprocess"]) == demo_model.preprocess
        leftovers = [p.name for p in exported["meta"].parent.parent.iterdir() if ".tmp-" in p.name]
        assert leftovers == []


class TestParity:
    @pytest.mark.parametrize("batch", [1, 8])
    def test_onnx_fp32_equals_torch(self, demo_model, runners, pixels, batch):
        x = pixels[:batch]
        with torch.inference_mode():
            ref = demo_model.vision_encoder()(torch.from_numpy(x)).numpy()
        out = runners["fp32"].encode(x)
        assert out.shape == ref.shape == (batch, *feature_shape(demo_model))
        assert out.dtype == np.float32
        assert np.abs(out - ref).max() < PARITY_ATOL

    @pytest.mark.parametrize("backend", ["fp32", "torch"])
    def test_same_image_alone_or_in_a_batch(self, runners, pixels, backend):
        runner = runners[backend]
        batched = runner.encode(pixels)
        for i in (0, 5):
            alone = runner.encode(pixels[i : i + 1])[0]
            assert np.abs(alone - batched[i]).max() < 1e-5

    def test_int8_alone_or_in_a_batch_is_close(self, runners, pixels):
        # Dynamic quantisation picks one activation scale per MatMul input tensor, i.e. per batch, so int8
        # tokens are not bit-identical across batch compositions; they must stay very close.
        batched = runners["int8"].encode(pixels)
        alone = runners["int8"].encode(pixels[2:3])[0]
        assert cosine_per_feature(alone[None], batched[2:3]).mean() > 0.999

    def test_runners_satisfy_the_protocol(self, runners, demo_model):
        for runner in runners.values():
            assert isinstance(runner, FeatureEncoder)
            assert (runner.num_features, runner.dim) == feature_shape(demo_model)
            assert runner.preprocess == demo_model.preprocess
        ids = {r.graph_id for r in runners.values()}
        assert len(ids) == 3  # fp32, int8 and torch tokens never share a cache key
        assert runners["torch"].graph_id.startswith("torch-")


def test_a_pooled_tower_exports_and_matches_torch(tmp_path, pixels):
    """The paper preset pools its patch grid 2 x 2 inside the tower: the ONNX graph must do the same."""
    from pmllm_batch.model.config import ModelCfg
    from pmllm_batch.model.presets import get_preset, resolve_path
    from pmllm_batch.model.vision import VisionEncoder, build_vision_tower

    cfg = ModelCfg.from_dict(get_preset("demo")["model"]).vision
    cfg.pool, cfg.checkpoint = 2, resolve_path(cfg.checkpoint)
    tower, pre = build_vision_tower(cfg)
    encoder = VisionEncoder(tower).eval()
    paths = export_vision_onnx(encoder, pre, tmp_path / "pooled", int8=False)
    out = OnnxVisionRunner(paths["meta"].parent, "fp32").encode(pixels[:3])
    with torch.inference_mode():
        ref = encoder(torch.from_numpy(pixels[:3])).numpy()
    assert out.shape == ref.shape == (3, 16, 64)
    assert np.abs(out - ref).max() < PARITY_ATOL


class TestInt8:
    def test_cosine_on_real_photos(self, demo_model, runners):
        x = preprocess_batch(real_photos(), demo_model.preprocess)
        fp32, int8 = runners["fp32"].encode(x), runners["int8"].encode(x)
        assert np.abs(fp32).max() > 0.1  # the features are not trivial: the check means something
        cos = cosine_per_feature(fp32, int8)
        assert cos.mean() >= 0.99, f"int8 cosine {cos.mean():.4f}"

    @pytest.mark.slow
    def test_cosine_on_real_photos_vit_b32_shapes(self, tmp_path):
        """A ViT-B/32-shaped tower with random weights (no download)."""
        import open_clip

        from pmllm_batch.model.vision import VisionEncoder, VisionTower
        from pmllm_batch.runtime.preprocess import preprocess_cfg_from_open_clip

        torch.manual_seed(0)
        clip = open_clip.create_model("ViT-B-32", pretrained=None)
        tower = VisionTower(clip.visual)
        encoder = VisionEncoder(tower).eval()
        pre = preprocess_cfg_from_open_clip(clip.visual)
        paths = export_vision_onnx(encoder, pre, tmp_path / "vitb32")
        x = preprocess_batch(real_photos()[:8], pre)
        fp32 = OnnxVisionRunner(paths["meta"].parent, "fp32").encode(x)
        int8 = OnnxVisionRunner(paths["meta"].parent, "int8").encode(x)
        with torch.inference_mode():
            ref = encoder(torch.from_numpy(x)).numpy()
        assert np.abs(fp32 - ref).max() < 1e-3
        assert cosine_per_feature(fp32, int8).mean() >= 0.99


# --------------------------------------------------------------------------------------------------
# runners
# --------------------------------------------------------------------------------------------------


class TestRunners:
    def test_large_batches_run_in_chunks(self, exported, pixels, runners):
        runner = OnnxVisionRunner(exported["meta"].parent, "fp32", providers=["CPUExecutionProvider"], max_batch=3)
        calls: list[int] = []
        real_run = runner.session.run

        def counting_run(names, feeds):
            calls.append(feeds[INPUT_NAME].shape[0])
            return real_run(names, feeds)

        runner.session = type("S", (), {"run": staticmethod(counting_run)})()
        out = runner.encode(pixels)
        assert calls == [3, 3, 2]
        assert np.abs(out - runners["fp32"].encode(pixels)).max() < 1e-5

    @pytest.mark.parametrize("backend", ["int8", "torch"])
    def test_empty_batch_and_bad_shapes(self, runners, backend):
        runner = runners[backend]
        s = runner.preprocess.image_size
        assert runner.encode(np.zeros((0, 3, s, s), np.float32)).shape == (0, runner.num_features, runner.dim)
        with pytest.raises(ValueError, match="pixel_values must have shape"):
            runner.encode(np.zeros((2, 3, s + 1, s + 1), np.float32))
        with pytest.raises(ValueError):
            runner.encode(np.zeros((3, s, s), np.float32))

    def test_unknown_backend_or_variant(self, demo_model, tmp_path):
        tower, fp = demo_model.exportable_tower(), vision_fingerprint(demo_model)
        with pytest.raises(ConfigError):
            load_vision_runner(tower, fingerprint=fp, backend="tensorrt", cache_root=tmp_path)
        with pytest.raises(ConfigError):
            load_vision_runner(tower, fingerprint=fp, variant="int4", cache_root=tmp_path)
        assert not any(tmp_path.iterdir())  # nothing exported for a bad request

    def test_torch_backend(self, demo_model, tmp_path):
        fp = vision_fingerprint(demo_model)
        runner = load_vision_runner(demo_model.exportable_tower(), fingerprint=fp, backend="torch", cache_root=tmp_path)
        assert isinstance(runner, TorchVisionRunner)
        assert not any(tmp_path.iterdir())

    def test_torch_backend_needs_the_tower(self, tmp_path):
        with pytest.raises(ModelLoadError, match="vision tower"):
            load_vision_runner(None, fingerprint="v0", backend="torch", cache_root=tmp_path)

    def test_an_old_graph_with_visual_tokens_output_still_loads(self, exported, pixels, runners, tmp_path):
        """Graphs cached before the rename call their output ``visual_tokens`` and their meta keys ``num_tokens`` /
        ``model_fingerprint``: the runner reads the output by position and the meta by either name."""
        old = tmp_path / "old"
        old.mkdir()
        graph = onnx.load(str(exported["fp32"]))
        for node in graph.graph.node:
            node.output[:] = ["visual_tokens" if o == OUTPUT_NAME else o for o in node.output]
        for value in (*graph.graph.output, *graph.graph.value_info):
            if value.name == OUTPUT_NAME:
                value.name = "visual_tokens"
        onnx.checker.check_model(graph)
        onnx.save(graph, str(old / VISION_FP32))
        (old / PREPROCESS_FILE).write_bytes(exported["preprocess"].read_bytes())
        meta = json.loads(exported["meta"].read_text())
        meta["num_tokens"] = meta.pop("num_features")
        meta["model_fingerprint"] = meta.pop("vision_fingerprint")
        meta["graph_ids"] = {"fp32": onnx_export.graph_id(old / VISION_FP32)}
        (old / META_FILE).write_text(json.dumps(meta))
        runner = OnnxVisionRunner(old, "fp32", providers=["CPUExecutionProvider"])
        assert [o.name for o in runner.session.get_outputs()] == ["visual_tokens"]
        assert runner.num_features == meta_num_features(meta) == meta["num_tokens"]
        assert meta_fingerprint(meta) == meta["model_fingerprint"]
        np.testing.assert_array_equal(runner.encode(pixels[:2]), runners["fp32"].encode(pixels[:2]))


# --------------------------------------------------------------------------------------------------
# artefact cache
# --------------------------------------------------------------------------------------------------


class TestCache:
    def test_ensure_exports_once_reuses_and_is_keyed_by_vision_fingerprint(self, fresh_demo_model, tmp_path,
                                                                           monkeypatch):
        model = fresh_demo_model  # its projector is changed below
        _fast_exports(monkeypatch)
        exports: list[Path] = []
        real = onnx_export._export_into

        def counting(encoder, preprocess, out, **kw):
            exports.append(out)
            return real(encoder, preprocess, out, **kw)

        monkeypatch.setattr(onnx_export, "_export_into", counting)

        first = ensure_vision_onnx(model.exportable_tower(), tmp_path, vision_fingerprint(model))
        assert first == tmp_path / vision_fingerprint(model)
        mtime = (first / VISION_FP32).stat().st_mtime_ns
        assert ensure_vision_onnx(model.exportable_tower(), tmp_path, vision_fingerprint(model)) == first
        assert len(exports) == 1 and (first / VISION_FP32).stat().st_mtime_ns == mtime

        # an incomplete folder (e.g. a file lost) is exported again
        (first / VISION_INT8).unlink()
        assert ensure_vision_onnx(model.exportable_tower(), tmp_path, vision_fingerprint(model)) == first
        assert len(exports) == 2 and (first / VISION_INT8).is_file()

        # a changed projector (a retrained adapter) is the same tower: the same folder, nothing exported
        with torch.no_grad():
            model.projector[0].weight.add_(0.05)
        assert ensure_vision_onnx(model.exportable_tower(), tmp_path, vision_fingerprint(model)) == first
        assert len(exports) == 2

        # another vision fingerprint (another tower) gets its own folder, the old one untouched
        second = ensure_vision_onnx(model.exportable_tower(), tmp_path, vision_fingerprint(model, salt="other"))
        assert second != first and second.name != first.name
        assert len(exports) == 3 and first.is_dir() and second.is_dir()
        meta = json.loads((second / META_FILE).read_text())
        assert meta["exporter"] == "torchscript" and meta["vision_fingerprint"] == second.name

    def test_load_vision_runner_onnx_uses_the_cache(self, demo_model, tmp_path, monkeypatch):
        _fast_exports(monkeypatch)
        runner = load_vision_runner(
            demo_model.exportable_tower(),
            fingerprint=vision_fingerprint(demo_model),
            cache_root=tmp_path,
            providers=["CPUExecutionProvider"],
        )
        assert isinstance(runner, OnnxVisionRunner) and runner.variant == "int8"
        again = load_vision_runner(
            demo_model.exportable_tower(),
            fingerprint=vision_fingerprint(demo_model),
            cache_root=tmp_path,
            variant="fp32",
            providers=["CPUExecutionProvider"],
        )
        assert again.onnx_dir == runner.onnx_dir
        assert len([p for p in tmp_path.iterdir()]) == 1

    def test_corrupt_cached_graph_is_exported_again(self, demo_model, tmp_path, monkeypatch):
        _fast_exports(monkeypatch)
        onnx_dir = ensure_vision_onnx(demo_model.exportable_tower(), tmp_path, vision_fingerprint(demo_model))
        (onnx_dir / VISION_INT8).write_bytes(b"not a protobuf")
        runner = load_vision_runner(
            demo_model.exportable_tower(),
            fingerprint=vision_fingerprint(demo_model),
            cache_root=tmp_path,
            providers=["CPUExecutionProvider"],
        )
        s = demo_model.preprocess.image_size
        assert runner.encode(np.zeros((1, 3, s, s), np.float32)).shape == (1, *feature_shape(demo_model))

    def test_without_vision_tower_a_cached_graph_is_enough(self, fresh_demo_model, tmp_path, monkeypatch):
        model = fresh_demo_model  # its tower is dropped below
        _fast_exports(monkeypatch)
        fp = vision_fingerprint(model)
        onnx_dir = ensure_vision_onnx(model.exportable_tower(), tmp_path, fp)
        model.tower = None  # what create_model(with_vision=False) gives
        assert ensure_vision_onnx(model.exportable_tower(), tmp_path, fp) == onnx_dir
        with pytest.raises(ModelLoadError, match="without its vision tower"):
            ensure_vision_onnx(model.exportable_tower(), tmp_path / "elsewhere", fp)

    def test_failed_export_leaves_nothing_behind(self, demo_model, tmp_path, monkeypatch):
        _fast_exports(monkeypatch)
        out = tmp_path / "art"
        export_tower(demo_model.exportable_tower(), out, fingerprint=vision_fingerprint(demo_model), int8=False)
        before = {p.name: p.read_bytes() for p in out.iterdir()}

        def boom(src, dst):
            raise RuntimeError("killed mid-quantisation")

        monkeypatch.setattr(onnx_export, "quantize_int8", boom)
        with pytest.raises(RuntimeError, match="killed"):
            export_tower(demo_model.exportable_tower(), out, fingerprint=vision_fingerprint(demo_model))
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export is intact
        assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary folder left
        with pytest.raises(RuntimeError):
            export_tower(demo_model.exportable_tower(), tmp_path / "fresh",
                         fingerprint=vision_fingerprint(demo_model))
        assert not (tmp_path / "fresh").exists()

    def test_refuses_a_folder_with_other_files(self, demo_model, tmp_path):
        (tmp_path / "notes.txt").write_text("mine")
        with pytest.raises(ModelLoadError, match="other files"):
            export_tower(demo_model.exportable_tower(), tmp_path, fingerprint=vision_fingerprint(demo_model))
        assert (tmp_path / "notes.txt").read_text() == "mine"


def _fake_artefact(d: Path, tag: str) -> Path:
    d.mkdir(parents=True)
    for name in (VISION_FP32, VISION_INT8):
        (d / name).write_text(tag)
    (d / PREPROCESS_FILE).write_text("{}")
    (d / META_FILE).write_text(json.dumps({"graph_ids": {"fp32": tag, "int8": tag}}))
    return d


class TestInstall:
    def test_the_first_complete_folder_wins_a_race(self, tmp_path):
        out = _fake_artefact(tmp_path / "fp", "theirs")
        tmp = _fake_artefact(tmp_path / ".fp.tmp-1", "ours")
        assert onnx_export._install(tmp, out, keep_existing=True) == out
        assert (out / VISION_FP32).read_text() == "theirs" and not tmp.exists()

    def test_an_incomplete_folder_is_replaced(self, tmp_path):
        out = _fake_artefact(tmp_path / "fp", "theirs")
        (out / META_FILE).unlink()  # killed before the meta file: incomplete
        tmp = _fake_artefact(tmp_path / ".fp.tmp-1", "ours")
        onnx_export._install(tmp, out, keep_existing=True)
        assert (out / VISION_FP32).read_text() == "ours"
        assert sorted(os.listdir(tmp_path)) == ["fp"]

    def test_an_explicit_export_replaces_the_old_one(self, tmp_path):
        out = _fake_artefact(tmp_path / "fp", "old")
        tmp = _fake_artefact(tmp_path / ".fp.tmp-1", "new")
        onnx_export._install(tmp, out, keep_existing=False)
        assert (out / VISION_FP32).read_text() == "new"
        assert sorted(os.listdir(tmp_path)) == ["fp"]
