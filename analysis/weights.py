"""Mean connection weight between neuron groups, by (source activation, target activation).

The paper's heatmap: for consecutive hidden layers l -> l+1, the weight ``W_{l+1}[t, s]``
connects unit s of layer l (activation ``choice_l[s]``) to unit t of layer l+1
(``choice_{l+1}[t]``).  Weights are read from the seed runs' ``checkpoint.pt`` artifacts
(``state_dict`` + ``choices``, in checkpoint unit order); connections are pooled over layers,
runs and seeds.  Convolution kernels are averaged over their spatial positions first.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.selection import activation_order
from sweeps import schema

_LAYER_KEYS = (("linears.{i}.weight", 2), ("convs.{i}.weight", 4))
"""Each key with the rank of one network's weight; a checkpoint of format 2 adds a leading
seeds dimension of size 1 (docs/contracts.md)."""


def _weight(state_dict: dict, i: int):
    for pattern, rank in _LAYER_KEYS:
        key = pattern.format(i=i)
        if key in state_dict:
            w = state_dict[key].detach().cpu().double().numpy()
            w = w[0] if w.ndim == rank + 1 else w
            return w.mean(axis=tuple(range(2, w.ndim))) if w.ndim > 2 else w
    return None


def group_weight_sums(state_dict: dict, choices: dict[str, list[str]]) -> pd.DataFrame:
    """For one network: per (source, target) activation pair the sum of weights, of absolute
    weights, and the number of connections between consecutive hidden layers."""
    rows = []
    layer = 1
    while f"layer_{layer + 1}" in choices:
        w = _weight(state_dict, layer)  # linears.{l} maps hidden layer l to l+1 (1-based)
        src = np.asarray(choices[f"layer_{layer}"])
        tgt = np.asarray(choices[f"layer_{layer + 1}"])
        if w is None or w.shape != (len(tgt), len(src)):
            raise ValueError(f"layer {layer}: weight shape {None if w is None else w.shape} "
                             f"does not match choices ({len(tgt)}, {len(src)})")
        for s in np.unique(src):
            for t in np.unique(tgt):
                block = w[np.ix_(tgt == t, src == s)]
                rows.append({"source": str(s), "target": str(t), "sum": block.sum(),
                             "abs_sum": np.abs(block).sum(), "n_connections": block.size})
        layer += 1
    return pd.DataFrame(rows, columns=["source", "target", "sum", "abs_sum", "n_connections"])


def _pool(parts: list[pd.DataFrame]) -> pd.DataFrame:
    cols = ["source", "target", "mean_weight", "mean_abs_weight", "n_connections", "n_runs"]
    if not parts:
        return pd.DataFrame(columns=cols)
    df = pd.concat([p.assign(run=i) for i, p in enumerate(parts)])
    g = df.groupby(["source", "target"])
    out = pd.DataFrame({"sum": g["sum"].sum(), "abs_sum": g["abs_sum"].sum(),
                        "n_connections": g["n_connections"].sum(),
                        "n_runs": g["run"].nunique()}).reset_index()
    out["mean_weight"] = out["sum"] / out["n_connections"]
    out["mean_abs_weight"] = out["abs_sum"] / out["n_connections"]
    order = activation_order(set(out["source"]) | set(out["target"]))
    out["_s"], out["_t"] = out["source"].map(order.index), out["target"].map(order.index)
    return out.sort_values(["_s", "_t"])[cols].reset_index(drop=True)


def weight_groups(client, run_ids: list[str]) -> tuple[pd.DataFrame, str]:
    """Pooled mean (and mean absolute) weight per (source, target) activation over the given
    seed runs' checkpoints, and a note about runs skipped (no checkpoint, one hidden layer).
    torch is imported at the first checkpoint (a store without any never loads it)."""
    parts, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        for run_id in run_ids:
            try:
                names = {Path(f.path).name for f in client.list_artifacts(run_id)}
                if schema.ARTIFACT_CHECKPOINT not in names:
                    skipped.append((f"no {schema.ARTIFACT_CHECKPOINT} artifact", run_id))
                    continue
                path = client.download_artifacts(run_id, schema.ARTIFACT_CHECKPOINT, tmp)
                import torch

                ckpt = torch.load(path, map_location="cpu", weights_only=False)
                choices = ckpt.get("choices") or _choices_artifact(client, run_id, tmp)
                part = group_weight_sums(ckpt["state_dict"], choices or {})
            except Exception as exc:  # a missing/odd artifact skips the run, with a note
                skipped.append((str(exc).splitlines()[0][:80], run_id))
                continue
            finally:
                Path(tmp, schema.ARTIFACT_CHECKPOINT).unlink(missing_ok=True)
            if part.empty:
                skipped.append(("fewer than two selective hidden layers", run_id))
            else:
                parts.append(part)
    return _pool(parts), skip_note(skipped)


def skip_note(skipped: list[tuple[str, str]], shown: int = 3) -> str:
    """``N run(s) skipped: REASON (n: id, id, id, ...); ...``: every reason, a few run ids each
    (``skipped`` holds ``(reason, run_id)`` pairs; empty: no note)."""
    by_reason: dict[str, list[str]] = {}
    for reason, run_id in skipped:
        by_reason.setdefault(reason, []).append(run_id[:8])
    parts = [f"{reason} ({len(ids)}: {', '.join(ids[:shown])}{', ...' if len(ids) > shown else ''})"
             for reason, ids in by_reason.items()]
    return f"{len(skipped)} run(s) skipped: " + "; ".join(parts) if skipped else ""


@contextlib.contextmanager
def _quiet_downloads():
    """No MLflow download progress bars in the terminal while the report is built."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _choices_artifact(client, run_id: str, tmp: str) -> dict | None:
    try:
        return json.loads(Path(client.download_artifacts(run_id, schema.ARTIFACT_CHOICES,
                                                         tmp)).read_text())
    except Exception:
        return None
