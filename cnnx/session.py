"""One training run in progress: the callbacks ``fit`` calls, the checkpoints they write, and
the run's files. ``cnnx.run.train`` builds a Session; see that module for the file layout."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from . import checkpoint, report
from .augment import Augment
from .losses import SoftmaxCrossEntropy
from .schedules import SCHEDULES
from .train import TrainingDiverged, batch_slices, epoch_order, evaluate, fit, stop_early

RNG_SCHEME = "cnnx.train.epoch_order(seed, epoch)"  # how the shuffle order is derived
TRAIN_SUBSET_FOR_J = 10_000  # at most this many training examples measure J_train at the end
OWN, HELD_OUT = "the dataset's own", "held out of train"  # where a validation set came from


def validation_source(ds) -> str:
    """Where ``ds``'s validation set comes from (saved in checkpoints: a resume keeps it)."""
    return OWN if ds.x_val is not None else HELD_OUT


def test_source(ds) -> str:
    """Where ``ds``'s test set comes from (saved in checkpoints: a resume keeps it)."""
    return ds.test_source or OWN


class Session:
    def __init__(self, cfg, model, optimizer, prep, out: Path, listener, device: str,
                 cuda_graph: bool = False):
        self.cfg, self.model, self.optimizer, self.prep = cfg, model, optimizer, prep
        self.out, self.listener, self.device = Path(out), listener, device
        self.cuda_graph = cuda_graph
        self.loss = SoftmaxCrossEntropy()
        self.n = len(prep.train[1])
        self.steps = len(batch_slices(self.n, cfg.batch_size, drop_last=False))
        self.schedule = make_schedule(cfg)
        self.augment = None
        if cfg.flip or cfg.shift:  # shifted-in pixels black, as the standardized images hold it
            stats = prep.preprocess
            black = [-m / s for m, s in zip(stats["mean"], stats["std"])]
            self.augment = Augment(cfg.flip, cfg.shift, fill=black)
        self.history: list = []
        self.best: dict | None = None
        self.start = (0, 0)
        self._sums(None)

    # ---------------------------------------------------------------- resuming
    def restore(self, ck: checkpoint.Checkpoint) -> None:
        """Continue from ``ck``: weights, optimizer buffers, history, position in the epoch."""
        saved = ck.header.get("config") or {}
        if ck.step and saved.get("batch_size", self.cfg.batch_size) != self.cfg.batch_size:
            raise checkpoint.CheckpointError(
                f"{ck.path} stopped inside epoch {ck.epoch + 1}, after step {ck.step} of batch "
                f"size {saved['batch_size']}: finish that epoch with its batch size first "
                f"(cnnx train --resume {self.out} --epochs {ck.epoch + 1}), then resume with "
                f"--batch-size {self.cfg.batch_size}")
        self.model.load_state_dict(ck.model_state)
        switched = saved.get("optimizer", self.cfg.optimizer) != self.cfg.optimizer
        if switched:
            self.listener.message(f"optimizer changed from {saved['optimizer']} to "
                                  f"{self.cfg.optimizer}: its buffers start empty")
        if ck.optimizer_state is not None and not switched:
            # the buffers continue; the settings are the run's: the saved ones unless the
            # command line changed them (`--resume DIR --lr X`)
            self.optimizer.load_state_dict(ck.optimizer_state, hyperparameters=False)
        self.history, self.best = ck.metrics, ck.header.get("best")
        self._restore_best(ck)
        self.start = (ck.epoch, ck.step)
        if ck.step:
            expected = epoch_order(self.n, self.cfg.seed, ck.epoch)
            if ck.order is None or not np.array_equal(ck.order, expected):
                raise checkpoint.CheckpointError(
                    f"{ck.path}: the training data or its shuffling differ from the run that "
                    "saved this checkpoint; it cannot be resumed exactly")
            self._sums(ck.header.get("partial"))
        self.write_metrics()  # in case the run died between its checkpoint and its metrics

    def _sums(self, partial: dict | None) -> None:
        """Running totals of the epoch in progress (restored when resuming mid-epoch)."""
        partial = partial or {}
        self.loss_sum = partial.get("loss_sum", 0)
        self.correct = partial.get("correct", 0)
        self.seen = partial.get("seen", 0)
        self.seconds_before = partial.get("seconds", 0.0)
        self.epoch_started = time.perf_counter()
        self.seen_here = 0

    # ---------------------------------------------------------------- training
    def run(self) -> None:
        epoch, step = self.start
        if epoch >= self.cfg.epochs or self.should_stop():  # stopped before its results
            self.listener.message(f"no epochs left to train: writing the results of {self.out}")
            return
        self.epoch_started = time.perf_counter()  # time before this point is not training
        fit(self.model, self.loss, self.optimizer, *self.prep.train, epochs=self.cfg.epochs,
            batch_size=self.cfg.batch_size, validation=self.prep.val, seed=self.cfg.seed,
            start_epoch=epoch, start_step=step, on_batch=self.on_batch, on_epoch=self.on_epoch,
            augment=self.augment, schedule=self.schedule, cuda_graph=self.cuda_graph)

    def _partial_now(self) -> dict:
        return {"loss_sum": self._scalar(self.loss_sum), "correct": int(self._scalar(self.correct)),
                "seen": self.seen, "seconds": self.seconds_before + self._elapsed()}

    def _elapsed(self) -> float:
        return time.perf_counter() - self.epoch_started

    def _scalar(self, value):
        """A running total as a Python number (None stays None; converts device arrays)."""
        if value is None or isinstance(value, (int, float)):
            return value
        return self.model.backend.scalar(value)

    def on_batch(self, info: dict) -> None:
        self.loss_sum = self.loss_sum + info["loss"] * info["images"]
        self.correct = self.correct + info["correct"]
        self.seen += info["images"]
        self.seen_here += info["images"]
        self.listener.batch({
            "epoch": info["epoch"] + 1, "epochs": self.cfg.epochs, "step": info["step"] + 1,
            "steps": info["steps"], "seen": self.seen, "epoch_size": self.n,
            "loss": lambda: self._scalar(self.loss_sum) / max(self.seen, 1),
            "accuracy": lambda: self._scalar(self.correct) / max(self.seen, 1),
            "images_per_second": self.seen_here / max(self._elapsed(), 1e-9),
        })
        done = info["step"] + 1
        every = self.cfg.checkpoint_every
        if every and done % every == 0 and done < info["steps"]:
            self.save(self.out / "checkpoint.npz", info["epoch"], done, partial=self._partial_now())

    def on_epoch(self, record: dict):
        # fit's seconds are the training loop's, as the progress line's rate: not the
        # validation pass after it, which would dwarf a small epoch's time
        seconds = self.seconds_before + record["seconds"]
        record = dict(record, seconds=seconds, images_per_second=self.seen / max(seconds, 1e-9),
                      train_loss=self._scalar(self.loss_sum) / max(self.seen, 1),
                      train_accuracy=self._scalar(self.correct) / max(self.seen, 1))
        self.history.append(record)
        improved = self._is_best(record)
        if improved:
            self.best = {"epoch": record["epoch"], "val_accuracy": record["val_accuracy"],
                         "train_loss": record["train_loss"]}
        path = self.save(self.out / "checkpoint.npz", record["epoch"], 0)
        if improved:
            checkpoint.atomic_write(self.out / "best.npz", lambda f: f.write(path.read_bytes()))
        self.write_metrics()
        self.listener.epoch(record)
        self._sums(None)
        if self.should_stop():
            self.listener.message(f"early stopping: no better validation loss in the last "
                                  f"{self.cfg.patience} epochs (best.npz holds the best)")
            return "stop"
        return None

    def should_stop(self) -> bool:
        """Early stopping, decided from the whole history (so a resumed run decides alike):
        the last ``patience`` epochs did not improve on the best validation loss before them."""
        return stop_early([r.get("val_loss") for r in self.history], self.cfg.patience)

    def _restore_best(self, ck: checkpoint.Checkpoint) -> None:
        """best.npz is written after the checkpoint that names it best: if that write failed
        (a full disk), the checkpoint is the best one, so write it now; a best.npz gone
        otherwise leaves the run with no best until an epoch improves."""
        best_file = self.out / "best.npz"
        if self.best is None or (best_file.exists() and _epoch_of(best_file) == self.best["epoch"]):
            return
        if (ck.epoch, ck.step) == (self.best["epoch"], 0):
            checkpoint.atomic_write(best_file, lambda f: f.write(ck.path.read_bytes()))
            return
        self.listener.message(f"{best_file} is missing or older than epoch {self.best['epoch']}, "
                              "the best so far: it is written again at the next better epoch")
        self.best = None if not best_file.exists() else checkpoint.load(best_file).header.get("best")

    def _is_best(self, record: dict) -> bool:
        if self.best is None:
            return True
        if record["val_accuracy"] is not None and self.best.get("val_accuracy") is not None:
            return record["val_accuracy"] > self.best["val_accuracy"]
        return record["train_loss"] < self.best["train_loss"]

    def save(self, path: Path, epoch: int, step: int, partial: dict | None = None) -> Path:
        """Write a checkpoint; refuse (TrainingDiverged) to replace a good one by weights that
        are NaN or infinite."""
        state = self.model.state_dict()
        for name, value in state.items():
            if not np.isfinite(value).all():
                raise TrainingDiverged(
                    f"training diverged: parameter {name} became NaN or infinite in epoch "
                    f"{epoch + 1 if step else epoch} at learning rate {self.optimizer.lr:g}; "
                    "lower the learning rate (--lr) and train again")
        ds = self.prep.dataset
        order = epoch_order(self.n, self.cfg.seed, epoch) if step else None
        return checkpoint.save(
            path, self.model, self.optimizer, epoch=epoch, step=step, order=order, model_state=state,
            metrics=self.history, config=dataclasses.asdict(self.cfg), dataset=ds.name,
            class_names=ds.class_names, preprocess=self.prep.preprocess, best=self.best,
            validation=validation_source(ds), test=test_source(ds),
            rng={"seed": self.cfg.seed, "scheme": RNG_SCHEME}, partial=partial)

    def write_metrics(self) -> None:
        """metrics.jsonl: one line per finished epoch (none before the first)."""
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        checkpoint.atomic_write(self.out / "metrics.jsonl", lambda f: f.write(text), mode="w")

    # ---------------------------------------------------------------- the end
    def finish(self) -> dict:
        """Test accuracy, J_train/J_cv diagnosis, result.json and curves.png."""
        batch = max(self.cfg.batch_size, 256)
        test = evaluate(self.model, self.loss, *self.prep.test, batch_size=batch)
        x, y = self.prep.train
        every = -(-len(y) // TRAIN_SUBSET_FOR_J)  # spread over the set, which may be in class order
        j_train = evaluate(self.model, self.loss, x[::every], y[::every], batch_size=batch)["loss"]
        j_cv = self.history[-1]["val_loss"] if self.history else None
        diagnosis = report.diagnose(j_train, j_cv, self.prep.dataset.num_classes,
                                    weight_decay=self.cfg.weight_decay)
        result = {
            "test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "epochs": len(self.history), "seconds": sum(r["seconds"] for r in self.history),
            "device": self.device, "cuda_graph": self.cuda_graph, "parameters": self.model.num_parameters(),
            "dataset": self.prep.dataset.name, "dataset_source": self.prep.dataset.source,
            "best_epoch": self.best["epoch"] if self.best else None,
            "diagnosis": diagnosis, "config": dataclasses.asdict(self.cfg), "out": str(self.out),
        }
        # result.json is written last: its presence tells a finished run (run.wrote_result)
        curves = bool(self.history) and report.plot_curves(self.history, self.out / "curves.png")
        text = json.dumps(result, indent=2) + "\n"
        checkpoint.atomic_write(self.out / "result.json", lambda f: f.write(text), mode="w")
        result["curves"] = curves
        return result


def make_schedule(cfg):
    """The learning-rate schedule of ``cfg`` (None: the constant rate, nothing to do).
    ``step`` divides the rate by 10 after each third of the run. The warm-up is the config's,
    shorter than the run (TrainConfig.check; run._recipe_fitted fits a recipe's to a
    short run before the config is saved, so that it records what is used)."""
    warmup = cfg.warmup
    if cfg.schedule == "constant" and not warmup:
        return None
    if cfg.schedule == "cosine":
        return SCHEDULES["cosine"](cfg.lr, total_epochs=cfg.epochs, warmup_epochs=warmup)
    if cfg.schedule == "step":
        # progress counts fractional epochs, so a third of a 1- or 2-epoch run is a step too
        return SCHEDULES["step"](cfg.lr, step_epochs=cfg.epochs / 3,
                                 warmup_epochs=warmup)
    return SCHEDULES["constant"](cfg.lr, warmup_epochs=warmup)


def _epoch_of(path: Path) -> int | None:
    """The epoch a checkpoint file was saved at, None when it cannot be read."""
    try:
        return checkpoint.load(path).epoch
    except checkpoint.CheckpointError:
        return None
