"""Config: shipped defaults, layer precedence, discovery, and one-sentence errors that name file and key."""

from __future__ import annotations

import re
import sys
import tomllib
import types
from pathlib import Path

import pytest

from pmllm_batch.config import Settings, as_db_url, load_config
from pmllm_batch.errors import ConfigError
from tests.helpers import TEST_MIN_SIDE, CLIEnv

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_shipped_file_and_the_dataclasses(env: CLIEnv, env_vars: dict[str, str]) -> None:
    env.user_config.unlink()  # the test environment's own config (min_side for small test photos): none here
    settings = load_config(env=env_vars)
    assert settings == Settings()
    assert settings.model.preset == "demo" and settings.model.device == "auto" and settings.model.offline is False
    assert settings.vision.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.vision.backend == "onnx" and settings.vision.variant == "int8"
    assert settings.scan.max_pixels == 100_000_000 and settings.scan.extensions == ()
    assert settings.watch.reconcile_interval == 600.0 and settings.score.batch_size == 32
    assert settings.db_url() == env.db_url == f"sqlite:///{env.data_home}/pmllm-batch/library.sqlite"
    assert settings.data_dir() == env.data_home / "pmllm-batch"
    assert settings.cache_dir() == env.cache_home / "pmllm-batch"


def test_item4_min_side_defaults_to_256(env: CLIEnv, env_vars: dict[str, str]) -> None:
    # The default is for camera libraries: a 100 x 75 thumbnail or a logo is not ranked.
    assert Settings().scan.min_side == 256
    assert tomllib.loads(documented_defaults())["scan"]["min_side"] == 256
    assert load_config(env={}).scan.min_side == 256
    # The test environment sets its own, explicitly, for the suite's small generated photos.
    assert load_config(env=env_vars).scan.min_side == TEST_MIN_SIDE == 24
    assert tomllib.loads(env.user_config.read_text(encoding="utf-8"))["scan"]["min_side"] == 24
    env.write_config('[group]\nenabled = false\n')  # a test's own config keeps it ...
    assert load_config(env=env_vars).scan.min_side == 24
    env.write_config('[scan]\nmin_side = 100\n')  # ... unless it sets its own
    assert load_config(env=env_vars).scan.min_side == 100
    env.user_config.unlink()
    assert load_config(env=env_vars).scan.min_side == 256


def test_without_xdg_variables_folders_fall_back_to_home(tmp_path: Path) -> None:
    settings = load_config(env={"HOME": str(tmp_path)})
    assert settings.data_dir() == tmp_path / ".local" / "share" / "pmllm-batch"
    assert settings.cache_dir() == tmp_path / ".cache" / "pmllm-batch"


def test_explicit_paths_are_expanded(env_vars: dict[str, str]) -> None:
    settings = load_config(overrides={"paths": {"data_dir": "~/d", "cache_dir": "~/c"}}, env=env_vars)
    assert settings.data_dir() == Path(env_vars["HOME"]) / "d"
    assert settings.cache_dir() == Path(env_vars["HOME"]) / "c"
    assert settings.db_url() == f"sqlite:///{env_vars['HOME']}/d/library.sqlite"


def test_precedence_is_file_then_env_then_overrides(env_vars: dict[str, str], tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "my.toml",
        '[score]\nbatch_size = 8\n[vision]\nbatch_size = 4\nvariant = "fp32"\n[model]\npreset = "cpu"\n',
    )
    variables = {**env_vars, "PMLLM_SCORE__BATCH_SIZE": "16", "PMLLM_VISION__BATCH_SIZE": "6"}
    settings = load_config(cfg, overrides={"score": {"batch_size": 64}, "model": {"preset": None}}, env=variables)
    assert settings.score.batch_size == 64  # override beats env beats file
    assert settings.vision.batch_size == 6  # env beats file
    assert settings.vision.variant == "fp32"  # file beats defaults
    assert settings.model.preset == "cpu"  # a None override means "flag not given"
    assert settings.watch.settle == 2.0  # untouched keys keep their default


def test_user_file_is_found_via_pmllm_config_then_xdg(env_vars: dict[str, str], tmp_path: Path) -> None:
    xdg = write(Path(env_vars["XDG_CONFIG_HOME"]) / "pmllm-batch" / "config.toml", '[model]\npreset = "from-xdg"\n')
    assert load_config(env=env_vars).model.preset == "from-xdg"
    other = write(tmp_path / "other.toml", '[model]\npreset = "from-env-file"\n')
    assert load_config(env={**env_vars, "PMLLM_CONFIG": str(other)}).model.preset == "from-env-file"
    explicit = write(tmp_path / "explicit.toml", '[model]\npreset = "explicit"\n')
    assert load_config(explicit, env={**env_vars, "PMLLM_CONFIG": str(other)}).model.preset == "explicit"
    assert xdg.exists()


def test_env_values_are_read_as_toml_then_as_text(env_vars: dict[str, str]) -> None:
    settings = load_config(
        env={
            **env_vars,
            "PMLLM_MODEL__OFFLINE": "true",
            "PMLLM_MODEL__PRESET": "123",  # a text key keeps numeric-looking text
            "PMLLM_MODEL__DEVICE": "cuda:1",
            "PMLLM_VISION__PROVIDERS": "CPUExecutionProvider",
            "PMLLM_SCAN__EXCLUDE": '["@eaDir", "*.tmp"]',
            "PMLLM_SCAN__EXTENSIONS": ".jpg, .png",
            "PMLLM_WATCH__SETTLE": "3",
            "PMLLM_CONFIGURATION": "ignored: no double underscore",
        }
    )
    assert settings.model.offline is True
    assert settings.model.preset == "123"
    assert settings.model.device == "cuda:1"
    assert settings.vision.providers == ("CPUExecutionProvider",)
    assert settings.scan.exclude == ("@eaDir", "*.tmp")
    assert settings.scan.extensions == (".jpg", ".png")
    assert settings.watch.settle == 3.0 and isinstance(settings.watch.settle, float)


def _keys(section: str) -> str:
    """The key list an error about ``[section]`` ends with, in the shipped order."""
    return ", ".join(Settings().as_dict()[section])


SECTIONS = ", ".join(Settings().as_dict())


def _config_error(*args: object, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_unknown_key_error_names_the_file_and_the_key(env_vars: dict[str, str], tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.toml", '[vision]\nbakend = "onnx"\n')
    assert _config_error(cfg, env=env_vars) == (
        f"{cfg}: unknown key 'vision.bakend' (did you mean 'vision.backend'?); keys in [vision]: {_keys('vision')}."
    )


def test_unknown_section_error_names_it(env_vars: dict[str, str], tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.toml", "[modle]\n")
    assert _config_error(cfg, env=env_vars) == (
        f"{cfg}: unknown section [modle] (did you mean [model]?); known sections: {SECTIONS}."
    )
    cfg = write(tmp_path / "top.toml", 'preset = "demo"\n')
    assert _config_error(cfg, env=env_vars) == (
        f"{cfg}: top-level key 'preset' is not allowed; every key lives in a section such as [model] "
        f"(known sections: {SECTIONS})."
    )


@pytest.mark.parametrize(
    ("toml_text", "expected"),
    [
        ('[score]\nbatch_size = "big"\n', "'score.batch_size' must be a whole number (got 'big')."),
        ("[score]\nbatch_size = 0\n", "'score.batch_size' must be at least 1 (got 0)."),
        ("[model]\noffline = 1\n", "'model.offline' must be true or false (got 1)."),
        ('[vision]\nbackend = "tensorrt"\n', "'vision.backend' must be one of onnx, torch (got 'tensorrt')."),
        (
            '[vision]\nproviders = "CPUExecutionProvider"\n',
            "'vision.providers' must be a list of text values (got 'CPUExecutionProvider').",
        ),
        ('[model]\ndevice = "gpu"\n', "'model.device' must be auto, cpu, cuda, cuda:N or mps (got 'gpu')."),
        ("[watch]\nsettle = true\n", "'watch.settle' must be a number (got True)."),
    ],
)
def test_wrong_type_or_value_names_file_and_key(
    env_vars: dict[str, str], tmp_path: Path, toml_text: str, expected: str
) -> None:
    cfg = write(tmp_path / "bad.toml", toml_text)
    assert _config_error(cfg, env=env_vars) == f"{cfg}: {expected}"


def test_env_and_override_errors_name_their_source(env_vars: dict[str, str]) -> None:
    assert _config_error(env={**env_vars, "PMLLM_DB__URLL": "x"}) == (
        f"environment variable PMLLM_DB__URLL: unknown key 'db.urll' (did you mean 'db.url'?); "
        f"keys in [db]: {_keys('db')}."
    )
    assert _config_error(env={**env_vars, "PMLLM_SCORE__BATCH_SIZE": "lots"}) == (
        "environment variable PMLLM_SCORE__BATCH_SIZE: 'score.batch_size' must be a whole number (got 'lots')."
    )
    assert _config_error(overrides={"model": {"presett": "x"}}, env=env_vars) == (
        "command-line option: unknown key 'model.presett' (did you mean 'model.preset'?); "
        f"keys in [model]: {_keys('model')}."
    )


def test_bad_toml_and_missing_files_are_config_errors(env_vars: dict[str, str], tmp_path: Path) -> None:
    cfg = write(tmp_path / "broken.toml", "[model\npreset = \n")
    # the parser's own words after the colon depend on the Python version
    assert re.fullmatch(rf"{re.escape(str(cfg))} is not valid TOML: [^\n]+ \(at line 1, column \d+\)\.",
                        _config_error(cfg, env=env_vars))
    assert _config_error(tmp_path / "nope.toml", env=env_vars) == f"config file {tmp_path}/nope.toml does not exist."
    gone = tmp_path / "gone.toml"
    assert _config_error(env={**env_vars, "PMLLM_CONFIG": str(gone)}) == f"config file {gone} does not exist."


def documented_defaults() -> str:
    """The repo's config.toml: every key with its default and a comment (the defaults live in config.py)."""
    return (REPO / "config.toml").read_text(encoding="utf-8")


def test_the_documented_config_toml_lists_every_key_with_the_dataclass_default() -> None:
    repo = tomllib.loads(documented_defaults())
    defaults = Settings().as_dict()
    assert {s: set(t) for s, t in repo.items()} == {s: set(t) for s, t in defaults.items()}
    assert repo == defaults
    assert load_config(env={}).as_dict() == defaults  # nothing set: exactly the dataclass defaults


def test_every_documented_key_has_a_comment_line_above_it() -> None:
    lines = documented_defaults().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "[")):
            assert lines[i - 1].lstrip().startswith("#"), f"key without a comment: {stripped}"


def test_resolved_device(env_vars: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(overrides={"model": {"device": "cpu"}}, env=env_vars).resolved_device() == "cpu"
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert load_config(env=env_vars).resolved_device() == "cuda"
    fake_torch.cuda.is_available = lambda: False
    assert load_config(env=env_vars).resolved_device() == "cpu"


def test_db_paths_become_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert as_db_url("lib.sqlite") == f"sqlite:///{tmp_path}/lib.sqlite"
    assert as_db_url("/abs/lib.sqlite") == "sqlite:////abs/lib.sqlite"
    assert as_db_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert as_db_url(":memory:") == "sqlite://"
    assert as_db_url("~/x.sqlite", {"HOME": "/home/someone"}) == "sqlite:////home/someone/x.sqlite"
