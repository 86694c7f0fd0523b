"""A sweep that has started: its folder (by path or by name), the spec and state saved there
for ``sweep resume`` and ``sweep status``, and its trials as MLflow holds them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from smartmixed_core.errors import ConfigError, first_line
from sweeps import schema, store, tracking
from sweeps.redact import use_credentials, without_password
from sweeps.spec import SweepSpec, check_tracking_uri, spec_doc
from sweeps.specfile import parse_spec
from sweeps.trial import SweepContext

SPEC_FILE = "sweep.yaml"
"""The resolved spec, saved in the Ray experiment folder for ``sweep resume``."""
STATE_FILE = "sweep.json"
"""Tracking URI, experiment id and sweep run id, next to it."""


def locate(name_or_path: str, tracking_uri: str | None = None) -> Path:
    """The experiment folder of a sweep given its folder, or its name: under
    ``./ray_results``, else where the tracking store's sweep run of that name says
    (``--tracking-uri``, default ``sqlite:///mlflow.db``)."""
    under = Path("./ray_results") / name_or_path
    for cand in (Path(name_or_path), under):
        if _is_sweep(cand):
            return cand.resolve()
    given = tracking_uri or schema.DEFAULT_TRACKING_URI
    try:
        uri = store.normalize_uri(check_tracking_uri(given))
    except ValueError as exc:
        raise ConfigError("tracking_uri", str(exc)) from None
    looked = f"looked for {SPEC_FILE} and {STATE_FILE} in {name_or_path} and {under}"
    if store.sqlite_missing(uri):
        raise ConfigError("sweep", f"no sweep at {name_or_path!r} ({looked}; no tracking store "
                          f"at {given}: pass --tracking-uri)")
    store.check_server(use_credentials(uri), given)
    try:
        folders = tracking.sweep_folders(store.client(use_credentials(uri)))
    except Exception as exc:
        raise store.mlflow_error(exc, given, "cannot list the sweeps") from None
    folder = folders.get(name_or_path)
    if folder and _is_sweep(Path(folder)):
        return Path(folder)
    if folder is not None:
        raise ConfigError("sweep", f"the sweep {name_or_path!r} of {given} was in "
                          f"{folder or 'a folder it did not record'}, which holds no sweep now; "
                          "pass the sweep's folder (<storage_path>/<name>)")
    known = ", ".join(sorted(folders)) or "none"
    raise ConfigError("sweep", f"no sweep named {name_or_path!r} ({looked}; sweeps in "
                      f"{given}: {known})")


def _is_sweep(folder: Path) -> bool:
    return (folder / SPEC_FILE).is_file() and (folder / STATE_FILE).is_file()


def load_state(path: Path, tracking_uri: str | None = None) -> tuple[SweepSpec, SweepContext]:
    """The saved spec and context of the sweep in ``path``.  ``tracking_uri`` (``--tracking-uri``
    of resume/status) replaces the saved URI, e.g. to give the password again; otherwise
    credentials come from MLFLOW_TRACKING_USERNAME/PASSWORD."""
    try:
        spec = parse_spec(yaml.safe_load((path / SPEC_FILE).read_text()))
        state = json.loads((path / STATE_FILE).read_text())
        saved_uri, exp_id, run_id = (state["tracking_uri"], state["experiment_id"],
                                     state["sweep_run_id"])
    except ConfigError as exc:
        raise ConfigError("sweep", f"the spec saved in {path / SPEC_FILE} is invalid: "
                          f"{exc}") from None
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError("sweep", f"cannot read the state saved in {path} "
                          f"({type(exc).__name__}: {first_line(exc)})") from None
    given = saved_uri
    if tracking_uri:
        given = store.normalize_uri(parse_spec(
            {**spec_doc(spec), "tracking_uri": tracking_uri}).tracking_uri)
    uri = use_credentials(given)
    spec = spec.model_copy(update={"tracking_uri": without_password(given)})
    return spec, SweepContext(spec_doc(spec), uri, exp_id, run_id)


def check_state(ctx: SweepContext, given: str | None = None) -> None:
    """The saved sweep run can be read from the tracking store (before resume or status)."""
    given = given or ctx.tracking_uri
    store.check_server(ctx.tracking_uri, given)
    if store.sqlite_missing(ctx.tracking_uri):
        raise ConfigError("tracking_uri", f"the sweep's SQLite store {ctx.tracking_uri} does "
                          "not exist; pass --tracking-uri where it is now")
    try:
        store.client(ctx.tracking_uri).get_run(ctx.sweep_run_id)
    except Exception as exc:
        raise store.mlflow_error(exc, given,
                                 f"cannot read the sweep run {ctx.sweep_run_id}") from None


def trial_rows(ctx: SweepContext, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial run: status, sampled params and seed-mean results, best first."""
    c = store.client(ctx.tracking_uri)
    finished = Counter(r.data.tags.get(schema.TAG_TRIAL) for r in tracking.find_runs(
        c, ctx.experiment_id, schema.KIND_SEED, spec.name, status="FINISHED"))
    rows = []
    for run in tracking.find_runs(c, ctx.experiment_id, schema.KIND_TRIAL, spec.name):
        m, p = run.data.metrics, run.data.params
        rows.append({
            "trial": run.data.tags[schema.TAG_TRIAL], "status": run.info.status,
            "method": p.get("method"), "dataset": p.get("dataset"),
            "architecture": p.get("architecture"),
            "params": {k[len(schema.SAMPLED_PREFIX):]: v for k, v in p.items()
                       if k.startswith(schema.SAMPLED_PREFIX)},
            # A running trial shows its latest epoch; a failed one has no result to show.
            "metric": m.get(f"{spec.search.metric}_mean",
                            m.get(schema.epoch_metric(spec.search.metric))
                            if run.info.status == "RUNNING" else None),
            "val_accuracy_std": m.get("val_accuracy_std"),
            "test_accuracy": m.get("test_accuracy_mean"),
            "seeds_finished": finished[run.data.tags[schema.TAG_TRIAL]],
            "reason": run.data.tags.get(schema.TAG_STATUS_REASON, ""),
        })
    sign = -1 if spec.search.mode == "max" else 1
    rows.sort(key=lambda r: (r["status"] != "FINISHED",
                             sign * r["metric"] if r["metric"] is not None else 0.0))
    return rows
