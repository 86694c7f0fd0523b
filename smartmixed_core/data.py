"""Dataset registry: stratified train/validation split of the official train set + test set.

``digits`` and ``breast_cancer`` ship with scikit-learn (no download, the default).  The image
datasets are read from ``data_dir`` in their official on-disk formats (torchvision's folder
layout) and downloaded through torchvision only when ``download=True``.  Whole datasets are
held as tensors; training batches by index permutation, never a per-sample DataLoader.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from smartmixed_core.errors import ConfigError, choice_error


@dataclass(frozen=True)
class RawData:
    """Official train and test arrays: images ``[N, C, H, W]``, tabular ``[N, F]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    scale: float  # divide by this (255 for 8-bit images, 1 otherwise)
    standardize: bool  # z-score features with train-split statistics


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors of one dataset, ready for training."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4

    def to(self, device: torch.device | str) -> Splits:
        return replace(
            self,
            **{
                f: getattr(self, f).to(device)
                for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
            },
        )


class DataError(ConfigError):
    """A dataset cannot be read (missing files, unreadable folder)."""


def _sklearn(loader: str, as_image: bool) -> Callable[[Path | None, bool], RawData]:
    def load(data_dir: Path | None, download: bool) -> RawData:
        from sklearn import datasets
        from sklearn.model_selection import train_test_split

        bunch = getattr(datasets, loader)()
        x = bunch.images[:, None].astype(np.float32) if as_image else bunch.data.astype(np.float32)
        # No official test set: a fixed stratified 20% hold-out, the same for every seed.
        xtr, xte, ytr, yte = train_test_split(
            x, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target
        )
        return RawData(xtr, ytr, xte, yte, scale=1.0, standardize=True)

    return load


def _missing(name: str, folder: Path, files: list[str]) -> DataError:
    return DataError(
        "data_dir",
        f"{name} not found: expected {', '.join(files)} under "
        f"{folder} (pass --download to fetch them)",
    )


def _torchvision_mnist(cls_name: str, name: str) -> Callable[[Path | None, bool], RawData]:
    files = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]

    def load(data_dir: Path | None, download: bool) -> RawData:
        import torchvision

        root = _root(data_dir, name)
        cls = getattr(torchvision.datasets, cls_name)
        try:
            tr, te = (cls(str(root), train=t, download=download) for t in (True, False))
        except RuntimeError:
            raise _missing(name, root / cls_name / "raw", files) from None
        return RawData(
            tr.data[:, None].numpy(),
            tr.targets.numpy(),
            te.data[:, None].numpy(),
            te.targets.numpy(),
            scale=255.0,
            standardize=False,
        )

    return load


def _cifar10(data_dir: Path | None, download: bool) -> RawData:
    root = _root(data_dir, "cifar10")
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if download and not all((folder / n).exists() for n in names):
        import torchvision

        _download(lambda: torchvision.datasets.CIFAR10(str(root), download=True), "cifar10")
    if not all((folder / n).exists() for n in names):
        raise _missing("cifar10", folder, names)

    def read(n: str) -> tuple[np.ndarray, np.ndarray]:
        with open(folder / n, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        return (
            np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
            np.asarray(d[b"labels"]),
        )

    train = [read(n) for n in names[:-1]]
    xte, yte = read("test_batch")
    return RawData(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        xte,
        yte,
        scale=255.0,
        standardize=False,
    )


def _svhn(data_dir: Path | None, download: bool) -> RawData:
    from scipy.io import loadmat

    root = _root(data_dir, "svhn")
    names = ["train_32x32.mat", "test_32x32.mat"]
    if download and not all((root / n).exists() for n in names):
        import torchvision

        for split in ("train", "test"):
            _download(
                lambda s=split: torchvision.datasets.SVHN(str(root), split=s, download=True), "svhn"
            )
    if not all((root / n).exists() for n in names):
        raise _missing("svhn", root, names)
    arrays = []
    for n in names:
        m = loadmat(root / n)
        # Stored as [32, 32, 3, N]; label 10 means digit 0.
        arrays += [np.transpose(m["X"], (3, 2, 0, 1)), m["y"].reshape(-1) % 10]
    return RawData(*arrays, scale=255.0, standardize=False)


def _root(data_dir: Path | None, name: str) -> Path:
    if data_dir is None:
        raise DataError("data_dir", f"{name} is read from disk: pass --data-dir")
    if not data_dir.is_dir():
        raise DataError("data_dir", f"{data_dir} is not a readable directory")
    return data_dir


def _download(fetch: Callable[[], object], name: str) -> None:
    try:
        fetch()
    except Exception as exc:  # network errors come in many types
        raise DataError("download", f"could not download {name}: {exc}".splitlines()[0]) from None


DATASETS: dict[str, Callable[[Path | None, bool], RawData]] = {
    "digits": _sklearn("load_digits", as_image=True),
    "breast_cancer": _sklearn("load_breast_cancer", as_image=False),
    "mnist": _torchvision_mnist("MNIST", "mnist"),
    "fashion_mnist": _torchvision_mnist("FashionMNIST", "fashion_mnist"),
    "cifar10": _cifar10,
    "svhn": _svhn,
}
"""Name -> loader.  ``digits``/``breast_cancer`` are embedded; the rest read ``data_dir``."""

EMBEDDED = ("digits", "breast_cancer")


@functools.lru_cache(maxsize=4)
def _load_raw(name: str, data_dir: str | None, download: bool) -> RawData:
    return DATASETS[name](Path(data_dir) if data_dir else None, download)


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = False,
    normalize_images: bool = False,
) -> Splits:
    """Load ``name`` and split its official train set (stratified, ``split_seed``).

    Tabular features are standardised with train-split statistics only.  Images are scaled
    to [0, 1]; ``normalize_images`` maps them to [-1, 1] (mean/std 0.5, AdAct's setting).
    """
    if name not in DATASETS:
        raise choice_error("dataset", name, DATASETS)
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError("val_fraction", f"must be in (0, 1), got {val_fraction}")
    from sklearn.model_selection import train_test_split

    raw = _load_raw(name, str(data_dir) if data_dir else None, download)
    try:
        xtr, xval, ytr, yval = train_test_split(
            raw.x_train,
            raw.y_train,
            test_size=val_fraction,
            random_state=split_seed,
            stratify=raw.y_train,
        )
    except ValueError as exc:  # too few samples per class to stratify
        raise ConfigError(
            "val_fraction", f"cannot split {name} ({len(raw.y_train)} samples) stratified: {exc}"
        ) from None
    xs = [np.asarray(x, dtype=np.float32) / raw.scale for x in (xtr, xval, raw.x_test)]
    if raw.standardize:
        mean = xs[0].mean(0, keepdims=True)
        std = xs[0].std(0, keepdims=True)
        std[std == 0] = 1.0
        xs = [(x - mean) / std for x in xs]
    elif normalize_images:
        xs = [(x - 0.5) / 0.5 for x in xs]
    ys = [np.asarray(y, dtype=np.int64) for y in (ytr, yval, raw.y_test)]
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in (*xs, *ys)]
    return Splits(
        name, t[0], t[3], t[1], t[4], t[2], t[5], num_classes=int(max(y.max() for y in ys)) + 1
    )
