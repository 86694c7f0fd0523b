"""The MLflow run schema: the one place that names tags, params, metrics and artifacts.

Documented in docs/mlflow-schema.md; ``sweeps`` writes it and ``analysis`` reads it.  It imports
only the core's run configuration (the params derive from it), so analysis can use it without
Ray.

Run tree per experiment::

    sweep run   (tag smartmixed.kind=sweep)        spec params + spec.yaml artifact
      trial run (tag smartmixed.kind=trial)        config params, seed-mean metrics per epoch
        seed run (tag smartmixed.kind=seed)        one per (trial, seed), FINISHED exactly once
"""

from __future__ import annotations

from dataclasses import fields

from smartmixed_core.config import EXECUTION_FIELDS, RunConfig

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""Where sweeps write and analysis reads when no tracking URI is given."""

TAG_KIND = "smartmixed.kind"
KIND_SWEEP, KIND_TRIAL, KIND_SEED = "sweep", "trial", "seed"
TAG_SWEEP = "smartmixed.sweep"  # sweep name, on every run of the sweep
TAG_TRIAL = "smartmixed.trial"  # trial id (stable across retries and resume)
TAG_SEED = "smartmixed.seed"
TAG_STATUS_REASON = "smartmixed.failure"  # why a trial/seed run failed (e.g. non-finite loss)
TAG_PARENT = "mlflow.parentRunId"
TAG_WORKER = "smartmixed.worker"  # "host:pid" of the process running the trial (latest attempt)
# On trial and seed runs whose latest attempt continued from a mid-run checkpoint: the last
# epoch (0-based) the checkpoint had completed, as a decimal string.
TAG_RESUMED = "smartmixed.resumed_after_epoch"
# On sweep runs: the sweep's folder (<storage_path>/<name>, absolute), so that `sweep status`
# and `sweep resume` find it by name from the tracking store alone.
TAG_FOLDER = "smartmixed.folder"
# MLflow's own tags: a run's description (markdown, shown on its page) and the experiment's
# kind (custom_model_development opens the experiment on its runs table, not the GenAI pages).
TAG_NOTE = "mlflow.note.content"
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# Params of every seed run (and of trial runs): the configuration, as strings -- every
# RunConfig field (arch logged as "architecture") except the execution settings, so a new
# field is logged by itself; a setting the run's method does not use is left out (USED_BY).
CONFIG_PARAMS = tuple("architecture" if f.name == "arch" else f.name for f in fields(RunConfig)
                      if f.name not in EXECUTION_FIELDS)
RESULT_PARAMS = ("n_params",)


def arm_label(method: str, values: list[str]) -> str:
    """The name of a compared arm: the method, with the values of the method-specific settings
    that name ``search.per`` cells (``smartmixed (reinit)``); the method alone without."""
    return f"{method} ({', '.join(values)})" if values else method
"""Params that are results, not choices."""

# Final metrics of a seed run.
FINAL_METRICS = (
    "test_accuracy", "val_accuracy", "test_f1_macro", "test_roc_auc",
    "phase1_test_accuracy", "phase1_val_accuracy", "phase2_start_test_accuracy",
    "phase1_last_val_accuracy", "phase1_sampled_val_accuracy", "phase2_first_val_accuracy",
    "train_seconds", "n_params",
)
# Per-epoch values (step = epoch, 0-based, continuing across phases) are logged as
# epoch_metric(name): ``epoch/val_accuracy`` is the curve, ``val_accuracy`` the final value of
# the restored weights, so that no curve ends in a value its training never reached.
EPOCH_PREFIX = "epoch/"
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy")
# Per-epoch phase-1 values of seed runs: one Gumbel sample of the network on validation
# (val_loss/val_accuracy are the argmax network's, the one phase 2 starts from).
SAMPLED_METRICS = ("sampled_val_loss", "sampled_val_accuracy")
# Per-epoch phase-1 metrics: fraction of layer l's units that changed choice since last epoch.
SWITCH_METRIC = "switched/layer_{layer}"  # step = epoch
TAU_METRIC = "tau"


def epoch_metric(name: str) -> str:
    """The MLflow key of the per-epoch value ``name`` (``epoch/val_accuracy``)."""
    return EPOCH_PREFIX + name


def selection_metric(layer: int, activation: str) -> str:
    """Fraction of layer ``layer``'s units (1-based) choosing ``activation``: per phase-1 epoch
    (step = epoch), and the frozen network's at step = number of phase-1 epochs (latest)."""
    return f"selection/layer_{layer}/{activation}"


SELECTION_PREFIX = "selection/"


def shape_metric(layer: int, name: str) -> str:
    """Final learned coefficient ``name`` (beta; a0..a5, b1..b4) of layer ``layer``'s
    activation (1-based), for pau and swish_beta."""
    return f"shape/layer_{layer}/{name}"


SHAPE_PREFIX = "shape/"

# Artifacts of a seed run.
ARTIFACT_CHOICES = "choices.json"  # {"layer_1": ["relu", ...], ...} in checkpoint unit order
ARTIFACT_CHECKPOINT = "checkpoint.pt"  # smartmixed_core.runner.save_checkpoint format
ARTIFACT_RESULT = "result.json"  # the seed's entry of the result.json contract
ARTIFACT_SPEC = "spec.yaml"  # on the sweep run
ARTIFACT_REPORT_DIR = "report"  # analysis report, on the sweep run

# Trial runs: params = CONFIG_PARAMS of the trial's configuration, plus the values
# the searcher sampled (space keys, e.g. depth/width) under this prefix.
SAMPLED_PREFIX = "sampled."
# Trial runs: seed-mean EPOCH_METRICS per epoch (step = epoch), and at the end the mean and
# sample std over seeds of smartmixed_core.runner.summarize (as "<name>_mean", "<name>_std"),
# plus "n_seeds".
