"""From a :class:`RunConfig` to objects: device, data, the model of any method for S seeds,
and the one-seed checkpoint file (weights + config + slot layout + choices)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smartmixed_core.config import RunConfig
from smartmixed_core.data import Splits, load_dataset, stack_splits
from smartmixed_core.errors import ConfigError
from smartmixed_core.layers import (
    Activation,
    MixedActivation,
    MixtureActivation,
    SelectiveActivation,
)
from smartmixed_core.models import MLP, Backbone, ConvNet, SlotFactory
from smartmixed_core.shapes import PadeActivation, SwishBeta

CHECKPOINT_FORMAT = 2
"""Version of :func:`save_checkpoint`'s file (1: before the seeds dimension, refused)."""


@dataclass
class SeedOutcome:
    """Everything one seed produced: the JSON-ready summary and its trained (one-seed) model
    (what :func:`save_checkpoint` writes; :mod:`smartmixed_core.runner` makes them)."""

    summary: dict[str, Any]
    model: Backbone
    choices: dict[str, list[str]] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def slot_factory(cfg: RunConfig, seeds: int = 1) -> SlotFactory:
    """The activation slot of every hidden layer for ``cfg``'s method."""
    kind = cfg.parsed_method.kind
    pool = cfg.pool_names
    if kind in ("fixed", "perlayer"):
        acts = cfg.layer_acts
        return lambda layer, units: Activation(acts[layer], seeds)
    if kind == "pau":
        return lambda layer, units: PadeActivation(seeds)
    if kind == "swish_beta":
        return lambda layer, units: SwishBeta(seeds)
    if kind in ("smartmixed", "selective"):
        return lambda layer, units: SelectiveActivation(units, pool, cfg.temperature, cfg.fused,
                                                        seeds)
    if kind == "adact":
        gate = cfg.gate if cfg.gate != "input" else "layer"
        return lambda layer, units: MixtureActivation(units, pool, gate, seeds=seeds)
    if kind == "gated":
        return lambda layer, units: MixtureActivation(
            units, pool, cfg.gate, cfg.gate_temperature, cfg.entropy_weight, seeds)
    raise ValueError(kind)


def build_model(
    cfg: RunConfig,
    input_shape: Sequence[int],
    num_classes: int,
    make_slot: SlotFactory | None = None,
    seeds: int = 1,
) -> Backbone:
    """The backbone of ``cfg`` for ``seeds`` seeds with its method's slots (or ``make_slot``)."""
    make_slot = make_slot or slot_factory(cfg, seeds)
    if cfg.model == "convnet":
        c, h, w = input_shape
        return ConvNet(c, (h, w), num_classes, make_slot, cfg.hidden, seeds)
    return MLP(int(np.prod(input_shape)), cfg.hidden, num_classes, make_slot, seeds)


def slot_layout(model: nn.Module, all_seeds: bool = False) -> list[dict[str, Any]]:
    """Each hidden layer's slot: ``{"type": "mixed", "counts": [...]}`` (seed 0's counts, or
    every seed's with ``all_seeds``) or its class name."""
    return [
        {"type": "mixed", "counts": s.seed_counts if all_seeds else s.counts}
        if isinstance(s, MixedActivation)
        else {"type": type(s).__name__}
        for s in model.acts
    ]


def model_from_slots(cfg: RunConfig, input_shape: Sequence[int], num_classes: int,
                     slots: list[dict[str, Any]], seeds: int = 1) -> Backbone:
    """``cfg``'s backbone with the slot layout of :func:`slot_layout` (untrained weights)."""
    base = slot_factory(cfg, seeds)

    def make_slot(layer: int, units: int) -> nn.Module:
        if slots[layer]["type"] == "mixed":
            return MixedActivation(cfg.pool_names, slots[layer]["counts"])
        return base(layer, units)

    return build_model(cfg, input_shape, num_classes, make_slot, seeds)


def load_data(cfg: RunConfig, seeds: Sequence[int] = (0,)) -> Splits:
    """``cfg``'s dataset split, on ``cfg``'s device; with ``split_per_seed`` one split per
    seed of ``seeds`` (drawn with ``split_seed + seed``), stacked (:func:`stack_splits`)."""
    def split(split_seed: int) -> Splits:
        return load_dataset(
            cfg.dataset,
            cfg.data_dir,
            val_fraction=cfg.val_fraction,
            split_seed=split_seed,
            download=cfg.download,
            normalize_images=cfg.model == "convnet",
            train_size=cfg.train_size,
        )

    if cfg.split_per_seed:
        data = stack_splits([split((cfg.split_seed + s) % 2**32) for s in seeds])
    else:
        data = split(cfg.split_seed)
    return data.to(resolve_device(cfg.device))


def save_checkpoint(path: str | Path, cfg: RunConfig, outcome: SeedOutcome) -> None:
    """One structured checkpoint: config, seed, slot layout, per-unit choices and weights."""
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
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
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError("checkpoint", f"{path} was written by an older smartmixed (format "
                          f"{ckpt.get('format', 1)}, this version reads {CHECKPOINT_FORMAT}); "
                          "retrain it")
    cfg = RunConfig(**ckpt["config"])
    model = model_from_slots(cfg, input_shape, num_classes, ckpt["slots"])
    model.load_state_dict(ckpt["state_dict"])
    return cfg, model
