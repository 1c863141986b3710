"""One model per library, explicit (issue "a newcomer's second hour", item 1) and what ``status`` says about it.

The library records its model (``Store.current_model``) with the settings that rebuild it. ``rank`` and ``watch``
without ``--preset``/``--checkpoint`` score with it; a command line that names another model is refused in one
sentence (exit 2) unless ``--switch-model``. ``export``, ``xmp``, ``report`` and ``albums`` read the library's model,
or the scores of the model ``--preset``/``--checkpoint`` name (found without loading), or say in one sentence that
it has none.

Most tests run the CLI with a stand-in model whose fingerprint and scores follow the settings (``demo`` scores a
photo by its mean colour, any other preset or adapter by the opposite), so two models rank the same photos in
opposite orders and no weights load. One test runs the real demo preset against a copy of its adapter with one
weight changed (its own fingerprint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pmllm_batch.config import Settings
from tests.doubles import LOADS, FakeCfg, FakeModel, FakeScores, FakeVision
from tests.helpers import REPO, CLIEnv, isolated_env
from tests.imagegen import make_photo

N_PHOTOS = 6  # photos(): every one big enough and far from blank, whatever [scan] min_side and blank_std say


# ---------------------------------------------------------------------------------------------------------------------
# A stand-in model per settings
# ---------------------------------------------------------------------------------------------------------------------


class KeyedModel(FakeModel):
    """The fake language-model stage, its scores negated for every model but the plain demo preset."""

    def __init__(self, name: str, demo: bool, flip: bool) -> None:
        super().__init__(demo)
        self.cfg = FakeCfg(demo, name=name)
        self.flip = flip

    def score_cached(self, prefix: object, visual: Any) -> FakeScores:
        out = super().score_cached(prefix, visual)
        return FakeScores(-out.scores if self.flip else out.scores, out.probs)


def fingerprint_of(preset: str, checkpoint: str = "") -> str:
    return hashlib.sha256(f"{preset}|{Path(checkpoint).name if checkpoint else ''}".encode()).hexdigest()[:32]


def keyed_loader(settings: Settings) -> Any:
    """A LoadedModels whose fingerprint and scores follow ``[model] preset`` and ``checkpoint``."""
    from pmllm_batch.scorer import LoadedModels

    LOADS.append(1)
    preset, checkpoint = settings.model.preset, settings.model.checkpoint
    model = KeyedModel(preset, demo=preset == "demo", flip=preset != "demo" or bool(checkpoint))
    return LoadedModels(model, FakeVision(), fingerprint_of(preset, checkpoint), preset)


@pytest.fixture
def keyed_models(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """``rank`` and ``watch`` load :func:`keyed_loader`; yields the loads made (one entry each)."""
    import pmllm_batch.daemon.service as service
    import pmllm_batch.scorer.batch as batch
    from pmllm_batch.scorer import ModelCache

    def cache(settings: Settings, idle_s: float | None = None, loader: object = None) -> ModelCache:
        return ModelCache(settings, idle_s=idle_s, loader=keyed_loader)

    monkeypatch.setattr(batch, "ModelCache", cache)
    monkeypatch.setattr(service, "ModelCache", cache)
    LOADS.clear()
    yield LOADS
    LOADS.clear()


DEMO = fingerprint_of("demo")
SMOL = fingerprint_of("smol")


def profiles(env: CLIEnv, *names: str) -> None:
    files = [str(REPO / "examples" / "profiles" / f"{n}.toml") for n in names]
    code, _, err = env.run_cli("profile", "add", *files)
    assert code == 0, err


def photos(lib: Path) -> Path:
    """N_PHOTOS distinct photos, one in a sub-folder."""
    for i in range(N_PHOTOS):
        make_photo(lib / ("trip" if i == 0 else "") / f"photo{i}.jpg", (400 + 8 * i, 320), seed=100 + i)
    return lib


def broken_exif_jpeg(path: Path, seed: int) -> Path:
    """A decodable JPEG whose EXIF block has an invalid TIFF header (as tests.imagegen.write_broken_exif_jpeg, but
    big enough to be ranked and of its own content)."""
    data = make_photo(path, (400, 320), seed=seed).read_bytes()
    payload = b"Exif\x00\x00" + b"XX\x2a\x00\x08\x00\x00\x00" + b"\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00"
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    path.write_bytes(data[:2] + segment + data[2:])
    return path


def library(env: CLIEnv) -> Path:
    """N_PHOTOS photos, profiles ana and bernd, ranked with the demo preset (the library's model)."""
    lib = photos(env.root / "lib")
    profiles(env, "ana", "bernd")
    code, _, err = env.run_cli("rank", str(lib))
    assert code == 0, err
    return lib


def one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pmllm-batch: error: ")
    return lines[0].removeprefix("pmllm-batch: error: ")


def current_fingerprint(env: CLIEnv) -> str | None:
    with env.store() as store:
        current = store.current_model()
    return current["fingerprint"] if current else None


def model_id(env: CLIEnv, fingerprint: str) -> int:
    with env.store() as store:
        ids = [m for m in range(1, 10) if (info := store.model(m)) and info["fingerprint"] == fingerprint]
    assert len(ids) == 1
    return ids[0]


def ranking(env: CLIEnv, profile: str, fingerprint: str) -> list[tuple[str, float]]:
    with env.store() as store:
        return [(r.path, r.score) for r in store.ranking(profile, model_id=model_id(env, fingerprint))]


def exported(env: CLIEnv, *args: str) -> list[tuple[str, float]]:
    code, out, err = env.run_cli(*args, "--format", "json")
    assert (code, err) == (0, ""), err
    return [(r["path"], r["score"]) for r in json.loads(out)]


def switch_to_smol(env: CLIEnv, lib: Path) -> tuple[str, dict[str, Any]]:
    code, out, err = env.run_cli("--preset", "smol", "rank", str(lib), "--switch-model", "--json")
    assert code == 0, err
    return err, json.loads(out.splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------------
# Outputs: the library's model, or the one the command line names
# ---------------------------------------------------------------------------------------------------------------------


def test_item1_export_with_another_preset_reads_that_models_scores(env: CLIEnv, keyed_models: list[int]) -> None:
    lib = library(env)
    switch_to_smol(env, lib)
    demo, smol = ranking(env, "ana", DEMO), ranking(env, "ana", SMOL)
    assert len(demo) == len(smol) == N_PHOTOS
    assert [p for p, _ in demo] != [p for p, _ in smol]  # the two models disagree
    # no preset: the library's model (smol, since the switch); a preset: that model's scores, before or after export
    assert exported(env, "export", "--profile", "ana", "--no-group") == smol
    assert exported(env, "--preset", "demo", "export", "--profile", "ana", "--no-group") == demo
    assert exported(env, "export", "--profile", "ana", "--no-group", "--preset", "demo") == demo
    assert exported(env, "--preset", "smol", "export", "--profile", "ana", "--no-group") == smol
    assert current_fingerprint(env) == SMOL  # reading another model's scores switches nothing


def test_item1_export_with_a_checkpoint_reads_that_adapters_scores(
    env: CLIEnv, keyed_models: list[int], tmp_path: Path
) -> None:
    lib = library(env)
    adapter = tmp_path / "run1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter.safetensors").write_bytes(b"stand-in")
    code, _, err = env.run_cli("rank", str(lib), "--checkpoint", str(adapter.parent), "--switch-model")
    assert code == 0, err
    other = fingerprint_of("demo", str(adapter))
    assert current_fingerprint(env) == other
    # a `train --out` folder means its adapter/, as for rank
    assert exported(env, "export", "--profile", "bernd", "--no-group", "--checkpoint", str(adapter.parent)) == \
        ranking(env, "bernd", other)
    demo = ranking(env, "bernd", DEMO)
    assert exported(env, "--preset", "demo", "export", "--profile", "bernd", "--no-group") == demo


def test_item1_export_for_a_model_without_scores_is_one_sentence_exit_2(
    env: CLIEnv, keyed_models: list[int], tmp_path: Path
) -> None:
    lib = library(env)
    assert one_line_error(*env.run_cli("--preset", "smol", "export", "--profile", "ana")) == (
        "no scores from the smol model in this library; score them with "
        "`pmllm-batch --preset smol rank --switch-model PATH`."
    )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert one_line_error(*env.run_cli("export", "--profile", "ana", "--checkpoint", str(adapter))) == (
        f"no scores from the model demo with the adapter {adapter} in this library; score them with "
        f"`pmllm-batch --preset demo rank --checkpoint {adapter} --switch-model PATH`."
    )
    # the same sentence from every output, and nothing is written
    out = tmp_path / "out"
    for command in (["xmp", "--profile", "ana"], ["report", "--out", str(out)], ["albums", "--out", str(out)]):
        message = one_line_error(*env.run_cli("--preset", "smol", *command))
        assert message.startswith("no scores from the smol model in this library; "), command
    assert not out.exists() and not list(lib.rglob("*.xmp"))
    assert keyed_models == [1]  # the first rank's load only: finding a model's scores loads nothing


def test_item1_albums_report_and_xmp_read_the_named_models_scores(
    env: CLIEnv, keyed_models: list[int], tmp_path: Path
) -> None:
    lib = library(env)
    switch_to_smol(env, lib)
    code, out, err = env.run_cli("--preset", "demo", "albums", "--out", str(tmp_path / "albums"), "--top", "3",
                                 "--profile", "ana", "--no-group")
    assert (code, err) == (0, ""), err
    made = sorted((tmp_path / "albums" / "ana").glob("0*"))
    assert [p.resolve() for p in made] == [Path(p).resolve() for p, _ in ranking(env, "ana", DEMO)[:3]]
    code, out, err = env.run_cli("--preset", "demo", "report", "--out", str(tmp_path / "report"), "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == DEMO
    code, out, err = env.run_cli("report", "--out", str(tmp_path / "report"), "--json")
    assert code == 0, err
    assert json.loads(out)["model"] == SMOL
    code, out, err = env.run_cli("--preset", "demo", "xmp", "--profile", "ana", "--json", "--dry-run")
    assert code == 0, err
    assert json.loads(out)["model"] == DEMO


# ---------------------------------------------------------------------------------------------------------------------
# rank and watch: the library's model, switched only when asked
# ---------------------------------------------------------------------------------------------------------------------


def test_item1_rank_with_another_preset_is_refused_and_says_what_switching_rescores(
    env: CLIEnv, keyed_models: list[int]
) -> None:
    lib = library(env)
    assert one_line_error(*env.run_cli("--preset", "smol", "rank", str(lib))) == (
        f"the library's model is demo (fingerprint {DEMO[:12]}); scoring with smol would score {N_PHOTOS} photos "
        "for 2 profiles again: add --switch-model to make smol the library's model (or leave out --preset and "
        "--checkpoint to keep demo)."
    )
    assert keyed_models == [1]  # refused before anything loads
    assert current_fingerprint(env) == DEMO


def test_item1_switch_model_switches_and_says_what_it_rescores(env: CLIEnv, keyed_models: list[int]) -> None:
    lib = library(env)
    err, summary = switch_to_smol(env, lib)
    assert (summary["scored"], summary["model"]) == (2 * N_PHOTOS, SMOL)
    assert f"switching the library's model from demo (fingerprint {DEMO[:12]}) to smol: scoring {N_PHOTOS} " \
           "photos for 2 profiles again; the scores of demo stay in the library" in err
    assert current_fingerprint(env) == SMOL
    # back to demo: its scores are all there, nothing loads or scores, and the library's model is demo again
    loads = len(keyed_models)
    code, out, err = env.run_cli("--preset", "demo", "rank", str(lib), "--switch-model", "--json")
    assert code == 0, err
    assert "every photo is scored already" in err
    assert json.loads(out.splitlines()[-1])["scored"] == 0 and len(keyed_models) == loads
    assert current_fingerprint(env) == DEMO


def test_item1_rank_without_preset_scores_with_the_librarys_stored_settings(
    env: CLIEnv, keyed_models: list[int]
) -> None:
    lib = library(env)
    switch_to_smol(env, lib)
    make_photo(lib / "new.jpg", (400, 320), seed=42)
    code, out, err = env.run_cli("rank", str(lib), "--json")  # no --preset: the defaults say demo, the library smol
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert (summary["model"], summary["scored"]) == (SMOL, 2)  # the new photo, for ana and bernd, by smol
    assert current_fingerprint(env) == SMOL
    assert len(ranking(env, "ana", SMOL)) == N_PHOTOS + 1 and len(ranking(env, "ana", DEMO)) == N_PHOTOS
    with env.store() as store:
        stored = store.current_model()
    assert stored is not None and stored["settings"] == {
        "preset": "smol", "checkpoint": "", "lm_path": "", "vision_checkpoint": "", "quantize": "none"}


def test_item1_a_config_file_naming_another_model_loses_to_the_library_with_a_note(
    env: CLIEnv, keyed_models: list[int]
) -> None:
    lib = library(env)
    env.write_config('[model]\npreset = "smol"\n')
    code, out, err = env.run_cli("rank", str(lib), "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["model"] == DEMO
    assert f"scoring with the library's model demo (fingerprint {DEMO[:12]}), not smol from the settings" in err
    assert current_fingerprint(env) == DEMO and keyed_models == [1]


def test_item1_watch_without_preset_keeps_the_librarys_model(env: CLIEnv, keyed_models: list[int]) -> None:
    lib = library(env)
    switch_to_smol(env, lib)
    make_photo(lib / "arrived.jpg", (400, 320), seed=43)
    code, out, err = env.run_cli("watch", str(lib), "--once", "--settle", "0")
    assert code == 0, err
    assert current_fingerprint(env) == SMOL  # the bug: a watch without --preset switched the library to demo
    assert len(ranking(env, "bernd", SMOL)) == N_PHOTOS + 1  # the new photo, scored by the library's model
    assert len(ranking(env, "bernd", DEMO)) == N_PHOTOS


def test_item1_watch_with_another_preset_is_refused_exit_2_unless_switching(
    env: CLIEnv, keyed_models: list[int]
) -> None:
    lib = library(env)
    switch_to_smol(env, lib)
    message = one_line_error(*env.run_cli("--preset", "demo", "watch", str(lib), "--once", "--settle", "0"))
    assert message == (f"the library's model is smol (fingerprint {SMOL[:12]}); switching to demo needs no scoring "
                       "(its scores of every photo are in the library): add --switch-model to make demo the "
                       "library's model (or leave out --preset and --checkpoint to keep smol).")
    assert current_fingerprint(env) == SMOL
    code, out, err = env.run_cli("--preset", "demo", "watch", str(lib), "--once", "--settle", "0", "--switch-model")
    assert code == 0, err
    assert current_fingerprint(env) == DEMO


def test_item1_xmp_rewrites_no_sidecar_unless_the_model_it_names_changes(
    env: CLIEnv, keyed_models: list[int]
) -> None:
    lib = library(env)

    def xmp(*args: str) -> dict[str, Any]:
        code, out, err = env.run_cli(*args, "xmp", "--profile", "ana", "--json")
        assert code == 0, err
        return json.loads(out)

    first = xmp()
    assert (first["model"], first["created"]) == (DEMO, first["photos"]) and first["photos"] > 0
    sidecars = {p: p.read_bytes() for p in lib.rglob("*.xmp")}
    # a refused rank with another preset, a watch and a rank without one: the library's model stays demo ...
    assert env.run_cli("--preset", "smol", "rank", str(lib))[0] == 2
    assert env.run_cli("watch", str(lib), "--once", "--settle", "0")[0] == 0
    assert env.run_cli("rank", str(lib))[0] == 0
    again = xmp()
    assert (again["model"], again["unchanged"], again["created"], again["updated"]) == (DEMO, first["photos"], 0, 0)
    assert {p: p.read_bytes() for p in lib.rglob("*.xmp")} == sidecars
    # ... and a switch the user asks for is what changes them
    switch_to_smol(env, lib)
    switched = xmp()
    assert switched["model"] == SMOL and switched["updated"] > 0


# ---------------------------------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------------------------------


def test_status_names_the_active_model_and_counts_exif_warnings(env: CLIEnv, keyed_models: list[int]) -> None:
    code, out, err = env.run_cli("profile", "add", str(REPO / "examples" / "profiles" / "ana.toml"))
    assert code == 0, err
    code, out, err = env.run_cli("status")
    assert code == 0, err
    assert "model: none yet (the first `pmllm-batch rank PATH` sets the library's model)" in out.splitlines()

    lib = photos(env.root / "lib")
    broken_exif_jpeg(lib / "garbage-exif.jpg", seed=7)
    (lib / "sub").mkdir()
    broken_exif_jpeg(lib / "sub" / "more-garbage.jpg", seed=8)
    assert env.run_cli("rank", str(lib))[0] == 0
    assert env.run_cli("--preset", "smol", "rank", str(lib), "--switch-model")[0] == 0
    assert env.run_cli("--preset", "demo", "rank", str(lib), "--switch-model")[0] == 0
    code, out, err = env.run_cli("status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert f"model: demo (fingerprint {DEMO[:12]}), {N_PHOTOS + 2} photos scored; 1 other model in the library" \
        in lines
    assert "  note: demo: a tiny model trained on a synthetic task — scores show the mechanism, not anyone's real " \
        "taste." in lines
    assert "exif warnings: 2 photos ranked with EXIF that could not be read (-v lists them)" in lines
    assert "garbage" not in out  # the paths only with -v

    code, out, err = env.run_cli("status", "-v")
    assert code == 0, err
    lines = out.splitlines()
    at = lines.index("exif warnings: 2 photos ranked with EXIF that could not be read:")
    listed = lines[at + 1 : at + 3]
    assert [line.split(": ", 1)[0] for line in listed] == [
        f"  {lib / 'garbage-exif.jpg'}", f"  {lib / 'sub' / 'more-garbage.jpg'}"]
    assert all("EXIF data is unreadable" in line for line in listed)

    code, out, err = env.run_cli("status", "--json")
    data = json.loads(out)
    assert (data["current_model"]["fingerprint"], data["current_model"]["preset"]) == (DEMO, "demo")
    assert data["current_model"]["settings"]["preset"] == "demo"
    assert data["photos_scored_current_model"] == N_PHOTOS + 2 and data["models"] == 2
    assert [Path(w["path"]).name for w in data["exif_warnings"]] == ["garbage-exif.jpg", "more-garbage.jpg"]


# ---------------------------------------------------------------------------------------------------------------------
# The recipe and the stored settings
# ---------------------------------------------------------------------------------------------------------------------


def test_the_recipe_tells_an_int8_llm_apart_and_stored_settings_rebuild_the_model(tmp_path: Path) -> None:
    from pmllm_batch.scorer.known import model_recipe, model_settings, with_model_settings

    plain = Settings()
    int8 = dataclasses.replace(plain, score=dataclasses.replace(plain.score, quantize="int8"))
    assert model_recipe(plain) != model_recipe(int8)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    relative = dataclasses.replace(plain, model=dataclasses.replace(plain.model, preset="smol", checkpoint="adapter"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        stored = model_settings(relative)
    assert stored == {"preset": "smol", "checkpoint": str(adapter), "lm_path": "", "vision_checkpoint": "",
                      "quantize": "none"}
    rebuilt = with_model_settings(int8, stored)
    assert (rebuilt.model.preset, rebuilt.model.checkpoint, rebuilt.score.quantize) == ("smol", str(adapter), "none")
    assert rebuilt.model.device == plain.model.device and rebuilt.vision == plain.vision


def test_a_running_scorer_leaves_a_switch_made_by_another_command_alone(
    env: CLIEnv, caplog: pytest.LogCaptureFixture
) -> None:
    from pmllm_batch.scorer import ModelCache
    from pmllm_batch.scorer.known import ModelRegistry, model_recipe
    from pmllm_batch.scorer.summary import RunSummary

    settings = Settings()
    with env.store() as store:
        registry = ModelRegistry(store, ModelCache(settings, loader=keyed_loader), model_recipe(settings))
        demo = registry.loaded()
        registry.note(demo, RunSummary())
        assert store.current_model_id() == demo.id
        other = store.ensure_model(SMOL, "smol", {"demo": False})  # `rank --switch-model` in another process
        registry.note(demo, RunSummary())  # the next chunk of a running watch
        assert store.current_model_id() == other
        assert "another command made a different model the library's model" in caplog.text
        stored = store.model(demo.id)
    assert stored is not None and stored["settings"]["preset"] == "demo"


# ---------------------------------------------------------------------------------------------------------------------
# The real demo model and a second adapter
# ---------------------------------------------------------------------------------------------------------------------


def _second_adapter(folder: Path) -> Path:
    """A copy of the demo adapter with one weight changed: another model (its own fingerprint)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(REPO / "pmllm_batch" / "assets" / "demo" / "adapter", folder)
    weights = load_file(str(folder / "adapter.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] * 1.5 + 0.25
    save_file(weights, str(folder / "adapter.safetensors"))
    return folder


def test_item1_real_demo_and_a_second_adapter_stay_apart(tmp_path: Path, model_cache: Path) -> None:
    with isolated_env(tmp_path, {"PMLLM_PATHS__CACHE_DIR": str(model_cache)}) as env:
        lib = photos(env.root / "lib")
        profiles(env, "ana")
        code, out, err = env.run_cli("rank", str(lib), "--json")
        assert code == 0, err
        demo = json.loads(out.splitlines()[-1])["model"]
        adapter = _second_adapter(tmp_path / "tuned" / "adapter")
        message = one_line_error(*env.run_cli("rank", str(lib), "--checkpoint", str(adapter)))
        assert message.startswith(f"the library's model is demo (fingerprint {demo[:12]}); scoring with demo with "
                                  f"the adapter {adapter} would score {N_PHOTOS} photos for 1 profile again")
        code, out, err = env.run_cli("rank", str(lib), "--checkpoint", str(adapter), "--switch-model", "--json")
        assert code == 0, err
        summary = json.loads(out.splitlines()[-1])
        tuned = summary["model"]
        assert tuned != demo and (summary["encoded"], summary["scored"]) == (0, N_PHOTOS)  # features from the cache
        # a watch without --checkpoint keeps the tuned adapter, and each model's export stays its own
        assert env.run_cli("watch", str(lib), "--once", "--settle", "0")[0] == 0
        assert current_fingerprint(env) == tuned
        assert exported(env, "export", "--profile", "ana", "--no-group") == ranking(env, "ana", tuned)
        assert exported(env, "--preset", "demo", "export", "--profile", "ana", "--no-group") == \
            ranking(env, "ana", demo)
        assert ranking(env, "ana", tuned) != ranking(env, "ana", demo)
