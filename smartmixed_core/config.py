"""The run configuration: names only (serialisable, loggable), validated on construction.
Importable without torch (it validates with :mod:`smartmixed_core.names`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from smartmixed_core.errors import ConfigError, choice_error
from smartmixed_core.names import (
    ACTIVATION_NAMES,
    DATASET_NAMES,
    GATES,
    PHASE2_INITS,
    canonical,
    canonical_arch,
    parse_arch,
    resolve_pool,
)

METHOD_KINDS = ("smartmixed", "selective", "fixed", "adact", "gated", "perlayer", "pau",
                "swish_beta")
MODELS = ("mlp", "convnet")
SCHEDULES = ("exponential", "linear")
OPTIMIZERS = ("adam", "adamw")
COMPILE = ("auto", "on", "off")
RESTORES = ("val_loss", "val_accuracy", "last")
TABULAR_DATASETS = ("breast_cancer",)
DEFAULT_CONV_CHANNELS = "32-64-128-256"


USED_BY: dict[str, tuple[str, ...]] = {
    "temperature": ("smartmixed", "selective"),
    "temperature_end": ("smartmixed", "selective"),
    "temperature_schedule": ("smartmixed", "selective"),
    "transition_epoch": ("smartmixed",),
    "phase2_init": ("smartmixed",),
    "gate": ("adact", "gated"),
    "gate_temperature": ("gated",),
    "entropy_weight": ("gated",),
    "layer_activations": ("perlayer",),
}
"""RunConfig settings that only some method kinds use; every other kind ignores them."""


def uses(kind: str, setting: str) -> bool:
    """Whether a method of ``kind`` (``smartmixed``, ``fixed``, ...) uses ``setting``."""
    return kind in USED_BY.get(setting, (kind,))


@dataclass(frozen=True)
class Method:
    """A parsed ``--method``: its kind and, for ``fixed``, one activation or one per layer."""

    kind: str
    activations: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"fixed:{','.join(self.activations)}" if self.kind == "fixed" else self.kind


def parse_method(text: str, field: str = "method") -> Method:
    kind, _, rest = text.strip().lower().partition(":")
    if kind not in METHOD_KINDS:
        raise choice_error(
            field, text, [*METHOD_KINDS[:2], "fixed:<activation>", *METHOD_KINDS[3:]]
        )
    if kind == "fixed":
        if not rest:
            raise ConfigError(
                field,
                "fixed needs an activation, e.g. fixed:relu; allowed: "
                + ", ".join(ACTIVATION_NAMES),
            )
        return Method(kind, tuple(canonical(a, field) for a in rest.split(",")))
    if rest:
        raise ConfigError(field, f"{kind} takes no ':' argument")
    return Method(kind)


def _number(value: object, *, integer: bool = False) -> bool:
    """An int (or float unless ``integer``), never a bool."""
    return isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)


def _positive(field: str, value: float, *, integer: bool = False, upper: float = 1e9) -> None:
    if not (_number(value, integer=integer) and math.isfinite(value) and 0 < value <= upper):
        kind = "an integer" if integer else "a number"
        raise ConfigError(field, f"must be {kind} in (0, {upper:g}], got {value!r}")


_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
}


def _check_types(cfg: RunConfig, kinds: tuple[str, ...] = tuple(_TYPES)) -> None:
    """Every field of a type in ``kinds`` has its annotated type (YAML values can be anything).
    Numbers are checked last, after the range checks that name the allowed range."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        names = [t.strip() for t in str(f.type).split("|")]
        base = names[0]
        if (value is None and "None" in names) or base not in kinds:
            continue
        if f.name == "arch" and isinstance(value, (list, tuple)):
            continue  # explicit widths, checked by parse_arch
        types, kind = _TYPES[base]
        ok = isinstance(value, types) and (base == "bool" or not isinstance(value, bool))
        if not ok:
            kind += " or null" if "None" in names else ""
            raise ConfigError(f.name, f"must be {kind}, got {value!r}")


EXECUTION_FIELDS = ("data_dir", "download", "device", "fused", "compile")
"""RunConfig settings that choose where and how a run computes, not what it computes: not
part of a configuration's identity, so not logged as MLflow parameters."""


@dataclass(frozen=True)
class RunConfig:
    """One training configuration (trained once per seed).  See docs/contracts.md."""

    dataset: str = "digits"
    """Dataset name: digits, breast_cancer (embedded), mnist, fashion_mnist, cifar10, svhn."""
    data_dir: str | None = None
    """Folder holding the image datasets in torchvision's layout."""
    download: bool = False
    """Download missing image datasets through torchvision."""
    model: str = "mlp"
    """Backbone: mlp or convnet."""
    arch: str | None = None
    """Hidden widths (mlp, default 64-32) or conv channels (convnet, default 32-64-128-256),
    stored canonical "w1-w2-..."."""
    method: str = "smartmixed"
    """smartmixed, selective (phase 1 only), fixed:<act>, adact, gated, perlayer (one fixed
    activation per layer from ``layer_activations``, the per-layer search baseline), pau
    (Pade activation units) or swish_beta (Swish with a learnable beta), both per layer."""
    layer_activations: str | None = None
    """perlayer: the hidden layers' activations, "relu,elu,..." (one per layer, or one for
    all); a sweep searches each layer's choice."""
    pool: str | None = None
    """Activation pool: a pool name or a comma list (default: adact for adact, else paper)."""
    temperature: float = 0.3
    """Gumbel-Softmax temperature at the start of phase 1."""
    temperature_end: float | None = None
    """Temperature at the end of phase 1 (None: constant)."""
    temperature_schedule: str = "exponential"
    """How tau moves from start to end over phase 1: exponential or linear."""
    transition_epoch: int = 15
    """Phase-1 epochs for smartmixed; phase 2 runs the remaining epochs."""
    epochs: int = 40
    """Total epochs."""
    lr: float = 1e-3
    """Learning rate of the optimizer."""
    weight_decay: float = 0.0
    """Weight decay (L2 for adam, decoupled for adamw)."""
    optimizer: str = "adam"
    """adam or adamw (torch's fused implementation where the device has one)."""
    batch_size: int = 64
    """Training batch size."""
    grad_clip: float | None = None
    """Clip each seed's global gradient norm to this value (None: off)."""
    patience: int | None = None
    """Early-stopping patience in epochs (None: off); applies within each phase."""
    phase2_init: str = "transfer"
    """transfer (paper eq. 9) or reinit (what the public code did)."""
    gate: str = "layer"
    """Mixture gate: layer (per-layer weights; gated 'static'), neuron, or input."""
    gate_temperature: float = 1.0
    """Gated mixtures: softmax temperature T of the gates."""
    entropy_weight: float = 0.0
    """Gated mixtures: lambda; the loss gets -lambda * H(gates)."""
    restore: str = "val_loss"
    """Which weights a run reports (and patience watches): those of the epoch with the best
    val_loss, the best val_accuracy (first reached), or the last epoch's.  Per phase."""
    val_fraction: float = 0.1
    """Stratified fraction of the official train set held out for validation."""
    split_seed: int = 0
    """Seed of the train/validation split (the same for every training seed, unless
    split_per_seed)."""
    split_per_seed: bool = False
    """Draw seed s's train/validation split (and train_size subset) with split_seed + s, so
    seed variance includes data variance; the test set stays the same."""
    train_size: int | None = None
    """Train on a stratified subset of this many examples of the training split (drawn with
    split_seed, the same for every seed and method); validation and test stay whole.
    None: all of it."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    fused: bool = True
    """Use the fused selective layer (recompute in backward) where the pool allows it."""
    compile: str = "auto"
    """torch.compile of the training forward pass: on, off, or auto (on for CUDA, off on a
    CPU, where compiling takes minutes and a small trial seconds; docs/performance.md)."""

    def __post_init__(self) -> None:
        if isinstance(self.arch, int) and not isinstance(self.arch, bool):
            object.__setattr__(self, "arch", str(self.arch))  # YAML `arch: 64`: one layer
        _check_types(self, ("str", "bool"))
        if self.dataset not in DATASET_NAMES:
            raise choice_error("dataset", self.dataset, DATASET_NAMES)
        if self.model not in MODELS:
            raise choice_error("model", self.model, MODELS)
        if self.model == "convnet" and self.dataset in TABULAR_DATASETS:
            raise ConfigError("model", f"convnet needs an image dataset; {self.dataset} is tabular")
        if self.arch is None:
            object.__setattr__(
                self, "arch", DEFAULT_CONV_CHANNELS if self.model == "convnet" else "64-32"
            )
        object.__setattr__(self, "arch", canonical_arch(parse_arch(self.arch)))
        method = parse_method(self.method)
        if self.pool is None:
            object.__setattr__(self, "pool", "adact" if method.kind == "adact" else "paper")
        object.__setattr__(self, "method", str(method))
        if method.kind == "fixed" and len(method.activations) not in (1, self.depth):
            raise ConfigError(
                "method",
                f"fixed needs 1 or {self.depth} activations "
                f"(one per hidden layer), got {len(method.activations)}",
            )
        self._check_layer_activations(method.kind)
        pool = resolve_pool(self.pool)  # validates
        object.__setattr__(
            self, "pool", ",".join(pool) if "," in self.pool else self.pool.strip().lower()
        )
        _positive("epochs", self.epochs, integer=True, upper=100_000)
        _positive("batch_size", self.batch_size, integer=True, upper=10_000_000)
        _positive("lr", self.lr, upper=10.0)
        _positive("temperature", self.temperature, upper=1e6)
        if self.temperature_end is not None:
            _positive("temperature_end", self.temperature_end, upper=1e6)
        _positive("gate_temperature", self.gate_temperature, upper=1e6)
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip)
        if self.train_size is not None:
            _positive("train_size", self.train_size, integer=True, upper=1e9)
        if self.patience is not None:
            _positive("patience", self.patience, integer=True)
        if not (_number(self.weight_decay) and 0 <= self.weight_decay < 10):
            raise ConfigError("weight_decay", f"must be in [0, 10), got {self.weight_decay!r}")
        if not (
            _number(self.entropy_weight)
            and math.isfinite(self.entropy_weight)
            and abs(self.entropy_weight) <= 1e3
        ):
            raise ConfigError(
                "entropy_weight", f"must be a number in [-1000, 1000], got {self.entropy_weight!r}"
            )
        for name, value, allowed in (
            ("temperature_schedule", self.temperature_schedule, SCHEDULES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("phase2_init", self.phase2_init, PHASE2_INITS),
            ("gate", self.gate, GATES),
            ("compile", self.compile, COMPILE),
            ("restore", self.restore, RESTORES),
        ):
            if value not in allowed:
                raise choice_error(name, value, allowed)
        t = self.transition_epoch
        if method.kind == "smartmixed" and not (isinstance(t, int) and 1 <= t < self.epochs):
            raise ConfigError(
                "transition_epoch",
                f"must be an integer in [1, epochs-1] = "
                f"[1, {self.epochs - 1}], got {self.transition_epoch!r}",
            )
        if not (_number(self.val_fraction) and 0.0 < self.val_fraction < 1.0):  # NaN too
            raise ConfigError("val_fraction", f"must be in (0, 1), got {self.val_fraction!r}")
        if not (_number(self.split_seed, integer=True) and 0 <= self.split_seed <= 2**32 - 1):
            raise ConfigError("split_seed", f"must be an integer in [0, 2^32-1], got "
                              f"{self.split_seed!r}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N, got {dev!r}")
        _check_types(self)

    def _check_layer_activations(self, kind: str) -> None:
        text = self.layer_activations
        if kind != "perlayer":
            return
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("layer_activations", "perlayer needs one activation per hidden "
                              "layer (or one for all), e.g. relu,elu; allowed: "
                              + ", ".join(ACTIVATION_NAMES))
        names = [canonical(a, "layer_activations") for a in text.split(",")]
        if len(names) not in (1, self.depth):
            raise ConfigError("layer_activations", f"needs 1 or {self.depth} activations (one "
                              f"per hidden layer), got {len(names)}")
        object.__setattr__(self, "layer_activations", ",".join(names * (self.depth // len(names))))

    @property
    def layer_acts(self) -> tuple[str, ...]:
        """The activation of every hidden layer for ``fixed`` and ``perlayer`` (else ())."""
        method = self.parsed_method
        if method.kind == "perlayer":
            return tuple((self.layer_activations or "").split(","))
        if method.kind == "fixed":
            acts = method.activations
            return acts * self.depth if len(acts) == 1 else acts
        return ()

    @property
    def parsed_method(self) -> Method:
        return parse_method(self.method)

    @property
    def hidden(self) -> tuple[int, ...]:
        return parse_arch(self.arch)

    @property
    def depth(self) -> int:
        return len(self.hidden)

    @property
    def pool_names(self) -> tuple[str, ...]:
        return resolve_pool(self.pool or "paper")

    @property
    def phase1_epochs(self) -> int:
        """Epochs with a selective layer (0 for methods without phase 1)."""
        kind = self.parsed_method.kind
        return {"smartmixed": self.transition_epoch, "selective": self.epochs}.get(kind, 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a mapping, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(key, "unknown setting; allowed: " + ", ".join(sorted(known)))
        return cls(**values)


def field_docs(cls: type = RunConfig) -> dict[str, str]:
    """Each field's docstring (the string literal right under it in the class body), as one
    line: the help of the ``train`` flags."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    return {a.target.id: " ".join(b.value.value.split())
            for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
            and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
            and isinstance(b.value.value, str)}
