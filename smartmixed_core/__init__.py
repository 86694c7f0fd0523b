"""SmartMixed core: per-neuron activation selection, baselines, mixtures, one training loop.

    smartmixed train --dataset digits --arch 64,32 --method smartmixed --seeds 0,1,2 --out runs/demo

The library knows nothing of Ray or MLflow; ``sweeps`` and ``analysis`` build on it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ACTIVATIONS": "activations",
    "build_model": "runner",
    "canonical": "names",
    "classification_metrics": "metrics",
    "ConfigError": "errors",
    "ConvNet": "models",
    "count_parameters": "metrics",
    "DATASETS": "data",
    "dominant_activations": "phase2",
    "export_fixed": "phase2",
    "fit": "training",
    "FitConfig": "training",
    "FitResult": "training",
    "freeze": "phase2",
    "get_activation": "activations",
    "hard_gumbel_softmax": "layers",
    "load_checkpoint": "runner",
    "load_dataset": "data",
    "Method": "config",
    "MixedActivation": "layers",
    "MixtureActivation": "layers",
    "MLP": "models",
    "NonFiniteLossError": "training",
    "PAPER_ARCHITECTURES": "names",
    "parse_arch": "names",
    "parse_method": "config",
    "POOLS": "names",
    "resolve_pool": "names",
    "RunConfig": "config",
    "RunState": "runner",
    "save_checkpoint": "runner",
    "SeedOutcome": "runner",
    "selection_counts": "phase2",
    "SelectiveActivation": "layers",
    "Splits": "data",
    "summarize": "runner",
    "temperature_at": "runner",
    "train_seed": "runner",
    "train_seeds": "runner",
    "train_together": "runner",
    "unit_choices": "phase2",
}
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
