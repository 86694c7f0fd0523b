"""Classification metrics on logits (scikit-learn underneath)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _predictions(logits: Tensor) -> np.ndarray:
    return torch.softmax(logits.detach().float(), -1).cpu().numpy()


def accuracy(logits: Tensor, y: Tensor) -> float:
    """The ``accuracy`` of :func:`classification_metrics`, alone (no scikit-learn calls)."""
    return float((_predictions(logits).argmax(1) == y.cpu().numpy()).mean())


def classification_metrics(logits: Tensor, y: Tensor, num_classes: int) -> dict:
    """Accuracy, macro F1, ROC-AUC (binary, or macro one-vs-rest), per-class accuracy and the
    confusion matrix (rows = true class).  ROC-AUC is NaN when a class is absent from ``y``."""
    from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

    probs = _predictions(logits)
    y_true = y.cpu().numpy()
    y_pred = probs.argmax(1)
    labels = list(range(num_classes))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if num_classes == 2:
                auc = float(roc_auc_score(y_true, probs[:, 1]))
            else:
                auc = float(
                    roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=labels)
                )
        except ValueError:
            auc = math.nan
    per_class = np.divide(np.diag(cm), support, out=np.full(num_classes, np.nan), where=support > 0)
    return {
        "accuracy": accuracy(logits, y),
        "f1_macro": float(
            f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)
        ),
        "roc_auc": auc,
        "per_class_accuracy": [None if math.isnan(v) else float(v) for v in per_class],
        "confusion_matrix": cm.tolist(),
    }
