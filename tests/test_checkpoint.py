"""Checkpoints: complete round trip, atomic writes, and one-line errors for bad files."""

from __future__ import annotations

import errno
import json
import os
import re

import numpy as np
import pytest

import cnnx
from cnnx import checkpoint, models
from cnnx.losses import SoftmaxCrossEntropy
from cnnx.optim import SGD
from datafiles import garbled_deflate, marked_deflate64, recompressed


@pytest.fixture
def trained():
    """A small model and optimizer after a few momentum steps (so buffers are non-zero)."""
    model = models.build("seed-cnn", seed=1)
    optimizer = SGD(model, lr=0.05, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 12)
    history = cnnx.fit(model, SoftmaxCrossEntropy(), optimizer, x, y, epochs=1, batch_size=4)
    return model, optimizer, history, x


def test_round_trip_is_bitwise(tmp_path, trained):
    model, optimizer, history, x = trained
    order = np.random.default_rng(0).permutation(12)
    path = checkpoint.save(tmp_path / "c.npz", model, optimizer, epoch=1, step=2, order=order,
                           metrics=history, seed=7, class_names=["a", "b"])
    ck = checkpoint.load(path)
    assert (ck.epoch, ck.step, ck.dtype, ck.input_shape) == (1, 2, "float32", (1, 28, 28))
    assert ck.header["seed"] == 7 and ck.header["cnnx_version"] == cnnx.__version__
    assert ck.metrics == json.loads(json.dumps(history)) and np.array_equal(ck.order, order)
    for name, value in model.state_dict().items():
        assert ck.model_state[name].tobytes() == value.tobytes()
    saved = optimizer.state_dict()
    assert ck.optimizer_state["momentum"] == saved["momentum"] and ck.optimizer_state["lr"] == 0.05
    for name, value in saved["buffers"].items():
        assert ck.optimizer_state["buffers"][name].tobytes() == value.tobytes()
    rebuilt = ck.build_model()
    assert rebuilt.forward(x).tobytes() == model.forward(x).tobytes()
    fresh = SGD(rebuilt, lr=1.0)
    fresh.load_state_dict(ck.optimizer_state)
    assert fresh.lr == 0.05


def test_file_is_plain_numpy_without_pickle(tmp_path, trained):
    model, optimizer, _, _ = trained
    path = checkpoint.save(tmp_path / "c.npz", model, optimizer, epoch=0)
    with np.load(path, allow_pickle=False) as npz:
        assert {"header", "model/0.W", "optimizer/buffers/0.W"} <= set(npz.files)
        assert all(npz[k].dtype != object for k in npz.files)
        header = json.loads(npz["header"].tobytes())
    assert header["format"] == "cnnx-checkpoint" and header["spec"] == model.spec()


def test_checkpoint_of_another_model_is_refused(tmp_path, trained):
    model, _, _, _ = trained
    ck = checkpoint.load(checkpoint.save(tmp_path / "c.npz", model, epoch=0))
    ck.check_model(model)
    with pytest.raises(checkpoint.CheckpointError, match="saved from another model .*layer 0") as e:
        ck.check_model(models.build("lenet5"))
    assert "\n" not in str(e.value)
    with pytest.raises(checkpoint.CheckpointError, match="dtype float32 there, float64 here"):
        ck.check_model(models.build("seed-cnn", dtype="float64"))


def _damaged(tmp_path, trained, damage):
    model, optimizer, _, _ = trained
    path = checkpoint.save(tmp_path / "c.npz", model, optimizer, epoch=0)
    path.write_bytes(damage(path.read_bytes()))
    return path


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],                                        # truncated (killed save)
    lambda b: b[:-1],                                                  # one byte short
    lambda b: b[:2000] + bytes(255 - c for c in b[2000:2400]) + b[2400:],  # bytes flipped
    lambda b: b"",                                                     # empty
    lambda b: b"hello, not a zip file",                                # foreign
])
def test_corrupt_or_truncated_file_is_one_clear_error(tmp_path, trained, damage):
    path = _damaged(tmp_path, trained, damage)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("damage", [
    lambda raw: garbled_deflate(recompressed(raw), "header.npy"),   # zlib.error
    lambda raw: marked_deflate64(recompressed(raw), "header.npy"),  # NotImplementedError
])
def test_a_damaged_compressed_checkpoint_is_one_clear_error(tmp_path, trained, damage):
    path = _damaged(tmp_path, trained, damage)
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated") as info:
        checkpoint.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("arrays, message", [
    ({"weights": np.zeros(3)}, "no header"),
    ({"header": np.frombuffer(b"{not json", np.uint8)}, "corrupt checkpoint header"),
    ({"header": np.frombuffer(b'{"format": "other"}', np.uint8)}, "not a cnnx checkpoint"),
    ({"header": np.frombuffer(b'{"format": "cnnx-checkpoint", "format_version": 99}', np.uint8)},
     "newer than this cnnx reads"),
    ({"header": np.frombuffer(b'{"format": "cnnx-checkpoint", "format_version": 1}', np.uint8)},
     "header lacks cnnx_version"),
])
def test_foreign_npz_files_are_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(tmp_path / "x.npz")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n a picture", b"hello", b""])
def test_a_file_that_is_no_npz_is_said_to_be_none(tmp_path, content):
    """Not NumPy's "contains pickled (object) data ... allow_pickle=" (`cnnx predict x.png RUN`)."""
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(tmp_path / "x.png")
    assert str(info.value) == f"{tmp_path / 'x.png'}: not a cnnx checkpoint (not an .npz file)"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path, trained, bad):
    """It would evaluate to chance accuracy and a NaN loss (training never saves one)."""
    model, _, _, _ = trained
    state = model.state_dict()
    state["3.W"][0, 0, 0, 0] = bad
    path = checkpoint.save(tmp_path / "c.npz", model, model_state=state)
    with pytest.raises(checkpoint.CheckpointError, match=r"c\.npz: weight 3\.W holds NaN or inf, "
                                                         r"so the model computes nothing usable"):
        checkpoint.load(path)


def test_pickled_content_is_never_loaded(tmp_path):
    np.savez(tmp_path / "x.npz", header=np.array([{"format": "cnnx-checkpoint"}], dtype=object))
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or truncated"):
        checkpoint.load(tmp_path / "x.npz")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at .*checkpoint.npz"):
        checkpoint.load(tmp_path)  # a run directory without a checkpoint


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, trained, monkeypatch, error):
    model, optimizer, _, _ = trained
    path = checkpoint.save(tmp_path / "c.npz", model, optimizer, epoch=1)
    before = path.read_bytes()

    def exploding_savez(f, **arrays):
        f.write(b"partial")
        raise error

    monkeypatch.setattr(np, "savez", exploding_savez)
    with pytest.raises(type(error)):
        checkpoint.save(path, model, optimizer, epoch=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_a_failed_write_names_the_file_it_was_writing(tmp_path, monkeypatch):
    """A full disk fails inside write or close, where the OSError carries no file name; a
    temp file that could not be created must not replace the real error with its own name."""
    def full_disk(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "run" / "metrics.jsonl"
    with pytest.raises(OSError, match=f"^cannot write {re.escape(str(target))}: No space left "
                                      "on device \\(free some space") as caught:
        checkpoint.atomic_write(target, full_disk, mode="w")
    assert caught.value.errno == errno.ENOSPC and os.listdir(tmp_path / "run") == []

    monkeypatch.setattr(checkpoint, "temporary_name", lambda path: tmp_path / "gone" / "x.tmp")
    with pytest.raises(OSError, match=f"^cannot write {re.escape(str(target))}: No such file"):
        checkpoint.atomic_write(target, lambda f: f.write("x"), mode="w")

    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="^cannot write .*file.*c.npz: "):
        checkpoint.atomic_write(tmp_path / "file" / "c.npz", lambda f: None)


def test_save_fsyncs_file_and_directory(tmp_path, trained, monkeypatch):
    model, _, _, _ = trained
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    checkpoint.save(tmp_path / "sub" / "c.npz", model, epoch=0)
    assert len(synced) == 2  # the file, then its directory
    assert os.listdir(tmp_path / "sub") == ["c.npz"]


def test_header_must_be_json(tmp_path, trained):
    model, _, _, _ = trained
    with pytest.raises(ValueError, match="not JSON-able"):
        checkpoint.save(tmp_path / "c.npz", model, epoch=0, config={"x": object()})
    assert not os.listdir(tmp_path) if tmp_path.exists() else True


def test_models_built_from_one_checkpoint_own_their_weights(tmp_path, trained):
    """Training one model built from a file (an in-place update, as the optimizers make) leaves
    a second one, and the loaded state, as they were."""
    model, _, _, x = trained
    ck = checkpoint.load(checkpoint.save(tmp_path / "c.npz", model))
    first, second = ck.build_model(), ck.build_model()
    before = second.state_dict()
    for name, array in first.layers[0].params.items():
        array -= 1.0
    for name, value in second.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
        np.testing.assert_array_equal(ck.model_state[name], before[name])


def test_a_model_saved_without_an_input_shape_loads_and_sizes_itself(tmp_path):
    model = cnnx.Sequential([cnnx.layers.Dense(4, 2)])
    same = checkpoint.load(checkpoint.save(tmp_path / "c.npz", model)).build_model()
    x = np.ones((3, 4), np.float32)
    assert same.input_shape is None
    np.testing.assert_array_equal(same.forward(x), model.forward(x))


def test_dropout_goes_on_with_the_saved_models_seed(tmp_path):
    """The masks a model draws next depend on its seed: a library save() keeps it."""
    def build():
        return cnnx.Sequential([cnnx.layers.Flatten(), cnnx.layers.Dropout(0.5),
                                cnnx.layers.Dense(16, 2)], input_shape=(1, 4, 4), seed=3)
    model, x = build(), np.ones((2, 1, 4, 4), np.float32)
    model.forward(x)  # one mask drawn: the next comes from the counter saved with the model
    same = checkpoint.load(checkpoint.save(tmp_path / "c.npz", model)).build_model()
    np.testing.assert_array_equal(same.forward(x), model.forward(x))


@pytest.mark.parametrize("name", checkpoint.HEADER_FROM_THE_MODEL)
def test_extra_information_cannot_overwrite_what_save_writes(tmp_path, trained, name):
    with pytest.raises(ValueError, match=f"checkpoint.save: {name} is written from the model "
                                         "itself; pass other names"):
        checkpoint.save(tmp_path / "c.npz", trained[0], **{name: "float64"})
    assert not (tmp_path / "c.npz").exists()


def test_a_checkpoint_repr_is_one_line_not_every_weight(tmp_path, trained):
    """Before: the dataclass repr printed every array of the model and optimizer state."""
    model, optimizer, _, _ = trained
    ck = checkpoint.load(checkpoint.save(tmp_path / "c.npz", model, optimizer, epoch=1))
    assert repr(ck) == (f"Checkpoint({str(tmp_path / 'c.npz')!r}, epoch=1, step=0, layers=10, "
                        f"input_shape=(1, 28, 28), dtype='float32', optimizer_state=True)")


@pytest.mark.parametrize("arguments, message", [
    # before: AttributeError: 'SGD' object has no attribute 'spec'
    (lambda path, m, o: (path, o), "model must be a cnnx Sequential, got a SGD"),
    (lambda path, m, o: (m, path), "model must be a cnnx Sequential, got a PosixPath"),
    # before: saved, with the model's weights written as the optimizer state
    (lambda path, m, o: (path, m, m), "optimizer must be a cnnx optimizer or None, got a Sequential"),
])
def test_save_names_a_misplaced_argument(tmp_path, arguments, message):
    model = models.build("lenet5")
    args = arguments(tmp_path / "c.npz", model, SGD(model))
    with pytest.raises(TypeError, match=re.escape(f"checkpoint.save: {message}; the arguments "
                                                  f"are save(path, model, optimizer=None, ...)")):
        checkpoint.save(*args)
    assert not list(tmp_path.iterdir())
