"""What ``pip install .`` and an sdist get: the wheel holds the package with its CUDA sources
and the license, and no tests; the sdist holds the whole test suite and what it reads. Built
with setuptools' own build backend from a copy of the source tree (no network)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JUNK = ("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "*.egg-info", "build", "dist",
        "runs", ".git")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(wheel member names, sdist member names without their top folder)."""
    pytest.importorskip("setuptools", minversion="77")  # pyproject.toml's build requirement
    tree = tmp_path_factory.mktemp("src") / "cnnx"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(*JUNK))
    dist = tree.parent / "dist"
    for build in ("build_wheel", "build_sdist"):  # one process each: they share state
        done = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                               f"b.{build}(sys.argv[1])", str(dist)], cwd=tree,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    wheel = zipfile.ZipFile(next(dist.glob("*.whl"))).namelist()
    with tarfile.open(next(dist.glob("*.tar.gz"))) as sdist:
        names = [m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile()]
    return set(wheel), set(names)


def _files(folder: str) -> set:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_the_wheel_holds_the_kernel_sources_and_license_and_no_tests(built):
    wheel, _ = built
    kernels = {name for name in _files("cnnx") if name.endswith((".cu", ".cuh"))}
    assert kernels and kernels <= wheel
    assert {name for name in _files("cnnx") if name.endswith(".py")} <= wheel
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel)
    assert not [name for name in wheel if not name.startswith(("cnnx/", "cnnx-"))]


def test_the_sdist_holds_the_whole_test_suite_and_what_it_reads(built):
    _, sdist = built
    needed = _files("tests") | _files("docs") | {"README.md", "BENCHMARKS.md", "LICENSE",
                                                 "pyproject.toml", "Dockerfile", ".dockerignore"}
    assert not needed - sdist, f"missing from the sdist: {sorted(needed - sdist)}"
    assert not [name for name in sdist if "__pycache__" in name or name.endswith(".pyc")]
