"""SmartMixed core: per-neuron activation selection, baselines, mixtures, one training loop.

    smartmixed train --dataset digits --arch 64,32 --method smartmixed --seeds 0,1,2 --out runs/demo

The library knows nothing of Ray or MLflow; ``sweeps`` and ``analysis`` build on it.
"""

from smartmixed_core.activations import ACTIVATIONS, POOLS, canonical, get_activation, resolve_pool
from smartmixed_core.config import Method, RunConfig, parse_method
from smartmixed_core.data import DATASETS, Splits, load_dataset
from smartmixed_core.errors import ConfigError
from smartmixed_core.freeze import (
    dominant_activations,
    export_fixed,
    freeze,
    selection_counts,
    unit_choices,
)
from smartmixed_core.layers import (
    MixedActivation,
    MixtureActivation,
    SelectiveActivation,
    hard_gumbel_softmax,
)
from smartmixed_core.metrics import classification_metrics, count_parameters
from smartmixed_core.models import MLP, PAPER_ARCHITECTURES, ConvNet, parse_arch
from smartmixed_core.runner import (
    RunState,
    SeedOutcome,
    build_model,
    load_checkpoint,
    save_checkpoint,
    summarize,
    temperature_at,
    train_seed,
    train_seeds,
    train_together,
)
from smartmixed_core.training import FitConfig, FitResult, NonFiniteLossError, fit

__all__ = [
    "ACTIVATIONS",
    "DATASETS",
    "MLP",
    "PAPER_ARCHITECTURES",
    "POOLS",
    "ConfigError",
    "ConvNet",
    "FitConfig",
    "FitResult",
    "Method",
    "MixedActivation",
    "MixtureActivation",
    "NonFiniteLossError",
    "RunConfig",
    "RunState",
    "SeedOutcome",
    "SelectiveActivation",
    "Splits",
    "build_model",
    "canonical",
    "classification_metrics",
    "count_parameters",
    "dominant_activations",
    "export_fixed",
    "fit",
    "freeze",
    "get_activation",
    "hard_gumbel_softmax",
    "load_checkpoint",
    "load_dataset",
    "parse_arch",
    "parse_method",
    "resolve_pool",
    "save_checkpoint",
    "selection_counts",
    "summarize",
    "temperature_at",
    "train_seed",
    "train_seeds",
    "train_together",
    "unit_choices",
]
