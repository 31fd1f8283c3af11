"""What the command line shows: device descriptions, the bias/variance diagnosis, per-class
accuracy and confusion matrices, training curves and the environment report of ``cnnx info``."""

from __future__ import annotations

import math
import os
import platform

import numpy as np

from .backends import DeviceError, cpu_threads, get_backend
from .backends.cupy_backend import choose_kernel_cache_dir, cuda_version_text
from .checkpoint import atomic_write

# ------------------------------------------------------------------------------ devices


def describe_device(backend) -> str:
    """One line naming the device and what drives it, e.g. ``cpu (NumPy 2.4.1, OpenBLAS)``."""
    if backend.name == "cpu":
        return (f"cpu (NumPy {np.__version__}, BLAS: {blas_name()}, {os.cpu_count()} cores, "
                f"{cpu_threads.worker_count()} threads)")
    gpu = gpu_properties(backend)
    return (f"{backend.name} ({gpu['name']}, {gpu['memory_gib']:.0f} GiB, CUDA {gpu['cuda']}, "
            f"CuPy {backend.xp.__version__}, kernels {'on' if backend.kernels_enabled else 'off'})")


def device_line(requested: str, backend) -> str:
    """``device: ...`` for the user; when "auto" fell back to the CPU, it also says why."""
    line = f"device: {describe_device(backend)}"
    if requested == "auto" and backend.name == "cpu":
        try:
            get_backend("cuda")
        except DeviceError as exc:
            line += f" (auto: no usable GPU: {exc})"
    return line


def blas_name() -> str:
    try:
        return np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # older NumPy or an unusual build: this is only informative
        return "unknown"


def gpu_properties(backend) -> dict:
    cupy = backend.xp
    props = cupy.cuda.runtime.getDeviceProperties(backend.index)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    version = cupy.cuda.runtime.runtimeGetVersion()
    return {"name": name, "memory_gib": props["totalGlobalMem"] / 2**30,
            "cuda": cuda_version_text(version)}


def environment() -> dict:
    """Versions, backends and datasets, for ``cnnx info``."""
    from . import __version__, data

    threads = cpu_threads.worker_count()
    info = {"cnnx": __version__, "python": platform.python_version(),
            "numpy": f"{np.__version__} (BLAS: {blas_name()})",
            # what the numpy line has not said (describe_device would say that again)
            "cpu": (f"{os.cpu_count()} cores, {threads} thread{'s' * (threads != 1)} "
                    "(CNNX_CPU_THREADS sets the threads)")}
    try:
        cuda = get_backend("cuda")
        info["cuda"] = describe_device(cuda)
        state = "on" if cuda.kernels_enabled else "off (CNNX_KERNELS=0: the pure-CuPy path)"
        info["kernels"] = f"{state}; compiled once, cached in {choose_kernel_cache_dir(os.environ)}"
    except DeviceError as exc:
        info["cuda"] = f"not available: {exc}"
    datasets = {"synthetic": "built in (generated)"}
    for name, known in data.KNOWN.items():
        found = data.locate(name)
        datasets[name] = str(found[0]) if found else f"not found (downloads from {known.mirrors[0]})"
    info["datasets"] = datasets
    return info


# ------------------------------------------------------------------------------ diagnosis
# Seed 000 §1.5.1: high bias (underfit): J_train high and J_train ≈ J_cv; high variance
# (overfit): J_cv ≫ J_train; both: J_train high and J_cv ≫ J_train. "High" and "≫" need
# numbers; these are cnnx's choices, relative to the chance-level loss ln(K):
HIGH_TRAIN_FRACTION = 0.1  # J_train above a tenth of chance level counts as high
GAP_RATIO = 1.3  # J_cv above 1.3 J_train (and by more than GAP_MIN) counts as ≫
GAP_MIN = 0.05  # ... and by more than this fraction of ln(K)

REMEDIES = {
    "variance": ["get more training examples", "try a smaller set of features (a smaller model)",
                 "increase λ (--weight-decay)"],
    "bias": ["make the network larger / add features (--model with more filters or layers)",
             "decrease λ (--weight-decay)", "train longer (--epochs)"],
}


def diagnose(j_train: float, j_cv: float | None, classes: int,
             weight_decay: float | None = None) -> dict:
    """Bias/variance verdict from the final training and cross-validation losses.

    ``weight_decay``: the run's λ when known; with λ = 0 the "decrease λ" remedy is left out
    (there is nothing to decrease)."""
    chance = math.log(max(classes, 2))
    result = _verdict(j_train, j_cv, chance)
    if weight_decay == 0:
        result["remedies"] = [r for r in result["remedies"] if not r.startswith("decrease λ")]
    return result


def _verdict(j_train: float, j_cv: float | None, chance: float) -> dict:
    high_bias = j_train > HIGH_TRAIN_FRACTION * chance
    if j_cv is None:
        verdict = "high bias" if high_bias else "unknown variance (no validation set: --val-split)"
        return {"verdict": verdict, "j_train": j_train, "j_cv": None,
                "remedies": REMEDIES["bias"] if high_bias else []}
    high_variance = j_cv > GAP_RATIO * j_train and j_cv - j_train > GAP_MIN * chance
    # the mirror image of ≫ is no verdict of seed 000's, but "≈" would be untrue: say so
    cv_far_below = j_train > GAP_RATIO * j_cv and j_train - j_cv > GAP_MIN * chance
    relation = ("J_cv ≪ J_train (is the validation set drawn like the training set?)"
                if cv_far_below else "J_cv ≈ J_train")
    if high_bias and high_variance:
        verdict, remedies = "high bias and high variance", REMEDIES["bias"] + REMEDIES["variance"]
    elif high_bias:
        verdict, remedies = f"high bias (underfitting): J_train high, {relation}", REMEDIES["bias"]
    elif high_variance:
        verdict, remedies = "high variance (overfitting): J_cv ≫ J_train", REMEDIES["variance"]
    else:
        verdict, remedies = f"good fit: J_train low and {relation}", []
    return {"verdict": verdict, "j_train": j_train, "j_cv": j_cv, "remedies": remedies}


def format_diagnosis(d: dict) -> str:
    cv = "n/a" if d["j_cv"] is None else f"{d['j_cv']:.4f}"
    lines = [f"diagnosis: {d['verdict']}  (J_train {d['j_train']:.4f}, J_cv {cv})"]
    lines += [f"  remedy: {r}" for r in d["remedies"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ evaluation
def confusion_matrix(labels, predictions, classes: int) -> np.ndarray:
    """``m[i, j]``: examples of true class i predicted as j."""
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def per_class_accuracy(matrix: np.ndarray) -> list:
    totals = matrix.sum(axis=1)
    return [float(matrix[i, i] / totals[i]) if totals[i] else None for i in range(len(matrix))]


def format_confusion(matrix, names: list) -> str:
    """Per-class accuracy, then the confusion matrix (rows: true class, columns: predicted)."""
    matrix = np.asarray(matrix)
    names = [str(n) for n in names] + [str(i) for i in range(len(names), len(matrix))]
    width = max(len(n) for n in names)
    accuracy = per_class_accuracy(matrix)
    lines = ["per-class accuracy:"]
    lines += [f"  {i:>2} {names[i]:<{width}}  " + ("n/a" if a is None else f"{a:.4f}")
              for i, a in enumerate(accuracy)]
    cell = max(len(str(int(matrix.max(initial=0)))), 2)
    lines.append("confusion matrix (rows: true class, columns: predicted):")
    lines.append(" " * (width + 5) + " ".join(f"{j:>{cell}}" for j in range(len(matrix))))
    for i, row in enumerate(matrix):
        lines.append(f"  {i:>2} {names[i]:<{width}} " + " ".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ curves
def plot_curves(history: list, path) -> bool:
    """Training vs validation loss and accuracy per epoch as a PNG (atomically written).
    Returns False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="training")
        if any(r.get(f"val_{key}") is not None for r in history):
            ax.plot(epochs, [r[f"val_{key}"] for r in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
    return True
