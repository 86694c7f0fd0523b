"""Phase 1 as it happens: the temperature schedule, each epoch's selection counts and
switches, and the *sampled* network's validation scores beside the argmax network's.

During phase 1 a SmartMixed net trains through Gumbel samples but is evaluated (and, at the
transition, frozen) at its argmax choices; the two networks differ, and the argmax one can
score far worse until the choices settle.  :class:`SampledEval` evaluates one fresh sample
per epoch, from generators of its own (the seeds' training streams are left untouched), so
both sides of the transition are on record.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from smartmixed_core.config import RunConfig
from smartmixed_core.data import Splits
from smartmixed_core.layers import SelectiveActivation
from smartmixed_core.phase2 import selection_counts
from smartmixed_core.seeded import SeedNoise
from smartmixed_core.training import predict_split

_EVAL_STREAM = 2**40
"""Offset of the sampled evaluation's generator seeds (far from every training stream)."""


def temperature_at(cfg: RunConfig, epoch: int) -> float:
    """Phase-1 temperature at ``epoch`` (0-based): start -> end over the phase-1 epochs."""
    start = cfg.temperature
    end = cfg.temperature if cfg.temperature_end is None else cfg.temperature_end
    span = max(cfg.phase1_epochs - 1, 1)
    frac = min(max(epoch / span, 0.0), 1.0)
    if cfg.temperature_schedule == "linear":
        return start + (end - start) * frac
    return start * (end / start) ** frac


class SampledEval:
    """Validation loss and accuracy of one Gumbel sample of every seed's network, computed
    once per epoch for all seeds (shared by their :class:`SelectionTracker`s)."""

    def __init__(self, data: Splits, seeds: list[int]):
        self.data, self.seeds = data, seeds
        self._epoch, self._scores = -1, []

    def scores(self, epoch: int, model: nn.Module) -> list[tuple[float, float]]:
        if epoch != self._epoch:
            slots = [s for s in model.acts if isinstance(s, SelectiveActivation)]
            saved = [s.noise for s in slots]
            noise = SeedNoise([torch.Generator().manual_seed(_EVAL_STREAM + s * 100_003 + epoch)
                               for s in self.seeds])
            for s in slots:
                s.noise, s.sample_eval = noise, True
            try:
                logits = predict_split(model, self.data, "val")
            finally:
                for s, n in zip(slots, saved):
                    s.noise, s.sample_eval = n, False
            ys = [self.data.labels("val", s) for s in range(len(logits))]
            self._epoch = epoch
            self._scores = [(float(F.cross_entropy(lg, y)), float((lg.argmax(1) == y).float()
                            .mean())) for lg, y in zip(logits, ys)]
        return self._scores


class SelectionTracker:
    """Phase-1 callback of seed ``index``: sets tau each epoch, records its selection counts,
    how many units switched and (with ``sampled``) the sampled network's scores."""

    def __init__(self, cfg: RunConfig, model: nn.Module, index: int,
                 sampled: SampledEval | None = None):
        self.cfg, self.index, self.sampled = cfg, index, sampled
        self.previous = self._choices(model)

    def _choices(self, model: nn.Module) -> list[torch.Tensor]:
        return [s.choices()[self.index].clone() for s in model.acts
                if isinstance(s, SelectiveActivation)]

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        tau = temperature_at(self.cfg, epoch)
        for slot in model.acts:
            slot.tau = tau

    def on_epoch_end(self, epoch: int, record: dict, model: nn.Module) -> None:
        now = self._choices(model)
        record["phase"] = 1
        record["tau"] = model.acts[0].tau
        record["selection"] = selection_counts(model, self.index)
        record["changed"] = {
            f"layer_{i + 1}": int((a != b).sum())
            for i, (a, b) in enumerate(zip(now, self.previous))
        }
        self.previous = now
        if self.sampled is not None:
            loss, acc = self.sampled.scores(epoch, model)[self.index]
            record["sampled_val_loss"], record["sampled_val_accuracy"] = loss, acc
