"""The names a run configuration is made of, importable without torch.

Activation names, aliases and pools; dataset names; gates; phase-2 initialisations; hidden
architectures.  :mod:`~smartmixed_core.config` validates with them, and ``sweeps.schema``
and ``analysis`` (which read runs back from MLflow and never train) use them without loading
torch.  The modules that implement each name build their tables from these and check them at
import: the activation registry (:data:`~smartmixed_core.activations.ACTIVATIONS`), the dataset
loaders (:data:`~smartmixed_core.data.DATASETS`).

>>> resolve_pool("paper")
('relu', 'sigmoid', 'tanh', 'leaky_relu', 'elu', 'selu')
"""

from __future__ import annotations

from collections.abc import Sequence

from smartmixed_core.errors import ConfigError, choice_error

ACTIVATION_NAMES: tuple[str, ...] = ("relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu",
                                     "prelu", "rrelu", "silu", "mish", "gelu")
"""Every activation of the registry, in registry order (plots and tables use this order)."""

ALIASES: dict[str, str] = {
    "lrelu": "leaky_relu",
    "leakyrelu": "leaky_relu",
    "swish": "silu",
}

POOLS: dict[str, tuple[str, ...]] = {
    # The six of the SmartMixed paper, in the paper's order.
    "paper": ("relu", "sigmoid", "tanh", "leaky_relu", "elu", "selu"),
    # AdAct's seven (ReLU, ELU, LReLU, PReLU, RReLU, SiLU, Mish).
    "adact": ("relu", "elu", "leaky_relu", "prelu", "rrelu", "silu", "mish"),
}


def canonical(name: str, field: str = "activation") -> str:
    """Return the canonical registry name for ``name`` (case-insensitive, aliases allowed)."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in ACTIVATION_NAMES:
        raise choice_error(field, name, ACTIVATION_NAMES)
    return key


def resolve_pool(pool: str | Sequence[str], field: str = "pool") -> tuple[str, ...]:
    """A named pool (``paper``, ``adact``), a comma-separated string or a list of names."""
    if isinstance(pool, str):
        if pool.strip().lower() in POOLS:
            return POOLS[pool.strip().lower()]
        if "," not in pool:
            if pool.strip().lower().replace("-", "_") in ACTIVATION_NAMES:
                raise ConfigError(field, "a pool needs at least two activations")
            raise choice_error(field, pool, [*POOLS, "or a comma-separated list of activations"])
        pool = [p for p in pool.split(",") if p.strip()]
    names = tuple(canonical(p, field) for p in pool)
    if len(names) < 2:
        raise ConfigError(field, "a pool needs at least two activations")
    if len(set(names)) != len(names):
        raise ConfigError(field, f"duplicate activations in pool {list(names)}")
    return names


DATASET_NAMES: tuple[str, ...] = ("digits", "breast_cancer", "mnist", "fashion_mnist",
                                  "cifar10", "svhn")
"""Every dataset :func:`~smartmixed_core.data.load_dataset` knows."""

PHASE2_INITS: tuple[str, ...] = ("transfer", "reinit")
"""How phase 2 starts from phase 1's weights (:func:`~smartmixed_core.phase2.freeze`)."""

GATES: tuple[str, ...] = ("layer", "neuron", "input")
"""Gates of the mixture activations (:class:`~smartmixed_core.layers.MixtureActivation`)."""


# Paper Table II, written as full layer lists (input, hidden..., output).  A tuple of
# names keeps every architecture exactly once; a test checks there are 18 distinct ones.
_PAPER_LAYERS: tuple[tuple[int, ...], ...] = (
    (784, 512, 10),
    (784, 512, 256, 128, 10),
    (784, 512, 256, 128, 64, 10),
    (784, 512, 256, 256, 128, 10),
    (784, 256, 128, 10),
    (784, 768, 10),
    (784, 768, 512, 10),
    (784, 768, 512, 512, 10),
    (784, 768, 512, 512, 256, 10),
    (784, 768, 512, 512, 256, 256, 10),
    (784, 768, 512, 512, 256, 256, 128, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 32, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 32, 32, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 32, 32, 16, 10),
    (784, 768, 512, 512, 256, 256, 128, 128, 64, 64, 32, 32, 16, 16, 10),
)

PAPER_ARCHITECTURES: dict[str, tuple[int, ...]] = {
    "-".join(map(str, layers)): layers[1:-1] for layers in _PAPER_LAYERS
}
"""Paper name ("784-512-256-128-10") -> hidden widths; the representative net is
``"784-768-512-512-256-256-128-10"``."""

REPRESENTATIVE = "784-768-512-512-256-256-128-10"


def canonical_arch(hidden: Sequence[int]) -> str:
    """The canonical architecture string "w1-w2-..." of hidden widths."""
    return "-".join(str(int(w)) for w in hidden)


def parse_arch(spec: str | Sequence[int], field: str = "arch") -> tuple[int, ...]:
    """Hidden widths from ``"64,32"``, ``"64-32"``, ``[64, 32]``, a paper name or ``paper:NAME``.

    Paper names give the hidden widths only: input and output sizes come from the dataset.
    """
    if not isinstance(spec, str):
        widths = tuple(spec)
    else:
        s = spec.strip()
        name = s.removeprefix("paper:")
        if name in PAPER_ARCHITECTURES:
            return PAPER_ARCHITECTURES[name]
        if s.startswith("paper:"):
            raise ConfigError(
                field,
                f"unknown paper architecture {name!r}; allowed: " + ", ".join(PAPER_ARCHITECTURES),
            )
        parts = s.replace(",", "-").split("-") if s else []
        try:
            widths = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(
                field,
                "expected hidden widths like '64,32' or a paper architecture "
                f"such as 'paper:{REPRESENTATIVE}', got {spec!r}",
            ) from None
    if not widths:
        raise ConfigError(field, "needs at least one hidden width")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1 or w > 1_000_000:
            raise ConfigError(field, f"hidden widths must be integers in 1..1000000, got {w!r}")
    return widths
