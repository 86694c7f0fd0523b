"""A hand-built MLflow store whose every analysis number is computed by hand in the tests.

Sweep ``s1`` of experiment ``exp`` (test accuracy per seed):

    architecture  method       seed 0  seed 1  seed 2   mean
    64-32         smartmixed   0.90    0.92    0.94     0.92    + a FAILED and an older FINISHED
    64-32         fixed:relu   0.91    0.91    0.91     0.91      duplicate of seed 0
    64-32         fixed:elu    0.90    0.92    -        0.91    (seed 2 missing: tie with relu)
    128-64        smartmixed   0.95    0.96    0.94     0.95
    128-64        fixed:relu   0.93    0.92    0.94     0.93
    128-64        fixed:elu    0.935   0.935   0.935    0.935
    32            smartmixed   0.80    0.84    0.82     0.82
    32            fixed:relu   0.85    0.85    0.85     0.85    (fixed:elu absent: one RUNNING run)

Sweep ``s2``: one fixed:tanh run on 64-32 (0.99).  A trial run carries metrics that must be
ignored.  Selection metrics on smartmixed 64-32 (pool relu, elu, selu) and 128-64 seed 0.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeps import schema

EXP = "exp"
ACC = {
    ("64-32", "smartmixed"): {0: 0.90, 1: 0.92, 2: 0.94},
    ("64-32", "fixed:relu"): {0: 0.91, 1: 0.91, 2: 0.91},
    ("64-32", "fixed:elu"): {0: 0.90, 1: 0.92},
    ("128-64", "smartmixed"): {0: 0.95, 1: 0.96, 2: 0.94},
    ("128-64", "fixed:relu"): {0: 0.93, 1: 0.92, 2: 0.94},
    ("128-64", "fixed:elu"): {0: 0.935, 1: 0.935, 2: 0.935},
    ("32", "smartmixed"): {0: 0.80, 1: 0.84, 2: 0.82},
    ("32", "fixed:relu"): {0: 0.85, 1: 0.85, 2: 0.85},
}
POOL = ("relu", "elu", "selu")
# (architecture, seed) -> per layer fractions in POOL order
SELECTION = {
    ("64-32", 0): [(0.5, 0.25, 0.25), (0.25, 0.25, 0.5)],
    ("64-32", 1): [(0.5, 0.5, 0.0), (0.25, 0.25, 0.5)],
    ("64-32", 2): [(0.75, 0.25, 0.0), (0.0, 0.5, 0.5)],
    ("128-64", 0): [(1.0, 0.0, 0.0), (0.5, 0.0, 0.5)],
}
# switched/layer_<l> per seed of smartmixed 64-32, epochs 0..2
SWITCHED = {0: ([0.6, 0.3, 0.0], [0.2, 0.0, 0.0]), 1: ([0.4, 0.1, 0.0], [0.2, 0.0, 0.0]),
            2: ([0.5, 0.2, 0.0], [0.2, 0.0, 0.0])}
WEIGHT_INDEX = {"relu": 1, "elu": 2, "selu": 3}  # W[t, s] = 10 * idx(src) + idx(tgt)


def weight_value(src: str, tgt: str) -> float:
    return 10.0 * WEIGHT_INDEX[src] + WEIGHT_INDEX[tgt]


def choices_for(arch: str, seed: int) -> dict[str, list[str]]:
    """Unit choices matching SELECTION, interleaved so that a wrong index shows."""
    widths = [int(w) for w in arch.split("-")]
    out = {}
    for layer, (w, fracs) in enumerate(zip(widths, SELECTION[(arch, seed)], strict=True), 1):
        names = list(itertools.chain.from_iterable(
            [a] * round(f * w) for a, f in zip(POOL, fracs, strict=True)))
        rng = np.random.default_rng(layer + 10 * seed)
        out[f"layer_{layer}"] = [names[i] for i in rng.permutation(len(names))]
    return out


def write_checkpoint(path: Path, arch: str, seed: int) -> None:
    choices = choices_for(arch, seed)
    src, tgt = choices["layer_1"], choices["layer_2"]
    w = torch.tensor([[weight_value(s, t) for s in src] for t in tgt])
    state = {"linears.0.weight": torch.zeros(len(src), 4), "linears.1.weight": w,
             "head.weight": torch.zeros(3, len(tgt))}
    torch.save({"config": {}, "seed": seed, "slots": [], "choices": choices,
                "state_dict": state}, path)


class Store:
    """Writes runs with explicit statuses and end times."""

    def __init__(self, root: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.root = root
        self.client = MlflowClient(tracking_uri=self.uri)
        self.exp_id = self.client.create_experiment(
            EXP, artifact_location=(root / "artifacts").as_uri())
        self.clock = 1_000_000

    def run(self, kind: str, sweep: str, *, parent: str | None = None, params=None,
            metrics=None, tags=None, status: str | None = "FINISHED", end: int | None = None):
        from mlflow.entities import Metric, Param

        self.clock += 1000
        all_tags = {schema.TAG_KIND: kind, schema.TAG_SWEEP: sweep, **(tags or {})}
        if parent:
            all_tags[schema.TAG_PARENT] = parent
        run = self.client.create_run(self.exp_id, start_time=self.clock, tags=all_tags)
        rid = run.info.run_id
        self.client.log_batch(
            rid, metrics=[Metric(k, v, self.clock, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()])
        if status:
            self.client.set_terminated(rid, status, end_time=end or self.clock + 500)
        return rid


def seed_metrics(acc: float, seed: int) -> dict[str, float]:
    return {"test_accuracy": acc, "val_accuracy": acc - 0.01, "test_f1_macro": acc - 0.02,
            "train_seconds": 1.0 + seed, "n_params": 1000.0}


def build_store(root: Path) -> Store:
    st = Store(root)
    s1 = st.run(schema.KIND_SWEEP, "s1", params={"name": "s1"})
    for (arch, method), by_seed in ACC.items():
        params = {"dataset": "digits", "model": "mlp", "architecture": arch, "method": method,
                  "pool": ",".join(POOL), "epochs": 2, "lr": 0.001, "batch_size": 64}
        if method == "smartmixed":
            params["temperature"] = 0.3
        trial = f"{arch}-{method}"
        tid = st.run(schema.KIND_TRIAL, "s1", parent=s1, params=params,
                     metrics={"test_accuracy": 0.99}, tags={schema.TAG_TRIAL: trial})
        for seed, acc in by_seed.items():
            tags = {schema.TAG_TRIAL: trial, schema.TAG_SEED: str(seed)}
            metrics = seed_metrics(acc, seed)
            if method == "smartmixed" and (arch, seed) in SELECTION:
                for layer, fracs in enumerate(SELECTION[(arch, seed)], 1):
                    metrics.update({schema.selection_metric(layer, a): f
                                    for a, f in zip(POOL, fracs, strict=True)})
            if (arch, method, seed) == ("64-32", "smartmixed", 0):
                # an older FINISHED duplicate (kept out by the newest-wins rule)
                st.run(schema.KIND_SEED, "s1", parent=tid, params=params, tags=tags,
                       metrics={**metrics, "test_accuracy": 0.50,
                                schema.selection_metric(1, "relu"): 1.0}, end=1)
            rid = st.run(schema.KIND_SEED, "s1", parent=tid, params=params, tags=tags,
                         metrics=metrics)
            if (arch, method, seed) == ("64-32", "smartmixed", 0):
                # a FAILED retry that ended last: ignored because it is not FINISHED
                st.run(schema.KIND_SEED, "s1", parent=tid, params=params, tags=tags,
                       metrics={"test_accuracy": 0.10}, status="FAILED", end=10**12)
            if arch == "64-32" and method == "smartmixed":
                for layer, values in enumerate(SWITCHED[seed], 1):
                    for epoch, v in enumerate(values):
                        st.client.log_metric(rid, schema.SWITCH_METRIC.format(layer=layer), v,
                                             step=epoch)
                if seed in (0, 1):
                    path = root / schema.ARTIFACT_CHECKPOINT
                    write_checkpoint(path, arch, seed)
                    st.client.log_artifact(rid, str(path))
    # fixed:elu on 32 only as a RUNNING run: still absent from the analysis
    st.run(schema.KIND_SEED, "s1", params={"dataset": "digits", "model": "mlp",
                                           "architecture": "32", "method": "fixed:elu"},
           tags={schema.TAG_TRIAL: "32-elu", schema.TAG_SEED: "0"},
           metrics=seed_metrics(0.99, 0), status=None)
    s2 = st.run(schema.KIND_SWEEP, "s2")
    st.run(schema.KIND_SEED, "s2", parent=s2,
           params={"dataset": "digits", "model": "mlp", "architecture": "64-32",
                   "method": "fixed:tanh", "pool": ",".join(POOL), "epochs": 2, "lr": 0.001,
                   "batch_size": 64},
           tags={schema.TAG_TRIAL: "t", schema.TAG_SEED: "0"}, metrics=seed_metrics(0.99, 0))
    st.sweep_run_ids = {"s1": s1, "s2": s2}
    return st


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Store:
    """The shared store (read-only for the tests that use it)."""
    return build_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="session")
def runs(store):
    from analysis import load_runs

    return load_runs(EXP, sweep="s1", tracking_uri=store.uri)


@pytest.fixture(scope="session")
def cli_report(tmp_path_factory):
    """``smartmixed analyze`` run once on a fresh store: (store, out dir, rc, stdout)."""
    import contextlib
    import io

    from smartmixed.cli import main

    st = build_store(tmp_path_factory.mktemp("cli-store"))
    out = tmp_path_factory.mktemp("report") / "r"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["analyze", "--experiment", EXP, "--sweep", "s1", "--tracking-uri", st.uri,
                   "--out", str(out)])
    return st, out, rc, buf.getvalue()
