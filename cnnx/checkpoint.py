"""Checkpoints: one ``.npz`` file, readable with NumPy alone, written atomically.

Layout (every entry a plain NumPy array; nothing is ever pickled):

- ``header``: UTF-8 JSON as uint8 — format and version, cnnx version, model spec, input shape,
  dtype, epoch, step, metrics history and whatever the caller adds (config, class names, ...),
  plus the non-array parts of the optimizer state.
- ``model/<name>``: the weights (``model.state_dict()``).
- ``optimizer/<path>``: the optimizer's arrays (e.g. momentum buffers).
- ``order``: the shuffle order of the epoch in progress, when saved mid-epoch.

``epoch`` counts finished epochs and ``step`` the finished steps of the next one, so training
resumes at ``(epoch, step)``. The run's randomness is derived from its seed and that position
(``cnnx.train.epoch_order``), which the header records; ``order`` lets a resume verify it.

Writing goes to a temporary file in the same directory, is flushed and fsynced, then renamed
over the target (and the directory fsynced): a crash leaves the old checkpoint or the new one,
never half of one. Loading validates everything and raises ``CheckpointError`` (a ValueError)
with a one-line message for a missing, truncated, corrupt or foreign file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "cnnx-checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("cnnx_version", "spec", "input_shape", "dtype", "epoch", "step")


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit; the message is one line."""


@dataclass(repr=False)  # the generated repr would print every weight
class Checkpoint:
    """A loaded checkpoint (``load``): its header, weights and optimizer state as NumPy arrays;
    ``build_model()`` rebuilds the model."""

    path: Path
    header: dict
    model_state: dict
    optimizer_state: dict | None
    order: np.ndarray | None

    @property
    def epoch(self) -> int:
        return int(self.header["epoch"])

    @property
    def step(self) -> int:
        return int(self.header["step"])

    @property
    def spec(self) -> list:
        return self.header["spec"]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.header["input_shape"])

    @property
    def dtype(self) -> str:
        return self.header["dtype"]

    @property
    def metrics(self) -> list:
        return list(self.header.get("metrics", []))

    def __repr__(self) -> str:
        return (f"Checkpoint({str(self.path)!r}, epoch={self.epoch}, step={self.step}, "
                f"layers={len(self.spec)}, input_shape={self.input_shape}, dtype={self.dtype!r}, "
                f"optimizer_state={self.optimizer_state is not None})")

    def build_model(self, device="cpu", seed: int | None = None):
        """The model this checkpoint was saved from, with its weights and buffers, on
        ``device``. ``seed`` (default: the saved model's) seeds layers that draw random
        numbers while training, such as dropout, so that they go on as they would have."""
        from .model import from_spec

        if seed is None:  # files before model_seed was written: the run's seed, which it was
            seed = self.header.get("model_seed", (self.header.get("rng") or {}).get("seed", 0))
        try:
            # input_shape () was saved from a model given none: it sizes itself on first use
            model = from_spec(self.spec, input_shape=self.input_shape or None, seed=int(seed),
                              dtype=self.dtype)
            model.load_state_dict(self.model_state)
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{self.path}: the saved model cannot be rebuilt ({exc})") from None
        return model.to(device)

    def check_model(self, model) -> None:
        """Raise CheckpointError unless ``model`` has the architecture this file was saved from."""
        problem = _spec_difference(self.spec, model.spec())
        if problem is None and tuple(model.input_shape or ()) != self.input_shape:
            problem = f"input shape {self.input_shape} there, {tuple(model.input_shape or ())} here"
        if problem is None and model.dtype != self.dtype:
            problem = f"dtype {self.dtype} there, {model.dtype} here"
        if problem:
            raise CheckpointError(f"{self.path} was saved from another model ({problem})")


# header entries save() writes itself; **info may not pass them
HEADER_FROM_THE_MODEL = ("format", "format_version", "cnnx_version", "spec", "input_shape", "dtype",
                         "model_seed")


def save(path, model, optimizer=None, *, epoch: int = 0, step: int = 0, order=None,
         model_state: dict | None = None, **info) -> Path:
    """Write ``model`` (and ``optimizer``) plus ``info`` (JSON-able: metrics, seed, config, ...)
    to ``path`` atomically. Returns the path. ``model_state``: ``model.state_dict()`` when the
    caller has it already."""
    from . import __version__

    if not hasattr(model, "spec"):
        raise TypeError(_wrong_argument("model", "a cnnx Sequential", model))
    if optimizer is not None and not hasattr(optimizer, "hyperparameters"):
        raise TypeError(_wrong_argument("optimizer", "a cnnx optimizer or None", optimizer))
    clash = sorted(set(HEADER_FROM_THE_MODEL) & set(info))
    if clash:
        raise ValueError(f"checkpoint.save: {', '.join(clash)} {'is' if len(clash) == 1 else 'are'}"
                         " written from the model itself; pass other names for extra information")
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "cnnx_version": __version__,
              "spec": model.spec(), "input_shape": list(model.input_shape or ()),
              "dtype": model.dtype, "model_seed": model.seed, "epoch": int(epoch),
              "step": int(step), **info}
    state = model.state_dict() if model_state is None else model_state
    arrays = {f"model/{_component(k)}": np.asarray(v) for k, v in state.items()}
    if optimizer is not None:
        header["optimizer"] = _split_arrays(optimizer.state_dict(), "optimizer", arrays)
    if order is not None:
        arrays["order"] = np.asarray(order, dtype=np.int64)
    try:
        text = json.dumps(header, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint header is not JSON-able: {exc}") from None
    arrays["header"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return write_npz_atomic(path, arrays)


def _wrong_argument(name: str, expected: str, value) -> str:
    return (f"checkpoint.save: {name} must be {expected}, got a {type(value).__name__}; the "
            f"arguments are save(path, model, optimizer=None, ...)")


def write_npz_atomic(path, arrays: dict) -> Path:
    """``np.savez`` into ``path`` atomically (see ``atomic_write``)."""
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_write(path, write, mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, rename it over ``path``
    and fsync the directory: readers see the old content or the new, never a mix. On any
    failure (even KeyboardInterrupt) the temp file is removed and ``path`` is untouched; an
    OSError (disk full, read-only or forbidden directory) is re-raised naming ``path``."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode.replace("w", "x")) as f:  # exclusive create; honours the umask
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # the temp file may never have been created
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _cannot_write(path: Path, exc: OSError) -> OSError:
    """``exc`` as one line naming the file: an error raised while writing or closing it (a
    full disk) carries no file name of its own, and the temp file's name would mislead."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason += " (free some space, or write somewhere else)"
    error = OSError(f"cannot write {path}: {reason}")
    error.errno = exc.errno
    return error


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<random>.tmp``."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path) -> Checkpoint:
    """Read and validate a checkpoint; CheckpointError with one line when it is unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    if not path.is_file():
        runs = (sorted(path.parent.glob("*/checkpoint.npz"), key=lambda p: p.stat().st_mtime)
                if path.name == "checkpoint.npz" else [])
        if runs:  # runs/ given for runs/<timestamp>/
            raise CheckpointError(f"no checkpoint at {path}; {path.parent} holds runs: name "
                                  f"one, such as {runs[-1].parent} (the latest)")
        raise CheckpointError(f"no checkpoint at {path}")
    arrays = _read_arrays(path)
    header = _parse_header(path, arrays.pop("header", None))
    model_state = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    if not model_state and any(_spec_has_params(layer) for layer in header["spec"]):
        raise CheckpointError(f"{path}: checkpoint holds no weights")
    bad = [k for k, v in model_state.items()
           if v.dtype.kind == "f" and v.dtype != np.dtype(header["dtype"])]  # not counters
    if bad:
        raise CheckpointError(f"{path}: weight {bad[0]} is not {header['dtype']} as the header says")
    for name, value in model_state.items():  # save() is never given them: training refuses
        if value.dtype.kind == "f" and not np.isfinite(value).all():  # to save a diverged run
            raise CheckpointError(f"{path}: weight {name} holds NaN or inf, so the model "
                                  "computes nothing usable; use a checkpoint from before")
    optimizer = None
    if "optimizer" in header:
        optimizer = _merge_arrays(header["optimizer"], "optimizer", arrays)
    return Checkpoint(path, header, model_state, optimizer, arrays.get("order"))


def _read_arrays(path: Path) -> dict:
    from .data.formats import NUMPY_LOAD_ERRORS, numpy_file_kind

    try:
        kind = numpy_file_kind(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc.strerror})") from None
    if kind != "npz":  # a picture or a dataset's .npy given as the checkpoint
        raise CheckpointError(f"{path}: not a cnnx checkpoint (not an .npz file)")
    try:
        npz = np.load(path, allow_pickle=False)
        if not hasattr(npz, "files"):
            raise ValueError("not an .npz archive")
        with npz:
            return {k: npz[k] for k in npz.files}  # reading every member checks its CRC
    except (*NUMPY_LOAD_ERRORS, KeyError) as exc:  # damaged zip or deflate data, odd methods
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None


def _parse_header(path: Path, raw) -> dict:
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: not a cnnx checkpoint (no header)")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint header ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cnnx checkpoint")
    if not isinstance(header.get("format_version"), int) or header["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {header.get('format_version')} is newer "
                              f"than this cnnx reads ({FORMAT_VERSION}); upgrade cnnx")
    missing = [k for k in _REQUIRED if k not in header]
    if missing or not isinstance(header["spec"], list):
        raise CheckpointError(f"{path}: checkpoint header lacks {', '.join(missing) or 'a spec'}")
    return header


def _spec_has_params(layer) -> bool:
    return isinstance(layer, dict) and layer.get("type") in ("Conv2D", "Dense")


def _spec_difference(saved: list, current: list) -> str | None:
    """A short description of the first difference between two specs, None when equal."""
    if saved == current:
        return None
    for index, (a, b) in enumerate(zip(saved, current)):
        if a != b:
            return f"layer {index} is {_describe(a)} there, {_describe(b)} here"
    return f"{len(saved)} layers there, {len(current)} here"


def _describe(layer) -> str:
    if not isinstance(layer, dict):
        return repr(layer)
    args = ", ".join(f"{k}={v}" for k, v in layer.items() if k != "type")
    return f"{layer.get('type')}({args})"


def _component(key) -> str:
    key = str(key)
    if "/" in key or not key:
        raise ValueError(f"checkpoint entry name {key!r} must be non-empty and contain no '/'")
    return key


def _split_arrays(tree, prefix: str, arrays: dict):
    """Copy of ``tree`` (nested dicts) with its arrays moved into ``arrays`` under
    ``prefix/path`` and replaced by ``{"__array__": key}``."""
    if isinstance(tree, dict):
        return {str(k): _split_arrays(v, f"{prefix}/{_component(k)}", arrays)
                for k, v in tree.items()}
    if isinstance(tree, np.ndarray) or hasattr(tree, "__array__") and not np.isscalar(tree):
        arrays[prefix] = np.asarray(tree)
        return {"__array__": prefix}
    if isinstance(tree, np.generic):
        return tree.item()
    return tree


def _merge_arrays(tree, prefix: str, arrays: dict):
    """Inverse of ``_split_arrays``."""
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            key = tree["__array__"]
            if key not in arrays:
                raise CheckpointError(f"checkpoint lacks array {key}")
            return arrays[key]
        return {k: _merge_arrays(v, f"{prefix}/{k}", arrays) for k, v in tree.items()}
    return tree
