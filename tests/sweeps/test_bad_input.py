"""Bad input never crashes with a traceback or writes half a result.

Every case runs the real entry point (``smartmixed.cli.main``) inside the test process
and checks the contract of docs/contracts.md: exit status 2, exactly one line on stderr,
``smartmixed: error: FIELD: what is allowed``, nothing on stdout, no traceback, and nothing
written: the tree under ``tmp_path`` (the MLflow SQLite store, the Ray results folder, the
output folders; the test also runs there, so relative defaults land in it) is byte for byte
what it was before.  A few cases run again in a subprocess, where a traceback would show.

No case starts Ray: the checks run before Ray would.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartmixed.cli import main
from tests.sweeps.sweep_helpers import SMOKE, smartmixed_cmd, write_spec

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


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in tmp_path (relative defaults land there) and keep credential variables local."""
    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_ADDRESS"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def sweep_runs(tmp: Path) -> int:
    db = tmp / "mlflow.db"
    if not db.exists():
        return 0
    import sqlite3

    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from runs").fetchone()[0]


def check_one_line(err: str, field: str) -> str:
    """``smartmixed: error: FIELD: message``, one line, no traceback, no password."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"smartmixed: error: {field}: "), line
    assert len(line) > len(f"smartmixed: error: {field}: ") + 10, line  # says what is allowed
    assert "Traceback" not in err and not any(s in err for s in SECRETS), err
    return line


@pytest.mark.parametrize(("build", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, build, field):
    argv = build(tmp_path)
    before, runs = snapshot(tmp_path), sweep_runs(tmp_path)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    check_one_line(err, field)
    assert out == ""
    assert snapshot(tmp_path) == before  # no store, run, results folder or report written
    assert sweep_runs(tmp_path) == runs


def test_cases_cover_the_issue():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


def by_id(name: str) -> Case:
    return next(c for c in CASES if c[0] == name)


@pytest.mark.parametrize("name", ["yaml-syntax-error", "gpu-more-than-the-machine-has",
                                  "set-unknown-key", "resume-unknown-sweep",
                                  "tracking-uri-unreachable"])
def test_console_script_prints_no_traceback(tmp_path, name):
    _, build, field = by_id(name)
    argv = build(tmp_path)
    before = snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    proc = subprocess.run([*smartmixed_cmd(), *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    check_one_line(proc.stderr, field)
    assert "Traceback" not in proc.stdout and proc.stdout == ""
    assert snapshot(tmp_path) == before


def test_messages_say_what_is_allowed(tmp_path, capsys):
    """Spot checks of the wording: the allowed range, the line number, the way out."""
    expected = {
        "huge-epochs-int": "(0, 100000]",
        "huge-num-samples": "less than or equal to 100000",
        "huge-batch-size": "(0, 1e+07]",
        "yaml-syntax-error": "line 3, column 6: expected ',' or ']'",
        "unknown-top-level-key": "unknown key; allowed: name, experiment",
        "empty-search-space": "at least one parameter",
        "gpu-more-than-the-machine-has": "allowed: 0",
        "transition-epoch-not-below-epochs": "[1, 2]",
        "address-syntax": "HOST:PORT",
        "same-name-different-spec": "different spec (differs in fixed.epochs)",
        "same-name-same-spec": "with the same spec",
        "resume-unknown-sweep": "no sweep at 'no-such-sweep'",
        "tracking-uri-unreachable": "http://127.0.0.1:9",
        "analyze-unreachable-database": "alice:***@",
    }
    for name, words in expected.items():
        _, build, _ = by_id(name)
        sub = tmp_path / name
        sub.mkdir()
        os.chdir(sub)
        assert main(build(sub)) == 2
        err = capsys.readouterr().err
        assert words in err, (name, err)
        if name.startswith("same-name"):
            assert "smartmixed sweep resume" in err and "--set name=" in err


def test_same_name_refusal_leaves_the_first_sweep_resumable(tmp_path, capsys):
    path = existing_sweep(tmp_path)
    saved = (path / "sweep.yaml").read_text(), json.loads((path / "sweep.json").read_text())
    assert main([*RUN, spec(tmp_path, seeds=[5])]) == 2
    assert "differs in seeds" in capsys.readouterr().err
    assert ((path / "sweep.yaml").read_text(), json.loads((path / "sweep.json").read_text())) \
        == saved
    from sweeps.saved import load_state

    spec_, _ = load_state(path)
    assert spec_.seeds == [0, 1]


def test_ray_started_beside_a_failing_store_is_shut_down(tmp_path, capsys, monkeypatch):
    """`sweep run` starts Ray while the SQLite store is created: when the store then fails,
    the one-line error comes with Ray shut down again and no sweep folder written (Ray is
    replaced by a recorder here; the file check covers the tree apart from the store)."""
    from sweeps import cluster, launch, store

    calls: list[str] = []

    def init_ray(address: str | None, verbose: bool = False) -> bool:
        calls.append("init")
        monkeypatch.setattr(cluster, "_ray_owned", True)
        return True

    def broken_store(uri: str) -> Any:
        raise RuntimeError("(sqlite3.OperationalError) disk I/O error")

    monkeypatch.setattr(launch, "_init_ray", init_ray)
    monkeypatch.setattr(launch, "release_ray", lambda: calls.append("release"))
    monkeypatch.setattr(store, "client", broken_store)
    path = spec(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    rc = main(["sweep", "run", path])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert "disk I/O error" in check_one_line(err, "tracking_uri")
    assert calls == ["init", "release"]
    assert snapshot(tmp_path) == before and not (tmp_path / "ray_results").exists()


def test_an_error_leaves_no_write_ahead_log_beside_an_existing_store(tmp_path, capsys):
    """A store left in write-ahead mode (a killed sweep, an older version): a command that
    opens it and then fails closes it again, so SQLite removes ``-wal`` and ``-shm``."""
    from sweeps import store

    existing_sweep(tmp_path)
    assert store.use_wal(f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = snapshot(tmp_path)
    assert not {"mlflow.db-wal", "mlflow.db-shm"} & set(before)
    capsys.readouterr()
    for argv in ([*RUN, spec(tmp_path)], ["sweep", "status", "no-such-sweep", "--tracking-uri",
                                          f"sqlite:///{tmp_path / 'mlflow.db'}"]):
        assert main(argv) == 2
        check_one_line(capsys.readouterr().err, "name" if argv[1] == "run" else "sweep")
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["garbage", "127.0.0.1:1", "ray://127.0.0.1:1"])
@pytest.mark.parametrize("command", ["run", "resume"])
def test_a_bad_ray_address_in_the_environment_is_refused_first(tmp_path, capsys, monkeypatch,
                                                                 value, command):
    argv = [*RUN, spec(tmp_path)] if command == "run" else [
        "sweep", "resume", str(existing_sweep(tmp_path))]
    before = snapshot(tmp_path)
    capsys.readouterr()
    monkeypatch.setenv("RAY_ADDRESS", value)
    assert main(argv) == 2
    line = check_one_line(capsys.readouterr().err, "RAY_ADDRESS")
    assert value in line and "unset it" in line
    assert snapshot(tmp_path) == before
