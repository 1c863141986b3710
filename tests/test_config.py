"""Config: shipped defaults, layer precedence, discovery, and one-sentence errors that name file and key."""

from __future__ import annotations

import sys
import tomllib
import types
from pathlib import Path

import pytest

from pmllm_batch.config import Settings, as_db_url, default_config_text, load_config
from pmllm_batch.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with a private HOME and XDG folders (nothing from the real one)."""
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_shipped_file_and_the_dataclasses(env: dict[str, str], tmp_path: Path) -> None:
    settings = load_config(env=env)
    assert settings == Settings()
    assert settings.model.preset == "demo" and settings.model.device == "auto" and settings.model.offline is False
    assert settings.vision.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.vision.backend == "onnx" and settings.vision.variant == "int8"
    assert settings.scan.max_pixels == 100_000_000 and settings.scan.extensions == ()
    assert settings.watch.reconcile_interval == 600.0 and settings.score.batch_size == 32
    assert settings.db_url() == f"sqlite:///{tmp_path}/data/pmllm-batch/library.sqlite"
    assert settings.data_dir() == tmp_path / "data" / "pmllm-batch"
    assert settings.cache_dir() == tmp_path / "cache" / "pmllm-batch"


def test_without_xdg_variables_folders_fall_back_to_home(tmp_path: Path) -> None:
    settings = load_config(env={"HOME": str(tmp_path)})
    assert settings.data_dir() == tmp_path / ".local" / "share" / "pmllm-batch"
    assert settings.cache_dir() == tmp_path / ".cache" / "pmllm-batch"


def test_explicit_paths_are_expanded(env: dict[str, str]) -> None:
    settings = load_config(overrides={"paths": {"data_dir": "~/d", "cache_dir": "~/c"}}, env=env)
    assert settings.data_dir() == Path(env["HOME"]) / "d"
    assert settings.cache_dir() == Path(env["HOME"]) / "c"
    assert settings.db_url() == f"sqlite:///{env['HOME']}/d/library.sqlite"


def test_precedence_is_file_then_env_then_overrides(env: dict[str, str], tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "my.toml",
        '[score]\nbatch_size = 8\n[vision]\nbatch_size = 4\nvariant = "fp32"\n[model]\npreset = "cpu"\n',
    )
    env = {**env, "PMLLM_SCORE__BATCH_SIZE": "16", "PMLLM_VISION__BATCH_SIZE": "6"}
    settings = load_config(cfg, overrides={"score": {"batch_size": 64}, "model": {"preset": None}}, env=env)
    assert settings.score.batch_size == 64  # override beats env beats file
    assert settings.vision.batch_size == 6  # env beats file
    assert settings.vision.variant == "fp32"  # file beats defaults
    assert settings.model.preset == "cpu"  # a None override means "flag not given"
    assert settings.watch.settle == 2.0  # untouched keys keep their default


def test_user_file_is_found_via_pmllm_config_then_xdg(env: dict[str, str], tmp_path: Path) -> None:
    xdg = write(Path(env["XDG_CONFIG_HOME"]) / "pmllm-batch" / "config.toml", '[model]\npreset = "from-xdg"\n')
    assert load_config(env=env).model.preset == "from-xdg"
    other = write(tmp_path / "other.toml", '[model]\npreset = "from-env-file"\n')
    assert load_config(env={**env, "PMLLM_CONFIG": str(other)}).model.preset == "from-env-file"
    explicit = write(tmp_path / "explicit.toml", '[model]\npreset = "explicit"\n')
    assert load_config(explicit, env={**env, "PMLLM_CONFIG": str(other)}).model.preset == "explicit"
    assert xdg.exists()


def test_env_values_are_read_as_toml_then_as_text(env: dict[str, str]) -> None:
    settings = load_config(
        env={
            **env,
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


def test_unknown_key_error_names_the_file_and_the_key(env: dict[str, str], tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.toml", '[vision]\nbakend = "onnx"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cfg, env=env)
    message = str(info.value)
    assert str(cfg) in message and "'vision.bakend'" in message and "did you mean 'vision.backend'" in message
    assert "\n" not in message and message.endswith(".")


def test_unknown_section_error_names_it(env: dict[str, str], tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.toml", "[modle]\n")
    with pytest.raises(ConfigError, match=r"unknown section \[modle\] \(did you mean \[model\]\?\)"):
        load_config(cfg, env=env)
    cfg = write(tmp_path / "top.toml", 'preset = "demo"\n')
    with pytest.raises(ConfigError, match="top-level key 'preset'"):
        load_config(cfg, env=env)


@pytest.mark.parametrize(
    ("toml_text", "expected"),
    [
        ('[score]\nbatch_size = "big"\n', r"'score\.batch_size' must be a whole number \(got 'big'\)"),
        ("[score]\nbatch_size = 0\n", r"'score\.batch_size' must be at least 1"),
        ("[model]\noffline = 1\n", r"'model\.offline' must be true or false"),
        ('[vision]\nbackend = "tensorrt"\n', r"'vision\.backend' must be one of onnx, torch"),
        ('[vision]\nproviders = "CPUExecutionProvider"\n', r"'vision\.providers' must be a list of text values"),
        ('[model]\ndevice = "gpu"\n', r"'model\.device' must be auto, cpu, cuda, cuda:N or mps"),
        ("[watch]\nsettle = true\n", r"'watch\.settle' must be a number"),
    ],
)
def test_wrong_type_or_value_names_file_and_key(
    env: dict[str, str], tmp_path: Path, toml_text: str, expected: str
) -> None:
    cfg = write(tmp_path / "bad.toml", toml_text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(cfg, env=env)
    assert str(info.value).startswith(f"{cfg}: ")


def test_env_and_override_errors_name_their_source(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"^environment variable PMLLM_DB__URLL: unknown key 'db\.urll'"):
        load_config(env={**env, "PMLLM_DB__URLL": "x"})
    with pytest.raises(ConfigError, match=r"^environment variable PMLLM_SCORE__BATCH_SIZE: 'score\.batch_size'"):
        load_config(env={**env, "PMLLM_SCORE__BATCH_SIZE": "lots"})
    with pytest.raises(ConfigError, match=r"^command-line option: unknown key 'model\.presett'"):
        load_config(overrides={"model": {"presett": "x"}}, env=env)


def test_bad_toml_and_missing_files_are_config_errors(env: dict[str, str], tmp_path: Path) -> None:
    cfg = write(tmp_path / "broken.toml", "[model\npreset = \n")
    with pytest.raises(ConfigError, match=rf"^{cfg} is not valid TOML: .*\.$"):
        load_config(cfg, env=env)
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml does not exist\."):
        load_config(tmp_path / "nope.toml", env=env)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(env={**env, "PMLLM_CONFIG": str(tmp_path / "gone.toml")})


def test_repo_config_toml_documents_the_same_keys_as_the_shipped_defaults() -> None:
    shipped = tomllib.loads(default_config_text())
    repo = tomllib.loads((REPO / "config.toml").read_text(encoding="utf-8"))
    assert {s: set(t) for s, t in repo.items()} == {s: set(t) for s, t in shipped.items()}
    assert repo == shipped
    assert Settings().as_dict() == shipped


def test_every_shipped_key_has_a_comment_line_above_it() -> None:
    lines = default_config_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "[")):
            assert lines[i - 1].lstrip().startswith("#"), f"key without a comment: {stripped}"


def test_resolved_device(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(overrides={"model": {"device": "cpu"}}, env=env).resolved_device() == "cpu"
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert load_config(env=env).resolved_device() == "cuda"
    fake_torch.cuda.is_available = lambda: False
    assert load_config(env=env).resolved_device() == "cpu"


def test_db_paths_become_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert as_db_url("lib.sqlite") == f"sqlite:///{tmp_path}/lib.sqlite"
    assert as_db_url("/abs/lib.sqlite") == "sqlite:////abs/lib.sqlite"
    assert as_db_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert as_db_url(":memory:") == "sqlite://"
    assert as_db_url("~/x.sqlite", {"HOME": "/home/someone"}) == "sqlite:////home/someone/x.sqlite"
