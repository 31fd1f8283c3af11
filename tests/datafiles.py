"""Helpers for the data, checkpoint and CLI tests: tiny generated dataset files in the real
on-disk formats, and a local HTTP server to download them from."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import http.server
import pickle
import struct
import threading
import zipfile
from pathlib import Path

import numpy as np

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz",
}


def _zip_member_offsets(raw: bytes, name: bytes) -> tuple[int, int]:
    """(local header offset, central directory entry offset) of the zip member ``name``."""
    local = raw.index(b"PK\x03\x04")
    while raw[local + 30:local + 30 + len(name)] != name:
        local = raw.index(b"PK\x03\x04", local + 4)
    central = raw.index(b"PK\x01\x02")
    while raw[central + 46:central + 46 + len(name)] != name:
        central = raw.index(b"PK\x01\x02", central + 4)
    return local, central


def garbled_deflate(raw: bytes, member: str) -> bytes:
    """The zip ``raw`` with ``member``'s compressed data starting with an invalid deflate
    block type (``member`` must be stored compressed)."""
    local, _ = _zip_member_offsets(raw, member.encode())
    name_len, extra_len = (int.from_bytes(raw[local + o:local + o + 2], "little") for o in (26, 28))
    start = local + 30 + name_len + extra_len
    return raw[:start] + b"\xff" + raw[start + 1:]


def marked_deflate64(raw: bytes, member: str) -> bytes:
    """The zip ``raw`` with ``member`` marked as compressed by Deflate64 (method 9, Windows'
    zip for large files), which Python's zipfile cannot read."""
    local, central = _zip_member_offsets(raw, member.encode())
    raw = bytearray(raw)
    raw[local + 8:local + 10] = raw[central + 10:central + 12] = (9).to_bytes(2, "little")
    return bytes(raw)


def recompressed(raw: bytes) -> bytes:
    """The zip ``raw``'s members written again, deflated (as ``zip -9`` would)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    return out.getvalue()


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
