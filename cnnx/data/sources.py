"""Where the known datasets live: lookup order, official mirrors and checksummed downloads.

Lookup order for a dataset ``<name>``: ``--data-dir`` (the directory itself or its ``<name>/``),
``$CNNX_DATA/<name>``, the cache ``~/.cache/cnnx/<name>`` (``$XDG_CACHE_HOME`` is honoured), then
system locations such as ``/usr/share/datasets/<name>`` (Debian/Ubuntu's
``dataset-fashion-mnist``). When no complete copy is found the files are downloaded into the
cache, each verified against its SHA-256; but a ``--data-dir`` holding some of the files and
not others is an error naming those it lacks. ``$CNNX_MIRROR`` replaces the official mirrors by one
base URL serving ``<base>/<name>/<file>``; ``$CNNX_OFFLINE=1`` forbids downloads.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SYSTEM_DIRS = ["/usr/share/datasets", "/usr/local/share/datasets"]
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class KnownDataset:
    """A dataset cnnx knows how to find, fetch and read."""

    name: str
    format: str  # "idx" or "cifar"
    files: dict  # file name -> SHA-256 of the official file
    mirrors: tuple
    class_names: tuple
    apt_package: str | None = None


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")

KNOWN = {
    "fashion-mnist": KnownDataset(
        "fashion-mnist", "idx",
        {
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        FASHION_CLASSES, apt_package="dataset-fashion-mnist",
    ),
    "mnist": KnownDataset(
        "mnist", "idx",
        {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
        ("https://ossci-datasets.s3.amazonaws.com/mnist/",
         "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        tuple(str(d) for d in range(10)),
    ),
    "cifar10": KnownDataset(
        "cifar10", "cifar",
        {"cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"},
        ("https://www.cs.toronto.edu/~kriz/",),
        CIFAR_CLASSES,
    ),
}

# Names a directory may hold instead of the downloaded files (uncompressed IDX, extracted CIFAR).
IDX_ALTERNATIVES = {f: (f, f[:-3]) for f in KNOWN["mnist"].files}
CIFAR_MEMBERS = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class DatasetNotFound(ValueError):
    """A known dataset is neither on disk nor downloadable; the message says how to get it."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnnx"


def search_dirs(name: str, data_dir=None) -> list[Path]:
    """The directories searched for dataset ``name``, in order."""
    dirs = []
    if data_dir:
        dirs += [Path(data_dir) / name, Path(data_dir)]
    if os.environ.get("CNNX_DATA"):
        dirs.append(Path(os.environ["CNNX_DATA"]) / name)
    dirs.append(cache_root() / name)
    dirs += [Path(d) / name for d in SYSTEM_DIRS]
    return dirs


def files_in(directory: Path, known: KnownDataset) -> dict | None:
    """The dataset's files in ``directory`` (role -> path), or None when it lacks any."""
    if known.format == "cifar":
        for candidate in (directory / "cifar-10-batches-py", directory):
            if all((candidate / m).is_file() for m in CIFAR_MEMBERS):
                return {"dir": candidate}
        archive = directory / "cifar-10-python.tar.gz"
        return {"archive": archive} if archive.is_file() else None
    found = {}
    for name, alternatives in IDX_ALTERNATIVES.items():
        path = next((directory / a for a in alternatives if (directory / a).is_file()), None)
        if path is None:
            return None
        found[name] = path
    return found


def lacking(directory: Path, known: KnownDataset) -> list[Path]:
    """The files a partial copy of the dataset in ``directory`` lacks: [] when it holds all
    of them, or none."""
    if known.format == "cifar":
        if (directory / "cifar-10-python.tar.gz").is_file():
            return []
        for candidate in (directory / "cifar-10-batches-py", directory):
            held = [(candidate / m).is_file() for m in CIFAR_MEMBERS]
            if any(held) and not all(held):
                return [candidate / m for m, h in zip(CIFAR_MEMBERS, held) if not h]
        return []
    held = {name: any((directory / a).is_file() for a in alternatives)
            for name, alternatives in IDX_ALTERNATIVES.items()}
    return [directory / name for name, h in held.items() if not h] if any(held.values()) else []


def check_data_dir(name: str, data_dir) -> None:
    """ValueError when the ``data_dir`` given holds a copy of ``name`` with files missing:
    the lookup would pass it by for another copy, or a download, without a word."""
    known = KNOWN[name]
    for directory in search_dirs(name, data_dir)[:2]:  # data_dir/<name>, data_dir
        if files_in(directory, known):
            return
        missing = lacking(directory, known)
        if missing:
            raise ValueError(f"{directory} holds only part of {name}: it lacks "
                             f"{', '.join(p.name for p in missing)}; add "
                             f"{'it' if len(missing) == 1 else 'them'} there")


def locate(name: str, data_dir=None) -> tuple[Path, dict] | None:
    """The first directory holding a complete copy of ``name`` and its files, or None."""
    known = KNOWN[name]
    for directory in search_dirs(name, data_dir):
        files = files_in(directory, known)
        if files:
            return directory, files
    return None


def mirrors(known: KnownDataset) -> list[str]:
    override = os.environ.get("CNNX_MIRROR")
    if override:
        return [override.rstrip("/") + f"/{known.name}/"]
    return list(known.mirrors)


def download(name: str, log=None) -> Path:
    """Fetch the missing files of ``name`` into the cache, verifying each SHA-256.

    Returns the cache directory. Raises DatasetNotFound (one line, with the ways to get the data)
    when downloads are disabled or every mirror fails.
    """
    known = KNOWN[name]
    target = cache_root() / name
    if os.environ.get("CNNX_OFFLINE", "") not in ("", "0"):
        raise not_found(known, "downloads are disabled ($CNNX_OFFLINE)")
    for file, sha256 in known.files.items():
        if not (target / file).is_file():
            _fetch_from_mirrors(known, file, sha256, target, log)
    return target


def _fetch_from_mirrors(known, file, sha256, target: Path, log) -> None:
    errors = []
    for base in mirrors(known):
        url = base + file
        try:
            if log:
                log(f"downloading {url}")
            fetch(url, target / file, sha256)
            return
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise not_found(known, "download failed (" + "; ".join(errors) + ")")


def fetch(url: str, path: Path, sha256: str) -> None:
    """Download ``url`` to ``path`` atomically; ValueError when the SHA-256 does not match."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
    try:
        digest = hashlib.sha256()
        with open(tmp, "xb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise ValueError(f"SHA-256 mismatch (got {digest.hexdigest()[:16]}…, "
                             f"expected {sha256[:16]}…)")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def not_found(known: KnownDataset, why: str) -> DatasetNotFound:
    """The one-line error for a dataset that is neither on disk nor downloadable."""
    ways = [f"pass --data-dir DIR holding {', '.join(known.files)}"]
    if known.apt_package:
        ways.append(f"install it with `apt-get install {known.apt_package}`")
    ways.append(f"download it from {known.mirrors[0]}")
    return DatasetNotFound(
        f"dataset {known.name!r} not found and {why}; " + ", or ".join(ways)
    )
