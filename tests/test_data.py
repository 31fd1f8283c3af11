"""Dataset readers, lookup order, checksummed downloads and the synthetic dataset."""

from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest

from cnnx import data
from cnnx.data import formats, sources
from datafiles import (IDX_NAMES, cifar_batch_bytes, serve_directory, sha256_of, tiny_arrays,
                       write_idx, write_mnist_dir)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real cache, system dataset, mirror or environment leaks into these tests."""
    for name in ("CNNX_DATA", "CNNX_MIRROR", "CNNX_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DIRS", [])
    monkeypatch.setattr(sources, "DOWNLOAD_TIMEOUT_S", 5)


# ----------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(formats.read_idx(write_idx(tmp_path / "a", images, gz), ndim=3), images)
    ints = np.array([1, -2, 70000], dtype=np.int32)
    assert np.array_equal(formats.read_idx(write_idx(tmp_path / "b", ints, gz)), ints)


def test_idx_pair_scales_to_nchw_float(tmp_path):
    arrays = write_mnist_dir(tmp_path)
    x, y = formats.read_idx_pair(tmp_path / IDX_NAMES["x_train"], tmp_path / IDX_NAMES["y_train"])
    assert x.dtype == np.float32 and x.shape == (20, 1, 28, 28)
    assert y.dtype == np.int64 and np.array_equal(y, arrays["y_train"])
    assert np.allclose(x[:, 0] * 255, arrays["x_train"])


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"\x08\x03" + b[2:], "bad magic"),            # wrong leading bytes
    (lambda b: b[:2] + b"\x42" + b[3:], "bad magic"),        # unknown type code
    (lambda b: b[:-7], "truncated"),                         # data cut short
    (lambda b: b + b"\x00", "truncated or corrupt"),         # trailing junk
    (lambda b: b[:10], "truncated IDX header"),              # header cut short
    (lambda b: b"", "bad magic"),                            # empty file
])
def test_corrupt_idx_is_a_clear_error(tmp_path, damage, message):
    good = (tmp_path / "good")
    write_idx(good, np.zeros((3, 4, 4), np.uint8), gz=False)
    bad = tmp_path / "bad"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(ValueError, match=message):
        formats.read_idx(bad, ndim=3)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = write_idx(tmp_path / "x.gz", np.zeros((30, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        formats.read_idx(path)


def test_idx_dimension_and_count_checks(tmp_path):
    images = write_idx(tmp_path / "i", np.zeros((3, 4, 4), np.uint8))
    labels = write_idx(tmp_path / "l", np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="3 dimensions, expected 1"):
        formats.read_idx(images, ndim=1)
    with pytest.raises(ValueError, match="3 images but .* 4 labels"):
        formats.read_idx_pair(images, labels)


# ------------------------------------------------------------------------------ lookup
def test_lookup_order_data_dir_then_env_then_cache_then_system(tmp_path, monkeypatch):
    places = {p: tmp_path / p / "mnist" for p in ("arg", "env", "cache", "system")}
    for seed, directory in enumerate(places.values()):
        write_mnist_dir(directory, seed=seed)
    monkeypatch.setenv("CNNX_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DIRS", [str(tmp_path / "system")])
    # XDG_CACHE_HOME/cnnx/<name> is the cache: move the "cache" copy there.
    (tmp_path / "cache" / "cnnx").mkdir()
    places["cache"].rename(tmp_path / "cache" / "cnnx" / "mnist")
    places["cache"] = tmp_path / "cache" / "cnnx" / "mnist"
    assert data.load_dataset("mnist", data_dir=tmp_path / "arg").source == str(places["arg"])
    for name in ("env", "cache", "system"):
        assert data.load_dataset("mnist").source == str(places[name])
        for f in places[name].iterdir():
            f.unlink()


def test_data_dir_may_hold_the_files_directly_and_uncompressed(tmp_path):
    arrays = write_mnist_dir(tmp_path, gz=False)
    ds = data.load_dataset("mnist", data_dir=tmp_path)
    assert ds.class_names == [str(d) for d in range(10)] and ds.num_classes == 10
    assert ds.x_test.shape == (10, 1, 28, 28) and np.array_equal(ds.y_test, arrays["y_test"])


def test_data_dir_is_only_for_the_known_datasets(tmp_path):
    """It would be ignored, without a word, for an .npz, a directory or synthetic."""
    np.savez(tmp_path / "d.npz", **tiny_arrays())
    for name in (str(tmp_path / "d.npz"), str(tmp_path)):
        with pytest.raises(ValueError, match=r"^--data-dir is where fashion-mnist, mnist and cifar10 "
                                             r"are looked for; give the \.npz's \(or the picture "
                                             r"directory's\) path in --dataset and leave out --data-dir$"):
            data.load_dataset(name, data_dir=tmp_path)
    with pytest.raises(ValueError, match="synthetic is generated: leave out --data-dir"):
        data.load_dataset("synthetic", data_dir=tmp_path)


def test_corrupt_file_in_lookup_is_reported(tmp_path):
    write_mnist_dir(tmp_path)
    path = tmp_path / IDX_NAMES["x_test"]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    with pytest.raises(ValueError, match="t10k-images.*truncated"):
        data.load_dataset("mnist", data_dir=tmp_path)


# ---------------------------------------------------------------------------- download
@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local mirror serving a tiny generated MNIST under <url>/mnist/, with the registry's
    checksums replaced by those of the generated files."""
    served = tmp_path / "served" / "mnist"
    write_mnist_dir(served)
    known = sources.KNOWN["mnist"]
    sums = {name: sha256_of(served / name) for name in known.files}
    monkeypatch.setitem(sources.KNOWN, "mnist", dataclasses.replace(known, files=sums))
    with serve_directory(tmp_path / "served") as url:
        monkeypatch.setenv("CNNX_MIRROR", url)
        yield served


def test_download_into_cache_with_sha256_check(mirror, tmp_path):
    heard = []
    ds = data.load_dataset("mnist", log=heard.append)
    cache = tmp_path / "cache" / "cnnx" / "mnist"
    assert ds.source == str(cache) and len(ds.x_train) == 20
    assert sorted(p.name for p in cache.iterdir()) == sorted(IDX_NAMES.values())
    assert len(heard) == 4 and all("127.0.0.1" in line for line in heard)
    heard.clear()
    data.load_dataset("mnist", log=heard.append)  # second time: found in the cache
    assert heard == []


def test_checksum_mismatch_keeps_nothing(mirror, tmp_path):
    (mirror / IDX_NAMES["y_test"]).write_bytes(b"tampered")
    with pytest.raises(data.DatasetNotFound, match="SHA-256 mismatch"):
        data.load_dataset("mnist")
    cache = tmp_path / "cache" / "cnnx" / "mnist"
    assert not any(p.name.endswith(".part") for p in cache.iterdir())
    assert IDX_NAMES["y_test"] not in {p.name for p in cache.iterdir()}


def test_offline_and_absent_is_one_line_with_every_way_to_get_it(monkeypatch):
    monkeypatch.setenv("CNNX_MIRROR", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(data.DatasetNotFound) as info:
        data.load_dataset("fashion-mnist")
    message = str(info.value)
    assert "\n" not in message
    for part in ("--data-dir", "apt-get install dataset-fashion-mnist",
                 "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"):
        assert part in message


def test_cnnx_offline_forbids_downloads(monkeypatch):
    monkeypatch.setenv("CNNX_OFFLINE", "1")
    with pytest.raises(data.DatasetNotFound, match="downloads are disabled"):
        data.load_dataset("cifar10")


# ------------------------------------------------------------------------------ CIFAR-10
def _write_cifar_members(directory, n=4):
    directory.mkdir(parents=True, exist_ok=True)
    for seed, member in enumerate(sources.CIFAR_MEMBERS):
        (directory / member).write_bytes(cifar_batch_bytes(n, seed))


def test_cifar_batches_from_directory_and_archive(tmp_path):
    _write_cifar_members(tmp_path / "cifar10" / "cifar-10-batches-py")
    ds = data.load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.y_train.dtype == np.int64 and ds.class_names[0] == "airplane"
    raw = pickle.loads(cifar_batch_bytes(4, 5))  # test_batch was written with seed 5
    assert np.allclose(ds.x_test.reshape(4, -1) * 255, raw[b"data"])

    archive = tmp_path / "tar" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar10" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    from_tar = data.load_dataset("cifar10", data_dir=archive.parent)
    assert np.array_equal(from_tar.x_train, ds.x_train)


def test_test_split_alone_never_reads_the_training_files(tmp_path):
    """``splits=("test",)`` (what ``cnnx evaluate`` asks for) leaves the training files unread:
    here they are garbage, and loading still succeeds with an empty training split."""
    arrays = write_mnist_dir(tmp_path / "mnist")
    (tmp_path / "mnist" / IDX_NAMES["x_train"]).write_bytes(b"not an IDX file")
    cifar = tmp_path / "cifar10" / "cifar-10-batches-py"
    _write_cifar_members(cifar)
    (cifar / "data_batch_3").write_bytes(b"garbage")
    for name, shape in (("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))):
        with pytest.raises(ValueError):
            data.load_dataset(name, data_dir=tmp_path)   # both splits: the damage is found
        ds = data.load_dataset(name, data_dir=tmp_path, splits=("test",))
        assert ds.x_train.shape == (0,) + shape and ds.y_train.shape == (0,)
        assert ds.input_shape == shape and len(ds.x_test) > 0 and ds.num_classes == 10
    ds = data.load_dataset("mnist", data_dir=tmp_path, splits=("test",))
    assert np.allclose(ds.x_test[:, 0] * 255, arrays["x_test"])
    train_only = data.load_dataset("synthetic", splits=("train",))
    assert len(train_only.x_train) > 0 and train_only.x_test.shape == (0,) + train_only.input_shape
    with pytest.raises(ValueError, match="splits must be some of"):
        data.load_dataset("synthetic", splits=("val",))


def test_cifar_batch_validation():
    with pytest.raises(ValueError, match="lacks key"):
        formats.parse_cifar_batch(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}), "b")
    with pytest.raises(ValueError, match="shape \\(N, 3072\\)"):
        formats.parse_cifar_batch(cifar_batch_bytes(2, data=np.zeros((2, 10), np.uint8)), "b")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        formats.parse_cifar_batch(b"garbage", "b")


def test_cifar_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        formats.parse_cifar_batch(pickle.dumps({b"data": Evil()}), "b")


def test_corrupt_cifar_archive(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        payload = cifar_batch_bytes(2)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    archive.write_bytes(buffer.getvalue()[:-30])
    with pytest.raises(ValueError, match="corrupt or truncated archive|lacks"):
        data.load_dataset("cifar10", data_dir=tmp_path)


# ----------------------------------------------------------------------------------- npz
def test_npz_dataset_layouts(tmp_path):
    arrays = tiny_arrays(shape=(8, 8))
    np.savez(tmp_path / "hw.npz", **arrays)
    ds = data.load_dataset(str(tmp_path / "hw.npz"))
    assert ds.name == "hw" and ds.input_shape == (1, 8, 8) and ds.x_train.dtype == np.float32
    nhwc = {**arrays, "x_train": np.repeat(arrays["x_train"][..., None], 3, axis=3),
            "x_test": np.repeat(arrays["x_test"][..., None], 3, axis=3),
            "class_names": np.array([f"c{i}" for i in range(10)])}
    np.savez(tmp_path / "hwc.npz", **nhwc)
    ds = data.load_dataset(str(tmp_path / "hwc.npz"))
    assert ds.input_shape == (3, 8, 8) and ds.class_names[3] == "c3"


def test_npz_with_wrong_keys_names_them(tmp_path):
    arrays = tiny_arrays()
    np.savez(tmp_path / "bad.npz", images=arrays["x_train"], y_train=arrays["y_train"])
    with pytest.raises(ValueError, match="missing key\\(s\\) x_train, x_test, y_test.*found: images"):
        data.load_dataset(str(tmp_path / "bad.npz"))


def test_npz_needs_only_the_splits_asked_for(tmp_path):
    arrays = tiny_arrays()
    np.savez(tmp_path / "t.npz", x_test=arrays["x_test"], y_test=arrays["y_test"])
    ds = data.load_dataset(str(tmp_path / "t.npz"), splits=("test",))
    assert ds.x_test.shape == (10, 1, 28, 28) and ds.x_train.shape == (0, 1, 28, 28)
    with pytest.raises(ValueError, match="missing key\\(s\\) x_train, y_train; .*found: x_test, y_test"):
        data.load_dataset(str(tmp_path / "t.npz"))


def test_npz_validation_set_of_its_own_is_read_only_when_present_and_asked_for(tmp_path):
    arrays = tiny_arrays()
    rng = np.random.default_rng(3)
    x_val, y_val = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.array([9, 0, 4, 4])
    np.savez(tmp_path / "v.npz", **arrays, x_val=x_val, y_val=y_val)
    ds = data.load_dataset(str(tmp_path / "v.npz"))
    np.testing.assert_array_equal(ds.x_val[:, 0], x_val / np.float32(255))
    assert ds.y_val.dtype == np.int64 and ds.y_val.tolist() == [9, 0, 4, 4]
    assert data.load_dataset(str(tmp_path / "v.npz"), splits=("train", "test")).x_val is None
    np.savez(tmp_path / "plain.npz", **arrays)
    no_val = data.load_dataset(str(tmp_path / "plain.npz"))
    assert no_val.x_val is None and no_val.y_val is None
    for extra, message in (({"x_val": x_val}, "holds x_val but not y_val; a validation set needs both"),
                           ({"y_val": y_val}, "holds y_val but not x_val"),
                           ({"x_val": x_val[:, :9, :9], "y_val": y_val},
                            r"images differ in shape between x_train \(1, 28, 28\), x_val \(1, 9, 9\)"),
                           ({"x_val": x_val, "y_val": y_val[:3]}, "y_val: expected 4 integer labels")):
        np.savez(tmp_path / "bad.npz", **arrays, **extra)
        with pytest.raises(ValueError, match=message):
            data.load_dataset(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("change, message", [
    ({"y_train": np.zeros(3, np.int64)}, "expected 20 integer labels"),
    ({"y_test": np.full(10, -1)}, "labels must be >= 0"),
    ({"y_train": np.r_[2**40, np.zeros(19, np.int64)]},
     "y_train's labels go up to 1099511627776, with 30 examples in all: labels must number the "
     "classes 0..K-1"),
    ({"x_train": np.full((20, 28, 28), 2.0)}, "finite and lie in \\[0, 1\\]"),
    ({"x_train": np.zeros((20, 5), np.uint8)}, "expected images"),
    ({"x_test": np.zeros((0, 1, 28, 28), np.uint8), "y_test": np.zeros(0, np.int64)},
     r"x_test holds no images$"),
    ({"x_test": np.zeros((10, 9, 9), np.uint8)}, "differ in shape"),
])
def test_npz_content_checks(tmp_path, change, message):
    np.savez(tmp_path / "d.npz", **{**tiny_arrays(), **change})
    with pytest.raises(ValueError, match=message):
        data.load_dataset(str(tmp_path / "d.npz"))


def test_npz_labels_may_go_as_high_as_many_classes_need(tmp_path):
    """A few test images of high classes (a 10000-class model's) are not a stray label."""
    arrays = tiny_arrays()
    np.savez(tmp_path / "t.npz", x_test=arrays["x_test"], y_test=np.full(10, 9999))
    assert data.load_dataset(str(tmp_path / "t.npz"), splits=("test",)).num_classes == 10000
    np.savez(tmp_path / "t.npz", x_test=arrays["x_test"], y_test=np.full(10, 10000))
    with pytest.raises(ValueError, match="y_test's labels go up to 10000, with 10 examples"):
        data.load_dataset(str(tmp_path / "t.npz"), splits=("test",))


def test_npz_never_unpickles_and_rejects_corrupt_files(tmp_path):
    np.savez(tmp_path / "obj.npz", **{**tiny_arrays(), "y_test": np.array([None] * 10)})
    with pytest.raises(ValueError, match="unreadable"):
        data.load_dataset(str(tmp_path / "obj.npz"))
    np.savez(tmp_path / "cut.npz", **tiny_arrays())
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        data.load_dataset(str(tmp_path / "cut.npz"))
    with pytest.raises(ValueError, match="does not exist"):
        data.load_dataset(str(tmp_path / "absent.npz"))
    (tmp_path / "text.npz").write_text("hello")  # not NumPy's advice to allow_pickle
    with pytest.raises(ValueError, match=r"text\.npz: not an \.npz file \(nor a \.npy\)$"):
        data.load_dataset(str(tmp_path / "text.npz"))
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.load_dataset("imagenet")


# ------------------------------------------------------------------- synthetic and splits
def test_synthetic_is_deterministic_balanced_and_in_range():
    a = data.synthetic.make_synthetic(200, 50, seed=3)
    b = data.synthetic.make_synthetic(200, 50, seed=3)
    c = data.synthetic.make_synthetic(200, 50, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
    assert not np.array_equal(a["x_train"], c["x_train"])
    assert a["x_train"].shape == (200, 1, 28, 28) and a["x_train"].dtype == np.float32
    assert 0.0 <= a["x_train"].min() and a["x_train"].max() <= 1.0
    assert np.bincount(a["y_train"]).tolist() == [20] * 10 and a["y_train"].dtype == np.int64


def test_synthetic_is_learnable():
    """Even a nearest-centroid classifier on 2-D Fourier magnitudes (shift-invariant) beats
    chance by far; a CNN does much better (see the CLI tests)."""
    d = data.synthetic.make_synthetic(1000, 300, seed=0)
    feats = {k: np.abs(np.fft.fft2(d[k][:, 0])).reshape(len(d[k]), -1)
             for k in ("x_train", "x_test")}
    centroids = np.stack([feats["x_train"][d["y_train"] == k].mean(0) for k in range(10)])
    guess = ((feats["x_test"][:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (guess == d["y_test"]).mean() > 0.5


def test_val_split_takes_lists_and_refuses_unequal_lengths():
    """Before: lists failed with "only integer scalar arrays can be converted to a scalar
    index", and 20 inputs with 5 targets with an IndexError."""
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
    xt, yt, xv, yv = data.val_split(x.tolist(), y.tolist(), 0.2, seed=3)
    expected = data.val_split(x, y, 0.2, seed=3)
    for got, want in zip((xt, yt, xv, yv), expected):
        assert np.array_equal(got, want)
    with pytest.raises(ValueError, match=r"^val_split: 10 inputs but 5 targets$"):
        data.val_split(x, y[:5], 0.2)


def test_val_split_is_seeded_and_disjoint():
    x = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1)
    y = np.arange(100)
    xt, yt, xv, yv = data.val_split(x, y, 0.1, seed=1)
    assert len(yv) == 10 and len(yt) == 90
    assert sorted(np.concatenate([yt, yv]).tolist()) == list(range(100))
    assert np.array_equal(xv[:, 0, 0, 0], yv)
    assert np.array_equal(data.val_split(x, y, 0.1, seed=1)[3], yv)
    assert not np.array_equal(data.val_split(x, y, 0.1, seed=2)[3], yv)
    assert len(data.val_split(x, y, 0.0)[3]) == 0
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="validation fraction"):
            data.val_split(x, y, bad)


def test_standardize_uses_train_statistics():
    x = np.random.default_rng(0).random((50, 3, 4, 4), dtype=np.float32)
    mean, std = data.channel_stats(x)
    z = data.standardize(x, mean, std)
    assert mean.shape == (3,) and z.dtype == np.float32
    assert np.allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-4)
