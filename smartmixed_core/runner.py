"""Train one configuration for one or several seeds: every method through :func:`fit`.

SmartMixed = ``fit(selective, transition_epoch)`` -> :func:`freeze` -> ``fit(mixed, rest)``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from smartmixed_core.activations import ACTIVATIONS
from smartmixed_core.config import RunConfig
from smartmixed_core.data import Splits, load_dataset
from smartmixed_core.freeze import dominant_activations, freeze, selection_counts, unit_choices
from smartmixed_core.layers import (
    MixedActivation,
    MixtureActivation,
    SelectiveActivation,
    gate_entropy,
)
from smartmixed_core.metrics import classification_metrics, count_parameters
from smartmixed_core.models import MLP, Backbone, ConvNet, SlotFactory
from smartmixed_core.training import FitConfig, FitState, fit, predict

if TYPE_CHECKING:
    from smartmixed_core.batched import BatchedState

CallbackFactory = Callable[[int], Sequence[object]]
"""``seed -> callbacks`` for that seed's :func:`fit` calls."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def slot_factory(cfg: RunConfig, kind: str | None = None) -> SlotFactory:
    """The activation slot of every hidden layer for ``cfg``'s method (or ``kind``)."""
    method = cfg.parsed_method
    kind = kind or method.kind
    pool = cfg.pool_names
    if kind == "fixed":
        acts = method.activations
        return lambda layer, units: ACTIVATIONS[acts[layer if len(acts) > 1 else 0]].module()
    if kind in ("smartmixed", "selective"):
        return lambda layer, units: SelectiveActivation(units, pool, cfg.temperature, cfg.fused)
    if kind == "adact":
        gate = cfg.gate if cfg.gate != "input" else "layer"
        return lambda layer, units: MixtureActivation(units, pool, gate)
    if kind == "gated":
        return lambda layer, units: MixtureActivation(
            units, pool, cfg.gate, cfg.gate_temperature, cfg.entropy_weight
        )
    raise ValueError(kind)


def build_model(
    cfg: RunConfig,
    input_shape: Sequence[int],
    num_classes: int,
    make_slot: SlotFactory | None = None,
) -> Backbone:
    """The backbone of ``cfg`` with its method's slots (or ``make_slot``)."""
    make_slot = make_slot or slot_factory(cfg)
    if cfg.model == "convnet":
        c, h, w = input_shape
        return ConvNet(c, (h, w), num_classes, make_slot, cfg.hidden)
    return MLP(int(np.prod(input_shape)), cfg.hidden, num_classes, make_slot)


def fit_config(cfg: RunConfig) -> FitConfig:
    """The :class:`FitConfig` of ``cfg`` for all of its epochs."""
    return FitConfig(
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        batch_size=cfg.batch_size,
        grad_clip=cfg.grad_clip,
        patience=cfg.patience,
    )


def temperature_at(cfg: RunConfig, epoch: int) -> float:
    """Phase-1 temperature at ``epoch`` (0-based): start -> end over the phase-1 epochs."""
    start = cfg.temperature
    end = cfg.temperature if cfg.temperature_end is None else cfg.temperature_end
    span = max(cfg.phase1_epochs - 1, 1)
    frac = min(max(epoch / span, 0.0), 1.0)
    if cfg.temperature_schedule == "linear":
        return start + (end - start) * frac
    return start * (end / start) ** frac


class SelectionTracker:
    """Phase-1 callback: sets tau each epoch, records selection counts and switches."""

    def __init__(self, cfg: RunConfig, model: nn.Module):
        self.cfg = cfg
        self.previous = self._choices(model)

    @staticmethod
    def _choices(model: nn.Module) -> list[torch.Tensor]:
        return [s.choices().clone() for s in model.acts if isinstance(s, SelectiveActivation)]

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        tau = temperature_at(self.cfg, epoch)
        for slot in model.acts:
            slot.tau = tau

    def on_epoch_end(self, epoch: int, record: dict, model: nn.Module) -> None:
        now = self._choices(model)
        record["phase"] = 1
        record["tau"] = model.acts[0].tau
        record["selection"] = selection_counts(model)
        record["changed"] = {
            f"layer_{i + 1}": int((a != b).sum())
            for i, (a, b) in enumerate(zip(now, self.previous))
        }
        self.previous = now


class _PhaseTag:
    def __init__(self, phase: int):
        self.phase = phase

    def on_epoch_end(self, epoch: int, record: dict, model: nn.Module) -> None:
        record.setdefault("phase", self.phase)


@dataclass
class SeedOutcome:
    """Everything one seed produced: the JSON-ready summary and the trained model."""

    summary: dict[str, Any]
    model: Backbone
    choices: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class SeedState:
    """Where :func:`train_seed` stands: a mid-run checkpoint of one seed.

    Given as ``train_seed(..., state=s)``, ``s`` is kept current after every epoch (before
    the epoch-end callbacks run); :meth:`snapshot` copies it.  ``train_seed`` given a copy
    (``SeedState.restore(d)``) continues after its epoch with the same numbers as an
    uninterrupted run, bit for bit on the same device.
    """

    phase: int = 0
    """The fit in progress: 1 = phase 1 (or the only one), 2 = SmartMixed phase 2; 0 = none."""
    fit: FitState = field(default_factory=FitState)
    out: dict[str, Any] = field(default_factory=dict)
    """Summary fields of the finished phases (phase-1 results, selection)."""
    history: list[dict] = field(default_factory=list)
    """History of the finished phases."""
    seconds: float = 0.0
    model: nn.Module | None = None
    """The live model (not part of a snapshot: its weights and slot layout are)."""
    model_state: dict | None = None
    slots: list[dict] | None = None
    _t0: float = 0.0

    @property
    def epoch(self) -> int:
        """Last completed epoch (-1: none)."""
        return self.fit.epoch if self.phase else -1

    def snapshot(self) -> dict[str, Any]:
        """A resumable deep copy as plain data (``torch.save``-able)."""
        assert self.model is not None
        return {
            "phase": self.phase,
            "fit": self.fit.snapshot(),
            "out": copy.deepcopy(self.out),
            "history": copy.deepcopy(self.history),
            "seconds": time.perf_counter() - self._t0,
            "model_state": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "slots": slot_layout(self.model),
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> SeedState:
        return cls(**{**snap, "fit": FitState(**snap["fit"])})


def slot_layout(model: nn.Module) -> list[dict[str, Any]]:
    """Each hidden layer's slot: ``{"type": "mixed", "counts": [...]}`` or its class name."""
    return [
        {"type": "mixed", "counts": s.counts}
        if isinstance(s, MixedActivation)
        else {"type": type(s).__name__}
        for s in model.acts
    ]


def model_from_slots(
    cfg: RunConfig, input_shape: Sequence[int], num_classes: int, slots: list[dict[str, Any]]
) -> Backbone:
    """``cfg``'s backbone with the slot layout of :func:`slot_layout` (untrained weights)."""
    base = slot_factory(cfg)

    def make_slot(layer: int, units: int) -> nn.Module:
        if slots[layer]["type"] == "mixed":
            return MixedActivation(cfg.pool_names, slots[layer]["counts"])
        return base(layer, units)

    return build_model(cfg, input_shape, num_classes, make_slot)


def evaluate(model: nn.Module, data: Splits, split: str) -> dict[str, Any]:
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    return classification_metrics(predict(model, x), y, data.num_classes)


def train_seed(
    cfg: RunConfig,
    seed: int,
    data: Splits | None = None,
    callbacks: Sequence[object] = (),
    state: SeedState | None = None,
) -> SeedOutcome:
    """Train ``cfg`` once with ``seed`` (init, Gumbel noise and batch order all follow it).

    ``data`` must be on the training device; loaded from ``cfg`` when omitted.  ``state``
    (optional) is kept current after every epoch; one restored from a snapshot makes the
    run continue after the snapshot's epoch (see :class:`SeedState`).
    """
    data = data if data is not None else load_data(cfg)
    device = data.x_train.device
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    kind = cfg.parsed_method.kind
    resume = state is not None and state.phase > 0
    if resume:
        assert state is not None and state.slots is not None and state.model_state is not None
        model = model_from_slots(cfg, data.input_shape, data.num_classes, state.slots)
        model.load_state_dict(state.model_state)
        model.to(device)
    else:
        model = build_model(cfg, data.input_shape, data.num_classes).to(device)
    if state is None:
        state = SeedState()  # kept current but not read back: same path either way
    state.model = model
    fit_cfg = fit_config(cfg)
    out: dict[str, Any] = {"seed": seed, **(state.out if resume else {})}
    history: list[dict] = list(state.history) if resume else []
    t0 = time.perf_counter() - (state.seconds if resume else 0.0)
    state._t0 = t0
    if not resume:
        state.phase = 1
    if kind in ("smartmixed", "selective") and state.phase == 1:
        tracker = SelectionTracker(cfg, model)
        r1 = fit(
            model,
            data,
            replace(fit_cfg, epochs=cfg.phase1_epochs),
            generator=generator,
            callbacks=[tracker, *callbacks],
            state=state.fit,
        )
        history += r1.history
        out["selection"] = selection_counts(model)
        if kind == "smartmixed":
            val1, test1 = evaluate(model, data, "val"), evaluate(model, data, "test")
            out["phase1"] = {
                "val_accuracy": val1["accuracy"],
                "test_accuracy": test1["accuracy"],
                "epochs": len(r1.history),
                "best_epoch": r1.best_epoch,
            }
            model = freeze(model, cfg.phase2_init)  # type: ignore[arg-type]
            out["phase2_start_test_accuracy"] = evaluate(model, data, "test")["accuracy"]
            state.phase, state.fit, state.model = 2, FitState(), model
            state.out, state.history = {k: v for k, v in out.items() if k != "seed"}, history
        else:
            out["best_epoch"] = r1.best_epoch
    if kind == "smartmixed" and state.phase == 2:
        r2 = fit(
            model,
            data,
            replace(fit_cfg, epochs=cfg.epochs - cfg.transition_epoch),
            generator=generator,
            callbacks=[_PhaseTag(2), *callbacks],
            start_epoch=out["phase1"]["epochs"],
            state=state.fit,
        )
        history += r2.history
        out["best_epoch"] = r2.best_epoch
    elif kind not in ("smartmixed", "selective"):
        r = fit(model, data, fit_cfg, generator=generator, callbacks=callbacks, state=state.fit)
        history += r.history
        out["best_epoch"] = r.best_epoch
    return finish_seed(cfg, model, data, out, history, time.perf_counter() - t0)


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
    val, test = evaluate(model, data, "val"), evaluate(model, data, "test")
    out.update(
        {
            "val_accuracy": val["accuracy"],
            "test_accuracy": test["accuracy"],
            "test_f1_macro": test["f1_macro"],
            "test_roc_auc": test["roc_auc"],
            "test_per_class_accuracy": test["per_class_accuracy"],
            "test_confusion_matrix": test["confusion_matrix"],
            "n_params": count_parameters(model),
        }
    )
    if kind in ("adact", "gated"):
        predict(model, data.x_val)  # refresh the mean gates on validation data
        out["optimized_activations"] = dominant_activations(model)
        out["gate_entropy"] = [
            gate_entropy(s.gate_mean) for s in model.acts if isinstance(s, MixtureActivation)
        ]
    out["history"] = history
    return SeedOutcome(out, model, unit_choices(model))


SUMMARY_KEYS = (
    "val_accuracy",
    "test_accuracy",
    "test_f1_macro",
    "test_roc_auc",
    "train_seconds",
    "n_params",
)


def summarize(seeds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std (ddof=1; 0 for one seed) of the headline metrics over seeds."""
    summary: dict[str, Any] = {"n_seeds": len(seeds)}
    keys = list(SUMMARY_KEYS)
    if seeds and "phase1" in seeds[0]:
        keys += ["phase1_test_accuracy", "phase2_start_test_accuracy"]
    for key in keys:
        vals = np.array(
            [
                s["phase1"]["test_accuracy"] if key == "phase1_test_accuracy" else s[key]
                for s in seeds
            ],
            dtype=float,
        )
        summary[f"{key}_mean"] = float(vals.mean()) if len(vals) else math.nan
        summary[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return summary


def load_data(cfg: RunConfig) -> Splits:
    """``cfg``'s dataset split, on ``cfg``'s device."""
    return load_dataset(
        cfg.dataset,
        cfg.data_dir,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        download=cfg.download,
        normalize_images=cfg.model == "convnet",
    ).to(resolve_device(cfg.device))


def use_batched(cfg: RunConfig, n_seeds: int) -> bool:
    """The ``auto`` choice: batch the seeds when there are several and ``cfg`` qualifies
    (:func:`~smartmixed_core.batched.batchable`).  On any device: fewer, larger kernels pay on
    a CPU too (README, Performance)."""
    from smartmixed_core.batched import batchable

    return n_seeds > 1 and batchable(cfg) is None


def train_batched(
    cfg: RunConfig,
    seeds: Sequence[int],
    data: Splits,
    callbacks: Sequence[Sequence[object]] = (),
    state: BatchedState | None = None,
    on_round: Callable[[int], object] | None = None,
) -> list[SeedOutcome]:
    """``seeds`` trained as one batched model
    (:func:`~smartmixed_core.batched.train_seeds_batched`, which explains ``state`` and
    ``on_round``), then each seed's final evaluation; ``train_seconds`` is each seed's share
    of the joint time."""
    from smartmixed_core.batched import BatchedState, train_seeds_batched

    state = state if state is not None else BatchedState()
    trained = train_seeds_batched(cfg, seeds, data, callbacks, state, on_round)
    seconds = state.elapsed() / len(seeds)
    return [
        finish_seed(cfg, model, data, {"seed": seed, **out}, history, seconds)
        for seed, (model, out, history) in zip(seeds, trained)
    ]


def train_seeds(
    cfg: RunConfig,
    seeds: Sequence[int],
    callbacks: CallbackFactory | None = None,
    data: Splits | None = None,
    batched: bool | None = None,
) -> tuple[dict[str, Any], list[SeedOutcome]]:
    """Train ``cfg`` for every seed; returns the result.json document and the outcomes.

    ``batched``: train the seeds together as one batched model
    (:mod:`smartmixed_core.batched`); ``None`` does so when there are several seeds and the
    configuration allows it (:func:`use_batched`).  Results match one-by-one training up to
    float rounding.
    """
    data = data if data is not None else load_data(cfg)
    if batched is None:
        batched = use_batched(cfg, len(seeds))
    if batched:
        outcomes = train_batched(cfg, seeds, data, [callbacks(s) if callbacks else ()
                                                    for s in seeds])
    else:
        outcomes = [train_seed(cfg, s, data, callbacks(s) if callbacks else ()) for s in seeds]
    doc = {
        "config": cfg.to_dict(),
        "seeds": [o.summary for o in outcomes],
        "summary": summarize([o.summary for o in outcomes]),
    }
    return doc, outcomes


def save_checkpoint(path: str | Path, cfg: RunConfig, outcome: SeedOutcome) -> None:
    """One structured checkpoint: config, seed, slot layout, per-unit choices and weights."""
    torch.save(
        {
            "config": cfg.to_dict(),
            "seed": outcome.summary["seed"],
            "slots": slot_layout(outcome.model),
            "choices": outcome.choices,
            "state_dict": outcome.model.state_dict(),
        },
        path,
    )


def load_checkpoint(
    path: str | Path, input_shape: Sequence[int], num_classes: int
) -> tuple[RunConfig, Backbone]:
    """Rebuild the trained network saved by :func:`save_checkpoint` (on CPU)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = RunConfig(**ckpt["config"])
    model = model_from_slots(cfg, input_shape, num_classes, ckpt["slots"])
    model.load_state_dict(ckpt["state_dict"])
    return cfg, model
