"""SmartMixed core: per-neuron activation selection, baselines, mixtures, one training loop.

    smartmixed train --dataset digits --arch 64,32 --method smartmixed --seeds 0,1,2 --out runs/demo

The library knows nothing of Ray or MLflow; ``sweeps`` and ``analysis`` build on it.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES: dict[str, tuple[str, ...]] = {
    "activations": ("ACTIVATIONS", "get_activation"),
    "config": ("Method", "parse_method", "RunConfig"),
    "data": ("DATASETS", "load_dataset", "Splits"),
    "errors": ("ConfigError",),
    "layers": ("hard_gumbel_softmax", "MixedActivation", "MixtureActivation",
               "SelectiveActivation"),
    "metrics": ("classification_metrics", "count_parameters"),
    "models": ("ConvNet", "MLP"),
    "names": ("canonical", "PAPER_ARCHITECTURES", "parse_arch", "POOLS", "resolve_pool"),
    "phase2": ("dominant_activations", "export_fixed", "freeze", "selection_counts",
               "unit_choices"),
    "runner": ("build_model", "load_checkpoint", "RunState", "save_checkpoint", "SeedOutcome",
               "summarize", "temperature_at", "train_seed", "train_seeds", "train_together"),
    "training": ("fit", "FitConfig", "FitResult", "NonFiniteLossError"),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}
"""Public name -> the module that defines it (imported on first use: ``import
smartmixed_core.config`` and ``smartmixed_core.names`` stay free of torch)."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'smartmixed_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"smartmixed_core.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
