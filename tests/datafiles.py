"""Helpers for the data, checkpoint and CLI tests: tiny generated dataset files in the real
on-disk formats, and a local HTTP server to download them from."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import pickle
import struct
import threading
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 00 00 <type> <ndim>, big-endian uint32 sizes, big-endian data."""
    codes = {np.dtype("u1"): 0x08, np.dtype("i4"): 0x0C, np.dtype("f4"): 0x0D}
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array: np.ndarray, gz: bool = True) -> Path:
    data = idx_bytes(array)
    path = Path(path)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def tiny_arrays(n_train=20, n_test=10, shape=(28, 28), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_mnist_dir(directory, gz: bool = True, **kwargs) -> dict:
    """Write a tiny MNIST-format dataset into ``directory``; returns its arrays."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = tiny_arrays(**kwargs)
    for key, name in IDX_NAMES.items():
        write_idx(directory / (name if gz else name[:-3]), arrays[key], gz=gz)
    return arrays


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cifar_batch_bytes(n: int, seed: int = 0, **overrides) -> bytes:
    """A CIFAR-10 python batch as the official files store it (a pickled dict, bytes keys)."""
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, n)], b"batch_label": b"test"}
    batch.update(overrides)
    return pickle.dumps(batch, protocol=2)


@contextlib.contextmanager
def serve_directory(directory):
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) in a thread; yields the URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
