"""The sweep spec: a YAML file validated with pydantic into :class:`SweepSpec`.

Every error becomes one :class:`~smartmixed_core.errors.ConfigError` whose field is the dotted
path inside the YAML (``search.space.method.choice[1]``) and whose message says what is
allowed.  Names (datasets, methods, activations) are validated by the core registries through
:class:`~smartmixed_core.config.RunConfig`, never by lists written here.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from smartmixed_core.config import METHOD_KINDS, USED_BY, RunConfig
from smartmixed_core.data import DATASETS, DataError, check_data
from smartmixed_core.errors import ConfigError, choice_error
from sweeps import schema, store
from sweeps.redact import redact_uri

RUN_FIELDS = tuple(f.name for f in fields(RunConfig))
ALIASES = {"architecture": "arch"}
"""Spec key -> RunConfig field."""
ARCH_KEYS = ("depth", "width")
"""Space-only keys that build ``arch`` as a funnel: width, width/2, ... (depth layers)."""
TRANSITION_FRACTION = "transition_fraction"
"""Space-only key: the transition epoch as a fraction of ``epochs`` (rounded, kept in
[1, epochs - 1]), so a range still fits when ``fixed.epochs`` is overridden."""
LAYER_ACTIVATIONS = "layer_activations"
"""Space key of the per-layer search (method perlayer): its ``choice`` list is each hidden
layer's own categorical parameter, ``layer_activations_1`` ... ``layer_activations_DEPTH``."""
SPACE_KEYS = (*RUN_FIELDS, *ALIASES, *ARCH_KEYS, TRANSITION_FRACTION)

CONDITIONAL: dict[str, tuple[str, ...]] = {**USED_BY, TRANSITION_FRACTION: ("smartmixed",)}
"""Parameters that only matter for some method kinds (define-by-run samples them only then)."""
assert all(k in METHOD_KINDS for kinds in CONDITIONAL.values() for k in kinds)


def applies(key: str, method: str) -> bool:
    """Whether the space key ``key`` matters for ``method`` (see :data:`CONDITIONAL`)."""
    kinds = CONDITIONAL.get(ALIASES.get(key, key))
    return kinds is None or method.split(":")[0].strip().lower() in kinds

METRICS = ("val_accuracy", "val_loss")
"""Seed-mean metrics a sweep may optimise: validation only, never the test set."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_SEED = 2**31
"""Seeds are integers in [0, 2^31] (as for ``smartmixed train --seeds``)."""
MAX_DEPTH, MAX_WIDTH = 100, 1_000_000
"""Bounds of the ``depth`` / ``width`` space keys (widths as for ``--arch``)."""
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
"""MLflow 3 tracking stores (a database scheme may name a driver: ``postgresql+psycopg2``)."""


def check_tracking_uri(v: str) -> str:
    """``v`` if MLflow 3 can track to it from every trial worker, else ValueError saying why."""
    scheme, sep, rest = v.partition("://")
    if v.startswith("file:") or not sep:
        raise ValueError(f"{redact_uri(v)!r} is a folder store, which MLflow 3 refuses; use "
                         "sqlite:///PATH/mlflow.db or http(s)://HOST:PORT")
    if scheme.lower().split("+")[0] not in TRACKING_SCHEMES or not rest:
        raise ValueError(f"unsupported tracking URI {redact_uri(v)!r}; allowed: "
                         "sqlite:///PATH, http(s)://HOST:PORT, or a database URI ("
                         + ", ".join(TRACKING_SCHEMES[3:6]) + ")")
    if scheme.lower() == "sqlite" and not v.startswith("sqlite:///"):
        raise ValueError(f"{v!r}: a SQLite store is sqlite:///PATH (three slashes)")
    if scheme.lower() == "sqlite" and store.sqlite_path(v) is None:
        raise ValueError(f"{v!r}: the trial workers need a SQLite file they can share; "
                         "use sqlite:///PATH/mlflow.db")
    if scheme.lower() in ("http", "https"):
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018  (raises ValueError on a bad port)
        except ValueError as exc:
            raise ValueError(f"malformed URI {redact_uri(v)!r} ({exc})") from None
        if not parts.hostname:
            raise ValueError(f"{redact_uri(v)!r} names no host; use http(s)://HOST:PORT")
    return v


def _numeric(annotation: Any) -> bool:
    """Whether a field's type is a number (or a list/tuple/optional of numbers), not a bool."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in get_args(annotation) if a is not type(None))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1; YAML makes `yes`/`on` booleans, so a typo would pass.
        items = v if isinstance(v, (list, tuple)) else [v]
        if any(isinstance(x, bool) for x in items) and info.field_name and _numeric(
                cls.model_fields[info.field_name].annotation):
            raise ValueError(f"needs numbers, got {v!r} (true/false are not numbers)")
        return v


_KINDS = {"choice": "choice", "uniform": "uniform", "loguniform": "loguniform", "int": "integer"}
"""YAML key -> attribute."""


class Distribution(_Strict):
    """One search dimension: exactly one of the keys."""

    choice: Optional[list[Any]] = Field(None, min_length=1)
    uniform: Optional[tuple[float, float]] = None
    loguniform: Optional[tuple[float, float]] = None
    integer: Optional[tuple[int, int]] = Field(None, alias="int")

    @model_validator(mode="after")
    def _one(self) -> Distribution:
        if sum(getattr(self, attr) is not None for attr in _KINDS.values()) != 1:
            raise ValueError("give exactly one of choice: [...], uniform: [lo, hi], "
                             "loguniform: [lo, hi], int: [lo, hi]")
        if self.kind != "choice":
            lo, hi = self.values
            if not lo < hi:
                raise ValueError(f"{self.kind} needs lo < hi, got [{lo}, {hi}]")
            if self.kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform needs lo > 0, got {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, _KINDS[k]) is not None)

    @property
    def values(self) -> list[Any]:
        """Values to validate: every choice, or both ends of a range."""
        return list(getattr(self, _KINDS[self.kind]))


class Search(_Strict):
    algorithm: Literal["optuna", "grid", "random"] = "optuna"
    """optuna (TPE, define-by-run), random (Optuna's RandomSampler) or grid (full factorial)."""
    num_samples: int = Field(8, ge=1, le=100_000)
    """Trials for optuna/random; ignored by grid."""
    metric: Literal[METRICS] = "val_accuracy"  # type: ignore[valid-type]
    mode: Literal["max", "min"] = "max"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Sampler seed."""
    space: dict[str, Distribution] = Field(default_factory=dict)
    per: list[str] = Field(default_factory=list, max_length=8)
    """Space keys (``choice`` lists) whose every combination, a *cell*, gets a search of its
    own with ``num_samples`` trials and the same sampler settings: equal tuning budgets by
    construction (e.g. ``[method]``; ``[method, architecture]`` per block)."""

    @model_validator(mode="after")
    def _per(self) -> Search:
        for key in self.per:
            dist = self.space.get(key)
            if dist is None or dist.kind != "choice":
                raise ValueError(f"per: {key!r} must be a choice parameter of search.space")
            if key == LAYER_ACTIVATIONS:
                raise ValueError(f"per: {key!r} is searched layer by layer; it cannot name "
                                 "cells")
            if key in CONDITIONAL and "method" not in self.per:
                raise ValueError(f"per: {key!r} applies to some methods only; it needs method "
                                 "in per too (methods that do not use it get one cell)")
        if len(set(self.per)) != len(self.per):
            raise ValueError(f"per: repeated keys in {self.per}")
        if self.per and self.algorithm == "grid":
            raise ValueError("per: grid already runs every combination; use optuna or random")
        return self

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of the ``per`` keys' choices ([{}] without ``per``)."""
        values = [self.space[k].values for k in self.per]
        out: list[dict[str, Any]] = []
        for combo in itertools.product(*values):
            cell = {k: v for k, v in zip(self.per, combo)
                    if applies(k, str(dict(zip(self.per, combo)).get("method", "")))}
            if cell not in out:  # a method without the conditional key: one cell
                out.append(cell)
        return out

    @field_validator("space")
    @classmethod
    def _keys(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        for key in space:
            if key not in SPACE_KEYS:
                raise ValueError(f"unknown parameter {key!r}; allowed: {', '.join(SPACE_KEYS)}")
        if ("depth" in space) != ("width" in space):
            raise ValueError("depth and width go together (they build the architecture)")
        if "depth" in space and ({"arch", "architecture"} & set(space)):
            raise ValueError("give either architecture or depth+width, not both")
        dist = space.get(LAYER_ACTIVATIONS)
        if dist is not None and dist.kind != "choice":
            raise ValueError(f"{LAYER_ACTIVATIONS} needs choice: [activations...] (each hidden "
                             "layer picks one)")
        if {TRANSITION_FRACTION, "transition_epoch"} <= set(space):
            raise ValueError("give either transition_epoch or transition_fraction, not both")
        return space


class Asha(_Strict):
    grace_period: int = Field(5, ge=1, le=100_000)
    reduction_factor: float = Field(3.0, gt=1, le=100)


class Scheduler(_Strict):
    asha: Optional[Asha] = None


class Resources(_Strict):
    """Per trial; checked against the machine (or the cluster with --address) at launch."""

    cpu: float = Field(1.0, gt=0, le=1024)
    gpu: float = Field(0.0, ge=0, le=64)


class SweepSpec(_Strict):
    """A validated sweep; see docs/sweeps.md for every field."""

    name: str
    experiment: str = Field("smartmixed", min_length=1, max_length=250)
    tracking_uri: Annotated[str, AfterValidator(check_tracking_uri)] = schema.DEFAULT_TRACKING_URI
    storage_path: str = Field("./ray_results", min_length=1)
    dataset: str = "digits"
    model: str = "mlp"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict)
    search: Search = Field(default_factory=Search)
    scheduler: Optional[Scheduler] = None
    resources: Resources = Field(default_factory=Resources)
    max_concurrent: Optional[int] = Field(None, ge=1, le=100_000)
    """Trials at once (default: as many as the cluster's resources allow)."""
    max_failures: int = Field(2, ge=0, le=1000)
    """Retries of a crashed trial (finished seeds are not retrained)."""
    batch_seeds: Literal["auto", "off"] = "auto"
    """Kept so that older specs validate; it has no effect: a trial always trains its seeds
    together, as one model with a seeds dimension (the numbers equal one seed at a time)."""

    @field_validator("batch_seeds", mode="before")
    @classmethod
    def _off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("1 to 100 characters: letters, digits, '.', '_' or '-', starting "
                             "with a letter or digit (it names folders and runs)")
        return v

    @field_validator("storage_path")
    @classmethod
    def _storage_path(cls, v: str) -> str:
        if "://" in v:
            raise ValueError(f"{v!r} is a URI; use a folder every node can read and write (a "
                             "shared file system): the Optuna journal and sweep state need one")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v not in DATASETS:
            raise choice_error("dataset", v, DATASETS)
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(not 0 <= s <= MAX_SEED for s in v):
            raise ValueError(f"need distinct integers in [0, 2^31], got {v}")
        return v

    # -- configurations ------------------------------------------------------------------
    def base(self) -> dict[str, Any]:
        """RunConfig values shared by every trial (top-level dataset/model, then ``fixed``)."""
        return {"dataset": self.dataset, "model": self.model,
                **{ALIASES.get(k, k): v for k, v in self.fixed.items()}}

    def run_config(self, params: dict[str, Any]) -> RunConfig:
        """The RunConfig of one trial from its sampled ``params`` (space keys)."""
        values = self.base()
        params = dict(params)
        if "depth" in params:
            depth, width = int(params.pop("depth")), int(params.pop("width"))
            params["arch"] = "-".join(str(max(width >> i, 4)) for i in range(depth))
        layers = sorted((int(k.rsplit("_", 1)[1]), params.pop(k)) for k in list(params)
                        if re.fullmatch(LAYER_ACTIVATIONS + r"_\d+", k))
        if layers:
            params[LAYER_ACTIVATIONS] = ",".join(str(v) for _, v in layers)
        fraction = params.pop(TRANSITION_FRACTION, None)
        for key, value in params.items():
            if value is not None:
                values[ALIASES.get(key, key)] = value
        if fraction is not None:
            epochs = values.get("epochs", RunConfig.epochs)
            if isinstance(epochs, int) and epochs >= 2:  # else RunConfig names the problem
                values["transition_epoch"] = min(max(round(fraction * epochs), 1), epochs - 1)
        return RunConfig.from_dict(values)

    def base_method(self) -> str:
        """The method of a trial whose space has none: ``fixed.method`` or the default."""
        return str(self.base().get("method", RunConfig.method))

def absolute_data_dir(spec: SweepSpec) -> SweepSpec:
    """``spec`` with a relative ``fixed.data_dir`` made absolute against the current folder:
    Ray runs every trial in a folder of its own, where a relative path means nothing."""
    data_dir = spec.fixed.get("data_dir")
    if not isinstance(data_dir, str) or not data_dir or Path(data_dir).expanduser().is_absolute():
        return spec
    absolute = str(Path(data_dir).expanduser().absolute())
    return spec.model_copy(update={"fixed": {**spec.fixed, "data_dir": absolute}})


def check_datasets(spec: SweepSpec) -> None:
    """Every dataset the sweep's trials read is there (folder and files), or will be
    downloaded into a folder that can be created: checked on the driver before anything
    starts, so a missing folder is one error line, not every trial crashing."""
    base = spec.base()
    names = {base["dataset"]}
    if "dataset" in spec.search.space:
        names |= set(spec.search.space["dataset"].values)
    for name in sorted(names):
        try:
            check_data(name, base.get("data_dir"), bool(base.get("download", False)))
        except DataError as exc:
            hint = exc.message.replace("pass --download", "set fixed.download: true")
            raise ConfigError(f"fixed.{exc.field}",
                              hint.replace("pass --data-dir", "set fixed.data_dir")) from None


def spec_doc(spec: SweepSpec) -> dict[str, Any]:
    """The spec as a plain document that :func:`parse_spec` reads back unchanged."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)
