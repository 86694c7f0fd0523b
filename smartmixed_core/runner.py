"""Train one configuration for one or several seeds: every method through :func:`fit`.

SmartMixed = ``fit(selective, transition_epoch)`` -> :func:`freeze` -> ``fit(mixed, rest)``.
Several seeds train together as one model with a seeds dimension
(:mod:`smartmixed_core.seeded`); one seed is the case S = 1 of the same path.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from smartmixed_core.build import (
    SeedOutcome,
    build_model,
    load_checkpoint,
    load_data,
    model_from_slots,
    resolve_device,
    save_checkpoint,
    slot_layout,
)
from smartmixed_core.config import RunConfig
from smartmixed_core.data import Splits
from smartmixed_core.layers import MixtureActivation, gate_entropy
from smartmixed_core.metrics import accuracy, classification_metrics, count_parameters
from smartmixed_core.models import Backbone
from smartmixed_core.phase1 import SampledEval, SelectionTracker, temperature_at
from smartmixed_core.phase2 import dominant_activations, freeze, selection_counts, unit_choices
from smartmixed_core.seeded import BATCHES, INIT, NOISE, REINIT, SeedNoise, seed_generator
from smartmixed_core.shapes import learned_shapes
from smartmixed_core.training import FitConfig, FitState, fit, predict_split, seed_callbacks

__all__ = [  # build_model, the data and checkpoint functions (build.py) re-exported for callers
    "RunState", "SeedOutcome", "build_model", "load_checkpoint", "load_data", "save_checkpoint",
    "summarize", "temperature_at", "train_seed", "train_seeds", "train_together",
]

CallbackFactory = Callable[[int], Sequence[object]]
"""``seed -> callbacks`` for that seed's :func:`fit` calls."""
def use_compile(cfg: RunConfig) -> bool:
    """``cfg.compile``, with ``auto`` on for CUDA only: on this project's 2-core CPU compiling
    a small selective MLP took minutes against seconds for a whole quick-preset trial
    (docs/performance.md)."""
    if cfg.compile == "auto":
        return resolve_device(cfg.device).type == "cuda"
    return cfg.compile == "on"


def fit_config(cfg: RunConfig) -> FitConfig:
    """The :class:`FitConfig` of ``cfg`` for all of its epochs."""
    same = ("epochs", "lr", "weight_decay", "optimizer", "batch_size", "grad_clip", "patience",
            "restore")
    return FitConfig(compile=use_compile(cfg), **{name: getattr(cfg, name) for name in same})


class _PhaseTag:
    def __init__(self, phase: int):
        self.phase = phase

    def on_epoch_end(self, epoch: int, record: dict, model: nn.Module) -> None:
        record.setdefault("phase", self.phase)


@dataclass
class RunState:
    """Where :func:`train_together` stands: a mid-run checkpoint of all its seeds.

    Given as ``train_together(..., state=s)``, ``s`` is kept current after every epoch (a
    *round*), before ``on_round`` runs, so ``on_round`` can copy it with :meth:`snapshot`.
    ``train_together`` given ``RunState.restore(d)`` continues after that round with the same
    numbers as an uninterrupted run, bit for bit on the same device, for the same seeds.
    """

    phase: int = 0
    """The fit in progress: 1 = phase 1 (or the only one), 2 = SmartMixed phase 2; 0 = none."""
    fit: FitState = field(default_factory=FitState)
    round: int = -1
    """Epochs completed over all phases, minus one; -1 before the first."""
    outs: list[dict[str, Any]] = field(default_factory=list)
    """Per seed: summary fields of the finished phases."""
    histories: list[list[dict]] = field(default_factory=list)
    """Per seed: history of the finished phases."""
    seconds: float = 0.0
    """Training time before the latest restore."""
    restored: dict[str, Any] | None = None
    """Seeds, weights, slot layout and generators of a snapshot, read by the resumed run."""
    model: Backbone | None = None
    generators: list[tuple[torch.Generator, torch.Generator]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    _t0: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Training time so far, over every restore."""
        return self.seconds + time.perf_counter() - self._t0

    def snapshot(self) -> dict[str, Any]:
        """A resumable deep copy as plain data (``torch.save``-able)."""
        assert self.model is not None
        return {
            "phase": self.phase, "fit": self.fit.snapshot(), "round": self.round,
            "outs": copy.deepcopy(self.outs), "histories": copy.deepcopy(self.histories),
            "seconds": self.elapsed(), "seeds": list(self.seeds),
            "slots": slot_layout(self.model, all_seeds=True),
            "model_state": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "generators": [[b.get_state(), n.get_state()] for b, n in self.generators],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> RunState:
        keys = ("phase", "round", "outs", "histories", "seconds")
        return cls(**{k: snap[k] for k in keys}, fit=FitState.restore(snap["fit"]),
                   restored={k: snap[k] for k in ("seeds", "slots", "model_state",
                                                  "generators")})


def accuracies(model: nn.Module, data: Splits, split: str) -> list[float]:
    """Every seed's accuracy on ``split`` (where the other metrics are not reported)."""
    return [accuracy(logits, data.labels(split, s))
            for s, logits in enumerate(predict_split(model, data, split))]


def _start(cfg: RunConfig, seeds: list[int], data: Splits, state: RunState) -> Backbone:
    """The model of a new run, or of ``state``'s snapshot with its generators restored."""
    shape, classes, device = data.input_shape, data.num_classes, data.x_train.device
    state.generators = [(seed_generator(s, BATCHES), seed_generator(s, NOISE)) for s in seeds]
    state.seeds = seeds
    if state.restored is None:
        model = build_model(cfg, shape, classes, seeds=len(seeds))
        model.reset_parameters([seed_generator(s, INIT) for s in seeds])
        state.phase = 1
        state.outs, state.histories = [{} for _ in seeds], [[] for _ in seeds]
        return model.to(device)
    snap, state.restored = state.restored, None
    if list(snap["seeds"]) != seeds:
        raise ValueError("the run state was saved for other seeds")
    model = model_from_slots(cfg, shape, classes, snap["slots"], len(seeds))
    model.load_state_dict(snap["model_state"])
    for gens, saved in zip(state.generators, snap["generators"]):
        for g, st in zip(gens, saved):
            g.set_state(st)
    return model.to(device)


def train_together(
    cfg: RunConfig,
    seeds: Sequence[int],
    data: Splits,
    callbacks: Sequence[Sequence[object]] = (),
    state: RunState | None = None,
    on_round: Callable[[int], object] | None = None,
) -> list[SeedOutcome]:
    """Train ``cfg`` for every seed at once (one model, seeds dimension S), then evaluate each.

    Seed ``s`` owns its initialisation, batch order, noise, clipping and early stopping, so
    its numbers do not depend on the other seeds.  ``data`` must be on the training device.
    ``state`` (optional) is kept current after every round; then ``on_round(round)`` runs.
    A restored state continues after its round (see :class:`RunState`).  ``train_seconds``
    is each seed's share of the joint time.
    """
    seeds = list(seeds)
    state = state if state is not None else RunState()
    model = state.model = _start(cfg, seeds, data, state)
    kind = cfg.parsed_method.kind
    selective = kind in ("smartmixed", "selective")
    noise = SeedNoise([n for _, n in state.generators])
    model.use_noise(noise)
    user = seed_callbacks(callbacks, len(seeds))

    def rounds() -> None:
        state.round += 1
        if on_round is not None:
            on_round(state.round)

    def run(model: Backbone, epochs: int, cbs: list[list[object]], starts: list[int]) -> list:
        return fit(model, data, replace(fit_config(cfg), epochs=epochs),
                   generators=[b for b, _ in state.generators], noise=noise, callbacks=cbs,
                   start_epochs=starts, seed_ids=seeds, state=state.fit, on_round=rounds)

    if state.phase == 1:
        sampled = SampledEval(data, seeds) if selective else None
        cbs = [[SelectionTracker(cfg, model, i, sampled), *c] if selective else c
               for i, c in enumerate(user)]
        results = run(model, cfg.phase1_epochs if selective else cfg.epochs, cbs,
                      [0] * len(seeds))
        for i, r in enumerate(results):
            state.histories[i] += r.history
            state.outs[i]["best_epoch"] = r.best_epoch
            if selective:
                state.outs[i]["selection"] = selection_counts(model, i)
        if kind == "smartmixed":
            val1, test1 = accuracies(model, data, "val"), accuracies(model, data, "test")
            reinit = [seed_generator(s, REINIT) for s in seeds]
            model = state.model = freeze(model, cfg.phase2_init, reinit)  # type: ignore[arg-type]
            test2 = accuracies(model, data, "test")
            for i, r in enumerate(results):
                last = r.history[-1]
                state.outs[i]["phase1"] = {
                    "val_accuracy": val1[i], "test_accuracy": test1[i],
                    "epochs": len(r.history), "best_epoch": r.best_epoch,
                    "last_val_accuracy": last["val_accuracy"],
                    "sampled_val_accuracy": last["sampled_val_accuracy"],
                    "sampled_val_loss": last["sampled_val_loss"]}
                state.outs[i]["phase2_start_test_accuracy"] = test2[i]
            state.phase, state.fit = 2, FitState()
    if state.phase == 2:
        results = run(model, cfg.epochs - cfg.transition_epoch,
                      [[_PhaseTag(2), *c] for c in user],
                      [o["phase1"]["epochs"] for o in state.outs])
        for i, r in enumerate(results):
            state.histories[i] += r.history
            state.outs[i]["best_epoch"] = r.best_epoch
            if r.history:
                state.outs[i]["phase2_first_val_accuracy"] = r.history[0]["val_accuracy"]
    seconds = state.elapsed() / len(seeds)
    return [finish_seed(cfg, model.select_seeds([i]), data.select([i]),
                        {"seed": s, **state.outs[i]}, state.histories[i], seconds)
            for i, s in enumerate(seeds)]


def train_seed(
    cfg: RunConfig,
    seed: int,
    data: Splits | None = None,
    callbacks: Sequence[object] = (),
    state: RunState | None = None,
) -> SeedOutcome:
    """Train ``cfg`` once with ``seed``: :func:`train_together` with one seed."""
    data = data if data is not None else load_data(cfg, [seed])
    return train_together(cfg, [seed], data, [callbacks], state)[0]


def finish_seed(
    cfg: RunConfig,
    model: Backbone,
    data: Splits,
    out: dict[str, Any],
    history: list[dict],
    seconds: float,
) -> SeedOutcome:
    """A trained seed's outcome: final metrics on validation and test, parameter count,
    mixture exports, history (``out`` holds what the phases recorded)."""
    kind = cfg.parsed_method.kind
    out["train_seconds"] = seconds
    (out["val_accuracy"],) = accuracies(model, data, "val")
    (logits,) = predict_split(model, data, "test")
    test = classification_metrics(logits, data.labels("test", 0), data.num_classes)
    out.update({f"test_{key}": value for key, value in test.items()})  # accuracy, f1_macro, ...
    out["n_params"] = count_parameters(model)
    if kind in ("adact", "gated"):
        predict_split(model, data, "val")  # refresh the mean gates on validation data
        out["optimized_activations"] = dominant_activations(model)
        out["gate_entropy"] = [
            gate_entropy(s.gate_mean) for s in model.acts if isinstance(s, MixtureActivation)
        ]
    if kind in ("pau", "swish_beta"):
        out["learned_shape"] = learned_shapes(model)
    out["history"] = history
    return SeedOutcome(out, model, unit_choices(model))


SUMMARY_KEYS = ("val_accuracy", "test_accuracy", "test_f1_macro", "test_roc_auc", "train_seconds",
                "n_params")


def summarize(seeds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std (ddof=1; 0 for one seed) of the headline metrics over seeds."""
    summary: dict[str, Any] = {"n_seeds": len(seeds)}
    keys = list(SUMMARY_KEYS)
    if seeds and "phase1" in seeds[0]:
        keys += ["phase1_test_accuracy", "phase2_start_test_accuracy"]
    for key in keys:
        vals = np.array([s["phase1"]["test_accuracy"] if key == "phase1_test_accuracy" else s[key]
                         for s in seeds], dtype=float)
        summary[f"{key}_mean"] = float(vals.mean()) if len(vals) else math.nan
        summary[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return summary


def train_seeds(
    cfg: RunConfig,
    seeds: Sequence[int],
    callbacks: CallbackFactory | None = None,
    data: Splits | None = None,
    batched: bool | None = None,
) -> tuple[dict[str, Any], list[SeedOutcome]]:
    """Train ``cfg`` for every seed; returns the result.json document and the outcomes.

    ``batched`` (default): the seeds train together (:func:`train_together`); ``False``: one
    after another (less memory, the same numbers).
    """
    data = data if data is not None else load_data(cfg, seeds)
    cbs = [callbacks(s) if callbacks else () for s in seeds]
    if batched is False:
        outcomes = [o for i, (s, c) in enumerate(zip(seeds, cbs))
                    for o in train_together(cfg, [s], data.select([i]), [c])]
    else:
        outcomes = train_together(cfg, seeds, data, cbs)
    doc = {
        "config": cfg.to_dict(),
        "seeds": [o.summary for o in outcomes],
        "summary": summarize([o.summary for o in outcomes]),
    }
    return doc, outcomes
