"""``smartmixed analyze`` at the paper preset's scale: a synthetic store, timed end to end.

    python -m benchmarks.analysis_scale fill /tmp/scale/mlflow.db        # ~10,080 seed runs
    python -m benchmarks.analysis_scale time /tmp/scale/mlflow.db /tmp/scale/report
    python -m benchmarks.analysis_scale fill /tmp/s.db --configs 2 --seeds 2   # small
    python -m benchmarks.analysis_scale search /tmp/scale/mlflow.db   # the seed runs alone

The store has the shape of the paper preset swept over 16 configurations: 7 methods
(smartmixed and the 6 fixed activations of the paper pool) x the 18 paper architectures x 16
configurations (4 learning rates x 4 batch sizes) x 5 seeds, written with MLflow's batch API
(``log_batch``): a sweep run, one trial run per configuration (``val_loss_mean``), and seed runs
with the final metrics, and for smartmixed the final ``selection/layer_<l>/<act>`` fractions
and the phase-1 ``switched/layer_<l>`` histories (one value per epoch of phase 1).  ``time``
runs ``smartmixed analyze`` in a child process and reports wall time and peak memory
(``ru_maxrss`` of the child).  A benchmark, not a test: figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from smartmixed_core.names import PAPER_ARCHITECTURES, POOLS
from sweeps import schema

EXPERIMENT, SWEEP = "smartmixed-scale", "scale"
POOL = tuple(POOLS["paper"])
METHODS = ("smartmixed", *(f"fixed:{a}" for a in POOL))
LRS = ("0.0001", "0.0003", "0.001", "0.003")
BATCHES = ("32", "64", "128", "256")
PHASE1_EPOCHS = 50  # the paper preset's transition epoch
N_VAL = 6000


def _widths() -> list[tuple[int, ...]]:
    return list(PAPER_ARCHITECTURES.values())


def _params(arch: str, method: str, lr: str, batch: str) -> dict[str, str]:
    p = {"dataset": "mnist", "model": "mlp", "architecture": arch, "method": method,
         "pool": "paper", "epochs": "400", "lr": lr, "batch_size": batch,
         "weight_decay": "0.0", "optimizer": "adam", "grad_clip": "1.0", "patience": "None",
         "split_seed": "0"}
    if method == "smartmixed":
        p.update(temperature="0.3", temperature_end="None", temperature_schedule="constant",
                 transition_epoch="50", phase2_init="transfer")
    return p


def _seed_metrics(rng, widths, method: str, step: int, now: int):
    from mlflow.entities import Metric

    acc = float(np.round(rng.uniform(0.95, 0.99) * N_VAL) / N_VAL)
    values = {"test_accuracy": acc, "val_accuracy": float(np.round(acc * N_VAL) / N_VAL),
              "test_f1_macro": acc - 0.001, "test_roc_auc": 0.999,
              "train_seconds": float(rng.uniform(100, 900)), "n_params": float(sum(widths))}
    if method == "smartmixed":
        values.update(phase1_test_accuracy=acc - 0.01, phase1_val_accuracy=acc - 0.01,
                      phase2_start_test_accuracy=acc - 0.005)
    out = [Metric(k, v, now, step) for k, v in values.items()]
    if method != "smartmixed":
        return out
    for layer in range(1, len(widths) + 1):
        share = rng.dirichlet(np.ones(len(POOL)))
        out += [Metric(schema.selection_metric(layer, a), float(s), now, step)
                for a, s in zip(POOL, share, strict=True)]
        decay = rng.uniform(0.05, 0.2)
        out += [Metric(schema.SWITCH_METRIC.format(layer=layer),
                       float(0.5 * np.exp(-decay * e)), now + e, e)
                for e in range(PHASE1_EPOCHS)]
    return out


def fill(db: Path, *, configs: int = 16, seeds: int = 5, archs: int = 18) -> int:
    """Write the synthetic store at ``db`` (SQLite); returns the number of seed runs."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment(EXPERIMENT)
    tag = {schema.TAG_SWEEP: SWEEP}
    sweep = client.create_run(exp, run_name=SWEEP, tags={**tag, schema.TAG_KIND: "sweep"})
    rng = np.random.default_rng(0)
    now, n = int(time.time() * 1000), 0
    grid = list(itertools.product(LRS, BATCHES))[:configs]
    for widths in _widths()[:archs]:
        arch = "-".join(map(str, widths))
        for method, (lr, batch) in itertools.product(METHODS, grid):
            params = _params(arch, method, lr, batch)
            trial_id = f"t{n:06d}"
            ttags = {**tag, schema.TAG_KIND: "trial", schema.TAG_TRIAL: trial_id,
                     schema.TAG_PARENT: sweep.info.run_id}
            trial = client.create_run(exp, run_name=trial_id, tags=ttags)
            client.log_batch(trial.info.run_id,
                             metrics=[Metric("val_loss_mean", float(rng.uniform(0.05, 0.2)),
                                             now, 0)],
                             params=[Param(k, v) for k, v in params.items()])
            client.set_terminated(trial.info.run_id)
            for seed in range(seeds):
                stags = {**tag, schema.TAG_KIND: "seed", schema.TAG_TRIAL: trial_id,
                         schema.TAG_SEED: str(seed), schema.TAG_PARENT: trial.info.run_id}
                run = client.create_run(exp, run_name=f"seed {seed}", tags=stags)
                metrics = _seed_metrics(rng, widths, method, 400, now)
                for i in range(0, len(metrics), 1000):  # log_batch takes <= 1000 metrics
                    client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000],
                                     params=[Param(k, v) for k, v in params.items()] if i == 0
                                     else [])
                client.set_terminated(run.info.run_id)
                n += 1
    client.set_terminated(sweep.info.run_id)
    return n


def time_analyze(db: Path, out: Path, extra: list[str]) -> dict:
    """Run ``smartmixed analyze`` on the store in a child process: wall s, CPU s, peak MB."""
    cmd = [sys.executable, "-m", "smartmixed.cli", "analyze", "--experiment", EXPERIMENT,
           "--sweep", SWEEP, "--tracking-uri", f"sqlite:///{db}", "--out", str(out),
           "--no-log", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
              "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
              "peak_mb": round(usage.ru_maxrss / 1024)}
    if proc.returncode:
        result["stderr"] = proc.stderr[-2000:]
    return result


def time_search(db: Path) -> dict:
    """Read the seed runs once the way ``load_runs`` does (``mlflow.search_runs``), in this
    process (run it in a fresh one: peak memory is the process's)."""
    from mlflow.tracking import MlflowClient

    from analysis.load import _search

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    where = f"tags.`{schema.TAG_KIND}` = 'seed' AND tags.`{schema.TAG_SWEEP}` = '{SWEEP}'"
    start = time.perf_counter()
    n = len(_search(client, exp, where))
    return {"runs": n, "wall_s": round(time.perf_counter() - start, 1),
            "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fill", help="write the synthetic store")
    f.add_argument("db", type=Path)
    f.add_argument("--configs", type=int, default=16)
    f.add_argument("--seeds", type=int, default=5)
    f.add_argument("--archs", type=int, default=18)
    t = sub.add_parser("time", help="time smartmixed analyze on it")
    t.add_argument("db", type=Path)
    t.add_argument("out", type=Path)
    t.add_argument("extra", nargs="*", help="more analyze flags (e.g. --no-weights)")
    r = sub.add_parser("search", help="time reading the seed runs back")
    r.add_argument("db", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "search":
        print(json.dumps(time_search(args.db)))
        return
    if args.cmd == "fill":
        if args.db.exists():
            ap.error(f"{args.db} exists")
        start = time.perf_counter()
        n = fill(args.db, configs=args.configs, seeds=args.seeds, archs=args.archs)
        print(json.dumps({"seed_runs": n, "fill_s": round(time.perf_counter() - start, 1)}))
    else:
        print(json.dumps(time_analyze(args.db, args.out, args.extra), indent=1))


if __name__ == "__main__":
    main()
