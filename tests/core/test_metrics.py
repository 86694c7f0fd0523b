import math

import torch

from smartmixed_core.metrics import accuracy, classification_metrics, count_parameters


def test_multiclass_metrics_by_hand():
    # 3 classes; predictions: [0, 1, 1, 2, 2, 0]; truth: [0, 1, 2, 2, 2, 1]
    logits = torch.eye(3)[[0, 1, 1, 2, 2, 0]] * 5
    y = torch.tensor([0, 1, 2, 2, 2, 1])
    m = classification_metrics(logits, y, 3)
    assert m["accuracy"] == 4 / 6
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]
    assert m["per_class_accuracy"] == [1.0, 0.5, 2 / 3]
    # F1 per class: c0: p=1/2 r=1 -> 2/3; c1: p=1/2 r=1/2 -> 1/2; c2: p=1 r=2/3 -> 0.8
    assert math.isclose(m["f1_macro"], (2 / 3 + 0.5 + 0.8) / 3)
    assert 0.0 <= m["roc_auc"] <= 1.0


def test_binary_auc_and_missing_class():
    logits = torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, -1.0], [0.0, 0.5]])
    y = torch.tensor([1, 1, 0, 0])
    m = classification_metrics(logits, y, 2)
    assert m["roc_auc"] == 1.0  # positives score 1, 2; negatives -1, 0.5
    m = classification_metrics(logits, torch.tensor([1, 1, 1, 1]), 2)
    assert math.isnan(m["roc_auc"]) and m["per_class_accuracy"][0] is None


def test_count_parameters():
    assert count_parameters(torch.nn.Linear(3, 2)) == 8


def test_accuracy_alone_is_the_accuracy_of_the_full_metrics():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g)
    logits[:50, 3] = logits[:50, 7]  # ties: both take the first maximum
    y = torch.randint(0, 10, (500,), generator=g)
    full = classification_metrics(logits, y, 10)["accuracy"]
    assert accuracy(logits, y) == full and 0 < full < 1
    assert accuracy(logits, logits.argmax(1)) == 1.0


def test_f1_and_auc_equal_scikit_learns():
    """The rank and confusion-matrix forms give scikit-learn's numbers: many classes, ties,
    a class never predicted, binary."""
    from sklearn.metrics import f1_score, roc_auc_score

    g = torch.Generator().manual_seed(3)
    for classes, n in ((10, 360), (3, 50), (2, 40), (2, 7)):
        logits = torch.randn(n, classes, generator=g).round(decimals=1)  # many ties
        logits[:, -1] -= 5  # the last class is rarely, if ever, predicted
        y = torch.cat([torch.arange(classes), torch.randint(0, classes, (n - classes,),
                                                             generator=g)])
        m = classification_metrics(logits, y, classes)
        probs = torch.softmax(logits, -1).numpy()
        labels = list(range(classes))
        f1 = f1_score(y, probs.argmax(1), average="macro", labels=labels, zero_division=0)
        auc = (roc_auc_score(y, probs[:, 1]) if classes == 2 else
               roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels))
        assert math.isclose(m["f1_macro"], f1, rel_tol=1e-12)
        assert math.isclose(m["roc_auc"], auc, rel_tol=1e-12)
    absent = classification_metrics(torch.randn(6, 3, generator=g), torch.tensor([0, 1] * 3), 3)
    assert math.isnan(absent["roc_auc"])
