"""Phase-1 -> phase-2 hand-off, in memory, plus what a trained network chose."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from smartmixed_core.layers import (
    Activation,
    MixedActivation,
    MixtureActivation,
    SelectiveActivation,
)
from smartmixed_core.models import Backbone
from smartmixed_core.names import PHASE2_INITS

Phase2Init = Literal["transfer", "reinit"]


def freeze(model: Backbone, init: Phase2Init = "transfer",
           generators: Sequence[torch.Generator] | None = None) -> Backbone:
    """The mixed network built from a trained selective one (paper §III-C), every seed.

    Each unit keeps its argmax choice (eq. 7).  Units are permuted so every activation group
    is a contiguous slice (rows of the producing layer, columns of the consuming one move
    with them), which leaves the function unchanged.  ``transfer`` keeps all trained weights
    (eq. 9): the result equals ``model.eval()`` exactly.  ``reinit`` re-initialises them, as
    the public reference code did, seed ``s`` from ``generators[s]``.  ``model`` itself is
    not modified.
    """
    if init not in PHASE2_INITS:
        raise ValueError(f"init must be one of {PHASE2_INITS}, got {init!r}")
    mixed = copy.deepcopy(model)
    for layer, slot in enumerate(mixed.acts):
        if not isinstance(slot, SelectiveActivation):
            raise TypeError(f"layer {layer + 1} is {type(slot).__name__}, not SelectiveActivation")
        choice = slot.choices()
        mixed.permute_units(layer, torch.argsort(choice, dim=1, stable=True))
        counts = [torch.bincount(c, minlength=len(slot.pool)).tolist() for c in choice]
        mixed.acts[layer] = MixedActivation(slot.pool, counts, slot.candidates).to(choice.device)
    if init == "reinit":
        mixed.reset_parameters(generators)
    return mixed


def selection_counts(model: nn.Module, seed: int = 0) -> dict[str, dict[str, int]]:
    """``{"layer_1": {"relu": n, ...}, ...}`` of seed ``seed`` (an index into the model's
    seeds) for selective or mixed slots (1-based layers)."""
    out: dict[str, dict[str, int]] = {}
    for i, slot in enumerate(getattr(model, "acts", ())):
        if isinstance(slot, (SelectiveActivation, MixedActivation)):
            choice = slot.choices()[seed].cpu()
            counts = torch.bincount(choice, minlength=len(slot.pool)).tolist()
            out[f"layer_{i + 1}"] = dict(zip(slot.pool, counts))
    return out


def unit_choices(model: nn.Module, seed: int = 0) -> dict[str, list[str]]:
    """Per-unit activation names per layer of seed ``seed``, in the current unit order."""
    out: dict[str, list[str]] = {}
    for i, slot in enumerate(getattr(model, "acts", ())):
        if isinstance(slot, (SelectiveActivation, MixedActivation)):
            out[f"layer_{i + 1}"] = [slot.pool[j] for j in slot.choices()[seed].tolist()]
    return out


def dominant_activations(model: nn.Module, seed: int = 0) -> list[str]:
    """AdAct's "optimized" export: each mixture layer's highest-weight activation.

    For input-dependent gates this is the mean gate over the last forward pass: run the
    model on representative data (e.g. the validation set) first.
    """
    names = []
    for slot in getattr(model, "acts", ()):
        if not isinstance(slot, MixtureActivation):
            raise TypeError(f"{type(slot).__name__} is not a mixture slot")
        names.append(slot.dominant(seed))
    return names


def export_fixed(model: Backbone, make_backbone) -> Backbone:
    """A fresh fixed network using seed 0's :func:`dominant_activations` layer by layer.

    ``make_backbone(slot_factory)`` builds the same backbone with the given slots.
    """
    names = dominant_activations(model)
    return make_backbone(lambda layer, units: Activation(names[layer], model.seeds))
