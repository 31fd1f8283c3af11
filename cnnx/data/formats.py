"""Readers for the on-disk dataset formats: IDX (MNIST family), CIFAR-10 python batches, ``.npz``.

Every reader checks what it reads (magic numbers, dimensions, lengths, keys, shapes) and raises a
``ValueError`` naming the file and what is wrong, so a corrupt or truncated download is reported
in one line instead of surfacing later as a shape error inside the model.

Images leave this module as float32 NCHW scaled to [0, 1]; labels as int64 vectors.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import tarfile
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

# IDX type codes (third byte of the magic number) -> big-endian NumPy dtype.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_bytes(path) -> bytes:
    """The content of ``path``, decompressed when it is gzip (recognised by its magic bytes)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def read_idx(path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or raw): ``00 00 <type> <ndim>``, ndim big-endian uint32 sizes,
    then the data. ``ndim``, when given, is the number of dimensions the caller expects."""
    data = read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dims = data[3]
    if ndim is not None and dims != ndim:
        raise ValueError(f"{path}: IDX file has {dims} dimensions, expected {ndim}")
    header = 4 + 4 * dims
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=dims, offset=4))
    dtype = _IDX_TYPES[data[2]]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX shape {shape} needs {expected} data bytes, file has {len(data) - header}"
            " (truncated or corrupt)"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_pair(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)``-style IDX plus their labels, as float32 NCHW and int64."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected unsigned-byte images and labels")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if len(images) == 0:
        raise ValueError(f"{images_path} holds no images")
    return to_nchw_float(images[:, None], images_path), labels.astype(np.int64)


def to_nchw_float(x: np.ndarray, where) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]; float images must already lie in [0, 1]. (One new
    array at most: converted, then scaled in place.)"""
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out /= np.float32(255)
        return out
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where}: images must be uint8 (0..255) or floats in [0, 1], got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise ValueError(f"{where}: float images must be finite and lie in [0, 1]; "
                         + _out_of_range(x))
    return x


def _out_of_range(x: np.ndarray) -> str:
    """What is wrong with float images outside [0, 1], and the likely fix."""
    if not np.isfinite(x).all():
        return "these hold NaN or infinite values"
    low, high = float(x.min()), float(x.max())
    fix = ("divide 0..255 pixels by 255 (or save them as uint8)" if low >= 0 and high <= 255
           else "scale them to [0, 1]")
    return f"these go from {low:g} to {high:g}: {fix}"


# ------------------------------------------------------------------------------- CIFAR-10
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays only; any other global is refused, so a
    crafted batch file cannot run code. (CIFAR-10's official format is a Python pickle.)"""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes into a protocol-2 pickle
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "_codecs":
            return codecs.encode
        if name == "_reconstruct":
            return np.ndarray((0,)).__reduce__()[0]  # NumPy's own reconstructor, public route
        return getattr(np, name)


def _unpickle(raw: bytes, where) -> dict:
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a corrupt or foreign file
        raise ValueError(f"{where}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not a CIFAR-10 python batch (no dictionary inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def parse_cifar_batch(raw: bytes, where) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch: ``data`` (N, 3072) uint8 and ``labels`` (N,) -> NCHW float32, int64."""
    batch = _unpickle(raw, where)
    missing = {"data", "labels"} - batch.keys()
    if missing:
        raise ValueError(f"{where}: CIFAR-10 batch lacks key(s) {sorted(missing)}")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: CIFAR-10 'data' must be uint8 of shape (N, 3072)")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: CIFAR-10 'labels' must be {len(data)} integers")
    return to_nchw_float(data.reshape(-1, 3, 32, 32), where), labels.astype(np.int64)


def parse_cifar_meta(raw: bytes, where) -> list[str]:
    names = _unpickle(raw, where).get("label_names", [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_cifar_tar(path, wanted) -> dict[str, bytes]:
    """The member files of ``cifar-10-python.tar.gz`` named in ``wanted``, by base name (read
    in memory, never extracted, so member paths cannot escape anywhere)."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            return {
                Path(m.name).name: tar.extractfile(m).read()
                for m in tar.getmembers() if m.isfile() and Path(m.name).name in wanted
            }
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated archive ({exc})") from None


# ---------------------------------------------------------------------------------- .npz


def read_npz(path, splits=("train", "val", "test")) -> dict:
    """The ``splits`` of an ``.npz`` holding ``x_train, y_train, x_test, y_test``, optionally
    ``x_val, y_val`` (a validation set of its own) and ``class_names``: images as (N, H, W),
    (N, C, H, W) or (N, H, W, C) with C in 1..4. Only the splits asked for need be there, and
    only they are read; "val" only where the archive holds it."""
    needed = tuple(f"{xy}_{split}" for split in splits if split != "val" for xy in "xy")
    optional = ("x_val", "y_val") if "val" in splits else ()
    arrays, found = _load_npz(path, needed + optional + ("class_names",))
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise ValueError(
            f"{path}: missing key(s) {', '.join(missing)}; an .npz dataset needs "
            f"{', '.join(needed)} (found: {', '.join(found) or 'none'})"
        )
    if "val" in splits and ("x_val" in arrays) != ("y_val" in arrays):
        has, lacks = ("x_val", "y_val") if "x_val" in arrays else ("y_val", "x_val")
        raise ValueError(f"{path}: holds {has} but not {lacks}; a validation set needs both")
    out = {}
    for split in splits:
        if f"x_{split}" not in arrays:
            continue  # no validation set of its own
        x = _images_to_nchw(arrays[f"x_{split}"], f"{path}: x_{split}")
        out[f"x_{split}"] = x
        out[f"y_{split}"] = _labels(arrays[f"y_{split}"], len(x), f"{path}: y_{split}")
    shapes = {f"x_{split}": out[f"x_{split}"].shape[1:] for split in splits if f"x_{split}" in out}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{path}: images differ in shape between "
                         + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    out["class_names"] = _class_names(arrays.get("class_names"), f"{path}: class_names")
    _check_label_range(out, path)
    return out


def _class_names(names: np.ndarray | None, where) -> list[str] | None:
    """An archive's class names: a 1-D array, one name per class (bytes decoded as UTF-8)."""
    if names is None:
        return None
    if names.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D array of names, one per class, got shape "
                         f"{names.shape} (save a list of strings)")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]


#: labels up to this are believed whatever the examples' count (ImageNet numbers 1000 classes;
#: a test set of a few images may hold only the high ones)
FEW_CLASSES = 10_000


def _check_label_range(arrays: dict, path) -> None:
    """A label is a class number and the model gets one output per class: a stray 2**40 would
    size a layer of 2**40 outputs. Labels beyond both the examples read (each class needs
    some) and the class names, and beyond FEW_CLASSES, are refused."""
    examples = sum(len(y) for key, y in arrays.items() if key.startswith("y_"))
    bound = max(examples, len(arrays.get("class_names") or ()), FEW_CLASSES)
    for key, y in arrays.items():
        if key.startswith("y_") and len(y) and y.max() >= bound:
            raise ValueError(f"{path}: {key}'s labels go up to {y.max()}, with {examples} "
                             "examples in all: labels must number the classes 0..K-1")


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an .npz is a zip archive (an empty one: its end)


def numpy_file_kind(path) -> str | None:
    """"npz" or "npy" by the first bytes of the file at ``path``, None for anything else: for
    that, np.load(allow_pickle=False) says the file "contains pickled (object) data" and
    suggests allow_pickle=True, misleading for a text file or a picture."""
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head.startswith(ZIP_MAGICS):
        return "npz"
    return "npy" if head == NPY_MAGIC else None


NOT_NUMPY = "not an .npz file (nor a .npy)"  # for messages

#: What np.load and reading an archive's members raise for a damaged file: besides ValueError
#: and the I/O errors, zlib.error (a corrupt compressed member), NotImplementedError (a zip
#: compression method Python lacks, or a newer zip version) and tokenize.TokenError (a .npy
#: header cut or garbled).
NUMPY_LOAD_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                     NotImplementedError, tokenize.TokenError)


def _load_npz(path, wanted) -> tuple[dict, list]:
    """The arrays named in ``wanted`` that the archive holds (never unpickling anything),
    and the names of all its arrays."""
    try:
        kind = numpy_file_kind(path)
    except OSError as exc:
        raise ValueError(f"{path}: unreadable ({exc.strerror})") from None
    if kind is None:
        raise ValueError(f"{path}: {NOT_NUMPY}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not hasattr(npz, "files"):
            raise ValueError("a single array, not an .npz archive")
        with npz:
            return {k: npz[k] for k in npz.files if k in wanted}, list(npz.files)
    except NUMPY_LOAD_ERRORS as exc:
        raise ValueError(f"{path}: corrupt or unreadable .npz ({exc})") from None


def _images_to_nchw(x: np.ndarray, where) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 2, 3, 4) and x.shape[3] in (1, 2, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 2, 3, 4):
        raise ValueError(f"{where}: expected images (N, H, W), (N, C, H, W) or (N, H, W, C), "
                         f"got shape {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{where} holds no images")
    return to_nchw_float(np.ascontiguousarray(x), where)  # NHWC made NCHW before it grows


def _labels(y: np.ndarray, n: int, where) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: expected {n} integer labels, got {y.dtype} {y.shape}")
    if n and y.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0")
    return y.astype(np.int64)
