"""Fixtures shared by the CLI test modules (imported by name into each)."""

from __future__ import annotations

import pytest

from cli_helpers import isolate, write_tiny_npz


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    isolate(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")
