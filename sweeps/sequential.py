"""The baseline for the sweep's wall time: the same trials, one after another, without Ray.

Reads a finished sweep's trial configurations back from MLflow and trains every
(configuration, seed) in this process with the core alone (no Ray, no MLflow logging), twice:
each trial's seeds the way the sweep trains them (together, one model with a seeds
dimension), then one seed at a time (the reference code's way):

    python -m sweeps.sequential ./ray_results/quick-digits [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import yaml

from sweeps import schema, store, tracking
from sweeps.saved import load_state, locate


def trial_params(name_or_path: str) -> tuple[Any, list[dict[str, Any]]]:
    """The spec and the sampled params of every trial of a sweep (from MLflow)."""
    spec, ctx = load_state(locate(name_or_path))
    c = store.client(ctx.tracking_uri)
    runs = tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, spec.name)
    params = [{k[len(schema.SAMPLED_PREFIX):]: yaml.safe_load(v)
               for k, v in r.data.params.items() if k.startswith(schema.SAMPLED_PREFIX)}
              for r in runs]
    return spec, params


def run_sequential(spec: Any, params: list[dict[str, Any]], batched: bool = True) -> float:
    """Train every trial in turn, its seeds together as the sweep's trial does (``batched``)
    or one at a time; returns the wall time in seconds."""
    from smartmixed_core.runner import load_data, train_seeds

    t0 = time.perf_counter()
    for p in params:
        cfg = spec.run_config(p)
        train_seeds(cfg, spec.seeds, data=load_data(cfg, spec.seeds), batched=batched)
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps.sequential", description=__doc__)
    parser.add_argument("sweep", help="the sweep's folder (<storage_path>/<name>) or name")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    spec, params = trial_params(args.sweep)
    n = f"{len(params)} trials x {len(spec.seeds)} seeds"
    print(f"{n}, as the sweep trains them: {run_sequential(spec, params, True):.1f} s")
    print(f"{n}, one seed at a time: {run_sequential(spec, params, False):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
