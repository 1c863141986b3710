"""Export the vision tower (its features, before the projector) to ONNX, plus an int8 variant.

The tower arrives as an :class:`~pmllm_batch.contracts.ExportableTower` (module + facts); this layer never sees the
model. An artefact folder holds::

    vision.onnx           fp32 graph: ``pixel_values`` (batch, 3, S, S) → ``features`` (batch, n_feat, D_vis)
    vision.int8.onnx      the same graph with int8 weights (dynamic quantisation of the MatMuls)
    preprocess_cfg.json   how images become ``pixel_values`` (runtime/preprocess.py reads it; no torch needed)
    vision_meta.json      num_features, dim, image_size, graph ids (sha256 of each graph file), exporter, versions,
                          vision_fingerprint, preset

Graphs exported before the tower-only rename name their output ``visual_tokens`` and their meta keys
``num_tokens`` / ``model_fingerprint``; readers accept both (runners read the one output by position).

Choices, measured on torch 2.14 / onnxruntime 1.31 (export/README.md has the numbers):

* **Exporter**: ``torch.onnx.export(dynamo=True)`` with ``dynamic_shapes`` — the maintained path (the
  TorchScript exporter is deprecated since torch 2.9) and it handles open_clip's attention as is. The
  TorchScript exporter is the fallback: it cannot export the fused ``_native_multi_head_attention`` that
  ``nn.MultiheadAttention`` takes in eval/no-grad mode, so it runs with that fast path switched off.
  Whatever exporter ran, the graph must match eager torch at two batch sizes other than the traced one
  before it is accepted, so a batch size baked into a Reshape is caught at export, not at scoring time.
* **int8**: ``onnxruntime.quantization.quantize_dynamic`` on MatMul weights only (QInt8, per tensor,
  ``reduce_range=True``). ``reduce_range`` (7-bit weights) matters on CPUs without VNNI (AVX2), where
  onnxruntime's u8×s8 kernels can saturate: feature cosine vs fp32 on real photos was 0.982 without it
  and 0.9997 with it on a ViT-B/32-shaped tower. The patch-embedding Conv stays fp32 (ConvInteger would
  quantise the raw pixels, for no measured speed-up); per-channel scales gave no measurable gain and
  quantise 3× slower. Activation scales are per tensor, i.e. per batch, so an image's int8 features vary
  slightly (cosine > 0.9999) with the other images in its batch; fp32 and torch features do not.
* **Atomicity**: everything is written into a temporary sibling folder which is renamed into place, so a
  killed export never leaves half a model, and two processes exporting the same tower both end up with one
  complete folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.errors import ModelLoadError
from pmllm_batch.log import get_logger
from pmllm_batch.runtime.preprocess import PreprocessCfg

if TYPE_CHECKING:
    import torch

    from pmllm_batch.contracts import ExportableTower, JSONDict

log = get_logger("runtime.export")

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "features"  # graphs exported before the tower-only rename call it "visual_tokens"
BATCH_AXIS = "batch"
VISION_FP32 = "vision.onnx"
VISION_INT8 = "vision.int8.onnx"
PREPROCESS_FILE = "preprocess_cfg.json"
META_FILE = "vision_meta.json"
ARTEFACT_FILES = (VISION_FP32, VISION_INT8, PREPROCESS_FILE, META_FILE)

# The batch used to trace, and the batches the exported graph is checked at: both differ from the traced
# one, so a graph that silently specialised on the example batch fails the check.
_TRACE_BATCH = 2
_CHECK_BATCHES = (1, 3)
_STALE_TMP_SECONDS = 24 * 3600  # an unfinished export older than this is from a killed process

# Dynamic quantisation settings (see module docstring for why these).
INT8_SETTINGS: JSONDict = {
    "weight_type": "QInt8",
    "per_channel": False,
    "reduce_range": True,
    "op_types_to_quantize": ["MatMul"],
}


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------


def graph_id(path: str | os.PathLike[str]) -> str:
    """sha256 of an ONNX graph file (and of its external-data file, if any), first 16 hex digits."""
    p = Path(path)
    h = hashlib.sha256()
    for part in (p, p.with_name(p.name + ".data")):
        if part.is_file():
            with part.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def read_meta(onnx_dir: str | os.PathLike[str]) -> JSONDict:
    """Read ``vision_meta.json`` of an artefact folder (see :func:`meta_num_features`, :func:`meta_fingerprint`
    for keys whose names changed).

    Raises:
        ModelLoadError: the file is missing or not valid JSON.
    """
    path = Path(onnx_dir) / META_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read ONNX vision metadata {path}: {exc}.") from None
    if not isinstance(data, dict) or not isinstance(data.get("graph_ids"), dict):
        raise ModelLoadError(f"{path} is not a vision_meta.json written by pmllm-batch.")
    return data


def meta_num_features(meta: JSONDict) -> int:
    """Features per photo recorded in a ``vision_meta.json`` (``num_tokens`` in folders exported before the rename).

    Raises:
        ModelLoadError: neither key holds a number.
    """
    value = meta.get("num_features", meta.get("num_tokens"))
    if not isinstance(value, int | float | str):
        raise ModelLoadError("vision_meta.json records no number of features (num_features).")
    return int(value)


def meta_fingerprint(meta: JSONDict) -> str | None:
    """The vision fingerprint a ``vision_meta.json`` was exported for (``model_fingerprint`` in older folders)."""
    value = meta.get("vision_fingerprint", meta.get("model_fingerprint"))
    return None if value is None else str(value)


def is_complete(onnx_dir: str | os.PathLike[str], *, int8: bool = True) -> bool:
    """True when the folder holds a finished export (meta is written last, so it marks completion)."""
    d = Path(onnx_dir)
    needed = [VISION_FP32, PREPROCESS_FILE, META_FILE] + ([VISION_INT8] if int8 else [])
    if not all((d / name).is_file() for name in needed):
        return False
    try:
        meta = read_meta(d)
    except ModelLoadError:
        return False
    ids = meta["graph_ids"]
    return isinstance(ids, dict) and "fp32" in ids and (not int8 or "int8" in ids)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence torch.onnx's informational warnings (opset upgrade notice, version-converter fallback)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _cpu_float32(encoder: torch.nn.Module) -> torch.nn.Module:
    """The encoder itself when it already lives on CPU in float32, else a CPU float32 copy (the caller's
    model is left where it is: an artefact is always traced in float32 on CPU)."""
    import copy

    import torch

    params = list(encoder.parameters())
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params):
        return encoder
    return copy.deepcopy(encoder).to("cpu", torch.float32)


# --------------------------------------------------------------------------------------------------
# exporters
# --------------------------------------------------------------------------------------------------


def _export_dynamo(encoder: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    import torch

    batch = torch.export.Dim(BATCH_AXIS, min=1, max=1 << 16)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            encoder,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: batch}},
            opset_version=opset,
            verbose=False,
        )
        if program is None:  # only None for the legacy path; keeps the type checker honest
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(path))
    _name_batch_axis(path)


def _export_torchscript(encoder: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    import torch

    # nn.MultiheadAttention's fused fast path (aten::_native_multi_head_attention) has no ONNX symbolic.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with _quiet_exporter(), torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about Python-side shape checks inside F.multi_head_attention_forward; they are
            # constant for a given model, and the exported graph is checked against torch right after.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                encoder,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}},
                opset_version=opset,
                do_constant_folding=True,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _name_batch_axis(path: Path) -> None:
    """Make sure axis 0 of the input and the output is the symbolic dim ``batch`` (the contract)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    changed = False
    for value in (*model.graph.input, *model.graph.output):
        if value.name not in (INPUT_NAME, OUTPUT_NAME):
            continue
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param != BATCH_AXIS:
            dim.Clear()
            dim.dim_param = BATCH_AXIS
            changed = True
    if changed:
        onnx.save(model, str(path))


def _check_graph(encoder: torch.nn.Module, path: Path, image_size: int) -> float:
    """Run the graph with onnxruntime (CPU) at the check batches and compare with eager torch.

    Returns:
        The largest absolute difference seen.

    Raises:
        RuntimeError: names, shapes or values do not match.
    """
    import numpy as np
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    if names_in != [INPUT_NAME] or names_out != [OUTPUT_NAME]:
        raise RuntimeError(f"graph I/O is {names_in} -> {names_out}, expected [{INPUT_NAME}] -> [{OUTPUT_NAME}]")
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for b in _CHECK_BATCHES:
        x = torch.randn(b, 3, image_size, image_size, generator=gen)
        with torch.inference_mode():
            ref = encoder(x).numpy()
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if out.shape != ref.shape:
            raise RuntimeError(f"batch {b}: graph output {out.shape} but torch gives {ref.shape}")
        diff = float(np.abs(out - ref).max())
        # A broken graph is off by O(1); fp32 reordering is ~1e-6 of the output scale.
        tol = 1e-3 * max(1.0, float(np.abs(ref).max()))
        if not diff <= tol:
            raise RuntimeError(f"batch {b}: graph differs from torch by {diff:.3g} (> {tol:.3g})")
        worst = max(worst, diff)
    return worst


def _export_checked(encoder: torch.nn.Module, path: Path, image_size: int, opset: int) -> str:
    """Export with the dynamo exporter, falling back to TorchScript; returns the exporter that worked."""
    import torch

    example = torch.randn(_TRACE_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    failures: list[str] = []
    for name, fn in (("dynamo", _export_dynamo), ("torchscript", _export_torchscript)):
        start = time.perf_counter()
        try:
            fn(encoder, example, path, opset)
            diff = _check_graph(encoder, path, image_size)
        except Exception as exc:  # any exporter or runtime failure means: try the next exporter
            failures.append(f"{name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
            log.warning("ONNX export with the %s exporter failed (%s); trying the next one", name, failures[-1])
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".data").unlink(missing_ok=True)
            continue
        log.info(
            "exported %s with the %s exporter in %.1fs (max |onnx - torch| %.2g)",
            path.name,
            name,
            time.perf_counter() - start,
            diff,
        )
        return name
    raise ModelLoadError(f"could not export the vision encoder to ONNX ({'; '.join(failures)}).")


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """quantize_dynamic advises ``quant_pre_process`` through the *root* logger, which would also install a
    root handler (logging.basicConfig) in a process that has none. We measured the pre-processing: no
    accuracy or speed gain on these graphs, and 12 s extra on a ViT-B/32; so the advice is dropped."""
    root = logging.getLogger()
    guard, drop = logging.NullHandler(), _DropPreprocessAdvice()
    root.addHandler(guard)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        root.removeHandler(guard)


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Write an int8 copy of an fp32 vision graph (dynamic quantisation, :data:`INT8_SETTINGS`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = dict(INT8_SETTINGS)
    settings["weight_type"] = QuantType[settings["weight_type"]]
    with _quiet_quantizer():
        quantize_dynamic(model_input=str(src), model_output=str(dst), **settings)


# --------------------------------------------------------------------------------------------------
# atomic install
# --------------------------------------------------------------------------------------------------


def _install(tmp: Path, out: Path, *, keep_existing: bool) -> Path:
    """Move the finished ``tmp`` folder to ``out`` in one rename.

    When ``out`` already exists: with ``keep_existing`` a complete ``out`` wins (another process finished
    first) and ``tmp`` is discarded; otherwise the old folder is renamed aside, replaced, then deleted.
    """
    for _ in range(5):
        try:
            os.rename(tmp, out)  # atomic; also replaces an empty directory on POSIX
            return out
        except FileNotFoundError:
            raise
        except OSError:
            if not out.exists():
                continue  # vanished between the failed rename and now: just try again
        if keep_existing and is_complete(out):
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        aside = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(out, aside)
        except FileNotFoundError:
            continue
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(aside, out)  # put the old one back rather than leave nothing
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return out
    raise ModelLoadError(f"could not move the exported vision graph into {out} (another process kept changing it).")


def _check_out_dir(out: Path) -> None:
    """Refuse to replace a folder that holds anything besides a previous export."""
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ARTEFACT_FILES and not p.name.endswith(".data"))
        if foreign:
            raise ModelLoadError(
                f"{out} holds other files ({', '.join(foreign[:3])}); export the vision graph into its own folder."
            )
    elif out.exists():
        raise ModelLoadError(f"{out} exists and is not a folder.")


def _clean_stale_tmp(parent: Path) -> None:
    now = time.time()
    for p in parent.glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            if p.is_dir() and now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def _export_into(
    encoder: torch.nn.Module,
    preprocess: PreprocessCfg,
    out: Path,
    *,
    int8: bool,
    opset: int,
    meta: JSONDict | None,
    keep_existing: bool,
) -> dict[str, Path]:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fp32 = tmp / VISION_FP32
        cpu_encoder = _cpu_float32(encoder)
        with _eval_mode(cpu_encoder):
            exporter = _export_checked(cpu_encoder, fp32, preprocess.image_size, opset)
            probe = torch.zeros(1, 3, preprocess.image_size, preprocess.image_size)
            with torch.inference_mode():
                _, num_features, dim = cpu_encoder(probe).shape
        ids: JSONDict = {"fp32": graph_id(fp32)}
        if int8:
            start = time.perf_counter()
            quantize_int8(fp32, tmp / VISION_INT8)
            ids["int8"] = graph_id(tmp / VISION_INT8)
            log.info("wrote %s in %.1fs", VISION_INT8, time.perf_counter() - start)
        preprocess.save_json(tmp / PREPROCESS_FILE)
        info: JSONDict = {
            "num_features": int(num_features),
            "dim": int(dim),
            "image_size": int(preprocess.image_size),
            "graph_ids": ids,
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "opset": int(onnx.load(str(fp32), load_external_data=False).opset_import[0].version),
            "exporter": exporter,
            "int8": {**INT8_SETTINGS, "method": "onnxruntime.quantization.quantize_dynamic"} if int8 else None,
            "versions": {
                "torch": str(torch.__version__),
                "onnx": str(onnx.__version__),
                "onnxscript": str(onnxscript.__version__),
                "onnxruntime": str(onnxruntime.__version__),
            },
            **(meta or {}),
        }
        # Written last: its presence marks a complete folder (is_complete).
        (tmp / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        final = _install(tmp, out, keep_existing=keep_existing)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return artefact_paths(final, int8=int8)


def artefact_paths(onnx_dir: str | os.PathLike[str], *, int8: bool = True) -> dict[str, Path]:
    """The files of an artefact folder: keys ``fp32``, ``int8`` (if made), ``preprocess``, ``meta``."""
    d = Path(onnx_dir)
    paths = {"fp32": d / VISION_FP32, "preprocess": d / PREPROCESS_FILE, "meta": d / META_FILE}
    if int8:
        paths["int8"] = d / VISION_INT8
    return paths


def export_vision_onnx(
    encoder: torch.nn.Module,
    preprocess: PreprocessCfg,
    out_dir: str | os.PathLike[str],
    *,
    int8: bool = True,
    opset: int = 17,
    meta: JSONDict | None = None,
) -> dict[str, Path]:
    """Export ``encoder`` (pixel_values (B, 3, S, S) float32 → features (B, n_feat, D)) to an artefact folder.

    Args:
        encoder: the vision tower as a module, e.g. ``ExportableTower.module``; traced in float32 on CPU (a copy is
            made when it lives elsewhere); its train/eval mode is restored afterwards.
        preprocess: the preprocessing that produces its input; ``image_size`` fixes S.
        out_dir: the artefact folder; replaced as a whole (it may hold only a previous export).
        int8: also write the dynamically quantised ``vision.int8.onnx``.
        opset: ONNX opset of the written graph (the dynamo exporter builds at ≥ 18 and converts down).
        meta: extra keys for ``vision_meta.json`` (e.g. the vision fingerprint).

    Returns:
        Paths keyed ``fp32``, ``int8`` (when made), ``preprocess`` and ``meta``.

    Raises:
        ModelLoadError: neither exporter produced a graph that matches torch, or ``out_dir`` holds other files.
    """
    out = Path(out_dir)
    _check_out_dir(out)
    return _export_into(encoder, preprocess, out, int8=int8, opset=opset, meta=meta, keep_existing=False)


def _tower_meta(tower: ExportableTower, fingerprint: str) -> JSONDict:
    return {"vision_fingerprint": fingerprint, "preset": tower.name}


def export_tower(
    tower: ExportableTower | None, out_dir: str | os.PathLike[str], *, fingerprint: str, int8: bool = True
) -> dict[str, Path]:
    """Export a model's vision tower (its features, before the projector) to ``out_dir``.

    Args:
        tower: ``PMLLM.exportable_tower()``; None (a model built without its tower) raises.
        fingerprint: the vision side's fingerprint (``model.checkpoint.vision_fingerprint(model)``), passed in by
            the caller and recorded as ``vision_fingerprint``: the runtime layer does not import the model layer.

    Raises:
        ModelLoadError: the model was built without its torch vision tower, or the export failed.
    """
    if tower is None:
        raise ModelLoadError(
            "the ONNX vision graph must be exported from a model built with its vision tower (with_vision=True)."
        )
    meta = _tower_meta(tower, fingerprint)
    return export_vision_onnx(tower.module, tower.preprocess, out_dir, int8=int8, meta=meta)


def ensure_vision_onnx(tower: ExportableTower | None, cache_root: str | os.PathLike[str], fingerprint: str) -> Path:
    """The artefact folder ``cache_root/<fingerprint>/``, exported on first use.

    ``fingerprint`` identifies the vision side (``model.checkpoint.vision_fingerprint(model)``, computed by the
    caller). ``tower`` (``PMLLM.exportable_tower()``) may be None when the folder is already complete.

    A folder that is missing or incomplete (a killed export) is (re-)exported; a complete one is reused
    as is. Safe when several processes call this at once: each exports into its own temporary folder and
    the first rename wins; the others discard their copy.

    Returns:
        The folder (holding fp32 and int8 graphs).

    Raises:
        ModelLoadError: the folder must be exported and ``tower`` is None, or the export failed.
    """
    root = Path(cache_root)
    fp = fingerprint
    out = root / fp
    if is_complete(out):
        log.debug("reusing ONNX vision graph %s", out)
        return out
    if tower is None:
        raise ModelLoadError(
            f"no ONNX vision graph is cached at {out} and this model was built without its vision tower; "
            "load it once with the vision tower (or use the torch vision backend)."
        )
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root)
    log.info("exporting the vision tower %s to ONNX (once per tower) into %s", fp, out)
    meta = _tower_meta(tower, fp)
    _export_into(tower.module, tower.preprocess, out, int8=True, opset=17, meta=meta, keep_existing=True)
    return out
