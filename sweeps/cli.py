"""``smartmixed sweep run|resume|status``.  Imports stay light: Ray, MLflow and Optuna load
inside the commands, so ``smartmixed train`` does not pay for them.

    smartmixed sweep run sweeps/presets/quick.yaml
    smartmixed sweep run search --set search.num_samples=4 --smoke-test
    smartmixed sweep resume quick-digits
    smartmixed sweep status ./ray_results/quick-digits
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any, Optional

import typer

from smartmixed_core.errors import ConfigError

sweep_app = typer.Typer(name="sweep", no_args_is_help=True, add_completion=False,
                        help="Ray Tune sweeps of the core, tracked in MLflow.")


def register(app: typer.Typer) -> None:
    """Attach the ``sweep`` command group to the ``smartmixed`` app."""
    app.add_typer(sweep_app, name="sweep")


@contextlib.contextmanager
def closing_stores() -> Iterator[None]:
    """As a decorator: run the command, then close the tracking-store connections it opened,
    whether it succeeded or failed (an error line must leave no ``-wal``/``-shm`` file)."""
    try:
        yield
    finally:
        from sweeps.store import close_stores

        close_stores()


@sweep_app.command("run")
@closing_stores()
def run(
    spec: Annotated[str, typer.Argument(help="Spec YAML file or preset name "
                                        "(quick, mnist, paper, search, adact, gated).")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a spec field: dotted.key=value (YAML value); repeatable.")] = None,
    address: Annotated[Optional[str], typer.Option(
        help="Join a Ray cluster: 'auto' or ray://host:10001 (default: local Ray).")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(
        help="MLflow tracking URI (overrides the spec's tracking_uri).")] = None,
    smoke_test: Annotated[bool, typer.Option(
        "--smoke-test", help="Shrink to 1-2 trials, 1 seed, 2 epochs, CPU.")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Ray's own trial tables, and MLflow's and Optuna's notices.")] = False,
) -> int:
    """Run a sweep described by SPEC."""
    from sweeps.cluster import cluster_address
    from sweeps.launch import execute, prepare
    from sweeps.redact import redact_uri
    from sweeps.specfile import load_spec

    _quiet(verbose)
    address = cluster_address(address)
    loaded = load_spec(spec, set_ or [], smoke_test=smoke_test)
    spec_, path, ctx = prepare(loaded, tracking_uri, address, start_ray=True)
    typer.echo(f"sweep {spec_.name}: results in {path}, MLflow {redact_uri(ctx.tracking_uri)}",
               err=True)
    return _finish(execute(spec_, path, ctx, address=address, verbose=verbose))


TRACKING_AGAIN = ("MLflow tracking URI, e.g. to give the password again (the sweep's folder "
                  "keeps it without); default: the one the sweep was started with.")


@sweep_app.command("resume")
@closing_stores()
def resume(
    name_or_path: Annotated[str, typer.Argument(help="Sweep folder, or its name under "
                                                "./ray_results.")],
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address.")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option(help=TRACKING_AGAIN)] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Ray's own trial tables, and MLflow's and Optuna's notices.")] = False,
) -> int:
    """Continue an interrupted sweep: finished seeds are kept, the rest is trained."""
    from sweeps.cluster import check_resources, cluster_address, release_ray
    from sweeps.launch import execute
    from sweeps.saved import check_state, load_state, locate

    _quiet(verbose)
    address = cluster_address(address)
    path = locate(name_or_path, tracking_uri)
    spec, ctx = load_state(path, tracking_uri)
    check_state(ctx, tracking_uri)
    try:
        check_resources(spec, address)
    except Exception:
        release_ray()
        raise
    return _finish(execute(spec, path, ctx, address=address, restore=True, verbose=verbose))


@sweep_app.command("status")
@closing_stores()
def status(
    name_or_path: Annotated[str, typer.Argument(help="Sweep folder, or its name under "
                                                "./ray_results.")],
    tracking_uri: Annotated[Optional[str], typer.Option(help=TRACKING_AGAIN)] = None,
) -> int:
    """Show a sweep's trials (from MLflow) without starting Ray."""
    from sweeps.saved import check_state, load_state, locate

    path = locate(name_or_path, tracking_uri)
    spec, ctx = load_state(path, tracking_uri)
    check_state(ctx, tracking_uri)
    _print_summary(spec, ctx, path)
    return 0


def _quiet(verbose: bool) -> None:
    """Without --verbose, MLflow's, Optuna's and Ray's INFO notices (store created, study
    created, checkpoint saved) stay out of the console; warnings and errors still show."""
    if not verbose:
        import logging
        import os

        import optuna

        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow loads
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # here it is loaded already
        # MLflow prints "View run ... at: URL" when a run on a tracking server ends; the
        # sweep prints its own link once.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from sweeps.trial import QUIET_ENV

        os.environ[QUIET_ENV] = "1"  # read by the trials (local Ray inherits the environment)
        # Ray Tune's notice that experiment snapshots come often: ours are small (one kept)
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        optuna.logging.set_verbosity(optuna.logging.WARNING)


def _finish(outcome: Any) -> int:
    _print_summary(outcome.spec, outcome.context, outcome.path, best_per_method=True)
    if outcome.interrupted:
        typer.echo(f"interrupted: continue with  smartmixed sweep resume {outcome.path}", err=True)
        return 130
    return 0


def arm(spec: Any, row: dict[str, Any]) -> str:
    """A trial's method, with the values of the method-specific ``search.per`` keys it used:
    ``smartmixed (reinit)`` (the arms the analysis compares)."""
    from sweeps.schema import arm_label
    from sweeps.spec import CONDITIONAL

    values = [str(row["params"][k]) for k in spec.search.per
              if k in CONDITIONAL and k in row.get("params", {})]
    return arm_label(row.get("method") or "", values)


def _print_summary(spec: Any, ctx: Any, path: Any, best_per_method: bool = False) -> None:
    """The sweep's trials from MLflow: every trial (``sweep status``), or the best finished
    trial of each method with the number of trials each had (the end of ``sweep run``)."""
    from rich.console import Console
    from rich.table import Table

    from sweeps import mlflow_ui
    from sweeps.redact import redact_uri
    from sweeps.saved import trial_rows

    rows = trial_rows(ctx, spec)
    counts = Counter(r["status"] for r in rows)
    title = f"sweep {spec.name}: {len(rows)} trials " + ", ".join(
        f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    datasets = len({r["dataset"] for r in rows}) > 1  # best per dataset: scores differ by data
    def cell(r: dict[str, Any]) -> tuple[str, str]:
        return (r["dataset"] or "" if datasets else "", arm(spec, r))

    if best_per_method:
        budget = Counter(cell(r) for r in rows)
        best = {cell(r): r for r in reversed(rows)}  # rows come best first: the first wins
        rows = sorted(best.values(), key=cell)
        title += (f"; the best trial of each method{' on each dataset' if datasets else ''} "
                  "(trials it had)")
    table = Table(title=title)
    for col in ("trial", "status", *(("dataset",) if datasets else ()), "method",
                "architecture", "params", f"{spec.search.metric} (seed mean)", "test_accuracy",
                "seeds"):
        table.add_column(col)
    for r in rows:
        metric = "" if r["metric"] is None else f"{r['metric']:.4f}"
        if r["metric"] is not None and r["val_accuracy_std"] is not None \
                and spec.search.metric == "val_accuracy":
            metric += f" ± {r['val_accuracy_std']:.4f}"
        params = ", ".join(f"{k}={_short(v)}" for k, v in r["params"].items()
                           if k not in ("method", "arch", "architecture", "dataset"))
        table.add_row(r["trial"], r["status"] + (f" ({r['reason'][:90]})" if r["reason"] else ""),
                      *((r["dataset"] or "",) if datasets else ()),
                      arm(spec, r) + (f" ({budget[cell(r)]} trials)"
                                      if best_per_method else ""),
                      r["architecture"] or "", params, metric,
                      "" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}",
                      f"{r['seeds_finished']}/{len(spec.seeds)}")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
    uri = redact_uri(ctx.tracking_uri)  # never print a password
    console.print(f"Ray results: {path}")
    console.print(f"MLflow: experiment [bold]{spec.experiment}[/] (id {ctx.experiment_id}), "
                  f"sweep run {ctx.sweep_run_id} at {uri}", soft_wrap=True)
    link = mlflow_ui.ui_link(ctx.experiment_id, ctx.sweep_run_id)
    if uri.startswith(("http://", "https://")):
        console.print(f"Open the UI: {uri}/{link}", soft_wrap=True)
    else:
        console.print(f"Open the UI: mlflow ui --backend-store-uri {uri}, then "
                      f"http://127.0.0.1:5000/{link}", soft_wrap=True)
    if best_per_method:
        console.print(f"Compare the methods: smartmixed analyze --experiment {spec.experiment} "
                      f"--sweep {spec.name} --tracking-uri {uri} --out report", soft_wrap=True)


def _short(v: str) -> str:
    try:
        return f"{float(v):.4g}"
    except ValueError:
        return v


@sweep_app.command("dashboard")
@closing_stores()
def dashboard(
    name_or_path: Annotated[str, typer.Argument(help="Sweep folder, or its name under "
                                                "./ray_results.")],
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    tracking_uri: Annotated[Optional[str], typer.Option(help=TRACKING_AGAIN)] = None,
) -> int:
    """Open optuna-dashboard on the sweep's Optuna studies (its journal), on 127.0.0.1 only;
    Ctrl+C stops it."""
    from sweeps.saved import locate
    from sweeps.searcher import serve_dashboard

    if not 1 <= port <= 65535:
        raise ConfigError("port", f"must be in [1, 65535], got {port}")
    serve_dashboard(locate(name_or_path, tracking_uri), port)
    return 0
