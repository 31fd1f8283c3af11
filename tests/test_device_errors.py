"""`--device cuda` on a machine where CUDA cannot start: one line saying why and what to do.

CuPy is replaced by a stand-in whose CUDA runtime answers as a real one does on such a machine
(seen with cupy-cuda13x 14.2 on a machine without a driver: ``driverGetVersion()`` 0,
``runtimeGetVersion()`` 13020, ``getDeviceCount()`` raising "cudaErrorInsufficientDriver"),
so these run everywhere, CI included.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import types
from pathlib import Path

import pytest

from cnnx import backends
from cnnx.backends import DeviceError, cupy_backend, get_backend

INSUFFICIENT = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"


def fake_cupy(driver: int, built_for: int = 13020, count=None, error: str = INSUFFICIENT):
    """A module with just the ``cupy.cuda.runtime`` calls ``make_cupy_backend`` makes first."""
    def device_count():
        if count is None:
            raise RuntimeError(error)
        return count
    runtime = types.SimpleNamespace(driverGetVersion=lambda: driver,
                                    runtimeGetVersion=lambda: built_for,
                                    getDeviceCount=device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


def error_for(monkeypatch, cupy, index: int = 0) -> str:
    monkeypatch.setattr(cupy_backend, "_import_cupy", lambda: cupy)
    with pytest.raises(DeviceError) as caught:
        cupy_backend.make_cupy_backend(index, True)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_no_driver_says_there_is_no_gpu_and_to_use_the_cpu(monkeypatch):
    message = error_for(monkeypatch, fake_cupy(driver=0))
    assert "no NVIDIA driver is installed" in message
    assert "--device cpu" in message
    assert "insufficient" not in message  # CUDA's wording misleads on a machine with no driver


@pytest.mark.parametrize("major", [12, 13])
def test_a_driver_older_than_cupys_cuda_names_both_and_the_matching_extra(monkeypatch, major):
    message = error_for(monkeypatch, fake_cupy(driver=major * 1000 + 40, built_for=14000))
    assert f"the NVIDIA driver supports CUDA {major}.4, but this CuPy is built for CUDA 14.0" in message
    assert f'pip install "cnnx[cuda{major}]"' in message


def test_a_driver_older_than_any_cupy_wheel_says_to_update_it(monkeypatch):
    message = error_for(monkeypatch, fake_cupy(driver=11080, built_for=12000))
    assert "supports CUDA 11.8" in message and "update the driver" in message
    assert "cnnx[cuda11]" not in message


NO_DEVICE = "cudaErrorNoDevice: no CUDA-capable device is detected"


def test_no_visible_gpu_names_cuda_visible_devices_when_it_is_set(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    message = error_for(monkeypatch, fake_cupy(driver=13000, error=NO_DEVICE))
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU" in message and "--device cpu" in message
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "the NVIDIA driver finds no GPU. Use --device cpu" in error_for(
        monkeypatch, fake_cupy(driver=13000, error=NO_DEVICE))


def test_another_failure_keeps_cudas_words_and_adds_both_versions(monkeypatch):
    message = error_for(monkeypatch, fake_cupy(driver=13000, built_for=13020,
                                               error="cudaErrorUnknown: unknown error"))
    assert "cudaErrorUnknown" in message
    assert "driver: CUDA 13.0, CuPy built for CUDA 13.2" in message


def test_a_runtime_that_cannot_say_its_versions_keeps_cudas_words(monkeypatch):
    cupy = fake_cupy(driver=0)

    def broken():
        raise RuntimeError("no runtime")
    cupy.cuda.runtime.driverGetVersion = broken
    message = error_for(monkeypatch, cupy)
    assert INSUFFICIENT in message and "cnnx[cuda12]" in message


def test_no_gpu_and_a_missing_index_are_named(monkeypatch):
    assert "no GPU found" in error_for(monkeypatch, fake_cupy(driver=13000, count=0))
    assert "cuda:2 does not exist: this machine has 1 GPU(s)" in error_for(
        monkeypatch, fake_cupy(driver=13000, count=1), index=2)


class _ProbeArray:
    """What the device probe does with CuPy arrays; ``missing``: the error CuPy raises when it
    needs a CUDA library that is not installed (NVRTC for an elementwise kernel)."""

    def __init__(self, missing=None):
        self.missing = missing

    def _use_library(self, *_):
        if self.missing:
            raise self.missing
        return self

    sum = __add__ = __matmul__ = _use_library

    def item(self):
        return 0.0

    __float__ = item


def cupy_without_nvrtc():
    """A CuPy whose driver, GPU, allocations and precompiled reductions work, but which cannot
    load NVRTC (cupy-cuda13x 14.2 installed without its [ctk] extra on a machine without the
    CUDA Toolkit: the error below is the one it raises at its first elementwise kernel)."""
    cupy = fake_cupy(driver=13000, count=1)
    missing = RuntimeError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12": No such file: '
                           'libnvrtc.so.13 or libnvrtc.so.12')
    cupy.cuda.Device = lambda index: contextlib.nullcontext()
    cupy.zeros = lambda *args, **kwargs: _ProbeArray()  # zeros(1).sum(): CUB, no NVRTC
    cupy.ones = lambda *args, **kwargs: _ProbeArray(missing)
    return cupy


def test_cuda_libraries_cupy_cannot_load_are_found_up_front(monkeypatch):
    """Before: the probe's zeros(1).sum() passed, `auto` chose the GPU and training failed at
    its first kernel with CuPy's traceback."""
    message = error_for(monkeypatch, cupy_without_nvrtc())
    assert "libnvrtc.so.13" in message and 'pip install "cnnx[cuda12]"' in message
    monkeypatch.setattr(backends, "_CACHE", {"cpu": backends._CPU})
    assert get_backend("auto").name == "cpu"


def test_the_cuda_extras_install_the_libraries_cupy_loads():
    """CuPy's wheels bring neither NVRTC nor cuBLAS: its [ctk] extra installs them."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    for major in (12, 13):
        assert re.search(rf'cuda{major} = \["cupy-cuda{major}x\[ctk\]>=14"\]', text), major


def test_auto_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(backends, "_CACHE", {"cpu": backends._CPU})  # forget a real GPU's backend
    monkeypatch.setattr(cupy_backend, "_import_cupy", lambda: fake_cupy(driver=0))
    assert get_backend("auto").name == "cpu"


@pytest.mark.parametrize("version, text", [(12040, "12.4"), (13000, "13.0"), (13020, "13.2"),
                                           (11080, "11.8")])
def test_cuda_version_text(version, text):
    assert cupy_backend.cuda_version_text(version) == text


# ------------------------------------------------- CuPy's kernel cache (created on import)
# CuPy 14 creates $CUPY_CACHE_DIR (default ~/.cupy/kernel_cache) when it is imported and fails
# to import when it cannot: seen with cupy-cuda13x 14.2 and HOME=/proc/x, where `cnnx train`
# (even on the CPU, through --device auto) and `cnnx info` died with "[Errno 2] No such file
# or directory". A home that is a file stands in for a read-only one (the suite may run as root).
@pytest.fixture
def unwritable_home(monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.write_text("a file, so ~/.cupy cannot be created")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CUPY_CACHE_DIR", raising=False)
    monkeypatch.setattr(cupy_backend.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


def test_the_default_kernel_cache_is_kept_when_it_can_be_written(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    environ = {}
    assert cupy_backend.choose_kernel_cache_dir(environ) == str(tmp_path / ".cupy" / "kernel_cache")
    assert environ == {}  # CuPy's own default: nothing to tell it


def test_an_unwritable_home_moves_the_kernel_cache_to_the_temp_directory(unwritable_home):
    environ = {}
    chosen = cupy_backend.choose_kernel_cache_dir(environ)
    assert environ == {"CUPY_CACHE_DIR": chosen}
    assert chosen.startswith(str(unwritable_home / "tmp")) and "cnnx-" in chosen
    assert os.access(chosen, os.W_OK)
    blocked = unwritable_home / "tmp" / "blocked"
    blocked.write_text("")
    (unwritable_home / "tmp" / os.path.basename(chosen)).rmdir()
    (unwritable_home / "tmp" / os.path.basename(chosen)).symlink_to(blocked)  # not a directory
    other = cupy_backend.choose_kernel_cache_dir({})
    assert other != chosen and os.access(other, os.W_OK)  # a fresh private one


def test_a_users_kernel_cache_setting_is_left_alone(unwritable_home):
    environ = {"CUPY_CACHE_DIR": "/somewhere/else"}
    assert cupy_backend.choose_kernel_cache_dir(environ) == "/somewhere/else"
    assert environ == {"CUPY_CACHE_DIR": "/somewhere/else"} and not os.path.exists("/somewhere")


@pytest.fixture
def cupy_that_makes_its_cache(monkeypatch, tmp_path):
    """A `cupy` package whose import does what CuPy 14's does first: create the kernel cache
    directory, raising OSError when it cannot."""
    package = tmp_path / "standin" / "cupy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import os\n"
        "os.makedirs(os.environ.get('CUPY_CACHE_DIR', os.path.expanduser('~/.cupy/kernel_cache')),"
        " exist_ok=True)\n")
    monkeypatch.setitem(sys.modules, "cupy", None)  # restored (or removed) afterwards
    monkeypatch.delitem(sys.modules, "cupy")
    monkeypatch.syspath_prepend(str(tmp_path / "standin"))


def test_cupy_imports_with_an_unwritable_home(unwritable_home, cupy_that_makes_its_cache):
    cupy = cupy_backend._import_cupy()
    assert os.path.isdir(os.environ["CUPY_CACHE_DIR"]) and cupy.__name__ == "cupy"


def test_an_unusable_cupy_cache_dir_is_one_line_naming_it(unwritable_home, monkeypatch,
                                                           cupy_that_makes_its_cache):
    monkeypatch.setenv("CUPY_CACHE_DIR", str(unwritable_home / "home" / "cache"))
    with pytest.raises(DeviceError) as caught:
        cupy_backend._import_cupy()
    assert re.fullmatch(r"CuPy cannot create its kernel cache directory \S+home/cache \(.+\): "
                        r"set CUPY_CACHE_DIR to a writable directory", str(caught.value))


def test_asking_for_a_gpu_makes_it_the_current_device(monkeypatch):
    """CuPy puts every new array on the current device: `cuda:1` left it at GPU 0, where the
    layers' own arrays (xp.zeros, reductions, elementwise results) were then made."""
    made_current = []
    gpu = types.SimpleNamespace(make_current=lambda: made_current.append(1))
    monkeypatch.setattr(backends, "_CACHE", {"cpu": backends._CPU, (1, True): gpu})
    assert get_backend("cuda:1", kernels=True) is gpu
    assert made_current == [1]
