"""Datasets: ``load_dataset(name_or_path)`` returns train and test images as float32 NCHW in
[0, 1] and int64 labels, from MNIST/Fashion-MNIST (IDX), CIFAR-10 (python batches), an ``.npz``
file, a directory of pictures in class folders or the built-in ``synthetic`` set; an ``.npz``
(``x_val``, ``y_val``) or a directory (``val/``) may also bring a validation set of its own.
Standardization is left to the caller (``channel_stats`` / ``standardize``); ``val_split``
holds a seeded validation set out of train for the datasets without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..layers import suggest
from . import formats, pictures, sources
from .sources import KNOWN, DatasetNotFound, locate, search_dirs
from .synthetic import make_synthetic

__all__ = [
    "Dataset", "DatasetNotFound", "KNOWN", "NAMES", "load_dataset", "val_split", "channel_stats",
    "standardize", "locate", "search_dirs", "class_names_for", "is_picture_directory",
    "absolute_path",
]

NAMES = ("fashion-mnist", "mnist", "cifar10", "synthetic")
SPLITS = ("train", "val", "test")  # "val" is optional: read where the dataset has one
MAIN_SPLITS = ("train", "test")  # every dataset has them (empty when not read)


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list
    source: str  # where it was read from
    x_val: np.ndarray | None = None  # the dataset's own validation set; None when it has none
    y_val: np.ndarray | None = None
    test_source: str | None = None  # where the test set came from, when not a split of its own

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        labels = (self.y_train, self.y_test) + ((self.y_val,) if self.y_val is not None else ())
        top = max(int(y.max(initial=0)) for y in labels) + 1
        return max(len(self.class_names or ()), top)

    def without_images(self) -> Dataset:
        """This dataset with its images let go (each split an empty array of the same image
        shape and dtype), all else kept: for a caller done with them, such as a training run
        that has standardized copies."""
        def emptied(x):
            return None if x is None else np.empty((0,) + x.shape[1:], x.dtype)
        return replace(self, x_train=emptied(self.x_train), x_test=emptied(self.x_test),
                       x_val=emptied(self.x_val))


def load_dataset(name: str, data_dir=None, download: bool = True, log=None,
                 splits=SPLITS, classes=None, image_size=None, channels=None) -> Dataset:
    """Load a known dataset by name, or by path an ``.npz`` file or a directory of pictures
    (``train/<class>/*.png``, ``test/<class>/...``, or class folders alone, whose test set is
    a share of each: see ``pictures``).

    ``splits`` names the splits to read: a split left out is never read from disk (nor need an
    ``.npz`` hold it) and comes back empty, with the images' shape; ``cnnx evaluate`` reads only
    ``("test",)``, which spares CIFAR-10 its 600 MB of training images. "val" is read where
    the dataset has a validation set of its own (an ``.npz``'s ``x_val`` and ``y_val``, a
    directory's ``val/``); ``x_val`` and ``y_val`` are None otherwise. ``log`` (a callable
    taking one string) hears about downloads. ``data_dir``: where to look first for a known
    dataset (``sources.search_dirs``); a ValueError for any other. For a directory of pictures
    only: ``classes``, the class names to label them by (e.g. a checkpoint's) instead of
    train/'s folders; ``image_size`` = (height, width), to resize every picture to;
    ``channels``, 1 or 3. Raises DatasetNotFound or ValueError with a one-line message for missing, corrupt or
    malformed data.
    """
    splits = tuple(splits)
    if not set(splits) <= set(SPLITS) or not set(MAIN_SPLITS) & set(splits):
        raise ValueError(f"splits must be some of {SPLITS}, with train or test, got {splits}")
    if not is_picture_directory(name) and (image_size, channels, classes) != (None, None, None):
        raise ValueError(f"image size, channels and classes are chosen for a directory of "
                         f"pictures only; {name} comes as it is")
    if data_dir and name not in KNOWN:  # it would be ignored without a word
        *others, last = KNOWN
        raise ValueError(f"--data-dir is where {', '.join(others)} and {last} are looked for; "
                         + ("synthetic is generated: leave out --data-dir" if name == "synthetic"
                            else "give the .npz's (or the picture directory's) path in --dataset "
                                 "and leave out --data-dir"))
    if name == "synthetic":
        arrays = make_synthetic()
        for split in set(MAIN_SPLITS) - set(splits):
            del arrays[f"x_{split}"], arrays[f"y_{split}"]
        return _from_dict("synthetic", arrays, "generated (seed 0)")
    if name in KNOWN:
        return _load_known(name, data_dir, download, log, splits)
    path = Path(name).expanduser()
    if path.is_dir():
        arrays = pictures.read_picture_folders(path, splits, classes, image_size, channels)
        return _from_dict(path.resolve().name, arrays, str(path))
    if path.suffix == ".npz" or path.is_file():
        if not path.is_file():
            raise ValueError(f"dataset file {path} does not exist")
        return _from_dict(path.stem, formats.read_npz(path, splits), str(path))
    hint = suggest(name.lower(), NAMES)  # the names are lower case
    if not hint and (path.suffix or "/" in name):  # meant as a path
        raise ValueError(f"dataset {name!r}: no such file or directory")
    raise ValueError(f"unknown dataset {name!r}{hint}: use one of {', '.join(NAMES)}, a path to "
                     "an .npz or a directory of pictures in class folders")


def absolute_path(name: str) -> str:
    """``name`` as an absolute path when it names a file or directory here (what a run saves,
    so that resuming or evaluating from another directory reads the same data), else as is
    (a dataset's name, or a path that does not exist, for load_dataset to report)."""
    if name in NAMES or not Path(name).expanduser().exists():
        return name
    return str(Path(name).expanduser().resolve())


def is_picture_directory(name: str) -> bool:
    """Whether ``load_dataset(name)`` reads a directory of pictures in class folders."""
    return name not in NAMES and Path(name).expanduser().is_dir()


def class_names_for(name: str) -> list | None:
    """Class names of a known dataset, None for others."""
    if name == "synthetic":
        return make_synthetic(1, 1)["class_names"]
    return list(KNOWN[name].class_names) if name in KNOWN else None


def _from_dict(name, d, source) -> Dataset:
    """A Dataset from the arrays read; train or test, when not read, becomes empty."""
    x_read = next(d[f"x_{split}"] for split in SPLITS if f"x_{split}" in d)
    for split in MAIN_SPLITS:
        d.setdefault(f"x_{split}", x_read[:0])
        d.setdefault(f"y_{split}", np.empty(0, np.int64))
    names = d.get("class_names") or class_names_for(name) or []
    return Dataset(name, d["x_train"], d["y_train"], d["x_test"], d["y_test"], list(names), source,
                   d.get("x_val"), d.get("y_val"), d.get("test_source"))


def _load_known(name, data_dir, download, log, splits) -> Dataset:
    known = KNOWN[name]
    if data_dir:
        sources.check_data_dir(name, data_dir)
    found = locate(name, data_dir)
    if found is None:
        if not download:
            raise sources.not_found(known, "downloading was not allowed")
        sources.download(name, log)
        found = locate(name, data_dir)
    directory, files = found
    if known.format == "cifar":
        arrays = _read_cifar(files, splits)
    else:
        arrays = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            if split in splits:
                arrays[f"x_{split}"], arrays[f"y_{split}"] = formats.read_idx_pair(
                    files[f"{prefix}-images-idx3-ubyte.gz"], files[f"{prefix}-labels-idx1-ubyte.gz"])
    _check_known(known, arrays, directory)
    arrays["class_names"] = list(known.class_names)
    return _from_dict(name, arrays, str(directory))


def _check_known(known, arrays: dict, directory) -> None:
    """What the files' own checks cannot see: train and test images of two sizes (files of
    two datasets in one directory), labels beyond the dataset's classes (a damaged file)."""
    shapes = {split: arrays[f"x_{split}"].shape[1:]
              for split in MAIN_SPLITS if f"x_{split}" in arrays}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{directory}: {known.name}'s images differ in shape between "
                         + ", ".join(f"{split} {shape}" for split, shape in shapes.items())
                         + ": its files come from two datasets; replace the odd ones")
    classes = len(known.class_names)
    for split in shapes:
        top = int(arrays[f"y_{split}"].max(initial=0))
        if top >= classes:
            raise ValueError(f"{directory}: {known.name}'s {split} labels go up to {top}, but it "
                             f"has {classes} classes (0..{classes - 1}): a damaged labels file; "
                             "replace it")


def _read_cifar(files: dict, splits) -> dict:
    train_members, test_member = sources.CIFAR_MEMBERS[:-1], sources.CIFAR_MEMBERS[-1]
    wanted = (train_members if "train" in splits else ()) + ((test_member,) if "test" in splits else ())
    if "archive" in files:
        members = formats.read_cifar_tar(files["archive"], wanted)
        where = lambda m: f"{files['archive']}:{m}"  # noqa: E731
    else:
        members = {m: (files["dir"] / m).read_bytes() for m in wanted}
        where = lambda m: files["dir"] / m  # noqa: E731
    missing = [m for m in wanted if m not in members]
    if missing:
        raise ValueError(f"{files.get('archive')}: archive lacks {', '.join(missing)}")
    arrays = {}
    if "train" in splits:
        train = [formats.parse_cifar_batch(members[m], where(m)) for m in train_members]
        arrays["x_train"] = np.concatenate([x for x, _ in train])
        arrays["y_train"] = np.concatenate([y for _, y in train])
    if "test" in splits:
        arrays["x_test"], arrays["y_test"] = formats.parse_cifar_batch(members[test_member],
                                                                       where(test_member))
    return arrays


def val_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int = 0):
    """Hold out ``fraction`` of (x, y) at random (seeded): ``(x_train, y_train, x_val, y_val)``.

    ``fraction`` 0 gives an empty validation set; at least one example stays in training.
    Python lists are taken as arrays.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    x = x if hasattr(x, "shape") else np.asarray(x)
    y = y if hasattr(y, "shape") else np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"val_split: {len(x)} inputs but {len(y)} targets")
    n_val = int(round(len(x) * fraction))
    if n_val >= len(x):
        raise ValueError(f"validation fraction {fraction} leaves no training examples")
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[train], y[train], x[val], y[val]


#: numbers that channel_stats takes at a time: a chunk of examples in float64, never all of them
STATS_CHUNK = 1 << 20


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of NCHW images (float32, shape (C,)), summed
    in float64 a chunk of examples at a time (``x.std(dtype=np.float64)`` would hold a float64
    copy of the whole dataset: twice its float32 size)."""
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    rows = max(1, STATS_CHUNK // max(1, math.prod(x.shape[1:])))
    squares = np.zeros_like(mean)
    for start in range(0, len(x), rows):
        centred = x[start:start + rows] - mean.reshape(1, -1, 1, 1)
        squares += np.square(centred, out=centred).sum(axis=(0, 2, 3))
    std = np.sqrt(squares / (x.size // max(1, x.shape[1])))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def standardize(x: np.ndarray, mean, std) -> np.ndarray:
    """``(x - mean) / std`` per channel, float32 (one new array, divided in place)."""
    mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    out = x - mean
    out /= std
    return out.astype(np.float32, copy=False)
