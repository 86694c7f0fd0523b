"""Dataset registry: stratified train/validation split of the official train set + test set.

``digits`` and ``breast_cancer`` ship with scikit-learn (no download, the default).  The image
datasets are read from ``data_dir`` in their official on-disk formats (torchvision's folder
layout) and downloaded through torchvision only when ``download=True``.  Whole datasets are
held as tensors; training batches by index permutation, never a per-sample DataLoader.
"""

from __future__ import annotations

import functools
import pickle
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smartmixed_core.errors import ConfigError, choice_error
from smartmixed_core.names import DATASET_NAMES


@dataclass(frozen=True)
class RawData:
    """Official train and test arrays: images ``[N, C, H, W]``, tabular ``[N, F]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    scale: float  # divide by this (255 for 8-bit images, 1 otherwise)
    standardize: bool  # z-score features with train-split statistics


_TENSORS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors of one dataset, ready for training.

    ``per_seed``: every tensor has a leading seeds dimension, seed ``s``'s own split
    (:func:`stack_splits`); otherwise every seed shares them.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    per_seed: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1 + self.per_seed:])

    @property
    def n_train(self) -> int:
        return self.y_train.shape[-1]

    def train_batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Training examples ``idx`` (``[S, batch]``, seed ``s`` row ``s``):
        ``x [S, batch, ...]``, ``y [S, batch]``."""
        if not self.per_seed:
            return self.x_train[idx], self.y_train[idx]
        rows = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
        return self.x_train[rows, idx], self.y_train[rows, idx]

    def labels(self, split: str, s: int) -> Tensor:
        """Seed ``s``'s labels of ``split`` (``train``, ``val``, ``test``)."""
        y = getattr(self, f"y_{split}")
        return y[s] if self.per_seed else y

    def select(self, idx: Sequence[int]) -> Splits:
        """The splits of seeds ``idx`` only (the same object when the seeds share them)."""
        if not self.per_seed:
            return self
        return replace(self, **{f: getattr(self, f)[list(idx)] for f in _TENSORS})

    def to(self, device: torch.device | str) -> Splits:
        return replace(self, **{f: getattr(self, f).to(device) for f in _TENSORS})


def stack_splits(splits: Sequence[Splits]) -> Splits:
    """One :class:`Splits` whose seed ``s`` has ``splits[s]`` (equal sizes)."""
    first = splits[0]
    return replace(first, per_seed=True,
                   **{f: torch.stack([getattr(sp, f) for sp in splits]) for f in _TENSORS})


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


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
DISK_FILES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(f"MNIST/raw/{f}" for f in _MNIST_FILES),
    "fashion_mnist": tuple(f"FashionMNIST/raw/{f}" for f in _MNIST_FILES),
    "cifar10": tuple(f"cifar-10-batches-py/{n}"
                     for n in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]),
    "svhn": ("train_32x32.mat", "test_32x32.mat"),
}
"""The files each on-disk dataset reads, relative to ``data_dir`` (torchvision's layout)."""


def check_data(name: str, data_dir: str | Path | None, download: bool = False) -> None:
    """Raise :class:`DataError` unless ``name`` can be loaded, without reading it: an embedded
    dataset always can; an on-disk one needs every file of :data:`DISK_FILES` under
    ``data_dir``, or ``download`` and a folder that exists or can be created."""
    files = DISK_FILES.get(name)
    if files is None:
        return
    if data_dir is None:
        raise DataError("data_dir", f"{name} is read from disk: pass --data-dir")
    root = Path(data_dir)
    if download:
        _creatable(root)
        return
    if not root.is_dir():
        raise DataError("data_dir", f"{root} is not a readable directory "
                        f"(or pass --download to create it and fetch {name})")
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataError("data_dir", f"{name} not found: missing {', '.join(missing)} under "
                        f"{root} (pass --download to fetch them)")


def _creatable(root: Path) -> None:
    """``root`` is a folder, or the nearest existing folder above it is writable."""
    import os

    if root.exists():
        if not root.is_dir():
            raise DataError("data_dir", f"{root} exists and is not a directory")
        return
    parent = root.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise DataError("data_dir", f"cannot create {root}: {parent} is not a writable directory")


def _fetched(name: str, data_dir: Path | None, download: bool,
             fetch: Callable[[Any, str], object]) -> Path:
    """``data_dir`` with every file of ``name`` present: with ``download``, the folder is
    created and ``fetch(torchvision.datasets, root)`` downloads what is missing.  A failed
    download says why and leaves the disk as it was (what it created is removed)."""
    check_data(name, data_dir, download)
    assert data_dir is not None
    if download and not all((data_dir / f).is_file() for f in DISK_FILES[name]):
        top = data_dir.absolute()  # the highest folder this call creates, if any
        while not top.parent.exists():
            top = top.parent
        before = set(data_dir.iterdir()) if data_dir.exists() else None
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            import torchvision

            fetch(torchvision.datasets, str(data_dir))
        except Exception as exc:  # network errors come in many types
            if before is None:
                shutil.rmtree(top, ignore_errors=True)
            else:
                for entry in set(data_dir.iterdir()) - before:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink()
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise DataError("download", f"could not download {name} into {data_dir}: "
                            f"{reason[:300]}") from None
        check_data(name, data_dir)  # the download must have left every file
    return data_dir


def _torchvision_mnist(cls_name: str, name: str) -> Callable[[Path | None, bool], RawData]:
    def load(data_dir: Path | None, download: bool) -> RawData:
        import torchvision

        root = str(_fetched(name, data_dir, download, lambda tv, r: [
            getattr(tv, cls_name)(r, train=t, download=True) for t in (True, False)]))
        cls = getattr(torchvision.datasets, cls_name)
        tr, te = (cls(root, train=t, download=False) for t in (True, False))
        return RawData(tr.data[:, None].numpy(), tr.targets.numpy(), te.data[:, None].numpy(),
                       te.targets.numpy(), scale=255.0, standardize=False)

    return load


def _cifar10(data_dir: Path | None, download: bool) -> RawData:
    folder = _fetched("cifar10", data_dir, download,
                      lambda tv, root: tv.CIFAR10(root, download=True)) / "cifar-10-batches-py"

    def read(n: str) -> tuple[np.ndarray, np.ndarray]:
        with open(folder / n, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        return (
            np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
            np.asarray(d[b"labels"]),
        )

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    xte, yte = read("test_batch")
    return RawData(np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                   xte, yte, scale=255.0, standardize=False)


def _svhn(data_dir: Path | None, download: bool) -> RawData:
    from scipy.io import loadmat

    root = _fetched("svhn", data_dir, download, lambda tv, r: [
        tv.SVHN(r, split=split, download=True) for split in ("train", "test")])
    arrays = []
    for n in DISK_FILES["svhn"]:
        m = loadmat(root / n)
        # Stored as [32, 32, 3, N]; label 10 means digit 0.
        arrays += [np.transpose(m["X"], (3, 2, 0, 1)), m["y"].reshape(-1) % 10]
    return RawData(*arrays, scale=255.0, standardize=False)


DATASETS: dict[str, Callable[[Path | None, bool], RawData]] = {
    "digits": _sklearn("load_digits", as_image=True),
    "breast_cancer": _sklearn("load_breast_cancer", as_image=False),
    "mnist": _torchvision_mnist("MNIST", "mnist"),
    "fashion_mnist": _torchvision_mnist("FashionMNIST", "fashion_mnist"),
    "cifar10": _cifar10,
    "svhn": _svhn,
}
"""Name -> loader.  ``digits``/``breast_cancer`` are embedded; the rest read ``data_dir``."""
if tuple(DATASETS) != DATASET_NAMES:
    raise ImportError("smartmixed_core.names.DATASET_NAMES must list the loaders' names")


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
    train_size: int | None = None,
) -> Splits:
    """Load ``name`` and split its official train set (stratified, ``split_seed``).

    ``train_size``: train on a stratified subset of that many examples of the training split
    (drawn with ``split_seed``); validation and test sets stay whole.

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
    if train_size is not None and train_size < len(ytr):
        try:
            xtr, _, ytr, _ = train_test_split(xtr, ytr, train_size=train_size,
                                              random_state=split_seed, stratify=ytr)
        except ValueError as exc:
            raise ConfigError("train_size", f"cannot draw {train_size} of {name}'s "
                              f"{len(ytr)} training examples stratified: {exc}") from None
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
