"""The library side of ``cnnx evaluate``, ``predict`` and ``gradcheck``: checkpoints applied to
datasets and image files, and finite-difference checks of whole models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import checkpoint, data, models, report
from .backends import get_backend, make_rng
from .data.pictures import PICTURE_SUFFIXES, SUFFIXES_TEXT, files_under, read_picture
from .gradcheck import gradcheck
from .losses import SoftmaxCrossEntropy
from .train import evaluate, predict


def load_for_inference(path, device="auto", log=None):
    """A checkpoint's model on ``device`` plus the checkpoint (for its class names and
    preprocessing). ``log`` hears which device is used."""
    ck = checkpoint.load(path)
    backend = get_backend(device)
    if log:
        log(report.device_line(device, backend))
    return ck.build_model(backend), ck


def preprocess(ck: checkpoint.Checkpoint, x: np.ndarray) -> np.ndarray:
    """Apply the standardization the model was trained with (none when the header has none)."""
    stats = ck.header.get("preprocess")
    return data.standardize(x, stats["mean"], stats["std"]) if stats else x


def evaluate_checkpoint(path, dataset=None, data_dir=None, device="auto", batch_size=256,
                        log=None) -> dict:
    """Accuracy, loss, per-class accuracy and confusion matrix on a dataset's test split
    (by default the dataset the checkpoint was trained on)."""
    model, ck = load_for_inference(path, device, log)
    saved = ck.header.get("config") or {}
    name = dataset or saved.get("dataset")
    if name is None:
        raise ValueError(f"{ck.path} does not say which dataset it was trained on (it was saved "
                         "outside cnnx train): give the test set with --dataset")
    # Pictures are labelled by the model's classes (by number, "0", "1", ..., when it has no
    # names) and converted to its input, as in predict.
    classes = ck.header.get("class_names") or [str(k) for k in range(model.shapes()[-1][0])]
    like_the_model = {"classes": classes, "channels": ck.input_shape[0],
                      "image_size": ck.input_shape[1:]}
    try:
        saved_dir = saved.get("data_dir") if not dataset and name in data.KNOWN else None
        ds = data.load_dataset(name, data_dir or saved_dir,
                               log=log, splits=("test",),
                               **(like_the_model if data.is_picture_directory(name) else {}))
    except (ValueError, data.DatasetNotFound) as exc:
        if dataset:
            raise
        raise type(exc)(f"{exc} (the dataset {ck.path} was trained on; give another with "
                        "--dataset)") from None
    if ds.input_shape != ck.input_shape:
        raise ValueError(f"{ck.path} expects images {ck.input_shape}, {ds.name} has {ds.input_shape}")
    named = ck.header.get("class_names")
    if named and ds.class_names and list(ds.class_names) != list(named):
        raise ValueError(f"{ds.name}'s classes ({_first_few(ds.class_names)}) are not "
                         f"{ck.path}'s ({_first_few(named)}): its labels would be scored against "
                         "other classes' outputs")
    out = evaluate(model, SoftmaxCrossEntropy(), preprocess(ck, ds.x_test), ds.y_test, batch_size)
    classes = max(model.shapes()[-1][0], ds.num_classes)
    matrix = report.confusion_matrix(ds.y_test, out["predictions"], classes)
    names = ds.class_names or ck.header.get("class_names") or []
    return {"checkpoint": str(ck.path), "dataset": ds.name, "test_source": ds.test_source,
            "device": model.backend.name, "images": int(len(ds.y_test)), "accuracy": out["accuracy"], "loss": out["loss"],
            "per_class_accuracy": report.per_class_accuracy(matrix), "class_names": list(names),
            "confusion_matrix": matrix.tolist()}


def _first_few(names, shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


# ------------------------------------------------------------------------------ predict
def read_images(path, shape) -> np.ndarray:
    """Images from a ``.npy`` (one image or a batch; HW, CHW, HWC; uint8 or floats in [0, 1])
    or a picture (PNG, JPEG, ...: needs Pillow), as float32 (N, C, H, W) matching ``shape`` =
    (C, H, W)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        kind = data.formats.numpy_file_kind(path)
        if kind != "npy":  # np.load would suggest allow_pickle, or return an .npz's archive
            raise ValueError(f"{path}: not a .npy file"
                             + (" (an .npz archive: save one array with numpy.save)"
                                if kind == "npz" else ""))
        try:
            x = np.load(path, allow_pickle=False)
        except data.formats.NUMPY_LOAD_ERRORS as exc:
            raise ValueError(f"{path}: unreadable .npy ({exc})") from None
    elif path.suffix.lower() in PICTURE_SUFFIXES:
        x = read_picture(path, "L" if shape[0] == 1 else "RGB", (shape[2], shape[1]))
    else:
        raise ValueError(f"{path}: unsupported file type (use .npy or a picture: {SUFFIXES_TEXT})")
    return _to_batch(x, shape, path)


def image_files(paths) -> list[Path]:
    """``paths`` with each directory replaced by the image files (.npy and PICTURE_SUFFIXES)
    in it and its subfolders, hidden ones left out, sorted by path."""
    files = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found = files_under(path, (".npy",) + PICTURE_SUFFIXES)
        if not found:
            raise ValueError(f"{path}: no images (.npy, {SUFFIXES_TEXT}) in this directory "
                             "nor in its subfolders")
        files.extend(found)
    return files


def _to_batch(x: np.ndarray, shape, path) -> np.ndarray:
    c, h, w = shape
    if x.shape == (h, w) and c == 1:
        x = x[None, None]
    elif x.ndim == 3 and x.shape[-2:] == (h, w) and x.shape[0] in (c, 1) and c == x.shape[0]:
        x = x[None]
    elif x.ndim == 3 and x.shape == (h, w, c):
        x = x.transpose(2, 0, 1)[None]
    elif x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1:] == (c, h, w):
        pass
    elif x.ndim == 4 and x.shape[1:] == (h, w, c):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{path}: image shape {x.shape} does not fit the model input {tuple(shape)}")
    if len(x) == 0:  # a batch of none: nothing to predict
        raise ValueError(f"{path}: holds no images")
    return data.formats.to_nchw_float(np.ascontiguousarray(x), path)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_files(path, files, top_k=3, device="auto", log=None) -> list:
    """Top-k classes with probabilities for every image in ``files``."""
    files = image_files(files)
    model, ck = load_for_inference(path, device, log)
    names = ck.header.get("class_names") or []
    results = []
    for file in files:
        x = preprocess(ck, read_images(file, ck.input_shape))
        probs = softmax(model.backend.to_numpy(predict(model, x)).astype(np.float64))
        for i, row in enumerate(probs):
            top = np.argsort(-row, kind="stable")[:top_k]
            results.append({
                "file": str(file), "index": i,
                "top": [{"class": int(k), "name": names[k] if k < len(names) else str(k),
                         "probability": float(row[k])} for k in top],
            })
    return results


# ----------------------------------------------------------------------------- gradcheck
def gradcheck_model(name, input_shape=None, batch=2, seed=0, max_elements=30) -> dict:
    """Finite-difference check (float64) of every parameter of a model on random data:
    ``{"errors": [{"index", "layer", "parameter", "error"}], "input": err, "max": err}``."""
    model = models.build(name, dtype="float64", seed=seed, input_shape=input_shape)
    if model.input_shape is None:
        raise ValueError(f"model {name!r} has no input shape: pass --input-shape C,H,W")
    rng = make_rng(seed)
    x = rng.standard_normal((batch, *model.input_shape))
    out = model.shapes()[-1]
    if len(out) != 1:
        raise ValueError(f"model {name!r} must end with class scores (N, K), it ends with {out}")
    y = rng.integers(0, out[0], batch)
    errors = gradcheck(model, x, y, loss=SoftmaxCrossEntropy(), seed=seed, max_elements=max_elements)
    rows = []
    for key, err in errors.items():
        if key == "input":
            continue
        index, parameter = key.split(".", 1)
        rows.append({"index": int(index), "layer": model.layers[int(index)].describe(),
                     "parameter": parameter, "error": float(err)})
    return {"errors": rows, "input": float(errors["input"]),
            "max": max([float(e) for e in errors.values()])}
