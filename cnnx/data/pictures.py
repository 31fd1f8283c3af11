"""Pictures (PNG, JPEG, BMP, WebP, TIFF, PPM/PGM, through Pillow): one file for ``cnnx
predict``, or a dataset kept as folders, one per class, the way people collect their own images::

    ROOT/train/<class name>/*.png, *.jpg, ... (any of PICTURE_SUFFIXES)
    ROOT/val/<class name>/...       (optional: a validation set of its own)
    ROOT/test/<class name>/...

or, with no train/ or test/ around them, ``ROOT/<class name>/...`` alone: then the test set is
about a fixed share (TEST_SHARE) of each class folder, a picture's place decided by a hash of
its path (``held_out_for_test``), so that it never changes when pictures are added or removed
and ``cnnx evaluate`` reads the same test set that training left out.

Labels number the classes in the sorted order of train/'s folder names (as torchvision's
ImageFolder does), so the same folders always give the same labels. val/ and test/ may lack a
class but may not add one. A class whose name holds a "/" (given by a checkpoint) has it
written "_" in its folder's name. Every picture must have the same size (resizing silently
would hide a stray file) unless a ``size`` to resize them all to is given (``cnnx train
--image-size``); the images get 1 channel when every picture is grayscale, else 3 (grayscale
pictures repeated into R, G and B), unless ``channels`` says. A class folder's subfolders
count as part of it (as in ImageFolder); files of other types and hidden files and folders are
skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from .formats import to_nchw_float

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SUFFIXES_TEXT = ", ".join(PICTURE_SUFFIXES)  # for messages
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")  # one channel (+alpha)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens 16-bit gray PNG/TIFF
LAYOUT = ("ROOT/train/<class>/ and ROOT/test/<class>/ (and optionally ROOT/val/<class>/), or "
          "ROOT/<class>/ alone, with the pictures of each class in its folder")
TEST_SHARE = 0.2  # of each class folder, in a directory of class folders without train/, test/
HELD_OUT_TEST = f"about {TEST_SHARE:.0%} of each class folder, picked by file path"  # for messages
OTHER_VAL_NAMES = ("valid", "validation", "dev")  # what people also call val/: asked to rename


def read_picture(path, mode: str | None = None, size: tuple | None = None) -> np.ndarray:
    """The picture at ``path`` as uint8, turned upright by its EXIF orientation: (H, W) in mode
    "L", (H, W, 3) in mode "RGB". ``mode`` None keeps a grayscale picture gray and makes any
    other RGB (alpha dropped); ``size`` = (width, height) resizes."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ValueError(f"reading {Path(path).suffix} images needs Pillow: "
                         "pip install 'cnnx[images]'") from None
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # upright as viewers show it (phone photos)
            if img.mode == "F":  # a TIFF of floats: no scale to read it by, convert would clip
                raise ValueError(f"{path}: a floating-point picture (mode F); save it as an 8- "
                                 "or 16-bit picture")
            if img.mode in SIXTEEN_BIT_MODES:  # Pillow's convert("L") would clip them at 255
                img = Image.fromarray(_sixteen_to_eight_bits(np.asarray(img), path), "L")
            mode = mode or ("L" if img.mode in GRAYSCALE_MODES else "RGB")
            try:
                img = img.convert(mode)
            except ValueError as exc:  # e.g. a LAB or CMYK-with-extras TIFF; Pillow names no file
                raise ValueError(f"{path}: cannot convert its {img.mode} pixels to {mode} "
                                 f"({exc}); save it as an RGB or grayscale picture") from None
            if size is not None and img.size != tuple(size):
                img = img.resize(tuple(size))
            return np.asarray(img, dtype=np.uint8)
    except OSError as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from None
    except Image.DecompressionBombError as exc:  # not an OSError; a header may claim any size
        raise ValueError(f"{path}: {_too_large(exc)}") from None


def _too_large(exc) -> str:
    """Pillow's DecompressionBombError ("Image size (N pixels) exceeds limit of M pixels ...")
    said in cnnx's words, with its numbers."""
    numbers = [int(n) for n in re.findall(r"\d+", str(exc))]
    if len(numbers) < 2:
        return f"too large to decode safely ({exc}); shrink the picture"
    return (f"too large to decode safely: {numbers[0]:,} pixels, where Pillow refuses more than "
            f"{numbers[1]:,} (a guard against decompression bombs); shrink the picture")


def _check_size(size: tuple) -> None:
    """A size to resize to is held to the limit Pillow keeps pictures it opens to: a typo
    such as 6400 for 64 would make every picture a few GB, and the process be killed."""
    try:
        from PIL import Image
    except ImportError:
        return  # read_picture says what to install
    width, height = size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise ValueError(f"image size {height},{width} is {width * height:,} pixels a picture, "
                         f"where Pillow reads {Image.MAX_IMAGE_PIXELS:,} at most; give a "
                         "smaller size")


def _sixteen_to_eight_bits(pixels: np.ndarray, path) -> np.ndarray:
    """0..65535 scaled to 0..255, rounded to the nearest."""
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise ValueError(f"{path}: pixel values outside 0..65535; save it as an 8- or 16-bit picture")
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def read_picture_folders(root, splits=("train", "val", "test"), classes=None, size=None,
                         channels=None) -> dict:
    """``x_<split>`` (float32 NCHW in [0, 1]), ``y_<split>`` (int64) for each of ``splits``
    and ``class_names``, from ``root``'s class folders (module docstring); "val" is read only
    where a val/ folder exists; ``test_source`` too when the test set is the share held out of
    class folders alone. ``classes``: the class names to label by (a checkpoint's, when
    only test/ is read), instead of train/'s; ``size`` = (height, width): resize every picture
    to it; ``channels`` (1 or 3): convert every picture to grayscale or RGB. (``cnnx evaluate``
    gives all three from the checkpoint.)"""
    root = Path(root)
    if channels not in (None, 1, 3):
        raise ValueError(f"pictures have 1 (grayscale) or 3 (RGB) channels, not {channels}")
    mode = {None: None, 1: "L", 3: "RGB"}[channels]
    resize = None if size is None else (int(size[1]), int(size[0]))  # Pillow's (width, height)
    if resize is not None:
        _check_size(resize)
    flat = _class_folders_only(root)
    if "val" in splits and not (root / "val").is_dir():
        if not flat:
            _refuse_other_val_names(root)
        splits = tuple(split for split in splits if split != "val")
    for split in splits if not flat else ():
        if not (root / split).is_dir():
            raise ValueError(f"{root}: no {split}/ folder; a dataset directory holds {LAYOUT}")
    if classes is None:
        source = root if flat else root / "train" if (root / "train").is_dir() else root / splits[0]
        classes = [folder.name for folder in _class_folders(source)]
        if not classes:
            raise ValueError(f"{source}: no class folders; a dataset directory holds {LAYOUT}")
    # A folder name cannot hold "/" (Fashion-MNIST's "T-shirt/top"): such a class's folder
    # writes it as "_" ("T-shirt_top").
    label_of = {folder_name(name): label for label, name in enumerate(classes)}
    if len(label_of) < len(classes):
        raise ValueError(f"classes {', '.join(classes)}: two of them would share one folder name")
    if flat:
        files = _split_class_folders(root, label_of, splits)
    else:
        files = {split: _labelled_files(root / split, label_of) for split in splits}
    pictures = {split: [read_picture(path, mode, resize) for path, _ in files[split]]
                for split in splits}
    every = [(path, picture) for split in splits for (path, _), picture in
             zip(files[split], pictures[split])]
    first_path, first = every[0]
    for path, picture in every:
        if picture.shape[:2] != first.shape[:2]:
            raise ValueError(f"{path} is {_size(picture)} pixels (height,width) but {first_path} "
                             f"is {_size(first)}: give every picture one size, or resize them "
                             "all with --image-size HEIGHT,WIDTH")
    color = any(picture.ndim == 3 for _, picture in every)
    out = {"class_names": list(classes)}
    if flat:
        out["test_source"] = HELD_OUT_TEST
    for split in splits:
        x = np.stack([_as_channels(picture, color) for picture in pictures[split]])
        out[f"x_{split}"] = to_nchw_float(x, root if flat else root / split)
        out[f"y_{split}"] = np.array([label for _, label in files[split]], dtype=np.int64)
    return out


def folder_name(class_name: str) -> str:
    """The folder that holds a class's pictures: its name with each "/" written "_"."""
    return class_name.replace("/", "_")


def held_out_for_test(path: str) -> bool:
    """Whether a picture of a directory of class folders alone belongs to its test set: a
    pseudo-random draw with probability TEST_SHARE, fixed by the picture's path in the
    directory ("cat/2024/IMG_001.jpg"), so no picture ever moves between train and test as
    others come and go. (The class folder is part of it: classes whose files share names,
    0.png, 1.png, ..., draw apart, and the share of the whole is near TEST_SHARE.) A name that
    is not UTF-8 (bytes Python keeps as surrogates) is drawn by its bytes as they are on disk."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") < TEST_SHARE * 2**64


def _class_folders_only(root: Path) -> bool:
    """Whether ``root`` holds class folders alone, with no train/, val/ or test/."""
    if any((root / split).is_dir() for split in ("train", "val", "test")):
        return False
    return bool(_class_folders(root))


def _split_class_folders(root: Path, label_of: dict, splits) -> dict:
    """{split: [(picture, label)]} for "train" and/or "test" of a directory of class folders
    alone: each picture goes to test when ``held_out_for_test`` says, else to train."""
    files = {"train": [], "test": []}
    for path, label in _labelled_files(root, label_of):
        in_root = path.relative_to(root).as_posix()  # "/" on every system: the same draw
        files["test" if held_out_for_test(in_root) else "train"].append((path, label))
    if "train" in splits:
        trained = {label for _, label in files["train"]}
        for name in (name for name, label in label_of.items() if label not in trained):
            raise ValueError(f"{root / name}: every picture of this class fell into the "
                             f"~{TEST_SHARE:.0%} held out for testing; give it more pictures, "
                             "or make train/ and test/ folders")
    if "test" in splits and not files["test"]:
        raise ValueError(f"{root}: none of its {len(files['train'])} pictures fell into the "
                         f"~{TEST_SHARE:.0%} held out for testing; add pictures, or make "
                         "train/ and test/ folders")
    return {split: files[split] for split in splits}


def _refuse_other_val_names(root: Path) -> None:
    """A validation folder under another name would otherwise be skipped without a word."""
    for name in OTHER_VAL_NAMES:
        if (root / name).is_dir():
            raise ValueError(f"{root / name}: cnnx reads a validation set from a folder named "
                             f"val/; rename {name}/ to val/ (or remove it to hold part of "
                             "train/ out instead)")


def _class_folders(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _labelled_files(directory: Path, label_of: dict) -> list[tuple[Path, int]]:
    """(picture, label) for every picture in ``directory``'s class folders, in name order."""
    labelled = []
    for folder in _class_folders(directory):
        if folder.name not in label_of:
            raise ValueError(f"{folder}: class {folder.name!r} is not among the classes "
                             f"{', '.join(label_of)} (those of train/, or of the checkpoint)")
        found = files_under(folder)
        if not found:
            raise ValueError(f"{folder}: no pictures ({SUFFIXES_TEXT}) in this class folder "
                             "(nor in its subfolders)")
        labelled += [(path, label_of[folder.name]) for path in found]
    if not labelled:
        raise ValueError(f"{directory}: no class folders; a dataset directory holds {LAYOUT}")
    return labelled


def files_under(folder: Path, suffixes=PICTURE_SUFFIXES) -> list[Path]:
    """The files in ``folder`` and its subfolders whose suffix is one of ``suffixes`` (as
    ImageFolder reads a class kept in folders by date or source), hidden files and folders
    (.ipynb_checkpoints) left out, in path order. Symbolic links to folders are followed (as
    ImageFolder does; Path.rglob skipped them without a word), each folder read once (through
    the first path to it in name order), so a link back up cannot loop."""
    found, walked = [], set()
    for directory, subfolders, names in os.walk(folder, followlinks=True):
        if os.path.realpath(directory) in walked:  # reached again through a link
            subfolders.clear()
            continue
        walked.add(os.path.realpath(directory))
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        paths = (Path(directory, name) for name in names if not name.startswith("."))
        found += [path for path in paths if path.suffix.lower() in suffixes and path.is_file()]
    return sorted(found)


def _size(picture: np.ndarray) -> str:
    return f"{picture.shape[0]},{picture.shape[1]}"  # as --image-size takes it


def _as_channels(picture: np.ndarray, color: bool) -> np.ndarray:
    """(C, H, W): a gray (H, W) picture gets 1 channel, or 3 equal ones when others are color."""
    if picture.ndim == 3:
        return picture.transpose(2, 0, 1)
    return np.repeat(picture[None], 3 if color else 1, axis=0)
