"""A sweep of many tiny trials, timed: what a trial slot costs besides training.

    python -m benchmarks.many_trials /tmp/many                 # 500 trials, 2 at a time
    python -m benchmarks.many_trials /tmp/many --trials 50     # a quick look

Each trial trains one seed of a 16-unit ReLU net on the embedded digits data for 2 epochs (a
random search over the learning rate), so nearly all of a trial slot is the sweep's own
bookkeeping: Ray scheduling the trial, the MLflow trial and seed runs, the reports.  The
sweep runs as ``smartmixed sweep run`` in a child process (local Ray, a fresh SQLite store in
the folder); the split comes from the runs' own times in MLflow:

- slot: (last trial end - first trial start) x concurrency / trials (Ray's start excluded);
- training: the seed runs' ``train_seconds``;
- seed run: a seed run's duration minus its training (opening, logging, artifacts);
- trial run: a trial run's duration minus its seed run's;
- outside the trial: the slot minus the trial run's duration (Ray, the searcher, the
  process).

A benchmark, not a test: figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml


def write_spec(folder: Path, trials: int, concurrent: int) -> Path:
    spec = {"name": "many", "experiment": "smartmixed-many", "seeds": [0],
            "fixed": {"dataset": "digits", "architecture": "16", "method": "fixed:relu",
                      "epochs": 2, "batch_size": 64, "device": "cpu"},
            "search": {"algorithm": "random", "num_samples": trials, "seed": 0,
                       "metric": "val_accuracy", "mode": "max",
                       "space": {"lr": {"loguniform": [1e-3, 1e-1]}}},
            "resources": {"cpu": 1}, "max_concurrent": concurrent}
    path = folder / "many.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(folder: Path, trials: int, concurrent: int) -> float:
    """Run the sweep; its wall time in seconds."""
    spec = write_spec(folder, trials, concurrent)
    t0 = time.monotonic()
    with (folder / "sweep.log").open("w") as log:
        subprocess.run([sys.executable, "-m", "smartmixed", "sweep", "run", str(spec),
                        "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}",
                        "--set", f"storage_path={folder / 'ray_results'}"],
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.monotonic() - t0


def split(folder: Path, concurrent: int) -> dict[str, float]:
    """Seconds per trial slot, by where they went (see the module docstring)."""
    from mlflow import MlflowClient

    from sweeps import schema

    c = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = c.get_experiment_by_name("smartmixed-many").experiment_id

    def runs(kind: str) -> list:
        out, token = [], None
        while True:
            page = c.search_runs([exp], f"tags.`{schema.TAG_KIND}` = '{kind}'",
                                 max_results=1000, page_token=token)
            out += [r for r in page if r.info.status == "FINISHED"]
            token = page.token
            if not token:
                return out

    trials, seeds = runs(schema.KIND_TRIAL), runs(schema.KIND_SEED)
    seconds = {r.data.tags[schema.TAG_TRIAL]: (r.info.end_time - r.info.start_time) / 1e3
               for r in seeds}
    train = np.array([r.data.metrics["train_seconds"] for r in seeds])
    seed_run = np.array(list(seconds.values())) - train
    trial_dur = np.array([(r.info.end_time - r.info.start_time) / 1e3 for r in trials])
    trial_run = trial_dur - np.array([seconds[r.data.tags[schema.TAG_TRIAL]] for r in trials])
    first = min(r.info.start_time for r in trials) / 1e3
    last = max(r.info.end_time for r in trials) / 1e3
    slot = (last - first) * concurrent / len(trials)
    return {"trials": len(trials), "slot": slot, "training": float(train.mean()),
            "seed run": float(seed_run.mean()), "trial run": float(trial_run.mean()),
            "outside the trial": slot - float(trial_dur.mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="emptied, then holds the store and Ray results")
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--concurrent", type=int, default=2)
    args = ap.parse_args(argv)
    shutil.rmtree(args.folder, ignore_errors=True)
    args.folder.mkdir(parents=True)
    wall = run(args.folder, args.trials, args.concurrent)
    parts = split(args.folder, args.concurrent)
    print(f"{parts.pop('trials')} trials finished, {args.concurrent} at a time, "
          f"{wall:.0f} s wall in all (Ray's start included)")
    slot = parts["slot"]
    for name, value in parts.items():
        share = "" if name == "slot" else f"  ({value / slot:.0%} of the slot)"
        print(f"  {name:<18} {value:6.3f} s per trial{share}")
    print(f"  overhead per slot  {slot - parts['training']:6.3f} s (goal: <= 0.1 s)")


if __name__ == "__main__":
    main()
