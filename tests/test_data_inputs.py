"""Data files as users bring them: damaged archives, unusual arrays and names, partial copies of
a known dataset; and what reading and standardizing a dataset costs in memory."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tracemalloc

import numpy as np
import pytest

from cnnx import data, run, session, tools
from cnnx.data import formats, pictures, sources
from datafiles import (IDX_NAMES, cifar_batch_bytes, garbled_deflate, marked_deflate64,
                       tiny_arrays, write_idx, write_mnist_dir)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real cache, system dataset, mirror or network: only what a test provides."""
    for name in ("CNNX_DATA", "CNNX_MIRROR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CNNX_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DIRS", [])


# ----------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("damage, save, message", [
    (lambda raw: garbled_deflate(raw, "x_train.npy"), np.savez_compressed, "invalid block type"),
    (lambda raw: marked_deflate64(raw, "x_train.npy"), np.savez,
     "compression method is not supported"),
])
def test_a_damaged_npz_member_is_a_one_line_error(tmp_path, damage, save, message):
    buffer = io.BytesIO()
    save(buffer, **tiny_arrays())
    (tmp_path / "d.npz").write_bytes(damage(buffer.getvalue()))
    with pytest.raises(ValueError, match=rf"d\.npz: corrupt or unreadable \.npz \(.*{message}"):
        data.load_dataset(str(tmp_path / "d.npz"))


def test_a_npy_with_a_garbled_header_is_a_one_line_error(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 1, 28, 28), np.float32))
    raw = buffer.getvalue().replace(b"'shape': (2, 1, 28, 28)", b"'shape': (2, 1, 2), 28)")
    (tmp_path / "x.npy").write_bytes(raw)
    with pytest.raises(ValueError, match=r"x\.npy: unreadable \.npy"):
        tools.read_images(tmp_path / "x.npy", (1, 28, 28))


# ----------------------------------------------------------------------------- arrays
@pytest.mark.parametrize("names, expected", [
    (np.array(["cat", "dög", "eel"]), ["cat", "dög", "eel"]),
    (np.array([b"cat", "dög".encode(), b"eel"]), ["cat", "dög", "eel"]),  # bytes, as Python 2 saved
    (np.arange(3), ["0", "1", "2"]),
])
def test_npz_class_names_are_read_as_text(tmp_path, names, expected):
    np.savez(tmp_path / "d.npz", **tiny_arrays(), class_names=names)
    assert data.load_dataset(str(tmp_path / "d.npz")).class_names == expected


@pytest.mark.parametrize("names", [np.array("cat,dog"), np.array([["cat", "dog"], ["eel", "emu"]])])
def test_npz_class_names_not_a_list_are_a_one_line_error(tmp_path, names):
    np.savez(tmp_path / "d.npz", **tiny_arrays(), class_names=names)
    with pytest.raises(ValueError, match=r"d\.npz: class_names: expected a 1-D array of names, "
                                         "one per class, got shape " + re.escape(str(names.shape))):
        data.load_dataset(str(tmp_path / "d.npz"))


# ------------------------------------------------------------------------------ names
def test_class_folders_alone_take_file_names_that_are_not_utf8(tmp_path):
    """Such names (Latin-1 bytes from an old archive) were an encoding error naming no file."""
    Image = pytest.importorskip("PIL.Image")
    for label, name in enumerate(("a", "b")):
        (tmp_path / name).mkdir()
        for i in range(12):
            Image.fromarray(np.full((4, 4), 10 * i + label, np.uint8)).save(tmp_path / name / f"{i}.png")
    stray = os.fsencode(tmp_path / "a") + b"/caf\xe9.png"
    try:
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(os.fsdecode(stray))
    except OSError:
        pytest.skip("this file system takes UTF-8 names only")
    both = data.load_dataset(str(tmp_path))
    assert len(both.y_train) + len(both.y_test) == 25
    assert pictures.held_out_for_test("a/caf\udce9.png") == (
        int.from_bytes(hashlib.sha256(b"a/caf\xe9.png").digest()[:8], "big") < 0.2 * 2**64)


# ------------------------------------------------------------- copies of known datasets
@pytest.mark.parametrize("key, array, message", [
    ("x_train", np.zeros((0, 28, 28), np.uint8), r"train-images-idx3-ubyte\.gz holds no images$"),
    ("x_test", np.zeros((10, 32, 32), np.uint8),
     r"mnist's images differ in shape between train \(1, 28, 28\), test \(1, 32, 32\): its "
     r"files come from two datasets; replace the odd ones$"),
    ("y_train", np.r_[np.arange(19) % 10, 245].astype(np.uint8),
     r"mnist's train labels go up to 245, but it has 10 classes \(0\.\.9\): a damaged labels "
     r"file; replace it$"),
])
def test_a_known_dataset_whose_files_do_not_agree_is_refused_before_training(tmp_path, key, array,
                                                                              message):
    write_mnist_dir(tmp_path)
    if key == "x_train":
        write_idx(tmp_path / IDX_NAMES["y_train"], np.zeros(0, np.uint8))
    write_idx(tmp_path / IDX_NAMES[key], array)
    with pytest.raises(ValueError, match=message):
        data.load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
@pytest.mark.parametrize("nested", [False, True])
def test_a_data_dir_missing_some_files_names_them(tmp_path, monkeypatch, name, nested):
    """It was passed by for a download, or for another copy (here the cache's), without a word."""
    given = tmp_path / "given" / (name if nested else "")
    cached = tmp_path / "cache" / "cnnx" / name
    if name == "mnist":
        write_mnist_dir(given)
        write_mnist_dir(cached)
        (given / IDX_NAMES["x_test"]).unlink()
        lacks = IDX_NAMES["x_test"]
    else:
        batches = given / "cifar-10-batches-py"
        batches.mkdir(parents=True)
        for member in sources.CIFAR_MEMBERS[:-2] + sources.CIFAR_MEMBERS[-1:]:
            (batches / member).write_bytes(cifar_batch_bytes(2))
        lacks = "data_batch_5"
    message = rf"^{re.escape(str(given))}.* holds only part of {name}: it lacks {lacks}; add it there$"
    with pytest.raises(ValueError, match=message):
        data.load_dataset(name, data_dir=tmp_path / "given")
    if name == "mnist":  # the copy looked for without --data-dir is the cache's, as before
        assert data.load_dataset(name).source == str(cached)


# ----------------------------------------------------------------------------- memory
def peak_bytes(f, *args):
    """The most memory ``f(*args)`` held at once beyond what it returns and its arguments."""
    tracemalloc.start()
    try:
        f(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_and_standardizing_make_no_needless_copies_of_the_dataset():
    """channel_stats held a float64 copy of all the images (twice their float32 size);
    reading uint8 images, NHWC ones, and standardizing each held a second float32 copy."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)  # 48 MiB as float32
    x = formats._images_to_nchw(pixels, "x")
    assert x.shape == (4096, 3, 32, 32) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, pixels.transpose(0, 3, 1, 2) / np.float32(255))
    mean, std = data.channel_stats(x)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3), dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3), dtype=np.float64), rtol=1e-6)
    np.testing.assert_array_equal(data.standardize(x, mean, std),
                                  ((x - mean[:, None, None]) / std[:, None, None]))
    assert peak_bytes(data.channel_stats, x) < 0.75 * x.nbytes
    for convert in (formats._images_to_nchw, formats.to_nchw_float):  # uint8 NCHW, then float32
        assert peak_bytes(convert, pixels, "x") < 1.5 * x.nbytes
    assert peak_bytes(data.standardize, x, mean, std) < 1.5 * x.nbytes


def test_a_training_run_lets_go_of_the_images_it_has_standardized(tmp_path, monkeypatch):
    """It held every image read beside its standardized copy all through training
    (Fashion-MNIST: 220 MB more; CIFAR-10: 740 MB)."""
    np.savez(tmp_path / "d.npz", **tiny_arrays())
    held, train = [], session.Session.run

    def spy(self):
        ds = self.prep.dataset
        held.append((ds.x_train.size, ds.x_test.size, ds.input_shape))
        train(self)

    monkeypatch.setattr(session.Session, "run", spy)
    result = run.train({"dataset": str(tmp_path / "d.npz"), "model": "seed-cnn", "epochs": 1},
                       tmp_path / "run", device="cpu")
    assert held == [(0, 0, (1, 28, 28))] and result["test_accuracy"] is not None


def test_a_class_folder_reads_its_linked_subfolders_once_each(tmp_path):
    """A subfolder that is a symbolic link was skipped without a word; a link back up to the
    class folder must not loop."""
    Image = pytest.importorskip("PIL.Image")
    for name in ("cat", "dog", "archive/2019"):
        (tmp_path / name).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name / "0.png")
    (tmp_path / "cat" / "2019").symlink_to(tmp_path / "archive" / "2019")
    (tmp_path / "cat" / "again").symlink_to(tmp_path / "cat")
    (tmp_path / "cat" / "also 2019").symlink_to(tmp_path / "archive" / "2019")
    found = pictures.files_under(tmp_path / "cat")
    assert [p.relative_to(tmp_path / "cat").as_posix() for p in found] == ["0.png", "2019/0.png"]


@pytest.mark.parametrize("x_train, message", [
    (np.full((20, 28, 28), 255.0), r"these go from 255 to 255: divide 0\.\.255 pixels by 255 "
                                   r"\(or save them as uint8\)$"),
    (np.full((20, 28, 28), -0.5), r"these go from -0\.5 to -0\.5: scale them to \[0, 1\]$"),
    (np.full((20, 28, 28), np.nan), r"these hold NaN or infinite values$"),
])
def test_float_images_out_of_range_say_what_they_hold_and_the_fix(tmp_path, x_train, message):
    np.savez(tmp_path / "d.npz", **{**tiny_arrays(), "x_train": x_train})
    with pytest.raises(ValueError, match=r"x_train: float images must be finite and lie in "
                                         r"\[0, 1\]; " + message):
        data.load_dataset(str(tmp_path / "d.npz"))


def test_an_image_size_too_large_to_hold_is_refused_before_any_picture_is_resized(tmp_path):
    """--image-size 100000 resized each picture to 30 GB until the process was killed; this size is just past the limit."""
    Image = pytest.importorskip("PIL.Image")
    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "train" / name / "0.png")
    with pytest.raises(ValueError, match=r"^image size 10000,9000 is 90,000,000 pixels a "
                                         r"picture, where Pillow reads [\d,]+ at most; give a "
                                         r"smaller size$"):
        data.load_dataset(str(tmp_path), splits=("train",), image_size=(10000, 9000))
    assert data.load_dataset(str(tmp_path), splits=("train",), image_size=(6, 5)).input_shape \
        == (1, 6, 5)
