"""A dataset kept as folders of pictures, one per class (cnnx/data/pictures.py): labels, pixels,
channels, the errors a user can make, and ``cnnx train / evaluate`` on such a directory."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from cnnx import data, run
from cnnx.data import pictures
from cnnx.data.synthetic import make_synthetic
from cli_fixtures import isolated  # noqa: F401 (pytest fixture)
from cli_helpers import invoke, one_line_error

Image = pytest.importorskip("PIL.Image")


def save(path, pixels: np.ndarray, mode: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)


def gray(value: int, size=(6, 5)) -> np.ndarray:
    """A (height, width) uint8 picture whose pixels differ (value + position), so a transposed
    or flipped read shows."""
    return (value + np.arange(size[0] * size[1]).reshape(size)).astype(np.uint8)


def test_labels_follow_the_sorted_class_folders_and_pixels_scale_to_0_1(tmp_path):
    root = tmp_path / "shapes"
    for split, classes in (("train", "bca"), ("test", "ca")):
        for k, name in enumerate(classes):
            for i in range(2):
                save(root / split / name / f"{i}.png", gray(40 * k + 10 * i))
    (root / "train" / "a" / "notes.txt").write_text("not a picture")
    save(root / "train" / "a" / ".hidden.png", gray(0))
    save(root / "train" / "a" / ".ipynb_checkpoints" / "2-checkpoint.png", gray(0))
    save(root / "train" / "b" / "2024" / "0.png", gray(7))  # a subfolder is part of its class
    ds = data.load_dataset(str(root))
    assert ds.name == "shapes" and ds.class_names == ["a", "b", "c"] and ds.num_classes == 3
    assert ds.x_train.dtype == np.float32 and ds.x_train.shape == (7, 1, 6, 5)
    assert ds.y_train.tolist() == [0, 0, 1, 1, 1, 2, 2] and ds.y_test.tolist() == [0, 0, 2, 2]
    np.testing.assert_array_equal(ds.x_train[4, 0], gray(7) / np.float32(255))  # b/2024/ last
    # train/ lists b, c, a: a was written third (k = 2), b first (k = 0)
    np.testing.assert_array_equal(ds.x_train[0, 0], gray(80) / np.float32(255))
    np.testing.assert_array_equal(ds.x_train[3, 0], gray(10) / np.float32(255))
    np.testing.assert_array_equal(ds.x_test[3, 0], gray(10) / np.float32(255))


def test_color_pictures_make_every_image_rgb(tmp_path):
    root = tmp_path / "mixed"
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    save(root / "train" / "color" / "rgb.png", rgb)
    rgba = np.dstack([rgb, np.full((6, 5), 7, np.uint8)])
    save(root / "train" / "color" / "rgba.png", rgba)
    save(root / "train" / "gray" / "g.png", gray(3))
    save(root / "test" / "gray" / "g.jpg", gray(100))  # lossy: compared with Pillow's own decode
    ds = data.load_dataset(str(root))
    assert ds.x_train.shape == (3, 3, 6, 5) and ds.x_test.shape == (1, 3, 6, 5)
    as_float = lambda x: x.astype(np.float32) / np.float32(255)  # noqa: E731
    np.testing.assert_array_equal(ds.x_train[0], as_float(rgb.transpose(2, 0, 1)))
    np.testing.assert_array_equal(ds.x_train[1], as_float(rgb.transpose(2, 0, 1)))  # alpha dropped
    np.testing.assert_array_equal(ds.x_train[2], as_float(np.stack([gray(3)] * 3)))
    with Image.open(root / "test" / "gray" / "g.jpg") as img:
        decoded = np.asarray(img.convert("L"))
    np.testing.assert_array_equal(ds.x_test[0], as_float(np.stack([decoded] * 3)))


def test_sixteen_bit_grayscale_pictures_scale_instead_of_clipping(tmp_path):
    root = tmp_path / "deep"
    deep = np.array([[0, 128, 257, 1000], [32767, 32768, 65000, 65535]], np.uint16)
    save(root / "train" / "a" / "0.png", deep)
    save(root / "test" / "a" / "0.png", deep)
    with Image.open(root / "train" / "a" / "0.png") as img:
        assert img.mode.startswith("I")  # Pillow opens it as 16-bit, not as 8-bit "L"
    ds = data.load_dataset(str(root))
    eight_bits = np.round(deep / 257.0)
    np.testing.assert_array_equal(ds.x_train[0, 0], eight_bits.astype(np.float32) / np.float32(255))


@pytest.mark.parametrize("suffix, options", [
    (".bmp", {}), (".webp", {"lossless": True}), (".tif", {}), (".tiff", {}), (".ppm", {}),
    (".pgm", {}),
])
def test_lossless_formats_read_as_the_pixels_written(tmp_path, suffix, options):
    root = tmp_path / "formats"
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (6, 5) if suffix == ".pgm" else (6, 5, 3), dtype=np.uint8)
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(pixels).save(root / split / "a" / f"0{suffix}", **options)
    ds = data.load_dataset(str(root))
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    np.testing.assert_array_equal(ds.x_train[0], chw / np.float32(255))


def test_a_floating_point_tiff_is_refused_not_clipped(tmp_path):
    root = tmp_path / "floats"
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(np.linspace(0, 1, 30, dtype=np.float32).reshape(6, 5)).save(
            root / split / "a" / "0.tif")
    with pytest.raises(ValueError, match=r"train/a/0\.tif: a floating-point picture \(mode F\); "
                                         r"save it as an 8- or 16-bit picture"):
        data.load_dataset(str(root))


def test_a_photo_with_an_exif_orientation_is_read_upright(tmp_path):
    root = tmp_path / "photos"
    stored = gray(0, (4, 6))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown rotated 90 degrees clockwise
    (root / "train" / "a").mkdir(parents=True)
    Image.fromarray(stored).save(root / "train" / "a" / "0.png", exif=exif)
    save(root / "test" / "a" / "0.png", np.rot90(stored, -1).copy())
    ds = data.load_dataset(str(root))
    np.testing.assert_array_equal(ds.x_train[0, 0], np.rot90(stored, -1) / np.float32(255))
    np.testing.assert_array_equal(ds.x_train, ds.x_test)


def test_the_test_split_alone_is_labelled_by_the_classes_given(tmp_path):
    """``cnnx evaluate`` reads test/ alone and labels it by the checkpoint's classes, so a test
    folder lacking some classes keeps the model's numbering; train/ is never read."""
    root = tmp_path / "held_out"
    save(root / "test" / "zebra" / "z.png", gray(1))
    save(root / "test" / "cat" / "c.png", gray(2))
    save(root / "train" / "cat" / "broken.png", gray(3))
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    ds = data.load_dataset(str(root), splits=("test",), classes=["cat", "dog", "zebra"])
    assert ds.y_test.tolist() == [0, 2] and ds.class_names == ["cat", "dog", "zebra"]
    assert len(ds.x_train) == 0 and ds.x_train.shape[1:] == (1, 6, 5)
    with pytest.raises(ValueError, match=r"zebra: class 'zebra' is not among the classes cat, dog"):
        data.load_dataset(str(root), splits=("test",), classes=["cat", "dog"])
    # a class named with a "/" (Fashion-MNIST's "T-shirt/top") has its folder named with "_"
    (root / "test" / "zebra").rename(root / "test" / "zebra_horse")
    ds = data.load_dataset(str(root), splits=("test",), classes=["cat", "dog", "zebra/horse"])
    assert ds.y_test.tolist() == [0, 2] and ds.class_names == ["cat", "dog", "zebra/horse"]
    with pytest.raises(ValueError, match=r"classes a/b, a_b: two of them would share one folder"):
        data.load_dataset(str(root), splits=("test",), classes=["a/b", "a_b"])


def test_a_val_folder_is_the_validation_set_labelled_by_train(tmp_path):
    """val/ is read where it exists, labelled by train/'s classes even when it lacks some."""
    root = tmp_path / "pics"
    for split, classes in (("train", "abc"), ("val", "c"), ("test", "ab")):
        for name in classes:
            save(root / split / name / "0.png", gray(ord(name) + len(split)))
    ds = data.load_dataset(str(root))
    assert ds.y_val.tolist() == [2] and ds.y_val.dtype == np.int64  # c is train's third class
    np.testing.assert_array_equal(ds.x_val[0, 0], gray(ord("c") + 3) / np.float32(255))
    assert ds.y_train.tolist() == [0, 1, 2] and ds.y_test.tolist() == [0, 1]
    (root / "val" / "c" / "0.png").write_bytes(b"not a png")
    assert data.load_dataset(str(root), splits=("train", "test")).x_val is None  # val/ unread
    with pytest.raises(ValueError, match=r"val/c/0\.png: unreadable image"):
        data.load_dataset(str(root))
    (root / "val").rename(root / "validation")  # a name cnnx does not read: not skipped silently
    with pytest.raises(ValueError, match=r"pics/validation: cnnx reads a validation set from a "
                                         r"folder named val/; rename validation/ to val/"):
        data.load_dataset(str(root))


def test_size_and_channels_convert_every_picture(tmp_path):
    """``image_size`` is (height, width): a non-square size shows a swap; each picture is
    resized by Pillow, and converted to the channels asked for."""
    root = tmp_path / "pics"
    rgb = np.random.default_rng(1).integers(0, 256, (9, 4, 3), dtype=np.uint8)
    save(root / "train" / "a" / "tall.png", rgb)
    save(root / "test" / "a" / "wide.png", gray(0, (3, 8)))
    ds = data.load_dataset(str(root), image_size=(5, 7))
    assert ds.x_train.shape == (1, 3, 5, 7) and ds.x_test.shape == (1, 3, 5, 7)
    with Image.open(root / "train" / "a" / "tall.png") as img:
        expected = np.asarray(img.resize((7, 5))).transpose(2, 0, 1)
    np.testing.assert_array_equal(ds.x_train[0], expected / np.float32(255))
    gray_ds = data.load_dataset(str(root), image_size=(5, 7), channels=1)
    with Image.open(root / "train" / "a" / "tall.png") as img:
        expected = np.asarray(img.convert("L").resize((7, 5)))
    np.testing.assert_array_equal(gray_ds.x_train[0, 0], expected / np.float32(255))
    with pytest.raises(ValueError, match="for a directory of pictures only; synthetic comes as it is"):
        data.load_dataset("synthetic", image_size=(5, 7))


def _stray_size(root):
    save(root / "train" / "a" / "wide.png", gray(0, (6, 7)))


def _new_test_class(root):
    save(root / "test" / "z" / "0.png", gray(0))


def _empty_class(root):
    (root / "train" / "empty").mkdir()


def _corrupt(root):
    (root / "train" / "a" / "0.png").write_bytes(b"\x89PNG truncated")


def _huge(root):
    """A PNG whose header claims 30000x30000 pixels: Pillow refuses it before decoding."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + body)))
    (root / "train" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                                                 + chunk(b"IEND", b""))


def _no_test(root):
    for path in (root / "test" / "a").iterdir():
        path.unlink()
    (root / "test" / "a").rmdir()
    (root / "test").rmdir()


def _new_val_class(root):
    save(root / "val" / "z" / "0.png", gray(0))


def _val_size(root):
    save(root / "val" / "a" / "0.png", gray(0, (5, 5)))


def _no_folders_at_all(root):
    for split in ("train", "test"):
        for path in (root / split / "a").iterdir():
            path.unlink()
        (root / split / "a").rmdir()
        (root / split).rmdir()


def _no_classes(root):
    for path in (root / "train" / "a").iterdir():
        path.unlink()
    (root / "train" / "a").rmdir()


@pytest.mark.parametrize("damage, message", [
    (_stray_size, r"train/a/wide\.png is 6,7 pixels \(height,width\) but .*train/a/0\.png is "
                  r"6,5: give every picture one size, or resize them all with --image-size"),
    (_new_test_class, r"test/z: class 'z' is not among the classes a \(those of train/"),
    (_empty_class, r"train/empty: no pictures \(\.png, \.jpg, .*\) in this class folder \(nor"),
    (_corrupt, r"train/a/0\.png: unreadable image"),
    (_huge, r"train/a/1\.png: too large to decode safely: 900,000,000 pixels, where Pillow "
            r"refuses more than [\d,]+ .*; shrink the picture"),
    (_no_test, r"no test/ folder; a dataset directory holds ROOT/train/<class>/ and "
               r"ROOT/test/<class>/"),
    (_no_classes, r"train: no class folders; a dataset directory holds"),
    (_no_folders_at_all, r"pics: no train/ folder; a dataset directory holds ROOT/train/<class>/ "
                         r"and ROOT/test/<class>/ .*, or ROOT/<class>/ alone"),
    (_new_val_class, r"val/z: class 'z' is not among the classes a \(those of train/"),
    (_val_size, r"val/a/0\.png is 5,5 pixels \(height,width\) but .*train/a/0\.png is 6,5"),
])
def test_a_malformed_directory_is_a_one_line_error_naming_the_file(tmp_path, damage, message):
    root = tmp_path / "pics"
    for split in ("train", "test"):
        save(root / split / "a" / "0.png", gray(0))
    damage(root)
    with pytest.raises(ValueError, match=message):
        data.load_dataset(str(root))


def test_a_picture_pillow_cannot_convert_is_named(tmp_path):
    """Pillow's "conversion from LAB to RGB not supported" names no file."""
    Image.fromarray(gray(0)).convert("RGB").convert("LAB").save(tmp_path / "lab.tif")
    with pytest.raises(ValueError, match=r"lab\.tif: cannot convert its LAB pixels to L \(.*\); "
                                         r"save it as an RGB or grayscale picture"):
        pictures.read_picture(tmp_path / "lab.tif", "L")


def numbered(i: int) -> np.ndarray:
    """A 2x2 picture that says which one it is: i in its first two pixels."""
    return np.array([[i // 256, i % 256], [0, 0]], np.uint8)


def number_of(image: np.ndarray) -> int:
    return int(round(image[0, 0, 0] * 255)) * 256 + int(round(image[0, 0, 1] * 255))


def test_class_folders_alone_hold_out_a_fixed_share_of_each_class_for_testing(tmp_path):
    root = tmp_path / "flat"
    names = {"cat": range(0, 120), "dog": range(120, 200), "dev": range(200, 260)}
    for name, numbers in names.items():  # a class named dev/ is a class, not a validation set
        for i in numbers:
            save(root / name / ("2024" if i % 2 else "") / f"IMG_{i:04d}.png", numbered(i))
    ds = data.load_dataset(str(root))
    assert ds.class_names == ["cat", "dev", "dog"] and ds.x_val is None
    assert ds.test_source == "about 20% of each class folder, picked by file path"
    train = {number_of(x): int(y) for x, y in zip(ds.x_train, ds.y_train)}
    test = {number_of(x): int(y) for x, y in zip(ds.x_test, ds.y_test)}
    assert not train.keys() & test.keys() and sorted(train.keys() | test.keys()) == list(range(260))
    label = {i: ds.class_names.index(name) for name, numbers in names.items() for i in numbers}
    assert {**train, **test} == label
    for name, numbers in names.items():  # each picture's place is the hash of its path
        held = [i for i in numbers if pictures.held_out_for_test(
            f"{name}/" + ("2024/" if i % 2 else "") + f"IMG_{i:04d}.png")]
        assert held == sorted(i for i in test if i in numbers)
        assert 0.1 < len(held) / len(numbers) < 0.3
    # cnnx evaluate reads the same test set; pictures added later move none of the others
    for i in range(260, 300):
        save(root / "cat" / f"IMG_{i:04d}.png", numbered(i))
    more = data.load_dataset(str(root), splits=("test",), classes=ds.class_names)
    assert more.test_source == ds.test_source and len(more.x_train) == 0
    added = {number_of(x) for x in more.x_test} - set(test)
    assert {number_of(x) for x in more.x_test} >= set(test) and added <= set(range(260, 300))


def test_the_held_out_share_is_a_fifth_of_any_names():
    held = [pictures.held_out_for_test(f"photo {i}.jpg") for i in range(20_000)]
    assert abs(np.mean(held) - pictures.TEST_SHARE) < 0.01


def test_a_class_with_too_few_pictures_for_both_sides_is_a_one_line_error(tmp_path):
    def first(name, held):
        return next(f"{i}.png" for i in range(100) if pictures.held_out_for_test(
            f"{name}/{i}.png") == held)
    save(tmp_path / "flat" / "a" / first("a", False), gray(0))
    save(tmp_path / "flat" / "b" / first("b", True), gray(0))
    with pytest.raises(ValueError, match=r"flat/b: every picture of this class fell into the ~20% "
                                         r"held out for testing; give it more pictures, or make "
                                         r"train/ and test/ folders"):
        data.load_dataset(str(tmp_path / "flat"))
    (tmp_path / "flat" / "b" / first("b", True)).rename(tmp_path / "flat" / "b" / first("b", False))
    with pytest.raises(ValueError, match=r"flat: none of its 2 pictures fell into the ~20% held "
                                         r"out for testing; add pictures, or make train/ and"):
        data.load_dataset(str(tmp_path / "flat"))


def test_without_pillow_the_error_says_what_to_install(tmp_path, monkeypatch):
    root = tmp_path / "pics"
    for split in ("train", "test"):
        save(root / split / "a" / "0.png", gray(0))
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    with pytest.raises(ValueError, match=r"reading \.png images needs Pillow: pip install 'cnnx\[images\]'"):
        data.load_dataset(str(root))


def test_train_and_evaluate_on_a_directory_of_pictures(isolated, tmp_path):  # noqa: F811
    arrays = make_synthetic(300, 100, seed=3)
    names = [name.replace(" ", "-") for name in arrays["class_names"]]
    for split in ("train", "test"):
        for i, (x, y) in enumerate(zip(arrays[f"x_{split}"], arrays[f"y_{split}"])):
            save(tmp_path / "pics" / split / names[y] / f"{i:03d}.png",
                 (x[0] * 255).round().astype(np.uint8))
    result = invoke("train", "--device", "cpu", "--dataset", "pics", "--model", "seed-cnn",
                    "--epochs", 4, "--lr", 0.05, "--out", "run")
    assert result.exit_code == 0, result.output
    full = json.loads(invoke("evaluate", "run", "--json").stdout)
    assert full["images"] == 100 and full["class_names"] == sorted(names)
    assert full["accuracy"] > 0.3  # 10 classes: chance is 0.1
    # a held-out folder with the last two classes only: labelled 8 and 9 as in training (not
    # 0 and 1, as its own folders alone would say), so scored as in the full test set
    (tmp_path / "two" / "test").mkdir(parents=True)
    for name in sorted(names)[-2:]:
        (tmp_path / "pics" / "test" / name).rename(tmp_path / "two" / "test" / name)
    two = json.loads(invoke("evaluate", "run", "--dataset", "two", "--json").stdout)
    assert two["images"] == np.array(full["confusion_matrix"]).sum(axis=1)[-2:].sum()
    assert two["per_class_accuracy"][-2:] == full["per_class_accuracy"][-2:]
    assert "unknown dataset 'nowhere': use one of" in one_line_error(
        invoke("evaluate", "run", "--dataset", "nowhere"))


def test_train_then_evaluate_class_folders_alone_on_the_share_held_out(isolated, tmp_path):  # noqa: F811
    arrays = make_synthetic(120, 1, seed=5)
    for i, (x, y) in enumerate(zip(arrays["x_train"], arrays["y_train"])):
        save(tmp_path / "pics" / f"class{y}" / f"{i:03d}.png", (x[0] * 255).round().astype(np.uint8))
    labels = arrays["y_train"]
    held = sum(pictures.held_out_for_test(f"class{y}/{i:03d}.png") for i, y in enumerate(labels))
    result = invoke("train", "--device", "cpu", "--dataset", "pics", "--model", "seed-cnn",
                    "--epochs", 1, "--out", "run")
    assert result.exit_code == 0, result.output
    assert (f"train / {round(0.1 * (120 - held))} validation / {held} test images (about 20% of "
            "each class folder, picked by file path)") in result.output
    report = invoke("evaluate", "run")
    assert report.stdout.startswith(f"pics test set (about 20% of each class folder, picked by "
                                    f"file path), {held} images, on cpu: accuracy ")
    as_json = json.loads(invoke("evaluate", "run", "--json").stdout)
    assert as_json["images"] == held and as_json["test_source"] == pictures.HELD_OUT_TEST
    # train/ and test/ folders made around them since: resuming would train on other pictures
    (tmp_path / "train").mkdir()
    for folder in (tmp_path / "pics").iterdir():
        folder.rename(tmp_path / "train" / folder.name)
    (tmp_path / "train").rename(tmp_path / "pics" / "train")
    shutil.copytree(tmp_path / "pics" / "train" / "class0", tmp_path / "pics" / "test" / "class0")
    assert ("pics's test set is now the dataset's own, but this run's was about 20% of each "
            "class folder, picked by file path; a resumed run keeps its training set") in (
        one_line_error(invoke("train", "--resume", "run", "--epochs", 2)))


def test_image_size_trains_on_pictures_of_many_sizes_and_resume_keeps_it(isolated, tmp_path):  # noqa: F811
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 12)):
        for i in range(n):
            h, w = rng.integers(12, 40, 2)
            picture = np.zeros((h, w, 3), np.uint8)
            picture[..., i % 3] = 220
            save(tmp_path / "pics" / split / "rgb"[i % 3] / f"{i:02d}.jpg", picture)
    assert "resize them all with --image-size HEIGHT,WIDTH" in one_line_error(
        invoke("train", "--device", "cpu", "--dataset", "pics", "--out", "run"))
    result = invoke("train", "--device", "cpu", "--dataset", "pics", "--model", "lenet5",
                    "--image-size", "20,24", "--epochs", 1, "--out", "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "result.json").read_text())["config"]["image_size"] == [20, 24]
    report = json.loads(invoke("evaluate", "run", "--json").stdout)  # resized like the model's input
    assert report["images"] == 12 and report["class_names"] == ["b", "g", "r"]
    assert "a resumed run keeps its image size" in one_line_error(
        invoke("train", "--resume", "run", "--epochs", 2, "--image-size", 16))
    assert invoke("train", "--resume", "run", "--epochs", 2, "--device", "cpu").exit_code == 0
    assert invoke("train", "--resume", "run", "--epochs", 3, "--image-size", "20,24",  # the same
                  "--device", "cpu").exit_code == 0
    save(tmp_path / "pics" / "val" / "r" / "0.jpg", np.zeros((20, 24, 3), np.uint8))
    assert ("pics now has a validation set of its own, but this run's validation set was held "
            "out of train") in one_line_error(invoke("train", "--resume", "run", "--epochs", 4))
    assert "--image-size resizes a directory of pictures; synthetic images come in one size" in (
        one_line_error(invoke("train", "--dataset", "synthetic", "--image-size", 16)))
    assert "expected HEIGHT,WIDTH such as 64,48" in one_line_error(
        invoke("train", "--dataset", "pics", "--image-size", "16x16"))


def test_training_validates_on_the_val_folder_instead_of_holding_out_train(isolated, tmp_path):  # noqa: F811
    arrays = make_synthetic(40, 16, seed=4)
    splits = {"train": (arrays["x_train"], arrays["y_train"]),
              "val": (arrays["x_test"][:6], arrays["y_test"][:6]),
              "test": (arrays["x_test"][6:], arrays["y_test"][6:])}
    for split, (xs, ys) in splits.items():
        for i, (x, y) in enumerate(zip(xs, ys)):
            save(tmp_path / "pics" / split / f"class{y}" / f"{i:02d}.png",
                 (x[0] * 255).round().astype(np.uint8))
    prep = run.prepare_data(run.TrainConfig(dataset="pics"))
    assert len(prep.train[1]) == 40 and len(prep.test[1]) == 10  # nothing held out of train/
    np.testing.assert_array_equal(prep.val[1], prep.dataset.y_val)
    mean, std = (np.float32(v[0]) for v in (prep.preprocess["mean"], prep.preprocess["std"]))
    np.testing.assert_array_equal(prep.val[0], (prep.dataset.x_val - mean) / std)
    result = invoke("train", "--device", "cpu", "--dataset", "pics", "--model", "seed-cnn",
                    "--epochs", 1, "--out", "run")
    assert result.exit_code == 0, result.output
    assert "40 train / 6 validation (the dataset's own) / 10 test images" in result.output
    error = one_line_error(invoke("train", "--device", "cpu", "--dataset", "pics", "--val-split",
                                  0.2, "--out", "other"))
    assert error.startswith("Error: --val-split 0.2: ") and error.endswith(
        "pics has a validation set of its own (its val/ folder); leave --val-split out to use it")
    assert not (tmp_path / "other").exists()
    # val/ gone: a resume would hold 10% of train out, changing the run's training set
    (tmp_path / "pics" / "val").rename(tmp_path / "val_elsewhere")
    assert ("pics no longer has a validation set of its own, but this run's validation set was "
            "the dataset's own; a resumed run keeps its training set") in one_line_error(
        invoke("train", "--resume", "run", "--epochs", 2, "--device", "cpu"))
    (tmp_path / "val_elsewhere").rename(tmp_path / "pics" / "val")
    assert invoke("train", "--resume", "run", "--epochs", 2, "--device", "cpu").exit_code == 0
