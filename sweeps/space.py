"""Search spaces: Optuna define-by-run (conditional parameters) and the grid factorial.

Conditional parameters (:data:`sweeps.spec.CONDITIONAL`, e.g. ``temperature`` and
``transition_epoch`` only for smartmixed) are sampled only when the trial's method uses them,
so Optuna never learns from a value that had no effect and the grid never repeats a
configuration that differs only in an unused parameter.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from typing import TYPE_CHECKING, Any

from smartmixed_core.errors import ConfigError
from sweeps.spec import LAYER_ACTIVATIONS, SweepSpec, applies

if TYPE_CHECKING:
    import optuna


def _order(spec: SweepSpec) -> list[str]:
    """Space keys with method (and dataset) first: the conditions are known before use;
    ``layer_activations`` last, once the architecture (its depth) is known."""
    keys = list(spec.search.space)
    return sorted(keys, key=lambda k: (k not in ("method", "dataset"), k == LAYER_ACTIVATIONS,
                                       keys.index(k)))


def _encode(value: Any) -> Any:
    """Optuna categorical choices must be None/bool/int/float/str: lists become JSON."""
    plain = value is None or isinstance(value, (bool, int, float, str))
    return value if plain else json.dumps(value)


class DefineByRun:
    """The Optuna define-by-run function of a spec's space (picklable: Ray checkpoints the
    searcher with it).  ``cell``: values of some space keys that are not sampled but returned
    as constants (one cell of ``search.per``); without it, returns no constants."""

    def __init__(self, spec: SweepSpec, cell: dict[str, Any] | None = None):
        self.spec = spec
        self.cell = dict(cell or {})

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        spec = self.spec
        method = str(self.cell.get("method", spec.base_method()))
        chosen: dict[str, Any] = dict(self.cell)
        for key in _order(spec):
            if key in self.cell or not applies(key, method):
                continue
            kind, vals = spec.search.space[key].kind, spec.search.space[key].values
            if key == LAYER_ACTIVATIONS:  # each hidden layer its own categorical parameter
                depth = spec.run_config({**chosen, key: str(vals[0])}).depth
                for i in range(1, depth + 1):
                    trial.suggest_categorical(f"{key}_{i}", [str(v) for v in vals])
                continue
            if kind == "choice":
                value = trial.suggest_categorical(key, [_encode(v) for v in vals])
            elif kind == "int":
                value = trial.suggest_int(key, vals[0], vals[1])
            else:
                value = trial.suggest_float(key, vals[0], vals[1], log=kind == "loguniform")
            chosen[key] = value
            if key == "method":
                method = str(value)
        return {k: _encode(v) for k, v in self.cell.items()} or None


def cell_label(cell: dict[str, Any]) -> str:
    """A cell as text, for study names and logs: ``method=smartmixed,architecture=64-32``."""
    return ",".join(f"{k}={v}" for k, v in cell.items())


def decode(params: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`_encode` for values that were JSON lists/dicts."""
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and v[:1] in "[{":
            with contextlib.suppress(ValueError):
                v = json.loads(v)
        out[k] = v
    return out


def grid(spec: SweepSpec) -> list[dict[str, Any]]:
    """The full factorial of the space's ``choice`` lists, without conditional duplicates."""
    keys = _order(spec)
    if LAYER_ACTIVATIONS in keys:
        raise ConfigError(f"search.space.{LAYER_ACTIVATIONS}", "the per-layer search samples "
                          "each layer's activation; use algorithm optuna or random")
    for key in keys:
        if spec.search.space[key].kind != "choice":
            raise ConfigError(f"search.space.{key}", "grid needs choice: [...] for every "
                              "parameter (use algorithm optuna or random for ranges)")
    base_method = spec.base_method()
    seen: set[str] = set()
    out = []
    for combo in itertools.product(*(spec.search.space[k].values for k in keys)):
        params = dict(zip(keys, combo))
        method = str(params.get("method", base_method))
        params = {k: v for k, v in params.items() if applies(k, method)}
        fingerprint = json.dumps(params, sort_keys=True, default=str)
        if fingerprint not in seen:
            seen.add(fingerprint)
            out.append(params)
    return out
