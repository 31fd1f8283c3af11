"""A training run on disk, as ``cnnx train`` drives it: data, model, checkpoints, metrics.

``train(options, out, device, resume, listener)`` writes into ``out``:

- ``checkpoint.npz`` after every epoch (and every ``checkpoint_every`` steps when set),
  ``best.npz`` whenever the validation accuracy improves;
- ``metrics.jsonl`` (one object per epoch), ``result.json`` (test accuracy, config, ...),
  ``curves.png`` when matplotlib is installed.

Every file is replaced atomically, so an interrupted run (Ctrl-C, SIGKILL, power loss) leaves
the last good checkpoint, and ``resume=True`` continues from it. On the CPU the resumed run ends
with exactly the weights of an uninterrupted one: the batches are re-derived from the seed and
the (epoch, step) position (``cnnx.train.epoch_order``), and weights and optimizer buffers are
restored bit for bit.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from . import checkpoint, data, models, report
from .backends import get_backend
from .graph import check_replayable
from .layers.base import DTYPES
from .optim import OPTIMIZERS
from .schedules import SCHEDULES
from .session import OWN, Session, test_source, validation_source
from .train import TrainingDiverged, stop_early

DEFAULT_VAL_SPLIT = 0.1  # of train held out for validation when a dataset has no val set


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (saved in its checkpoints and result.json)."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    model: str = "reference"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    val_split: float | None = None  # None: DEFAULT_VAL_SPLIT, or the dataset's own val set
    seed: int = 0
    dtype: str = "float32"
    schedule: str = "constant"  # learning-rate schedule: constant, step, cosine
    warmup: float = 0.0  # epochs of linear learning-rate warm-up
    flip: float = 0.0  # augmentation: probability of a horizontal flip
    shift: int = 0  # augmentation: random translation of up to this many pixels
    patience: int | None = None  # early stopping after this many epochs without improvement
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: at epoch ends only)
    image_size: list | None = None  # [height, width] to resize a directory's pictures to

    def check(self) -> "TrainConfig":
        rules = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (0 < self.lr < math.inf, f"--lr must be a finite number > 0, got {self.lr}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (0 <= self.weight_decay < math.inf,
             f"--weight-decay must be a finite number >= 0, got {self.weight_decay}"),
            (self.val_split is None or 0 <= self.val_split < 1,
             f"--val-split must be in [0, 1), got {self.val_split}"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.warmup < math.inf,
             f"--warmup must be a finite number >= 0, got {self.warmup}"),
            (self.warmup == 0 or self.warmup < self.epochs,
             f"--warmup {self.warmup:g} epochs is not shorter than the run's {self.epochs}: give "
             "a --warmup below --epochs (or more --epochs)"),
            (0 <= self.flip <= 1 and self.shift >= 0, "--flip must be in [0, 1], --shift >= 0"),
            (self.patience is None or self.patience >= 1, "--patience must be >= 1"),
            (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
            (self.image_size is None or (len(self.image_size) == 2 and min(self.image_size) >= 1),
             f"--image-size must be HEIGHT,WIDTH in pixels, got {self.image_size}"),
        ]
        for ok, message in rules:
            if not ok:
                raise ValueError(message)
        return self


class Listener:
    """What a run reports as it goes; the command line prints it, tests may record it."""

    def message(self, text: str) -> None:
        """A line of information (device, downloads, where files went)."""

    def batch(self, status: dict) -> None:
        """After every step: epoch, epochs, step, steps, seen, loss, accuracy (callables), started."""

    def epoch(self, record: dict) -> None:
        """After every epoch, with its metrics record."""


@dataclasses.dataclass
class Prepared:
    dataset: data.Dataset
    train: tuple
    val: tuple | None
    test: tuple
    preprocess: dict


def prepare_data(cfg: TrainConfig, log=None) -> Prepared:
    """Load the dataset, take its own validation set or hold one out of train (seeded,
    ``cfg.val_split``, else DEFAULT_VAL_SPLIT) and standardize every split with the
    per-channel statistics of the training part."""
    if cfg.image_size and not data.is_picture_directory(cfg.dataset):
        raise ValueError(f"--image-size resizes a directory of pictures; {cfg.dataset} images "
                         "come in one size already")
    ds = data.load_dataset(cfg.dataset, cfg.data_dir, log=log, image_size=cfg.image_size)
    height, width = ds.input_shape[1:]
    if cfg.shift >= min(height, width):  # some images would hold nothing but black
        raise ValueError(f"--shift {cfg.shift} can move an image of {ds.name} ({height}x{width}) "
                         f"wholly out of its frame: give a --shift below {min(height, width)}")
    if len(np.unique(ds.y_train)) < 2:  # it would learn that class: "accuracy 1.0, good fit"
        raise ValueError(f"the training labels of {ds.source} hold one class only "
                         f"({ds.y_train[0]}): a classifier needs two or more")
    if ds.x_val is None:
        fraction = DEFAULT_VAL_SPLIT if cfg.val_split is None else cfg.val_split
        xt, yt, xv, yv = data.val_split(ds.x_train, ds.y_train, fraction, cfg.seed)
        if fraction and not len(yv):  # a fraction of too few images rounds to none
            rounds = (f"{fraction:g} of {len(ds.y_train)} training images rounds to no "
                      "validation images")
            if cfg.val_split is not None:
                raise ValueError(f"--val-split {fraction:g}: {rounds}; give a larger --val-split, "
                                 "or 0 for no validation set")
            if log:
                log(f"no validation set: {rounds}")
    elif cfg.val_split is not None:  # two validation sets: which one was meant?
        own = "its val/ folder" if data.is_picture_directory(cfg.dataset) else "x_val, y_val"
        raise ValueError(f"--val-split {cfg.val_split}: {cfg.dataset} has a validation set of "
                         f"its own ({own}); leave --val-split out to use it")
    else:
        xt, yt, xv, yv = ds.x_train, ds.y_train, ds.x_val, ds.y_val
    mean, std = data.channel_stats(xt)
    norm = lambda x: data.standardize(x, mean, std)  # noqa: E731
    val = (norm(xv), yv) if len(yv) else None
    if val is None and cfg.patience is not None:  # fit would never stop early, without a word
        raise ValueError(f"--patience {cfg.patience} stops on the validation loss: it needs a "
                         "validation set (--val-split > 0, or a dataset with one of its own)")
    return Prepared(ds, (norm(xt), yt), val, (norm(ds.x_test), ds.y_test),
                    {"mean": mean.tolist(), "std": std.tolist()})


def check_same_splits(ck: checkpoint.Checkpoint, ds: data.Dataset) -> None:
    """A resumed run keeps where its validation and test sets came from: a val/ folder that
    appeared (or went) since, or train/ and test/ folders made around class folders that stood
    alone, would change its training set."""
    saved, now = ck.header.get("validation"), validation_source(ds)
    if saved is not None and saved != now:
        raise ValueError(f"{ds.source} {'now has' if now == OWN else 'no longer has'} a "
                         f"validation set of its own, but this run's validation set was {saved}; "
                         f"{KEEPS_ITS_TRAINING_SET}")
    saved, now = ck.header.get("test"), test_source(ds)
    if saved is not None and saved != now:
        raise ValueError(f"{ds.source}'s test set is now {now}, but this run's was {saved}; "
                         f"{KEEPS_ITS_TRAINING_SET}")


KEEPS_ITS_TRAINING_SET = ("a resumed run keeps its training set: restore the dataset as it was or "
                          "start a new run")


def build_model(cfg: TrainConfig, ds: data.Dataset):
    """The model named by ``cfg.model`` sized for the dataset; ValueError when it cannot fit."""
    try:
        model = models.build(cfg.model, dtype=cfg.dtype, seed=cfg.seed, input_shape=ds.input_shape,
                             classes=ds.num_classes)
    except models.ModelSpecError:
        raise  # the description itself is wrong: its message says where
    except ValueError as exc:
        raise ValueError(f"model {cfg.model!r} does not fit {ds.name} images "
                         f"{ds.input_shape}: {exc}") from None
    check_outputs(model, ds)
    check_scores(model)
    return model


def check_outputs(model, ds: data.Dataset) -> None:
    outputs = model.shapes()[-1]
    if outputs != (ds.num_classes,):
        fix = (f"give its last layer {ds.num_classes} outputs" if len(outputs) == 1 else
               f"end it with a Flatten and a Dense layer of {ds.num_classes} outputs, one score "
               f"per class")
        raise ValueError(f"the model outputs shape {outputs} per example but {ds.name} has "
                         f"{ds.num_classes} classes: {fix}")


def check_scores(model) -> None:
    """ValueError when a new model ends in a Softmax: training's loss applies one itself."""
    for index in range(len(model.layers) - 1, -1, -1):
        name = model.layers[index].name
        if name == "Softmax":  # trained through SoftmaxCrossEntropy, it would be applied twice
            raise ValueError(f"the model ends with a Softmax (layer {index}), but cnnx train "
                             f"takes class scores (logits) and applies the softmax in its loss, "
                             f"as predict does: remove the Softmax layer")
        if name not in ("Identity", "Dropout", "Flatten"):
            break


def resolve_config(options: dict, ck: checkpoint.Checkpoint | None) -> TrainConfig:
    """The defaults, then the model's training recipe (or, when resuming, the checkpoint's
    saved config), then the explicitly given ``options``."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if ck is not None:
        if options.get("dtype", ck.dtype) != ck.dtype:  # weights and buffers stay as saved
            raise ValueError(f"--dtype {options['dtype']}: this run trains in {ck.dtype} and a "
                             f"resumed run keeps its dtype; start a new run for {options['dtype']}")
        base = {k: v for k, v in (ck.header.get("config") or {}).items() if k in fields}
        _keep_the_training_set(options, base)
        wanted = options.get("image_size")  # the size the model takes is the one to ask for
        if wanted is not None and tuple(wanted) != tuple(ck.input_shape[1:]):
            raise ValueError(f"--image-size: this run's model takes pictures of "
                             f"{ck.input_shape[1]},{ck.input_shape[2]} pixels and a resumed run "
                             "keeps its image size; start a new run for another")
    else:
        base = _recipe_fitted(models.recipe(options.get("model", TrainConfig.model)), options)
    if "dataset" in options:  # saved as found now: a resume or evaluate elsewhere finds it too
        options = {**options, "dataset": data.absolute_path(options["dataset"])}
    merged = {**base, **options}
    unknown = set(merged) - fields
    if unknown:
        raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    return TrainConfig(**merged).check()


def _keep_the_training_set(options: dict, saved: dict) -> None:
    """A resumed run trains on the examples it started with: a new --seed or --val-split would
    draw another validation set, partly out of the examples trained on so far."""
    def effective(key, config):
        value = config.get(key)
        return DEFAULT_VAL_SPLIT if key == "val_split" and value is None else value
    for key, option in (("seed", "--seed"), ("val_split", "--val-split")):
        if key in options and key in saved and effective(key, options) != effective(key, saved):
            raise ValueError(f"{option} {options[key]:g}: this run's validation set was drawn "
                             f"with {option} {effective(key, saved):g}, and a resumed run keeps its "
                             f"training set; leave {option} out, or start a new run")


def _recipe_fitted(recipe: dict, options: dict) -> dict:
    """A model's training recipe for a new run with ``options``: its warm-up, when --warmup
    is not given, shortened to half a run that --epochs makes shorter than twice it (fmnist-bn's
    one-epoch warm-up with --epochs 1), so that the saved config says what is used (a --warmup
    given is never changed: TrainConfig.check refuses one not shorter than the run); its early
    stopping dropped with --val-split 0, which leaves nothing to stop on."""
    recipe = dict(recipe)
    epochs = options.get("epochs", recipe.get("epochs", TrainConfig.epochs))
    if "warmup" not in options and recipe.get("warmup", 0) > epochs / 2:
        recipe["warmup"] = epochs / 2
    if options.get("val_split") == 0 and "patience" not in options:
        recipe.pop("patience", None)
    return recipe


def check_epochs_left(ck: checkpoint.Checkpoint, cfg: TrainConfig, out) -> None:
    """Before resuming the run in ``out`` from ``ck`` with settings ``cfg``: ValueError unless
    it has epochs left to train. A run that trained all its epochs, or stopped early, would
    train nothing and still rewrite result.json; unless it was stopped (Ctrl-C, a full disk)
    after its last epoch, before its result.json was written: resuming it writes its results."""
    unfinished = not ck.step and not wrote_result(out, ck)  # its results are left to write
    if ck.epoch > cfg.epochs or (ck.epoch == cfg.epochs and not unfinished):
        raise ValueError(f"{out} already trained {ck.epoch} epoch{'s' if ck.epoch != 1 else ''}: "
                         f"give --epochs above {ck.epoch} to train on")
    if not ck.step and not unfinished and stop_early([r.get("val_loss") for r in ck.metrics],
                                                     cfg.patience):
        raise ValueError(f"{out} stopped early at epoch {ck.epoch} (patience {cfg.patience}): "
                         "give a larger --patience to go on")


def wrote_result(out, ck: checkpoint.Checkpoint) -> bool:
    """Whether the run in ``out`` wrote its result.json (the last file a run writes) after the
    epochs of its checkpoint ``ck``."""
    try:
        result = json.loads((Path(out) / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(result, dict) and result.get("epochs") == ck.epoch


def default_out() -> Path:
    """A new, empty directory runs/<date>-<time>, made here: two runs started in the same
    second get two (the second's name ends in -2), instead of writing into one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        path = Path("runs") / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)  # fails if another run made it first
            return path
        except FileExistsError:
            continue


def train(options: dict, out=None, device: str = "auto", resume: bool = False,
          listener: Listener | None = None, cuda_graph: bool = False) -> dict:
    """Run (or, with ``resume``, continue) a training run in ``out``; returns result.json's dict.

    ``options``: TrainConfig fields given explicitly (on resume they override the saved ones).
    ``cuda_graph``: replay the training steps from a CUDA graph (how it runs, not what it
    computes, so it is not part of the saved config).
    """
    out = Path(out) if out is not None else default_out()
    # a directory made for this run (or found empty) is removed again if no checkpoint lands;
    # --resume makes none (an empty one it names is refused, and kept)
    created = not resume and (not out.exists() or (out.is_dir() and not any(out.iterdir())))
    try:
        return _train_in(out, options, device, resume, listener or Listener(), cuda_graph)
    except BaseException:
        if created and not (out / "checkpoint.npz").exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing worth keeping: leave no trace
        raise


def _train_in(out: Path, options: dict, device: str, resume: bool, listener: Listener,
              cuda_graph: bool) -> dict:
    ck = checkpoint.load(out / "checkpoint.npz") if resume else None
    if not resume and (out / "checkpoint.npz").exists():
        raise ValueError(f"{out} already holds a run: continue it with --resume {out} "
                         "or choose another --out")
    cfg = resolve_config(options, ck)
    if ck is not None:  # before anything is read or written
        check_epochs_left(ck, cfg, out)
    _make_run_directory(out)  # before the data is read: an --out it cannot make fails at once
    backend = get_backend(device)
    prep = prepare_data(cfg, log=listener.message)
    prep.dataset = prep.dataset.without_images()  # training holds the standardized copies only
    if ck is not None:
        check_same_splits(ck, prep.dataset)
    model = _model_for(cfg, prep.dataset, ck, explicit_model="model" in options).to(backend)
    if cuda_graph:
        check_replayable(model)  # before anything is written
    optimizer = make_optimizer(cfg, model)
    session = Session(cfg, model, optimizer, prep, out, listener, backend.name, cuda_graph)
    if ck is not None:
        session.restore(ck)
    listener.message(report.device_line(device, backend)
                     + (", training steps replayed from a CUDA graph" if cuda_graph else ""))
    source = validation_source(prep.dataset)
    own = f" ({source})" if source == OWN else ""
    held_out = f" ({prep.dataset.test_source})" if prep.dataset.test_source else ""
    listener.message(f"training {cfg.model} on {prep.dataset.name} ({prep.dataset.source}): "
                     f"{len(prep.train[1])} train / {len(prep.val[1]) if prep.val else 0} "
                     f"validation{own} / {len(prep.test[1])} test images{held_out}; writing to "
                     f"{out}")
    _remove_stale_temporaries(out)
    session.write_metrics()  # now, not after an epoch: a directory it cannot write says so at once
    try:
        # A diverging run overflows long before its loss reads NaN: TrainingDiverged says so
        # in one line, instead of NumPy's warnings from deep inside the layers.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            session.run()
        return session.finish()
    except TrainingDiverged as exc:
        if (out / "checkpoint.npz").exists():
            raise TrainingDiverged(f"{exc}; the last checkpoint, from before, is intact: "
                                   f"cnnx train --resume {out} --lr <lower>") from None
        raise
    except OSError as exc:  # a full disk, a directory gone read-only: the run can go on later
        if (out / "checkpoint.npz").exists():
            error = OSError(f"{exc}; the last checkpoint is intact: once that is fixed, "
                            f"continue with cnnx train --resume {out}")
            error.errno = exc.errno
            raise error from exc
        raise


def make_optimizer(cfg: TrainConfig, model):
    if cfg.optimizer == "sgd":
        return OPTIMIZERS["sgd"](model, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return OPTIMIZERS[cfg.optimizer](model, cfg.lr, weight_decay=cfg.weight_decay)


def _model_for(cfg, ds, ck, explicit_model: bool):
    if ck is None or explicit_model:
        model = build_model(cfg, ds)
        if ck is not None:
            ck.check_model(model)
        return model
    model = ck.build_model()
    if model.input_shape != ds.input_shape:
        raise ValueError(f"{ck.path} expects images {model.input_shape}, "
                         f"{ds.name} has {ds.input_shape}")
    check_outputs(model, ds)
    return model


def _make_run_directory(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # under a file, on a read-only or pseudo file system (/proc)
        error = OSError(f"cannot make the run directory {out}: {exc.strerror or exc}; "
                        "choose another --out")
        error.errno = exc.errno
        raise error from exc


def _remove_stale_temporaries(out: Path) -> None:
    """Temp files a killed process left behind mid-write (never the real files)."""
    for path in out.glob(".*.tmp"):
        path.unlink()
