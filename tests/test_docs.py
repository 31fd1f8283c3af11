"""The prose points at real code: every file path and every dotted name of cnnx's that the
README, the code tour (docs/tour.md) and the layer guide (docs/layers.md) mention exists, so a
rename cannot leave them behind; and their Python examples run as printed."""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from pathlib import Path

import numpy as np
import pytest

import cnnx
from cnnx import layers, tools

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/tour.md", "docs/layers.md"]
PACKAGES = ["cnnx", "cnnx.backends", "cnnx.layers", "cnnx.data"]


def backticked(doc: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", (ROOT / doc).read_text(encoding="utf-8"))


def resolve(name: str):
    """The object ``name`` ("run.train", "cnnx.graph.GraphedTrainStep", "Backend.matmul")
    names in cnnx, or None when its first part is not one of cnnx's modules or classes."""
    head, *rest = name.split(".")
    if head == "cnnx":
        head, *rest = rest
    obj = None
    for package in PACKAGES:
        try:
            obj = importlib.import_module(f"{package}.{head}")
            break
        except ModuleNotFoundError:
            module = importlib.import_module(package)
            if hasattr(module, head):
                obj = getattr(module, head)
                break
    if obj is None:
        for module in ("cnnx.backends.base", "cnnx.run", "cnnx.model", "cnnx.cli"):  # classes named bare
            obj = getattr(importlib.import_module(module), head, None)
            if isinstance(obj, type):
                break
            obj = None
    if obj is None:
        return None
    for part in rest:
        obj = getattr(obj, part)  # AttributeError: the doc names something that is not there
    return obj


@pytest.mark.parametrize("doc", DOCS)
def test_paths_mentioned_exist(doc):
    paths = [t for t in backticked(doc) if re.fullmatch(r"[\w./-]+/[\w.-]*", t)
             and not t.startswith(("runs/", "/", "~"))]
    candidates = ("", "cnnx/", "cnnx/backends/")
    missing = [p for p in paths if not any((ROOT / prefix / p).exists() for prefix in candidates)]
    assert paths and not missing


@pytest.mark.parametrize("doc", DOCS)
def test_dotted_names_mentioned_exist(doc):
    names = [t for t in backticked(doc) if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", t)
             and not t.endswith((".py", ".md", ".cu", ".cuh", ".npz", ".json", ".jsonl", ".png"))]
    resolved = [n for n in names if resolve(n) is not None]
    assert len(resolved) >= 3  # the check itself finds cnnx's names


def defined_names() -> set:
    """Every function, class, method and assigned name in cnnx's Python and CUDA sources."""
    names = set()
    for path in [*ROOT.glob("cnnx/**/*.py"), *ROOT.glob("cnnx/**/*.cu*"), *ROOT.glob("tests/**/*.h")]:
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r"\b(?:def|class)\s+(\w+)", text))
        names.update(re.findall(r"^\s*(\w+)\s*(?::[^=\n]*)?=", text, re.M))
        names.update(re.findall(r"(\w+)(?:<\w+>)?\s*\([^;{]*\)\s*(?:const\s*)?\{", text))  # C++
        names.update(re.findall(r"^#define\s+(\w+)", text, re.M))
    return names


@pytest.mark.parametrize("doc", DOCS)
def test_code_identifiers_mentioned_exist(doc):
    """Bare names in backticks that look like code (snake_case with an underscore, or
    CamelCase) are defined somewhere in the sources."""
    tokens = {re.sub(r"(<T>|\(\))$", "", t) for t in backticked(doc)}
    names = {t for t in tokens if re.fullmatch(r"_*[a-z]+(_[a-z0-9]+)+|[A-Z][a-z]+([A-Z][a-z0-9]*)+", t)}
    missing = sorted(names - defined_names() - set(dir(builtins)))
    assert names and not missing


def test_the_readme_library_example_runs(capsys, tmp_path, monkeypatch):
    """The README's Python example runs as printed, on a small synthetic dataset in place of
    Fashion-MNIST, and its model learns something in its three epochs."""
    import cnnx.data
    from cnnx.data.synthetic import make_synthetic

    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"),
                      re.S).group(1)
    small = cnnx.data.Dataset("synthetic", source="generated", **make_synthetic(600, 100))
    asked = []
    monkeypatch.setattr(cnnx.data, "load_dataset", lambda name: asked.append(name) or small)
    monkeypatch.chdir(tmp_path)   # the example writes model.npz
    names = {}
    exec(compile(block, "README.md", "exec"), names)
    assert asked == ["fashion-mnist"] and len(names["x_val"]) == 60
    assert "total parameters: 206,922" in capsys.readouterr().out
    assert [h["epoch"] for h in names["history"]] == [1, 2, 3]
    assert names["history"][-1]["val_accuracy"] > 0.2   # chance is 0.1
    assert set(names["conv"].grads) == {"W", "b"}
    model, same, x = names["model"], names["same"], small.x_test[:8]
    outputs = model.backend.to_numpy(cnnx.predict(model, x))   # the model may be on a GPU
    assert np.array_equal(outputs, same.backend.to_numpy(cnnx.predict(same, x)))
    np.save(tmp_path / "x.npy", x[:1])   # cnnx predict reads the saved file, class names too
    rows = tools.predict_files(tmp_path / "model.npz", [tmp_path / "x.npy"], device="auto")
    assert rows[0]["top"][0]["name"] == small.class_names[int(np.argmax(outputs[0]))]


def python_blocks(doc: str, after: str = "") -> list[str]:
    """The ```python blocks of ``doc`` that come after the line ``after`` (from the start if "")."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    start = text.index(f"\n{after}\n") if after else 0
    return re.findall(r"```python\n(.*?)```", text[start:], re.S)


@pytest.fixture
def layer_types_restored():
    """The examples register their layers; the other tests see the built-in ones only."""
    before = dict(layers.LAYER_TYPES)
    yield
    layers.LAYER_TYPES.clear()
    layers.LAYER_TYPES.update(before)


def test_the_readme_own_layer_example_runs(layer_types_restored, capsys):
    """The README's layer of one's own gradchecks, sits in a model and is registered, so that
    the model rebuilds from its spec."""
    block = python_blocks("README.md", "## Your own layer")[0]
    names = {}
    exec(compile(block, "README.md", "exec"), names)
    printed = capsys.readouterr().out
    errors = ast.literal_eval(printed.splitlines()[0])
    assert set(errors) == {"input"} and errors["input"] < 1e-9
    assert "2  LeakyReLU(0.1)" in printed and "total parameters: 50,890" in printed
    assert layers.LAYER_TYPES["LeakyReLU"] is names["LeakyReLU"]
    rebuilt = cnnx.from_spec(names["model"].spec(), input_shape=(1, 28, 28))
    assert rebuilt.layers[2].slope == 0.1


def test_the_layers_page_example_runs(layer_types_restored, capsys, tmp_path, monkeypatch):
    """docs/layers.md's layer with parameters gradchecks, trains in a model, and comes back
    from its checkpoint computing the same outputs."""
    monkeypatch.chdir(tmp_path)   # the example writes scaled.npz
    [block] = python_blocks("docs/layers.md")
    names = {}
    exec(compile(block, "docs/layers.md", "exec"), names)
    errors = ast.literal_eval(capsys.readouterr().out.splitlines()[0])
    assert set(errors) == {"input", "g", "b"} and max(errors.values()) < 1e-9
    model, same, x = names["model"], names["same"], names["x"]
    assert [h["epoch"] for h in names["history"]] == [1, 2, 3, 4, 5]
    assert not np.array_equal(model.state_dict()["1.g"], np.ones(8))   # its parameters trained
    assert type(same.layers[1]) is names["ChannelScale"]
    assert np.array_equal(cnnx.predict(model, x), cnnx.predict(same, x))


def test_tests_cited_exist():
    """Every test file (``tests/....py``, with its ``::test_name`` where given) that the docs,
    the benchmarks log or a docstring in cnnx/ cite, and every test function docs/math.md names
    in backticks, exists: a renamed test cannot leave "a test pins it" pointing nowhere."""
    files = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md"),
             *(ROOT / "cnnx").rglob("*.py")]
    texts = [path.read_text(encoding="utf-8") for path in files]
    cited = {m for text in texts for m in re.findall(r"tests/[\w/]+\.py(?:::\w+)?", text)}
    math = (ROOT / "docs/math.md").read_text(encoding="utf-8")
    cited |= {f"::{name}" for name in re.findall(r"`(test_\w+)`", math)}
    defined = {name for p in (ROOT / "tests").rglob("*.py")
               for name in re.findall(r"^def (test_\w+)", p.read_text(encoding="utf-8"), re.M)}
    missing = [c for c in sorted(cited)
               if (c.split("::")[0] and not (ROOT / c.split("::")[0]).is_file())
               or ("::" in c and c.split("::")[1] not in defined)]
    assert cited and not missing
