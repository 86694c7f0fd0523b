"""The malformed inputs of test_bad_input.py: one case per class of bad input (spec fields,
flags, files, output locations, stores, servers, addresses, environment), each an argv
builder and the field its error line must name first."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.sweeps.sweep_helpers import SMOKE, write_spec

FIXED = SMOKE["fixed"]
SEARCH = SMOKE["search"]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def spec(tmp: Path, **changes: Any) -> str:
    return str(write_spec(tmp, **changes))


def raw(tmp: Path, text: str | bytes, name: str = "bad.yaml") -> str:
    path = tmp / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return str(path)


def without(tmp: Path, key: str) -> str:
    path = write_spec(tmp)
    doc = yaml.safe_load(path.read_text())
    del doc[key]
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def existing_sweep(tmp: Path) -> Path:
    """A sweep as `sweep run` leaves it (MLflow sweep run + its folder), its store closed as a
    sweep leaves it when it ends (no write-ahead log)."""
    from sweeps import store
    from sweeps.launch import prepare
    from sweeps.specfile import load_spec

    _, path, ctx = prepare(load_spec(write_spec(tmp)))
    store.fold_wal(ctx.tracking_uri)
    return path


def a_file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("not a folder")
    return tmp / "a-file"


def a_loop(tmp: Path) -> Path:
    (tmp / "loop").symlink_to(tmp / "loop")
    return tmp / "loop"


def uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlflow.db'}"


def mlflow_db(tmp: Path) -> str:
    """An MLflow store holding one experiment and no runs."""
    from mlflow import MlflowClient

    MlflowClient(uri(tmp)).create_experiment("other")
    return uri(tmp)


# (id, argv builder, field named first on the line)
Case = tuple[str, Callable[[Path], list[str]], str]
RUN = ["sweep", "run"]
CASES: list[Case] = [
    # -- spec YAML: missing keys, wrong types, unknown names -------------------------------
    ("missing-name", lambda t: [*RUN, without(t, "name")], "name"),
    ("storage-path-uri", lambda t: [*RUN, spec(t, storage_path="s3://bucket/sweeps")],
     "storage_path"),
    ("seeds-wrong-type", lambda t: [*RUN, spec(t, seeds="abc")], "seeds"),
    ("epochs-wrong-type", lambda t: [*RUN, spec(t, fixed={**FIXED, "epochs": "ten"})],
     "fixed.epochs"),
    ("search-wrong-type", lambda t: [*RUN, spec(t, search=5)], "search"),
    ("fixed-not-a-mapping-smoke", lambda t: [*RUN, spec(t, fixed=[1, 2]), "--smoke-test"],
     "fixed"),
    ("device-wrong-type", lambda t: [*RUN, spec(t, fixed={**FIXED, "device": 5})],
     "fixed.device"),
    ("unknown-activation", lambda t: [*RUN, spec(t, fixed={**FIXED, "pool": "relu,swish2"})],
     "fixed.pool"),
    ("unknown-method", lambda t: [*RUN, spec(t, search={**SEARCH, "space": {
        "method": {"choice": ["smartmixed", "boosting"]}}})], "search.space.method.choice[1]"),
    ("unknown-dataset", lambda t: [*RUN, spec(t, dataset="imagenet")], "dataset"),
    ("unknown-top-level-key", lambda t: [*RUN, spec(t, colour="red")], "colour"),
    ("unknown-space-key", lambda t: [*RUN, spec(t, search={**SEARCH, "space": {
        "method": {"choice": ["smartmixed"]}, "lr": {"gaussian": [0, 1]}}})],
     "search.space.lr.gaussian"),
    ("empty-search-space", lambda t: [*RUN, spec(t, search={**SEARCH, "space": {}})],
     "search.space"),
    ("empty-choice", lambda t: [*RUN, spec(t, search={**SEARCH, "space": {
        "method": {"choice": []}}})], "search.space.method.choice"),
    ("bad-name", lambda t: [*RUN, spec(t, name="../etc")], "name"),
    ("spec-not-a-mapping", lambda t: [*RUN, raw(t, "- name: x\n- seeds: [0]\n")], "spec"),
    # -- values out of range -------------------------------------------------------------
    ("negative-epochs", lambda t: [*RUN, spec(t, fixed={**FIXED, "epochs": -5})],
     "fixed.epochs"),
    ("temperature-zero", lambda t: [*RUN, spec(t, fixed={**FIXED, "temperature": 0})],
     "fixed.temperature"),
    ("temperature-range-negative", lambda t: [*RUN, spec(t, search={
        "algorithm": "optuna", "num_samples": 2, "space": {
            "method": {"choice": ["smartmixed"]}, "temperature": {"uniform": [-1.0, 1.0]}}})],
     "search.space.temperature.uniform"),
    ("transition-epoch-not-below-epochs", lambda t: [*RUN, spec(t, fixed={
        **FIXED, "epochs": 3, "transition_epoch": 3})], "fixed.transition_epoch"),
    ("gpu-more-than-the-machine-has", lambda t: [*RUN, spec(t, resources={
        "cpu": 1, "gpu": _gpus() + 0.5})], "resources.gpu"),
    ("cpu-more-than-the-machine-has", lambda t: [*RUN, spec(t, resources={
        "cpu": 512, "gpu": 0})], "resources.cpu"),
    ("gpu-negative", lambda t: [*RUN, spec(t, resources={"cpu": 1, "gpu": -1})],
     "resources.gpu"),
    ("max-concurrent-zero", lambda t: [*RUN, spec(t, max_concurrent=0)], "max_concurrent"),
    ("batch-seeds-unknown", lambda t: [*RUN, spec(t, batch_seeds="always")], "batch_seeds"),
    # -- huge numbers --------------------------------------------------------------------
    ("huge-epochs-int", lambda t: [*RUN, spec(t, fixed={**FIXED, "epochs": 10**20})],
     "fixed.epochs"),
    ("huge-epochs-1e30", lambda t: [*RUN, raw(t, Path(spec(t)).read_text().replace(
        "epochs: 3", "epochs: 1.0e+30"))], "fixed.epochs"),
    ("huge-batch-size", lambda t: [*RUN, spec(t, fixed={**FIXED, "batch_size": 10**12})],
     "fixed.batch_size"),
    ("huge-num-samples", lambda t: [*RUN, spec(t), "--set", "search.num_samples=1000000000"],
     "search.num_samples"),
    ("huge-seed", lambda t: [*RUN, spec(t, seeds=[0, 2**40])], "seeds"),
    ("huge-width", lambda t: [*RUN, spec(t, search={"algorithm": "grid", "space": {
        "depth": {"choice": [2]}, "width": {"choice": [10**9]}}})], "search.space.width.choice"),
    ("infinite-cpu", lambda t: [*RUN, raw(t, Path(spec(t)).read_text().replace(
        "cpu: 1", "cpu: .inf"))], "resources.cpu"),
    # -- files ---------------------------------------------------------------------------
    ("yaml-syntax-error", lambda t: [*RUN, raw(t, "name: x\nseeds: [0, 1\nfixed: {}\n")],
     "spec"),
    ("spec-not-utf8", lambda t: [*RUN, raw(t, b"name: \xff\xfe\n")], "spec"),
    ("spec-path-missing", lambda t: [*RUN, str(t / "nope.yaml")], "spec"),
    ("unknown-preset", lambda t: [*RUN, "quik"], "spec"),
    ("spec-argument-missing", lambda t: [*RUN], "spec"),
    # -- YAML: empty, duplicate keys, nesting, booleans for numbers, lengths ---------------
    ("spec-empty-file", lambda t: [*RUN, raw(t, "")], "spec"),
    ("spec-only-comments", lambda t: [*RUN, raw(t, "# nothing here\n")], "spec"),
    ("spec-duplicate-key", lambda t: [*RUN, raw(t, Path(spec(t)).read_text() + "name: again\n")],
     "spec"),
    ("spec-deeply-nested", lambda t: [*RUN, raw(t, "name: " + "[" * 5000 + "]" * 5000 + "\n")],
     "spec"),
    ("seeds-booleans", lambda t: [*RUN, spec(t, seeds=[True, False])], "seeds"),
    ("num-samples-boolean", lambda t: [*RUN, spec(t, search={**SEARCH, "num_samples": True})],
     "search.num_samples"),
    ("name-too-long", lambda t: [*RUN, spec(t, name="n" * 101)], "name"),
    ("set-invalid-yaml", lambda t: [*RUN, spec(t), "--set", "seeds=[0,"], "--set"),
    ("set-boolean-seed", lambda t: [*RUN, spec(t), "--set", "seeds=[yes]"], "seeds"),
    # -- data: folder and files, per dataset, before Ray or MLflow start ---------------------
    ("data-dir-missing", lambda t: [*RUN, spec(t, dataset="mnist", fixed={
        **FIXED, "data_dir": "data"})], "fixed.data_dir"),
    ("data-dir-not-given", lambda t: [*RUN, spec(t, dataset="mnist")], "fixed.data_dir"),
    ("data-files-missing", lambda t: ((t / "data" / "MNIST").mkdir(parents=True), [
        *RUN, spec(t, dataset="cifar10", fixed={**FIXED, "data_dir": str(t / "data")})])[1],
     "fixed.data_dir"),
    ("data-preset-without-data", lambda t: [*RUN, "paper", "--smoke-test"], "fixed.data_dir"),
    # -- --set overrides -----------------------------------------------------------------
    ("set-without-equals", lambda t: [*RUN, spec(t), "--set", "seeds"], "--set"),
    ("set-unknown-key", lambda t: [*RUN, spec(t), "--set", "colour=red"], "colour"),
    ("set-unknown-fixed-key", lambda t: [*RUN, spec(t), "--set", "fixed.colour=1"],
     "fixed.colour"),
    ("set-through-a-scalar", lambda t: [*RUN, spec(t), "--set", "name.first=x"], "name.first"),
    # -- tracking URI and Ray address ----------------------------------------------------
    ("tracking-uri-file-store", lambda t: [*RUN, spec(t), "--tracking-uri",
                                           f"file://{t / 'mlruns'}"], "tracking_uri"),
    ("tracking-uri-unreachable", lambda t: [*RUN, spec(t), "--tracking-uri",
                                            "http://alice:hunter22@127.0.0.1:9"], "tracking_uri"),
    ("tracking-uri-bad-port", lambda t: [*RUN, spec(t), "--tracking-uri",
                                         "http://alice:hunter22@127.0.0.1:http"], "tracking_uri"),
    ("tracking-uri-unknown-scheme", lambda t: [*RUN, spec(t), "--tracking-uri", "ftp://h/x"],
     "tracking_uri"),
    ("tracking-uri-missing-folder", lambda t: [*RUN, spec(t), "--tracking-uri",
                                               f"sqlite:///{t / 'no' / 'such' / 'm.db'}"],
     "tracking_uri"),
    ("tracking-uri-in-memory", lambda t: [*RUN, spec(t), "--tracking-uri", "sqlite:///:memory:"],
     "tracking_uri"),
    ("address-syntax", lambda t: [*RUN, spec(t), "--address", "head-node"], "address"),
    ("address-unreachable", lambda t: [*RUN, spec(t), "--address", "127.0.0.1:1"], "address"),
    # -- a sweep of the same name --------------------------------------------------------
    ("same-name-different-spec", lambda t: (existing_sweep(t), [
        *RUN, spec(t), "--set", "fixed.epochs=4"])[1], "name"),
    ("same-name-same-spec", lambda t: (existing_sweep(t), [*RUN, spec(t)])[1], "name"),
    ("same-name-in-mlflow-only", lambda t: (existing_sweep(t), [
        *RUN, spec(t), "--set", f"storage_path={t / 'elsewhere'}"])[1], "name"),
    # -- resume / status -----------------------------------------------------------------
    ("resume-unknown-sweep", lambda t: ["sweep", "resume", "no-such-sweep"], "sweep"),
    ("status-unknown-sweep", lambda t: ["sweep", "status", str(t / "ray_results" / "x")],
     "sweep"),
    ("resume-bad-address", lambda t: ["sweep", "resume", str(existing_sweep(t)),
                                      "--address", "ray://"], "address"),
    ("resume-corrupt-state", lambda t: (
        (existing_sweep(t) / "sweep.json").write_text("{not json"),
        ["sweep", "resume", str(t / "ray_results" / "t-sweep")])[1], "sweep"),
    ("status-store-gone", lambda t: (existing_sweep(t), (t / "mlflow.db").unlink(),
                                     ["sweep", "status", "t-sweep"])[2], "tracking_uri"),
    ("status-bad-tracking-uri", lambda t: (existing_sweep(t), [
        "sweep", "status", "t-sweep", "--tracking-uri", "file:/tmp"])[1], "tracking_uri"),
    # -- output locations that cannot be used ----------------------------------------------
    ("storage-path-is-a-file", lambda t: [*RUN, spec(t), "--set",
                                          f"storage_path={a_file(t)}"], "storage_path"),
    ("storage-path-under-a-file", lambda t: [*RUN, spec(t), "--set",
                                             f"storage_path={a_file(t) / 'x'}"], "storage_path"),
    ("storage-path-under-proc", lambda t: [*RUN, spec(t), "--set", "storage_path=/proc/x"],
     "storage_path"),
    ("storage-path-symlink-loop", lambda t: [*RUN, spec(t), "--set",
                                             f"storage_path={a_loop(t)}"], "storage_path"),
    ("train-out-is-a-file", lambda t: ["train", "--out", str(a_file(t))], "out"),
    ("train-out-under-a-file", lambda t: ["train", "--out", str(a_file(t) / "r")], "out"),
    ("train-out-under-proc", lambda t: ["train", "--out", "/proc/smartmixed"], "out"),
    ("train-out-symlink-loop", lambda t: ["train", "--out", str(a_loop(t) / "r")], "out"),
    # -- smartmixed train ----------------------------------------------------------------
    ("train-huge-epochs", lambda t: ["train", "--epochs", str(10**20)], "epochs"),
    ("train-zero-batch", lambda t: ["train", "--batch-size", "0"], "batch_size"),
    ("train-nan-lr", lambda t: ["train", "--lr", "nan"], "lr"),
    ("train-inf-temperature", lambda t: ["train", "--temperature", "inf"], "temperature"),
    ("train-negative-temperature-end", lambda t: ["train", "--temperature-end", "-1"],
     "temperature_end"),
    ("train-unknown-device", lambda t: ["train", "--device", "tpu"], "device"),
    ("train-unknown-optimizer", lambda t: ["train", "--optimizer", "sgd"], "optimizer"),
    ("train-huge-seed", lambda t: ["train", "--seeds", "99999999999"], "seeds"),
    ("train-unknown-flag", lambda t: ["train", "--epoch", "3"], "--epoch"),
    # -- smartmixed analyze --------------------------------------------------------------
    ("analyze-missing-experiment", lambda t: ["analyze", "--out", str(t / "report")],
     "--experiment"),
    ("analyze-file-store", lambda t: ["analyze", "--experiment", "e", "--out",
                                      str(t / "report"), "--tracking-uri", "file:/tmp"],
     "tracking_uri"),
    ("analyze-missing-store", lambda t: ["analyze", "--experiment", "e", "--out",
                                         str(t / "report"), "--tracking-uri", uri(t)],
     "tracking_uri"),
    ("analyze-unknown-experiment", lambda t: ["analyze", "--experiment", "nope", "--out",
                                              str(t / "report"), "--tracking-uri", mlflow_db(t)],
     "experiment"),
    ("analyze-unreachable-database", lambda t: [
        "analyze", "--experiment", "e", "--out", str(t / "report"), "--tracking-uri",
        "postgresql://alice:hunter22@127.0.0.1:1/mlflow"], "tracking_uri"),
]
SECRETS = ("hunter22",)
