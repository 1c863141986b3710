"""Runtime settings: typed, frozen, loaded once by ``cli.main`` and passed down (no global singleton).

Layers, later wins (beets ``_bootstrap_config``, immich ``Settings``):

1. the defaults: the dataclass field defaults below, the one place they are set (the repo's documented
   ``config.toml`` lists every key with its default and a comment; ``tests/test_config.py`` checks the two agree);
2. the user's file: the explicit ``path`` (``--config``), else ``$PMLLM_CONFIG``, else
   ``$XDG_CONFIG_HOME/pmllm-batch/config.toml`` / ``~/.config/pmllm-batch/config.toml`` when it exists;
3. environment variables ``PMLLM_<SECTION>__<KEY>``, each read as a TOML value and else as text;
4. ``overrides`` (command-line flags).

Every problem (bad TOML, unknown section or key, wrong type or value, missing explicit file) is a
:class:`~pmllm_batch.errors.ConfigError` of one sentence that names where the value came from and the key.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypedDict, cast, get_type_hints

from pmllm_batch.errors import ConfigError

APP_NAME = "pmllm-batch"
ENV_PREFIX = "PMLLM_"
ENV_CONFIG = "PMLLM_CONFIG"
DB_FILENAME = "library.sqlite"
DEFAULTS_LABEL = "the defaults (pmllm_batch/config.py)"
CLI_LABEL = "command-line option"

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class _FieldMeta(TypedDict, total=False):
    """What a settings field's ``metadata`` may say about its valid values."""

    choices: tuple[str, ...]
    pattern: re.Pattern[str]
    expected: str  # the sentence for a value the pattern refuses
    min: float


def _choices(*values: str) -> _FieldMeta:
    return {"choices": values}


def _minimum(value: float) -> _FieldMeta:
    return {"min": value}


# ---------------------------------------------------------------------------------------------------------------------
# Sections: the field defaults are THE defaults (config.toml documents them; a test keeps the two equal)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSettings:
    """[model]: which P-MLLM to run and where."""

    preset: str = "demo"  # shipped preset name (model_configs/<name>.json) or the path of a preset .json
    checkpoint: str = ""  # adapter folder; "" = the preset's default weights
    vision_checkpoint: str = ""  # local vision-tower weights file; "" = the preset's (open_clip tag / shipped)
    lm_path: str = ""  # local Hugging Face LLM folder; "" = the preset's (hub id via the HF cache / GGUF)
    offline: bool = False  # never download; missing weights are an error
    allow_untrained: bool = False  # score even with fusion that was never trained (benchmarks only)
    device: str = field(default="auto", metadata={"pattern": _DEVICE_RE, "expected": "auto, cpu, cuda, cuda:N or mps"})


@dataclass(frozen=True)
class VisionSettings:
    """[vision]: the vision tower runtime."""

    backend: str = field(default="onnx", metadata=_choices("onnx", "torch"))
    variant: str = field(default="int8", metadata=_choices("int8", "fp32"))  # ONNX graph variant
    providers: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")  # ORT preference order
    batch_size: int = field(default=16, metadata=_minimum(1))  # images per vision pass
    intra_op_threads: int = field(default=0, metadata=_minimum(0))  # 0 = ORT decides
    # Visual-token cache budget in MiB (least recently used evicted first; 0 = unbounded). An evicted photo keeps
    # its scores and is only encoded again when a profile or model added later needs it.
    cache_budget_mb: float = field(default=4096.0, metadata=_minimum(0))

    @property
    def cache_budget_bytes(self) -> int:
        return int(self.cache_budget_mb * 1024 * 1024)


@dataclass(frozen=True)
class DBSettings:
    """[db]: where rankings live."""

    url: str = ""  # SQLAlchemy URL or file path; "" = <data_dir>/library.sqlite


@dataclass(frozen=True)
class ScanSettings:
    """[scan]: which files are photos."""

    include: tuple[str, ...] = ()  # fnmatch globs a file must match; () = all
    exclude: tuple[str, ...] = ()  # fnmatch globs of files/folders to skip
    extensions: tuple[str, ...] = ()  # () = built-in list
    max_pixels: int = field(default=100_000_000, metadata=_minimum(1))  # decompression-bomb guard
    follow_symlinks: bool = True
    min_side: int = field(default=256, metadata=_minimum(0))  # shorter side below this: skipped as too_small
    # Spread (standard deviation, 0-255) of the downscaled luminance below this: skipped as blank; 0 = never
    blank_std: float = field(default=2.0, metadata=_minimum(0))


@dataclass(frozen=True)
class ScoreSettings:
    """[score]: the language-model stage."""

    batch_size: int = field(default=32, metadata=_minimum(1))  # images per LM forward, per profile
    # "int8": the LLM's decoder-layer Linears as int8 GEMMs on CPU (sets the preset's lm.quantize; own fingerprint)
    quantize: str = field(default="none", metadata=_choices("none", "int8"))


@dataclass(frozen=True)
class WatchSettings:
    """[watch]: the daemon. All values are seconds except ``poll`` and ``preload``."""

    settle: float = field(default=2.0, metadata=_minimum(0))  # file must be unchanged this long
    poll: bool = False  # poll instead of OS notifications
    poll_interval: float = field(default=5.0, metadata=_minimum(0.05))
    reconcile_interval: float = field(default=600.0, metadata=_minimum(0))  # full rescan period
    idle_unload: float = field(default=300.0, metadata=_minimum(0))  # unload models after this idle time
    debounce: float = field(default=1.0, metadata=_minimum(0))  # gather events into one batch
    preload: bool = False  # load the models at start, not on the first photo (ignored by --once)


@dataclass(frozen=True)
class PathsSettings:
    """[paths]: where data and caches go."""

    data_dir: str = ""  # "" = $XDG_DATA_HOME/pmllm-batch or ~/.local/share/pmllm-batch
    cache_dir: str = ""  # "" = $XDG_CACHE_HOME/pmllm-batch or ~/.cache/pmllm-batch


@dataclass(frozen=True)
class XmpSettings:
    """[xmp]: star ratings and keywords in XMP sidecars (``pmllm-batch xmp``; the daemon when ``profile`` is set).

    A photo's stars come from its rank percentile in that person's ranking: the best ``stars_5`` percent get 5 stars,
    the next ``stars_4`` percent 4, and so on (the shares must add up to 100).
    """

    profile: str = ""  # whose stars the daemon keeps in sidecars; "" = the daemon writes no sidecars
    naming: str = field(default="append", metadata=_choices("append", "replace"))  # photo.jpg.xmp | photo.xmp
    overwrite_ratings: bool = False  # the daemon may replace a rating the user changed in their app
    stars_5: float = field(default=10.0, metadata=_minimum(0))  # percent of the ranking, best first
    stars_4: float = field(default=20.0, metadata=_minimum(0))
    stars_3: float = field(default=40.0, metadata=_minimum(0))
    stars_2: float = field(default=20.0, metadata=_minimum(0))
    stars_1: float = field(default=10.0, metadata=_minimum(0))

    def __post_init__(self) -> None:
        total = self.stars_5 + self.stars_4 + self.stars_3 + self.stars_2 + self.stars_1
        if abs(total - 100.0) > 1e-6:
            raise ConfigError(
                f"[xmp] stars_5 + stars_4 + stars_3 + stars_2 + stars_1 must add up to 100 percent (got {total:g})."
            )

    def star_shares(self) -> tuple[float, float, float, float, float]:
        """Percent of a ranking for 5, 4, 3, 2 and 1 stars, in that order."""
        return (self.stars_5, self.stars_4, self.stars_3, self.stars_2, self.stars_1)


@dataclass(frozen=True)
class ReportSettings:
    """[report]: the static gallery (``pmllm-batch report``)."""

    top: int = field(default=24, metadata=_minimum(1))  # photos per person
    thumb_size: int = field(default=320, metadata=_minimum(32))  # longest thumbnail side, pixels


@dataclass(frozen=True)
class GroupSettings:
    """[group]: bursts and near-duplicates, shown once per person (that person's best) in every output.

    Two photos are linked when their pooled visual embeddings have a cosine similarity of at least ``similarity``
    and their capture times are at most ``seconds`` apart, or, when either capture time is unknown, of at least
    ``similarity_untimed``; a group is every photo linked to it, directly or through others.
    """

    enabled: bool = True  # group in rank/export/albums/report/xmp (each also takes --no-group)
    similarity: float = field(default=0.95, metadata=_minimum(0))  # both capture times known, within seconds
    similarity_untimed: float = field(default=0.995, metadata=_minimum(0))  # a capture time is unknown
    seconds: float = field(default=5.0, metadata=_minimum(0))  # capture times at most this far apart

    def __post_init__(self) -> None:
        for name in ("similarity", "similarity_untimed"):
            if getattr(self, name) > 1.0:
                raise ConfigError(f"[group] {name} is a cosine similarity: at most 1 (got {getattr(self, name):g}).")


@dataclass(frozen=True)
class EngineSettings:
    """[engine]: where ``rank`` runs the pipeline: in this process ("local") or on a Ray cluster ("ray").

    Flat keys (every section here is one table): the Ray engine's keys are the ones after ``kind``
    (``pmllm_batch/scorer/ray_engine.py``; docs/RAY.md).
    """

    kind: str = field(default="local", metadata=_choices("local", "ray"))
    # Ray cluster to join ("auto", "HOST:6379", "ray://HOST:10001"); "" = $RAY_ADDRESS, else a Ray on this machine
    address: str = ""
    vision_actors: int = field(default=1, metadata=_minimum(1))  # decode + encode actors (each loads the models)
    scoring_actors: int = field(default=1, metadata=_minimum(1))  # LLM scoring actors (each loads the models)
    gpus_per_actor: float = field(default=0.0, metadata=_minimum(0))  # 0 = CPU actors; 0.5 = two actors per GPU
    cpus_per_actor: float = field(default=0.5, metadata=_minimum(0.01))  # fractional: Ray Data's own tasks need CPUs
    vision_batch_size: int = field(default=0, metadata=_minimum(0))  # files per vision call; 0 = [vision] batch_size
    score_batch_size: int = field(default=0, metadata=_minimum(0))  # photos per scoring call; 0 = [score] batch_size


@dataclass(frozen=True)
class LearnSettings:
    """[learn]: each person's ranking learns from their own stars (``pmllm-batch rate``; pmllm_batch/learn/).

    With no ratings a ranking is exactly the zero-shot (profile-only) one. ``lam`` is the prior strength of the
    residual ridge (how many ratings the profile is worth, roughly): 30 is what ``eval --shots`` calibrated for the
    shipped demo adapter (pmllm_batch/train/fewshot.py); ``rank --zero-shot`` shows the profile-only ranking.
    """

    enabled: bool = True  # rankings, albums, stars and the gallery use each person's ratings
    # whose ratings a changed sidecar under a watched root is (the daemon); "" = [xmp] profile, if set
    xmp_profile: str = ""
    method: str = field(default="residual", metadata=_choices("residual", "stars_only", "kernel"))
    lam: float = field(default=30.0, metadata=_minimum(1e-6))  # prior strength of the correction
    dim: int = field(default=64, metadata=_minimum(1))  # at most this many feature dimensions (PCA)


SECTIONS: dict[str, type] = {
    "model": ModelSettings,
    "vision": VisionSettings,
    "db": DBSettings,
    "scan": ScanSettings,
    "score": ScoreSettings,
    "watch": WatchSettings,
    "paths": PathsSettings,
    "xmp": XmpSettings,
    "report": ReportSettings,
    "group": GroupSettings,
    "engine": EngineSettings,
    "learn": LearnSettings,
}


@dataclass(frozen=True)
class Settings:
    """All settings. Build with :func:`load_config`; ``Settings()`` is the shipped defaults."""

    model: ModelSettings = field(default_factory=ModelSettings)
    vision: VisionSettings = field(default_factory=VisionSettings)
    db: DBSettings = field(default_factory=DBSettings)
    scan: ScanSettings = field(default_factory=ScanSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    paths: PathsSettings = field(default_factory=PathsSettings)
    xmp: XmpSettings = field(default_factory=XmpSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    group: GroupSettings = field(default_factory=GroupSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    learn: LearnSettings = field(default_factory=LearnSettings)
    # HOME / XDG_* as seen by load_config, so the path helpers agree with the lookup; None = os.environ.
    environ: Mapping[str, str] | None = field(default=None, compare=False, repr=False)

    def _env(self) -> Mapping[str, str]:
        return self.environ if self.environ is not None else os.environ

    def _xdg_dir(self, configured: str, xdg_var: str, fallback: tuple[str, ...]) -> Path:
        env = self._env()
        if configured:
            return _expand_path(configured, env)
        base = env.get(xdg_var, "")
        # The XDG spec says relative values are invalid and must be ignored.
        root = Path(base) if base and os.path.isabs(base) else Path(_home(env), *fallback)
        return root / APP_NAME

    def data_dir(self) -> Path:
        """Absolute data folder (holds the default database)."""
        return self._xdg_dir(self.paths.data_dir, "XDG_DATA_HOME", (".local", "share"))

    def cache_dir(self) -> Path:
        """Absolute cache folder (model files, exported graphs)."""
        return self._xdg_dir(self.paths.cache_dir, "XDG_CACHE_HOME", (".cache",))

    def db_url(self) -> str:
        """SQLAlchemy URL of the library database."""
        if self.db.url:
            return as_db_url(self.db.url, self._env())
        return f"sqlite:///{self.data_dir() / DB_FILENAME}"

    def resolved_device(self) -> str:
        """The torch device to use: ``model.device``, with "auto" resolved to "cuda" when available, else "cpu"."""
        if self.model.device != "auto":
            return self.model.device
        try:
            import torch  # heavy; only commands that run the model ask
        except ImportError:
            return "cpu"
        return "cuda" if torch.cuda.is_available() else "cpu"

    def as_dict(self) -> dict[str, dict[str, object]]:
        """Plain nested dict (lists for tuples), e.g. for printing the effective configuration."""
        out: dict[str, dict[str, object]] = {}
        for section in SECTIONS:
            obj = getattr(self, section)
            out[section] = {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
        return out


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _home(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.path.expanduser("~")


def _expand_path(value: str, env: Mapping[str, str]) -> Path:
    if value == "~" or value.startswith("~/"):
        value = _home(env) + value[1:]
    return Path(value).expanduser().absolute()


def as_db_url(value: str, env: Mapping[str, str] | None = None) -> str:
    """A database URL from a URL or a plain file path (``--db``): paths become absolute SQLite URLs."""
    if "://" in value:
        return value
    if value == ":memory:":
        return "sqlite://"
    return f"sqlite:///{_expand_path(value, env if env is not None else os.environ)}"


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, object]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _describe(expected: object) -> str:
    return {
        str: "text",
        bool: "true or false",
        int: "a whole number",
        float: "a number",
    }.get(expected if isinstance(expected, type) else tuple, "a list of text values")


def _coerce(value: object, expected: object, meta: _FieldMeta) -> tuple[object, str | None]:
    """Return (value in its settings type, None) or (None, what was expected)."""
    if expected is str:
        if not isinstance(value, str):
            return None, _describe(str)
    elif expected is bool:
        if not isinstance(value, bool):
            return None, _describe(bool)
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, _describe(int)
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, _describe(float)
        value = float(value)
    else:  # tuple[str, ...]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            return None, _describe(expected)
        value = tuple(value)
    if "choices" in meta and value not in meta["choices"]:
        return None, "one of " + ", ".join(meta["choices"])
    if "pattern" in meta and not (isinstance(value, str) and meta["pattern"].match(value)):
        return None, meta.get("expected", "")
    if "min" in meta and isinstance(value, (int, float)) and value < meta["min"]:
        return None, f"at least {meta['min']:g}"
    return value, None


class _Layers:
    """Accumulates values per (section, key) and remembers which layer set each, for error messages."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, object]] = {name: {} for name in SECTIONS}
        self.sources: dict[tuple[str, str], str] = {}
        self.types = {name: _field_types(cls) for name, cls in SECTIONS.items()}
        self.meta = {name: {f.name: cast(_FieldMeta, f.metadata) for f in fields(cls)}
                     for name, cls in SECTIONS.items()}

    def check_key(self, section: str, key: str, source: str) -> None:
        if section not in SECTIONS:
            hint = difflib.get_close_matches(section, SECTIONS, n=1)
            did_you_mean = f" (did you mean [{hint[0]}]?)" if hint else ""
            raise ConfigError(
                f"{source}: unknown section [{section}]{did_you_mean}; known sections: {', '.join(SECTIONS)}."
            )
        known = self.types[section]
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            did_you_mean = f" (did you mean '{section}.{hint[0]}'?)" if hint else ""
            raise ConfigError(
                f"{source}: unknown key '{section}.{key}'{did_you_mean}; keys in [{section}]: {', '.join(known)}."
            )

    def set(self, section: str, key: str, value: object, source: str) -> None:
        self.check_key(section, key, source)
        coerced, expected = _coerce(value, self.types[section][key], self.meta[section][key])
        if expected is not None:
            raise ConfigError(f"{source}: '{section}.{key}' must be {expected} (got {value!r}).")
        self.values[section][key] = coerced
        self.sources[(section, key)] = source

    def merge_table(self, data: Mapping[str, object], source: str) -> None:
        for section, table in data.items():
            if not isinstance(table, dict):
                if section in SECTIONS:
                    raise ConfigError(f"{source}: [{section}] must be a table of keys.")
                raise ConfigError(
                    f"{source}: top-level key '{section}' is not allowed; every key lives in a section "
                    f"such as [model] (known sections: {', '.join(SECTIONS)})."
                )
            if section not in SECTIONS:
                self.check_key(section, "", source)  # raises: unknown section, even when its table is empty
            for key, value in table.items():
                self.set(section, key, value, source)

    def build(self, environ: Mapping[str, str] | None) -> Settings:
        sections: dict[str, Any] = {}  # one dataclass per section, checked field by field by _coerce
        for name, cls in SECTIONS.items():
            missing = [
                f.name
                for f in fields(cls)
                if f.name not in self.values[name] and f.default is MISSING and f.default_factory is MISSING
            ]
            if missing:  # cannot happen with the shipped defaults; guards a broken package
                raise ConfigError(f"{DEFAULTS_LABEL}: missing key '{name}.{missing[0]}'.")
            sections[name] = cls(**self.values[name])
        return Settings(**sections, environ=environ)


def _read_toml(text: str, source: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}.") from None


def _read_file(path: Path) -> dict[str, object]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a file.") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}.") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text.") from None
    return _read_toml(text, str(path))


def user_config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """The user file to read: explicit path, else $PMLLM_CONFIG, else the XDG file when it exists."""
    if path is not None and str(path) != "":
        return _expand_path(str(path), env)
    if env.get(ENV_CONFIG):
        return _expand_path(env[ENV_CONFIG], env)
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(_home(env), ".config")
    candidate = base / APP_NAME / "config.toml"
    return candidate if candidate.is_file() else None


def _parse_env_value(raw: str, expected: object) -> object:
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if expected is str and not isinstance(value, str):
        return raw  # PMLLM_MODEL__PRESET=123 means the text "123"
    if expected not in (str, bool, int, float) and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]  # a,b -> ["a", "b"]
    return value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from every layer.

    Args:
        path: Explicit config file (``--config``); it must exist.
        overrides: ``{section: {key: value}}`` from command-line flags; ``None`` values are ignored.
        env: Environment to read (``PMLLM_*``, ``XDG_*``, ``HOME``); ``os.environ`` by default.

    Returns:
        Frozen :class:`Settings`.

    Raises:
        ConfigError: One sentence naming the file (or variable, or flag) and the key.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    layers = _Layers()  # keys nobody sets keep their dataclass defaults

    user_file = user_config_path(path, environ)
    if user_file is not None:
        layers.merge_table(_read_file(user_file), str(user_file))

    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        section, key = section.lower(), key.lower()
        source = f"environment variable {name}"
        layers.check_key(section, key, source)
        layers.set(section, key, _parse_env_value(environ[name], layers.types[section][key]), source)

    for section, table in (overrides or {}).items():
        for key, value in table.items():
            if value is not None:
                layers.set(section, key, value, CLI_LABEL)

    return layers.build(dict(environ) if env is not None else None)
