"""Training the adapter (projector + fusion) on rating data, with checkpoint/resume.

Determinism: the batch of step ``k`` is drawn from ``np.random.default_rng([seed, k])``, so a run
resumed from a checkpoint at step ``k`` sees exactly the batches an uninterrupted run would, and the
loss curve continues unchanged (tested).

Tasks:
* ``overall``: the paper's question, soft targets over neighbouring rating levels.
* ``attributes``: PARA attribute ratings, one question per attribute (same readout).
* captions: when samples carry captions, an auxiliary next-token loss on "Describe this image …"
  answers (image description task).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pmllm_batch.log import get_logger
from pmllm_batch.model.pmllm import PMLLM, PrefixState
from pmllm_batch.model.prompts import PromptTokens, attribute_question, build_prompt, render_persona
from pmllm_batch.model.readout import soft_targets
from pmllm_batch.train.datasets import RatingDataset
from pmllm_batch.train.features import image_features

log = get_logger("train")

CAPTION_QUESTION = "Describe this image as the persona you are embodying would."
ATTRIBUTE_NAMES = {
    "qualityScore": "technical quality",
    "compositionScore": "composition",
    "colorScore": "colour",
    "dofScore": "depth of field",
    "contentScore": "content",
    "lightScore": "light",
    "contentPreference": "content appeal",
    "willingnessToShare": "shareability",
}


@dataclass
class TrainCfg:
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    tasks: list[str] = field(default_factory=lambda: ["overall"])  # "overall", "attributes"
    caption_weight: float = 0.2  # weight of the caption loss when captions exist
    mse_weight: float = 1.0  # weight of a squared error on the expected rating (CE alone learns slowly)
    checkpoint_every: int = 200
    log_every: int = 20


def _lr_at(step: int, cfg: TrainCfg) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer:
    """Trains ``model``'s projector and fusion blocks on ``dataset``; writes into ``out_dir``."""

    def __init__(self, model: PMLLM, dataset: RatingDataset, out_dir: str | Path, cfg: TrainCfg) -> None:
        self.model, self.dataset, self.cfg = model, dataset, cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        params = model.trainable_parameters()
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step = 0
        self.history: list[dict[str, float]] = []
        tok = model.tokenizer
        self.prompts: dict[tuple[str, str], PromptTokens] = {}
        personas = {uid: render_persona(p) for uid, p in dataset.profiles.items()}
        questions: dict[str, str | None] = {"overall": None}
        if "attributes" in cfg.tasks:
            keys = sorted({k for s in dataset.samples for k in s.attributes})
            questions.update({k: attribute_question(ATTRIBUTE_NAMES.get(k, k)) for k in keys})
        for uid, persona in personas.items():
            for task, question in questions.items():
                self.prompts[(uid, task)] = build_prompt(tok, persona, question)
        self.units = [
            (i, task)
            for i, s in enumerate(dataset.samples)
            for task in questions
            if task == "overall" and "overall" in cfg.tasks or task in s.attributes
        ]
        self.captions = [i for i, s in enumerate(dataset.samples) if s.caption]
        self.caption_prompts = (
            {uid: build_prompt(tok, p, CAPTION_QUESTION) for uid, p in personas.items()} if self.captions else {}
        )
        self.feat_index, self.features = image_features(model, dataset)
        self._prefixes: dict[tuple[str, str], PrefixState] = {}
        self.autocast = model.device.type == "cuda"

    # -- checkpointing ---------------------------------------------------------------------------
    def save_checkpoint(self, name: str = "last") -> Path:
        from pmllm_batch.model.checkpoint import save_adapter

        d = self.out / "checkpoints" / name
        tmp = d.with_name(name + ".tmp")
        save_adapter(self.model, tmp, extra={"train_step": self.step})
        torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(
            json.dumps({"step": self.step, "cfg": asdict(self.cfg), "history": self.history})
        )
        if d.exists():
            import shutil

            shutil.rmtree(d)
        tmp.rename(d)
        return d

    def resume(self, ckpt: str | Path | None = None) -> bool:
        from pmllm_batch.model.checkpoint import load_adapter

        d = Path(ckpt) if ckpt else self.out / "checkpoints" / "last"
        if not (d / "trainer_state.json").is_file():
            return False
        load_adapter(self.model, d)
        self.opt.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True))
        state = json.loads((d / "trainer_state.json").read_text())
        self.step, self.history = int(state["step"]), list(state["history"])
        log.info("resumed from %s at step %d", d, self.step)
        return True

    # -- one step --------------------------------------------------------------------------------
    def _rating_loss(self, picks: np.ndarray) -> torch.Tensor:
        ds = self.dataset.samples
        units = [self.units[i] for i in picks]
        targets = torch.tensor(
            [ds[i].score if task == "overall" else ds[i].attributes[task] for i, task in units], dtype=torch.float32
        )
        loss = torch.zeros((), device=self.model.device)
        # group by task: every prompt in one forward must share its suffix
        for task in sorted({t for _, t in units}):
            rows = [k for k, (_, t) in enumerate(units) if t == task]
            feats = self.features[[self.feat_index[ds[units[k][0]].image_path] for k in rows]]
            visual = self.model.projector(feats.to(self.model.device, torch.float32))
            # persona prefixes are image-independent and the LLM is frozen: run each once, train on suffixes
            logits, _ = self.model.score_logits_cached([self._prefix(ds[units[k][0]].user_id, task) for k in rows],
                                                       visual)
            tgt = soft_targets(targets[rows], self.model.level_values.cpu()).to(logits.device)
            logp = F.log_softmax(logits.float(), -1)
            expected = logp.exp() @ self.model.level_values.to(logp)
            per_row = -(tgt * logp).sum(-1) + self.cfg.mse_weight * (expected - targets[rows].to(logp.device)) ** 2
            loss = loss + per_row.sum() / len(units)
        return loss

    def _prefix(self, user_id: str, task: str) -> PrefixState:
        key = (user_id, task)
        if key not in self._prefixes:
            self._prefixes[key] = self.model.encode_prompt_prefix(self.prompts[key])
        return self._prefixes[key]

    def _caption_loss(self, rng: np.random.Generator) -> torch.Tensor:
        ds = self.dataset.samples
        picks = rng.choice(self.captions, size=min(len(self.captions), max(1, self.cfg.batch_size // 4)))
        tok, total = self.model.tokenizer, torch.zeros((), device=self.model.device)
        for i in picks:
            s = ds[int(i)]
            prompt = self.caption_prompts[s.user_id]
            answer = tok(s.caption, add_special_tokens=False)["input_ids"][:48]
            ids = torch.tensor([prompt.ids + answer], device=self.model.device)
            mask = torch.zeros(1, ids.shape[1], device=self.model.device)
            mask[:, prompt.image_start :] = 1
            visual = self.model.projector(self.features[[self.feat_index[s.image_path]]].to(self.model.device).float())
            with self.model.fused.conditioned(visual, mask):
                logits = self.model.fused.lm(input_ids=ids).logits[0, len(prompt.ids) - 1 : -1]
            total = total + F.cross_entropy(logits.float(), ids[0, len(prompt.ids) :]) / len(picks)
        return total

    def train(
        self, progress: Callable[[int, float], None] | None = None, until: int | None = None
    ) -> list[dict[str, float]]:
        """Train to ``cfg.steps`` (or stop early at step ``until``, checkpointed, as an interruption would)."""
        with torch.enable_grad():  # never depend on the caller's global grad mode
            return self._train(progress, until)

    def _train(self, progress: Callable[[int, float], None] | None, until: int | None) -> list[dict[str, float]]:
        cfg = self.cfg
        self.model.train()
        t0 = time.perf_counter()
        stop = min(cfg.steps, until) if until is not None else cfg.steps
        while self.step < stop:
            rng = np.random.default_rng([cfg.seed, self.step])
            for group in self.opt.param_groups:
                group["lr"] = _lr_at(self.step, cfg)
            self.opt.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(cfg.grad_accum):
                picks = rng.choice(len(self.units), size=min(cfg.batch_size, len(self.units)), replace=False)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                    loss = self._rating_loss(picks)
                    if self.captions and cfg.caption_weight > 0:
                        loss = loss + cfg.caption_weight * self._caption_loss(rng)
                (loss / cfg.grad_accum).backward()
                total += float(loss.detach()) / cfg.grad_accum
            torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), 1.0)
            self.opt.step()
            self.step += 1
            self.history.append({"step": self.step, "loss": total, "lr": _lr_at(self.step - 1, cfg)})
            if progress:
                progress(self.step, total)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                log.info("step %d/%d loss %.4f (%.1fs)", self.step, cfg.steps, total, time.perf_counter() - t0)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
        self.model.eval()
        self.save_checkpoint()
        with open(self.out / "train_log.jsonl", "w") as fh:
            for row in self.history:
                fh.write(json.dumps(row) + "\n")
        return self.history
