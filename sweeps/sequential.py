"""The baseline for the sweep's wall time: the same trials, one after another, without Ray.

Reads a finished sweep's trial configurations back from MLflow and trains every
(configuration, seed) in this process with the core alone (no Ray, no MLflow logging):

    python -m sweeps.sequential ./ray_results/quick-digits
"""

from __future__ import annotations

import sys
import time
from typing import Any

import yaml

from sweeps import schema, tracking
from sweeps.launch import load_state, locate


def trial_params(name_or_path: str) -> tuple[Any, list[dict[str, Any]]]:
    """The spec and the sampled params of every trial of a sweep (from MLflow)."""
    spec, ctx = load_state(locate(name_or_path))
    c = tracking.client(ctx.tracking_uri)
    runs = tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, spec.name)
    params = [{k[len(schema.SAMPLED_PREFIX):]: yaml.safe_load(v)
               for k, v in r.data.params.items() if k.startswith(schema.SAMPLED_PREFIX)}
              for r in runs]
    return spec, params


def run_sequential(spec: Any, params: list[dict[str, Any]]) -> float:
    """Train every trial x seed in turn; returns the wall time in seconds."""
    from smartmixed_core.runner import load_data, train_seed

    t0 = time.perf_counter()
    for p in params:
        cfg = spec.run_config(p)
        data = load_data(cfg)
        for seed in spec.seeds:
            train_seed(cfg, seed, data)
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    spec, params = trial_params(argv[0])
    seconds = run_sequential(spec, params)
    print(f"{len(params)} trials x {len(spec.seeds)} seeds sequentially: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
