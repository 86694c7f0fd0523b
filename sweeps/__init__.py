"""Sweeps: Ray Tune + Optuna schedule trials of the core; every trial logs to MLflow.

Importing this package is cheap and side-effect free: Ray, Optuna and MLflow are imported by
the modules that use them.  ``sweeps.schema`` (the MLflow run schema) has no dependencies, so
``analysis`` can share it without importing Ray.
"""
