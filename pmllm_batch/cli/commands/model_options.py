"""Which model a command uses: the library's, unless the command line names another (docs: README, "Which model's
scores").

Not a command itself (it is not in :data:`pmllm_batch.cli.app.COMMAND_MODULES`). ``export``, ``xmp``, ``report`` and
``albums`` call :func:`add_checkpoint_option` and :func:`output_model_id`: the library's model, or the scores of the
model the global ``--preset`` / ``--checkpoint`` name (one sentence and exit 2 when it has none). ``rank`` and
``watch`` call :func:`add_switch_option` and :func:`scoring_settings`: the library's model unless the command line
names another, which is refused unless ``--switch-model`` (:func:`pmllm_batch.scorer.known.choose_scoring_model`).
The rules themselves live in :mod:`pmllm_batch.scorer.known`; it is imported only when a command needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pmllm_batch.config import Settings
from pmllm_batch.log import get_logger

if TYPE_CHECKING:
    from pmllm_batch.db import Store
    from pmllm_batch.scorer.known import ModelChoice

log = get_logger("cli.model")


def add_checkpoint_option(parser: argparse.ArgumentParser, *, scores: bool = True) -> None:
    """Add ``--checkpoint DIR`` (with ``scores``: whose scores to read; else: the adapter to score with)."""
    if scores:
        text = ("read the scores of the model with this adapter folder (a `train --out` DIR or its adapter/) instead "
                "of the library's model; with --preset, that preset's")
    else:
        text = "adapter folder to score with (overrides model.checkpoint), e.g. a `train --out` DIR"
    parser.add_argument("--checkpoint", metavar="DIR", help=text)


def add_switch_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--switch-model``."""
    parser.add_argument(
        "--switch-model", action="store_true",
        help="make the model --preset/--checkpoint (or [model]) name the library's model, scoring what it lacks; "
        "without it a command line that names another model than the library's is refused",
    )


def checkpoint_path(text: str) -> str:
    """``--checkpoint`` as a [model] checkpoint: a ``train --out`` folder means its ``adapter/``."""
    ckpt = Path(text).expanduser()
    return str(ckpt / "adapter" if (ckpt / "adapter").is_dir() else ckpt)


def with_checkpoint(args: argparse.Namespace, settings: Settings) -> Settings:
    """``settings`` with ``--checkpoint`` applied (unchanged without it)."""
    if not getattr(args, "checkpoint", None):
        return settings
    model = dataclasses.replace(settings.model, checkpoint=checkpoint_path(args.checkpoint))
    return dataclasses.replace(settings, model=model)


def names_a_model(args: argparse.Namespace) -> bool:
    """Whether the command line names a model: the global ``--preset`` or ``--checkpoint``."""
    return bool(getattr(args, "preset", None) or getattr(args, "checkpoint", None))


def output_model_id(args: argparse.Namespace, settings: Settings, store: Store) -> int | None:
    """Whose scores an output reads: None for the library's model, else the id of the model the command line names.

    Raises:
        UserError: The named model has no scores in this library; the sentence says how to score them (exit 2).
    """
    if not names_a_model(args):
        return None  # the library's model: the outputs read it by default
    from pmllm_batch.scorer.known import model_for_outputs  # only when a model is named

    model = model_for_outputs(store, with_checkpoint(args, settings), explicit=True,
                              checkpoint_flag=getattr(args, "checkpoint", None) or "")
    return model["id"] if model is not None else None


def scoring_settings(
    args: argparse.Namespace, settings: Settings, store: Store, profiles: Sequence[str] | None = None
) -> ModelChoice:
    """The model ``rank`` or ``watch`` scores with (``settings`` already carry ``--checkpoint``): logs what a switch
    rescores, or that the library's model wins over a config file's.

    Raises:
        UserError: The command line names another model than the library's, without ``--switch-model`` (exit 2).
    """
    from pmllm_batch.scorer.known import choose_scoring_model

    choice = choose_scoring_model(store, settings, explicit=names_a_model(args),
                                  switch=bool(getattr(args, "switch_model", False)), profiles=profiles)
    if choice.note:
        log.warning("%s", choice.note)
    return choice
