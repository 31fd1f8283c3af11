"""The ``cnnx`` command line through click's CliRunner, plus real ``python -m cnnx``
processes: outputs, reports, and every bad input as one line without a traceback.
(Bitwise-exact ``--resume`` is in test_resume.py.)"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import cnnx
import cnnx.cli
import cnnx.console
import cnnx.run
import cnnx.session
import cnnx.train
from cnnx import backends, checkpoint, data, report
from cnnx.data.synthetic import make_synthetic
from cli_helpers import invoke, one_line_error, run_cnnx, train_args
from cli_fixtures import isolated, tiny  # noqa: F401 (pytest fixtures)
from datafiles import IDX_NAMES, write_mnist_dir


@pytest.fixture(scope="module")
def run_dir(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    result = invoke(*train_args(tiny, out, "--epochs", 2))
    assert result.exit_code == 0, result.output
    return out, result


# ----------------------------------------------------------------------------- outputs
def test_help_and_version():
    assert invoke("--version").output.strip() == f"cnnx, version {cnnx.__version__}"
    bare = invoke()
    assert bare.exit_code == 0 and bare.output.startswith("Usage: cnnx")
    for command in ([], ["train"], ["evaluate"], ["predict"], ["summary"], ["gradcheck"], ["info"]):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage: cnnx" in result.output
        assert " TEXT " not in result.output, result.output  # each option says what it takes


def test_train_writes_every_run_file(run_dir):
    out, result = run_dir
    assert "device: cpu (NumPy" in result.stderr
    assert "epoch 1: train loss" in result.stdout and "epoch 2: train loss" in result.stdout
    assert "test accuracy" in result.stdout and "diagnosis:" in result.stdout
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert set(metrics[0]) >= {"epoch", "train_loss", "train_accuracy", "val_loss",
                               "val_accuracy", "images_per_second", "seconds"}
    res = json.loads((out / "result.json").read_text())
    assert set(res) >= {"test_accuracy", "test_loss", "epochs", "seconds", "device",
                        "parameters", "config"}
    assert res["device"] == "cpu" and res["config"]["model"] == "seed-cnn" and res["epochs"] == 2
    assert checkpoint.load(out / "checkpoint.npz").epoch == 2
    assert checkpoint.load(out / "best.npz").epoch == res["best_epoch"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files
    if importlib.util.find_spec("matplotlib"):
        assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_without_matplotlib_says_why_there_is_no_curves_png(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    result = invoke(*train_args(tiny, tmp_path / "r", "--epochs", 1))
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "r" / "curves.png").exists()
    assert result.stdout.splitlines()[-1] == ("no curves.png: drawing it needs matplotlib "
                                              "(pip install 'cnnx[plot]')")


def test_synthetic_dataset_is_learned_in_one_epoch(tmp_path):
    result = invoke("train", "--device", "cpu", "--dataset", "synthetic", "--model", "seed-cnn",
                    "--epochs", 1, "--out", tmp_path / "s", "--quiet")
    assert result.exit_code == 0, result.output
    assert "epoch 1:" not in result.stdout  # --quiet
    assert json.loads((tmp_path / "s" / "result.json").read_text())["test_accuracy"] > 0.8


def test_model_recipe_fills_options_not_given(tiny, tmp_path):
    result = invoke("train", "--device", "cpu", "--dataset", tiny, "--model", "fmnist-small",
                    "--epochs", 1, "--lr", 0.004, "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "r" / "result.json").read_text())["config"]
    recipe = cnnx.models.recipe("fmnist-small")
    assert config["epochs"] == 1 and config["lr"] == 0.004  # given
    assert config["optimizer"] == recipe["optimizer"] and config["schedule"] == recipe["schedule"]
    assert config["batch_size"] == recipe["batch_size"]
    # the recipe's one-epoch warm-up, shortened to half this one-epoch run, is what is saved
    assert recipe["warmup"] == 1 and config["warmup"] == 0.5


@pytest.mark.parametrize("epochs", [1, 2, 3, 7])
def test_the_step_schedule_divides_the_rate_by_10_after_each_third_of_the_run(epochs):
    from cnnx import run, session
    schedule = session.make_schedule(run.TrainConfig(epochs=epochs, schedule="step", lr=1.0))
    thirds = [schedule(epochs * fraction) for fraction in (0.3, 0.34, 0.66, 0.67, 0.999)]
    assert thirds == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])


def small_npz(path, n_train=64, n_test=32, labels=3):
    """12x12 images in ``labels`` classes: seed-cnn and fmnist-small train on them in a blink."""
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 12, 12), dtype=np.uint8),
             y_train=np.arange(n_train) % labels,
             x_test=rng.integers(0, 256, (n_test, 12, 12), dtype=np.uint8),
             y_test=np.arange(n_test) % labels)
    return path


def test_patience_needs_a_validation_set(tmp_path):
    small = small_npz(tmp_path / "small.npz")

    def train(dataset, model, out, *extra):
        return invoke("train", "--dataset", dataset, "--model", model, "--device", "cpu",
                      "--epochs", 1, "--out", out, *extra)

    assert one_line_error(train(small, "seed-cnn", tmp_path / "o", "--val-split", 0, "--patience", 1)) == (
        "Error: --patience 1 stops on the validation loss: it needs a validation set "
        "(--val-split > 0, or a dataset with one of its own)")
    # a fraction that rounds to no image is no validation set either
    assert one_line_error(train(small, "seed-cnn", tmp_path / "o", "--val-split", 0.001)) == (
        "Error: --val-split 0.001: 0.001 of 64 training images rounds to no validation images; "
        "give a larger --val-split, or 0 for no validation set")
    assert not (tmp_path / "o").exists()
    # --val-split 0 turns off a recipe's early stopping (there is no --patience to give instead)
    result = train(small, "fmnist-small", tmp_path / "o", "--val-split", 0, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "result.json").read_text())["config"]["patience"] is None
    # the default fraction of too few images: said, not an error
    result = train(small_npz(tmp_path / "four.npz", n_train=4), "seed-cnn", tmp_path / "four")
    assert result.exit_code == 0, result.output
    assert "no validation set: 0.1 of 4 training images rounds to no validation images" in result.stderr


def test_one_class_is_no_classification(tmp_path):
    """It trained, and reported "test accuracy 1.0000 ... good fit"."""
    small = small_npz(tmp_path / "one.npz", labels=1)
    error = one_line_error(invoke("train", "--dataset", small, "--model", "seed-cnn", "--device",
                                  "cpu", "--epochs", 1, "--out", tmp_path / "o"))
    assert error == (f"Error: the training labels of {small} hold one class only (0): a "
                     "classifier needs two or more")
    assert not (tmp_path / "o").exists()


def test_a_last_batch_batch_norm_cannot_take_is_refused_before_training(tmp_path):
    """fmnist-bn on 58 training images in batches of 57 failed at the end of epoch 1."""
    small = small_npz(tmp_path / "small.npz")  # 64 images: 58 train, 6 validation
    error = one_line_error(invoke("train", "--dataset", small, "--model", "fmnist-bn", "--device",
                                  "cpu", "--batch-size", 57, "--out", tmp_path / "o"))
    assert error == ("Error: the last batch would hold one example (58 training examples in "
                     "batches of 57), which batch norm cannot normalise: choose another "
                     "--batch-size (e.g. 58)")
    assert not (tmp_path / "o").exists()


def test_a_warm_up_given_is_used_as_given_and_must_be_shorter_than_the_run(tiny, tmp_path):
    error = one_line_error(invoke(*train_args(tiny, tmp_path / "o", "--epochs", 2, "--warmup", 10)))
    assert error == ("Error: --warmup 10 epochs is not shorter than the run's 2: give a --warmup "
                     "below --epochs (or more --epochs)")
    assert not (tmp_path / "o").exists()
    # 1.5 epochs of warm-up in a 2-epoch run: no longer cut to 1 (half the run)
    result = invoke(*train_args(tiny, tmp_path / "o", "--epochs", 2, "--warmup", 1.5))
    assert result.exit_code == 0, result.output
    first = json.loads((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["lr"] == pytest.approx(0.02 * (14 / 15 + 1e-3) / 1.5)  # its last step's rate
    assert json.loads((tmp_path / "o" / "result.json").read_text())["config"]["warmup"] == 1.5


def test_evaluate(run_dir):
    out, _ = run_dir
    result = invoke("evaluate", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "confusion matrix" in result.stdout
    assert "checkerboard" in result.stdout  # class names from the .npz
    report = json.loads(invoke("evaluate", out / "checkpoint.npz", "--json").stdout)
    expected = json.loads((out / "result.json").read_text())["test_accuracy"]
    assert report["accuracy"] == pytest.approx(expected)
    assert np.array(report["confusion_matrix"]).sum() == 200


def test_evaluate_json_writes_a_nan_as_null(run_dir, monkeypatch):
    """json.dumps writes NaN, which is not JSON: no reader would take the report."""
    out, _ = run_dir
    real = cnnx.tools.evaluate_checkpoint
    monkeypatch.setattr(cnnx.tools, "evaluate_checkpoint",
                        lambda *args, **kwargs: {**real(*args, **kwargs), "loss": float("nan")})
    result = invoke("evaluate", out, "--json")
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    assert json.loads(result.stdout, parse_constant=refuse)["loss"] is None


def test_evaluate_on_a_test_set_alone(run_dir, tiny, tmp_path):
    """evaluate reads only the test split, so an .npz of test images alone will do."""
    out, _ = run_dir
    with np.load(tiny) as d:
        np.savez(tmp_path / "held_out.npz", x_test=d["x_test"][:50], y_test=d["y_test"][:50])
    report = json.loads(invoke("evaluate", out, "--dataset", tmp_path / "held_out.npz",
                               "--json").stdout)
    assert report["images"] == 50 and np.array(report["confusion_matrix"]).sum() == 50


def test_evaluate_refuses_a_test_set_of_other_classes(run_dir, tiny, tmp_path):
    """Labels are scored by index: a dataset naming its classes otherwise (or in another
    order) would be scored against the wrong outputs."""
    out, _ = run_dir
    with np.load(tiny) as d:
        names = [str(name) for name in d["class_names"]]
        np.savez(tmp_path / "swapped.npz", x_test=d["x_test"], y_test=d["y_test"],
                 class_names=np.array(names[::-1]))
    error = one_line_error(invoke("evaluate", out, "--dataset", tmp_path / "swapped.npz"))
    assert error.startswith(f"Error: swapped's classes ({', '.join(names[::-1][:4])}, ...) are "
                            f"not {out / 'checkpoint.npz'}'s ({', '.join(names[:4])}, ...)")


def test_evaluate_needs_a_dataset_for_a_checkpoint_saved_outside_cnnx_train(run_dir, tmp_path):
    out, _ = run_dir
    model = cnnx.checkpoint.load(out / "checkpoint.npz").build_model()
    cnnx.checkpoint.save(tmp_path / "lib.npz", model)
    assert ("lib.npz does not say which dataset it was trained on (it was saved outside cnnx "
            "train): give the test set with --dataset") in one_line_error(
        invoke("evaluate", tmp_path / "lib.npz"))


def test_evaluate_labels_folders_by_number_for_a_checkpoint_without_class_names(run_dir, tiny,
                                                                               tmp_path):
    """Folders 1/ and 3/ are classes 1 and 3 of a model that knows no names, not 0 and 1."""
    Image = pytest.importorskip("PIL.Image")
    out, _ = run_dir
    model = cnnx.checkpoint.load(out / "checkpoint.npz").build_model()
    cnnx.checkpoint.save(tmp_path / "nameless.npz", model, config={"dataset": "unused"})
    with np.load(tiny) as d:
        for i, (x, y) in enumerate(zip(d["x_test"], d["y_test"])):
            if y in (1, 3):
                path = tmp_path / "pics" / "test" / str(y) / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((x[0] * 255).round().astype(np.uint8)).save(path)
        wanted = int(np.isin(d["y_test"], (1, 3)).sum())
    report = json.loads(invoke("evaluate", tmp_path / "nameless.npz", "--dataset",
                               tmp_path / "pics", "--json").stdout)
    matrix = np.array(report["confusion_matrix"])
    assert report["images"] == wanted and matrix[[1, 3]].sum() == wanted
    assert "(the dataset" in one_line_error(invoke("evaluate", tmp_path / "nameless.npz"))


def test_predict_npy_and_png(run_dir, tiny, tmp_path):
    out, _ = run_dir
    with np.load(tiny) as d:
        images, labels = d["x_test"][:4], d["y_test"][:4]
    np.save(tmp_path / "one.npy", (images[0, 0] * 255).astype(np.uint8))  # (H, W) uint8
    np.save(tmp_path / "batch.npy", images)  # (N, 1, H, W) floats
    result = invoke("predict", out, tmp_path / "one.npy", tmp_path / "batch.npy", "--top-k", 2)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # a file of one image is named alone, a batch's by index
    assert [line.split(": ")[0] for line in lines] == [str(tmp_path / "one.npy")] + [
        f"{tmp_path / 'batch.npy'}[{i}]" for i in range(4)]
    rows = json.loads(invoke("predict", out, tmp_path / "batch.npy", "--json").stdout)
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and len(rows[0]["top"]) == 3
    assert sum(r["top"][0]["class"] == y for r, y in zip(rows, labels)) >= 2
    assert rows[0]["top"][0]["name"] in make_synthetic(1, 1)["class_names"]
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray((images[0, 0] * 255).astype(np.uint8)).save(tmp_path / "x.png")
    assert invoke("predict", out, tmp_path / "x.png").exit_code == 0


def test_predict_a_directory(run_dir, tiny, tmp_path):
    """A directory stands for its image files and its subfolders', in path order; other files
    and hidden folders are passed over; a directory without images is a one-line error."""
    out, _ = run_dir
    with np.load(tiny) as d:
        images = d["x_test"][:3]
    pictures = tmp_path / "pictures"
    (pictures / "nested").mkdir(parents=True)
    for name, image in zip(["b.npy", "a.NPY", "c.npy"], images):
        with open(pictures / name, "wb") as f:   # np.save would add ".npy" to "a.NPY"
            np.save(f, image)
    np.save(pictures / "nested" / "d.npy", images[0])
    (pictures / ".ipynb_checkpoints").mkdir()
    np.save(pictures / ".ipynb_checkpoints" / "e.npy", images[0])
    (pictures / "notes.txt").write_text("not an image")
    rows = json.loads(invoke("predict", out, pictures, "--json").stdout)
    assert [os.path.relpath(r["file"], pictures) for r in rows] == [
        "a.NPY", "b.npy", "c.npy", os.path.join("nested", "d.npy")]
    one_by_one = json.loads(invoke("predict", out, pictures / "a.NPY", "--json").stdout)
    assert rows[0]["top"] == one_by_one[0]["top"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert "empty: no images (.npy, .png, .jpg" in one_line_error(
        invoke("predict", out, tmp_path / "empty"))


def test_summary_and_json_model(tmp_path):
    result = invoke("summary", "reference")
    assert result.exit_code == 0
    assert "(16, 28, 28)" in result.stdout and "total parameters" in result.stdout
    spec = cnnx.models.build("seed-cnn").spec()
    (tmp_path / "m.json").write_text(json.dumps(spec))
    result = invoke("summary", tmp_path / "m.json", "--input-shape", "1,28,28")
    assert result.exit_code == 0 and "(8, 26, 26)" in result.stdout
    # --input-shape is for a JSON model without one of its own
    (tmp_path / "own.json").write_text(json.dumps({"input_shape": [1, 28, 28], "layers": spec}))
    assert invoke("summary", tmp_path / "own.json", "--input-shape", "1,28,28").exit_code == 0
    assert one_line_error(invoke("summary", tmp_path / "own.json", "--input-shape", "1,12,12")) == (
        f"Error: model file {tmp_path / 'own.json'} is written for input [1, 28, 28] (its "
        "input_shape), not [1, 12, 12]: a JSON model is taken as written")


def test_gradcheck_exit_status():
    result = invoke("gradcheck", "seed-cnn")
    assert result.exit_code == 0, result.output
    assert "largest relative error" in result.stdout
    assert invoke("gradcheck", "seed-cnn", "--tolerance", "1e-30").exit_code == 1
    # the tolerance is printed with the digits of the error it is compared with
    largest = float(re.search(r"largest relative error (\S+)", result.stdout)[1])
    result = invoke("gradcheck", "seed-cnn", "--tolerance", largest * 1.001)
    assert result.exit_code == 0 and f"(tolerance {largest * 1.001:.2e})" in result.stdout


@pytest.mark.parametrize("args", [
    ["train", "--lr", "inf"], ["train", "--lr", "nan"], ["train", "--weight-decay", "inf"],
    ["train", "--warmup", "inf"], ["train", "--momentum", "nan"], ["train", "--flip", "nan"],
    ["train", "--val-split", "nan"], ["gradcheck", "seed-cnn", "--tolerance", "nan"],
    ["gradcheck", "seed-cnn", "--tolerance", "inf"],
])
def test_a_non_finite_number_is_a_usage_error_naming_the_option(args):
    """click's FloatRange takes NaN (it fails no comparison) and inf: --lr inf would only show
    as a diverged run, --tolerance nan as every row FAIL with exit status 0."""
    error = one_line_error(invoke(*args, "--dataset", "synthetic")
                           if args[0] == "train" else invoke(*args))
    assert error == f"Error: Invalid value for '{args[-2]}': {float(args[-1])} is not a finite number."
    assert invoke(*args).exit_code == 2


@pytest.mark.parametrize("field, option", [("lr", "--lr"), ("weight_decay", "--weight-decay"),
                                           ("warmup", "--warmup")])
def test_a_training_config_refuses_infinity(field, option):
    """The library's own check, for configs that do not come through the command line."""
    from cnnx import run
    with pytest.raises(ValueError, match=f"^{option} must be a finite number >=? 0, got inf$"):
        run.TrainConfig(**{field: float("inf")}).check()


@pytest.mark.parametrize("command", [["train", "--dataset", "synthetic"], ["gradcheck", "seed-cnn"]])
def test_a_negative_seed_is_a_usage_error_naming_the_option(command):
    result = invoke(*command, "--seed", "-1")
    assert one_line_error(result) == "Error: Invalid value for '--seed': -1 is not in the range x>=0."
    assert result.exit_code == 2


@pytest.mark.parametrize("model", ["fmnist-small", "fmnist-bn"])
def test_gradcheck_passes_batch_norm_models(model):
    # their conv biases have an exact gradient of 0 (the batch norm cancels them); fmnist-bn's
    # dropout masks stay fixed through the check, and a 5-element sample of its dense weights
    # (most of their gradients small next to batch norm on 2 examples) is measured on the
    # whole array's scale
    result = invoke("gradcheck", model, "--input-shape", "1,8,8", "--max-elements", "5")
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.stdout


def test_info(tmp_path):
    write_mnist_dir(tmp_path / "cache" / "cnnx" / "mnist")
    result = invoke("info")
    assert result.exit_code == 0 and cnnx.__version__ in result.stdout
    env = json.loads(invoke("info", "--json").stdout)
    assert env["datasets"]["mnist"].endswith("mnist")
    # NumPy and its BLAS have their own line; the cpu line says only what they do not
    assert re.fullmatch(r"\d+ cores, \d+ threads? \(CNNX_CPU_THREADS sets the threads\)",
                        env["cpu"]), env["cpu"]
    if "cuda:0" in cnnx.available_backends():  # the suite's GPU run
        assert env["cuda"].startswith("cuda:0 (") and os.path.isdir(env["kernels"].split()[-1])
    else:
        assert env["cuda"].startswith("not available: ") and "kernels" not in env


def test_a_bad_cnnx_cpu_threads_is_one_line(monkeypatch):
    """Read where first used, not at import: an import-time error would be a traceback."""
    from cnnx.backends import cpu_threads
    monkeypatch.setattr(cpu_threads, "WORKERS", None)  # not read yet
    monkeypatch.setenv("CNNX_CPU_THREADS", "abc")
    assert one_line_error(invoke("info")) == (
        "Error: CNNX_CPU_THREADS='abc': the number of CPU threads cnnx uses must be a whole "
        "number (unset or 0: the usable cores, at most 8)")
    monkeypatch.setenv("CNNX_CPU_THREADS", "1")
    assert "cores, 1 thread (CNNX_CPU_THREADS sets the threads)" in invoke("info").stdout
    done = run_cnnx("info", env={"CNNX_CPU_THREADS": "abc"})  # a process of its own: no traceback
    assert done.returncode == 1 and done.stderr.startswith("Error: CNNX_CPU_THREADS='abc'")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("j_train, j_cv, verdict", [
    (1.0, 1.05, "high bias (underfitting)"),       # J_train high, J_cv ≈ J_train
    (0.05, 0.40, "high variance (overfitting)"),   # J_cv ≫ J_train
    (0.60, 1.50, "high bias and high variance"),   # both
    (0.05, 0.08, "good fit"),                      # small gap: not ≫
    (0.05, None, "unknown variance"),
    (1.0, 0.5, "high bias (underfitting): J_train high, J_cv ≪ J_train"),  # not "≈"
    (0.2, 0.05, "good fit: J_train low and J_cv ≪ J_train"),
    (0.05, 0.02, "good fit: J_train low and J_cv ≈ J_train"),  # below ln(10)/20 apart
])
def test_bias_variance_diagnosis(j_train, j_cv, verdict):
    d = report.diagnose(j_train, j_cv, classes=10)
    assert d["verdict"].startswith(verdict)
    text = report.format_diagnosis(d)
    if "variance (" in verdict or "and high variance" in verdict:
        assert "get more training examples" in text and "increase λ" in text
    if "bias" in verdict:
        assert "decrease λ" in text
        # with λ = 0 there is nothing to decrease: that remedy goes, the others stay
        no_decay = report.format_diagnosis(report.diagnose(j_train, j_cv, 10, weight_decay=0.0))
        assert "decrease λ" not in no_decay and "train longer" in no_decay
        with_decay = report.format_diagnosis(report.diagnose(j_train, j_cv, 10, weight_decay=1e-4))
        assert "decrease λ" in with_decay


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), OSError(28, "No space left on device")])
def test_an_error_inside_an_epoch_starts_a_line_of_its_own_after_the_progress_line(
        tiny, tmp_path, monkeypatch, stop):
    """On a terminal the progress line is redrawn in place, without a newline: Ctrl-C or an
    error inside an epoch was printed on its end ("... ETA 0:01Error: interrupted")."""
    class Terminal(cnnx.console.ConsoleListener):
        def __init__(self, quiet=False):
            super().__init__(quiet)
            self.live = True  # as on a terminal

    monkeypatch.setattr(cnnx.cli, "ConsoleListener", Terminal)
    monkeypatch.setattr(cnnx.console, "REFRESH_S", 0.0)
    real_step, calls = cnnx.train.train_step, []

    def step(*args):
        calls.append(1)
        if len(calls) == 15 + 5:  # inside epoch 2: epoch 1's checkpoint is there
            raise stop
        return real_step(*args)

    monkeypatch.setattr(cnnx.train, "train_step", step)
    result = invoke(*train_args(tiny, tmp_path / "run", "--epochs", 2))
    assert result.exit_code in (1, 130)
    assert "\repoch 2/2 [" in result.stderr
    assert re.search(r"ETA \d+:\d\d\nError: ", result.stderr), result.stderr[-300:]


def test_an_epochs_images_per_second_count_its_training_not_its_validation(tiny, tmp_path,
                                                                           monkeypatch):
    """The epoch line's img/s and seconds are those of training, as the progress line's: a
    validation pass (here made to take 1000 s) was counted in, and a small epoch with a large
    validation set showed a fraction of the training speed."""
    import time
    real_clock, offset = time.perf_counter, [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + offset[0])
    real_evaluate = cnnx.train.evaluate

    def slow_evaluate(*args, **kwargs):
        offset[0] += 1000.0
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(cnnx.train, "evaluate", slow_evaluate)
    out = tmp_path / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 2)).exit_code == 0
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert record["seconds"] < 1000 and record["images_per_second"] > 480 / 1000, record


def test_a_run_directory_that_cannot_be_written_is_refused_before_training(tiny, tmp_path,
                                                                           monkeypatch):
    """A read-only directory (as a read-only mount; root writes through chmod) failed only
    at the first checkpoint, after a whole epoch of training."""
    def read_only(*args):
        raise OSError(30, "Read-only file system")  # EROFS

    steps = []
    monkeypatch.setattr(cnnx.checkpoint.os, "replace", read_only)
    monkeypatch.setattr(cnnx.train, "train_step", lambda *args: steps.append(1))
    out = tmp_path / "run"
    assert one_line_error(invoke(*train_args(tiny, out))) == (
        f"Error: cannot write {out / 'metrics.jsonl'}: Read-only file system")
    assert steps == []


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_a_run_directory_that_cannot_be_made_is_named_before_the_data_is_read(where, tiny,
                                                                              tmp_path, monkeypatch):
    """Was Python's raw "Error: [Errno 20] Not a directory: '.../run'", after the data had
    been read and the run announced."""
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "run" if where == "under-a-file" else Path("/proc/cnnx-run")
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    reads = []
    monkeypatch.setattr(cnnx.run, "prepare_data", lambda *args, **kwargs: reads.append(1))
    error = one_line_error(invoke(*train_args(tiny, out)))
    assert re.fullmatch(f"Error: cannot make the run directory {re.escape(str(out))}: "
                        r"[A-Z][a-z ]+; choose another --out", error), error
    assert reads == []


def test_j_train_is_measured_on_every_class_of_a_dataset_sorted_by_class(tmp_path, monkeypatch):
    """J_train is the loss over a subset of the training set (TRAIN_SUBSET_FOR_J images); of a
    dataset stored class by class (as directories of pictures are read) its first images would
    be of the first classes only, and the diagnosis would compare their loss with J_cv."""
    d = make_synthetic(400, 50, seed=1)
    order = np.argsort(d["y_train"], kind="stable")
    np.savez(tmp_path / "sorted.npz", x_train=d["x_train"][order], y_train=d["y_train"][order],
             x_test=d["x_test"], y_test=d["y_test"])
    monkeypatch.setattr(cnnx.session, "TRAIN_SUBSET_FOR_J", 100)
    real_evaluate, labels = cnnx.session.evaluate, []

    def evaluate(model, loss, x, y, **kwargs):
        labels.append(np.asarray(y))
        return real_evaluate(model, loss, x, y, **kwargs)

    monkeypatch.setattr(cnnx.session, "evaluate", evaluate)
    result = invoke(*train_args(tmp_path / "sorted.npz", tmp_path / "run", "--epochs", 1))
    assert result.exit_code == 0, result.output
    j_train_labels = labels[-1]  # the last evaluation: J_train, after the test set's
    assert len(j_train_labels) <= 100 and set(j_train_labels) == set(range(10))


@pytest.mark.parametrize("losses, patience, stop", [
    ([1.0, 0.9, 0.95, 0.97], 2, True),    # two epochs without beating 0.9
    ([1.0, 0.9, 0.95, 0.89], 2, False),   # the last one improved
    ([1.0, 0.9, 0.95], 2, False),         # not yet two epochs after the best
    ([1.0, 1.1], None, False),            # no early stopping asked for
])
def test_early_stopping_is_decided_from_the_history(losses, patience, stop):
    from types import SimpleNamespace

    from cnnx.session import Session

    fake = SimpleNamespace(cfg=SimpleNamespace(patience=patience),
                           history=[{"val_loss": v} for v in losses])
    assert Session.should_stop(fake) is stop


def test_confusion_matrix_and_per_class_accuracy():
    m = report.confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], classes=4)
    assert m.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert report.per_class_accuracy(m) == [0.5, 1.0, 0.5, None]
    assert "n/a" in report.format_confusion(m, ["a", "b", "c", "d"])


# --------------------------------------------------------------------------- bad input
def _corrupt_mnist(tmp_path):
    write_mnist_dir(tmp_path / "bad")
    path = tmp_path / "bad" / IDX_NAMES["x_train"]
    path.write_bytes(path.read_bytes()[:-40])
    return tmp_path / "bad"


BAD_TRAIN = [
    (["--dataset", "mnist"], "dataset 'mnist' not found.*--data-dir.*https://"),
    (["--dataset", "fashion-mnist"], "apt-get install dataset-fashion-mnist"),
    (["--dataset", "nowhere.npz"], "does not exist"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "fasion-mnist"], "unknown dataset 'fasion-mnist' \\(did you mean "
                                     "'fashion-mnist'\\?\\): use one of"),
    (["--dataset", "CIFAR-10"], "did you mean 'cifar10'"),
    (["--dataset", "photos/"], "^Error: dataset 'photos/': no such file or directory$"),
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--model", "lenet5", "--dataset", "cifar10"], "not found"),
    (["--epochs", "0"], "Invalid value for '--epochs'"),
    (["--batch-size", "abc"], "'abc' is not a valid integer"),
    (["--lr", "-1"], "Invalid value for '--lr'"),
    (["--momentum", "1"], "Invalid value for '--momentum'"),
    (["--val-split", "1.5"], "Invalid value for '--val-split'"),
    (["--dtype", "float16"], "Invalid value for '--dtype'"),
    (["--optimizer", "rmsprop"], "Invalid value for '--optimizer'"),
    (["--schedule", "cyclic"], "Invalid value for '--schedule'"),
    (["--patience", "0"], "Invalid value for '--patience'"),
    (["--flip", "2"], "Invalid value for '--flip'"),
    (["--device", "tpu"], "'tpu': use cpu, cuda, cuda:N or auto"),
    (["--device", "cuda"], "cnnx\\[cuda12\\]"),
    (["--device", "cuda:1"], "cnnx\\[cuda12\\]|does not exist"),
    (["--data-dir", "no/such/dir"], "Directory 'no/such/dir' does not exist"),
    (["--no-such-flag"], "No such option '--no-such-flag'"),
]


@pytest.fixture
def without_cupy(monkeypatch):
    """CUDA as on a machine without CuPy, also where a GPU works (the suite's GPU run):
    ``import cupy`` fails, and no CUDA backend made earlier is reused."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(backends, "_CACHE", {"cpu": backends._CPU})


@pytest.mark.parametrize("args, message", BAD_TRAIN)
def test_bad_train_input_is_one_line(tiny, tmp_path, args, message, without_cupy):
    base = {"--dataset": str(tiny), "--model": "seed-cnn", "--device": "cpu", "--epochs": "1"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["train", "--out", str(tmp_path / "out")] + [x for kv in base.items() for x in kv]
    if args == ["--no-such-flag"]:
        argv.append("--no-such-flag")
    assert re.search(message, one_line_error(invoke(*argv)))
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_cuda_graph_off_cuda_is_one_line(tiny, tmp_path):
    argv = ["train", "--out", str(tmp_path / "out"), "--dataset", str(tiny), "--device", "cpu",
            "--epochs", "1", "--cuda-graph"]
    error = one_line_error(invoke(*argv))
    assert re.search("CUDA graphs need the CUDA backend.*--device cuda.*leave out --cuda-graph",
                     error)
    assert not (tmp_path / "out").exists()


def test_corrupt_idx_npz_keys_and_shapes(tiny, tmp_path):
    bad = _corrupt_mnist(tmp_path)
    error = one_line_error(invoke(*train_args("mnist", tmp_path / "o", "--data-dir", bad)))
    assert "train-images" in error and "truncated" in error
    np.savez(tmp_path / "keys.npz", images=np.zeros((2, 28, 28), np.uint8))
    error = one_line_error(invoke(*train_args(tmp_path / "keys.npz", tmp_path / "o")))
    assert "missing key(s) x_train, y_train, x_test, y_test" in error
    d = make_synthetic(20, 10)
    np.savez(tmp_path / "small.npz", **{k: d[k] for k in ("y_train", "y_test")},
             x_train=np.zeros((20, 3, 8, 8), np.float32), x_test=np.zeros((10, 3, 8, 8)))
    error = one_line_error(invoke(*train_args(tmp_path / "small.npz", tmp_path / "o")))
    assert re.match(r"Error: model 'seed-cnn' does not fit small images \(3, 8, 8\): "
                    r"layer 5 \(MaxPool2D", error)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model", sorted(cnnx.models.PRESETS))
def test_presets_take_the_datasets_shape_and_classes(tmp_path, model):
    """`cnnx train --dataset cifar10` works with every preset: a preset's first convolution
    takes the images' channels, its first dense layer what the convolutions leave of them, and
    its last layer has one output per class (here RGB 32x32 images in 5 classes)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "rgb.npz", x_train=rng.random((40, 32, 32, 3)), y_train=np.arange(40) % 5,
             x_test=rng.random((10, 32, 32, 3)), y_test=np.arange(10) % 5)
    result = invoke("train", "--device", "cpu", "--dataset", tmp_path / "rgb.npz", "--model", model,
                    "--epochs", 1, "--batch-size", 20, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 0, result.output
    ck = checkpoint.load(tmp_path / "o")
    assert ck.input_shape == (3, 32, 32) and ck.spec[0]["in_channels"] == 3
    assert ck.spec[-1]["out_features"] == 5
    assert ck.build_model().shapes()[-1] == (5,)


BAD_MODEL_FILES = [  # (file content, what the one-line error must say)
    ("{", r"^Error: model file \S+ is not valid JSON"),
    ('{"layers": 3}', r"^Error: model file \S+: a model spec must be a non-empty list"),
    ("[3]", r"^Error: model file \S+: layer 0: a layer spec must be an object with a 'type'"),
    ('[{"type": "Conv3D"}]', r"^Error: model file \S+: layer 0: unknown layer type 'Conv3D' "
                             r"\(did you mean 'Conv2D'\?\); known: .*Conv2D"),
    ('[{"type": "Flatten"}, {"type": "Dense", "in_features": 784}]',
     r"^Error: model file \S+: layer 1: Dense: missing argument\(s\) out_features$"),
    ('[{"type": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "colour": 1}]',
     r"layer 0: Conv2D: unknown argument\(s\) colour; it takes in_channels, out_channels, "
     r"kernel_size, stride"),
    ('[{"type": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": -1}]',
     r"layer 0: Conv2D: padding must be >= 0, got -1"),
    ('[{"type": "Conv2D", "in_channels": 1, "out_channels": "four", "kernel_size": 3}]',
     r"layer 0: Conv2D: out_channels must be a positive integer, got 'four'$"),
    ('[{"type": "Flatten"}, {"type": "Dense", "in_features": 1e400, "out_features": 3}]',
     r"layer 1: Dense: in_features must be a positive integer, got inf$"),
    ('[{"type": "Dropout", "p": "half"}]', r"layer 0: Dropout: p must be a number in \[0, 1\), got 'half'$"),
    ('{"input_shape": [1, 12, 12], "layers": [{"type": "GlobalAvgPool2D"}, '
     '{"type": "Dense", "in_features": 1, "out_features": 10}]}',
     r"^Error: model '\S+' does not fit \S+ images \(1, 28, 28\): model file \S+ is written for "
     r"input \[1, 12, 12\] \(its input_shape\), not \[1, 28, 28\]: a JSON model is taken as written$"),
    ('[{"type": "Conv2D", "in_channels": 3, "out_channels": 2, "kernel_size": 3}, {"type": "Flatten"}]',
     r"^Error: model '\S+' does not fit \S+ images \(1, 28, 28\): layer 0"),
]


@pytest.mark.parametrize("content, message", BAD_MODEL_FILES)
def test_bad_model_file_is_one_line(tiny, tmp_path, content, message):
    """A malformed model file says which layer and what is wrong; only a well-formed model
    whose shapes do not match the data is said not to fit it."""
    (tmp_path / "model.json").write_text(content)
    result = invoke(*train_args(tiny, tmp_path / "out", "--model", tmp_path / "model.json"))
    assert re.search(message, one_line_error(result))
    assert not (tmp_path / "out").exists()


def test_checkpoint_from_another_model_and_corrupt_checkpoints(run_dir, tiny, tmp_path):
    out, _ = run_dir
    error = one_line_error(invoke("train", "--resume", out, "--model", "lenet5", "--device", "cpu",
                                  "--epochs", 3))
    assert "saved from another model" in error
    bad = tmp_path / "bad.npz"
    bad.write_bytes((out / "checkpoint.npz").read_bytes()[:5000])
    assert "corrupt or truncated" in one_line_error(invoke("evaluate", bad))
    assert "not a cnnx checkpoint" in one_line_error(invoke("evaluate", tiny))
    (tmp_path / "empty").mkdir()
    assert "no checkpoint at" in one_line_error(invoke("evaluate", tmp_path / "empty"))
    assert "no checkpoint at" in one_line_error(invoke("train", "--resume", tmp_path / "empty"))
    assert (tmp_path / "empty").is_dir()  # the user's directory: --resume made none to remove
    for command in (["evaluate"], ["predict"], ["train", "--resume"]):  # runs/, not runs/<run>/
        error = one_line_error(invoke(*command, out.parent, *(["x.npy"] * (command == ["predict"]))))
        assert error == (f"Error: no checkpoint at {out.parent / 'checkpoint.npz'}; {out.parent} "
                         f"holds runs: name one, such as {out} (the latest)")
    assert "already holds a run" in one_line_error(invoke("train", "--out", out, "--device", "cpu"))


def test_bad_predict_summary_gradcheck_input(run_dir, tmp_path):
    out, _ = run_dir
    np.save(tmp_path / "wrong.npy", np.zeros((5, 5)))
    assert "does not fit the model input" in one_line_error(invoke("predict", out, tmp_path / "wrong.npy"))
    assert "no such file" in one_line_error(invoke("predict", out, tmp_path / "absent.npy"))
    np.save(tmp_path / "empty.npy", np.zeros((0, 28, 28), np.uint8))
    assert one_line_error(invoke("predict", out, tmp_path / "empty.npy")) == (
        f"Error: {tmp_path / 'empty.npy'}: holds no images")
    (tmp_path / "text.npy").write_text("xxxx")  # not NumPy's advice to allow_pickle
    assert one_line_error(invoke("predict", out, tmp_path / "text.npy")) == (
        f"Error: {tmp_path / 'text.npy'}: not a .npy file")
    with open(tmp_path / "archive.npy", "wb") as f:  # np.load would return the archive
        np.savez(f, x=np.zeros((28, 28)))
    assert one_line_error(invoke("predict", out, tmp_path / "archive.npy")) == (
        f"Error: {tmp_path / 'archive.npy'}: not a .npy file (an .npz archive: save one array "
        "with numpy.save)")
    (tmp_path / "utf16.json").write_bytes(b"\xff\xfe[")
    assert one_line_error(invoke("summary", tmp_path / "utf16.json")) == (
        f"Error: model file {tmp_path / 'utf16.json'} is not UTF-8 text, as JSON must be")
    (tmp_path / "x.txt").write_text("hi")
    assert "unsupported file type" in one_line_error(invoke("predict", out, tmp_path / "x.txt"))
    assert "unknown model" in one_line_error(invoke("summary", "nope"))
    (tmp_path / "broken.json").write_text("{")
    assert "not valid JSON" in one_line_error(invoke("summary", tmp_path / "broken.json"))
    assert "expected C,H,W" in one_line_error(invoke("gradcheck", "seed-cnn", "--input-shape", "1,2"))


def test_sizes_beyond_the_memory_are_one_line(tmp_path, monkeypatch):
    """A layer of 10^13 outputs asks NumPy for petabytes: MemoryError (not a ValueError) is
    reported in one line, as is an OverflowError from a size too large for a float."""
    (tmp_path / "huge.json").write_text(json.dumps(
        {"input_shape": [1, 12, 12], "layers": [{"type": "Flatten"},
                                                {"type": "Dense", "in_features": 144,
                                                 "out_features": 10**13}]}))
    error = one_line_error(invoke("summary", tmp_path / "huge.json"))
    assert re.match(r"Error: not enough memory: Unable to allocate .* \(a layer or input too "
                    r"large\?\)$", error)

    def overflow(*args, **kwargs):
        raise OverflowError("int too large to convert to float")
    monkeypatch.setattr(cnnx.models, "build", overflow)
    assert one_line_error(invoke("summary", "reference")) == (
        "Error: a number too large: int too large to convert to float (a layer or input too "
        "large?)")


def test_data_dir_with_a_dataset_given_by_its_path_is_one_line(run_dir, tiny, tmp_path):
    message = "Error: --data-dir is where fashion-mnist, mnist and cifar10 are looked for; give"
    error = one_line_error(invoke(*train_args(tiny, tmp_path / "o", "--data-dir", tmp_path)))
    assert error.startswith(message) and not (tmp_path / "o").exists()
    out, _ = run_dir
    for dataset in ([], ["--dataset", tiny]):  # the checkpoint's .npz, or one given
        assert one_line_error(invoke("evaluate", out, *dataset, "--data-dir", tmp_path)).startswith(message)


def test_debug_shows_the_traceback():
    result = invoke("train", "--model", "resnet9000", "--dataset", "synthetic", "--debug")
    assert result.exit_code != 0 and isinstance(result.exception, ValueError)


# ----------------------------------------------------------------------- real processes
def test_subprocess_smoke(tmp_path):
    assert run_cnnx("--version").stdout.strip() == f"cnnx, version {cnnx.__version__}"
    done = run_cnnx("train", "--device", "cpu", "--dataset", "synthetic", "--model", "seed-cnn",
                    "--epochs", 1, "--out", tmp_path / "r", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "device: cpu" in done.stderr and "test accuracy" in done.stdout
    # no GPU visible even on a GPU machine; the fix named depends on what is installed
    failed = run_cnnx("train", "--device", "cuda", "--dataset", "synthetic",
                      env={"CUDA_VISIBLE_DEVICES": ""})
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("Error: CUDA")
    assert re.search(r'cnnx\[cuda12\]|--device cpu', failed.stderr)


@pytest.mark.slow
@pytest.mark.skipif(data.locate("fashion-mnist") is None,
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_one_epoch_reaches_85_percent(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real system locations
    result = run_cnnx("train", "--device", "cpu", "--epochs", 1, "--out", tmp_path / "fm",
                      timeout=1800)
    assert result.returncode == 0, result.stderr
    res = json.loads((tmp_path / "fm" / "result.json").read_text())
    print(f"Fashion-MNIST, 1 epoch on the CPU: test accuracy {res['test_accuracy']:.4f} "
          f"in {res['seconds']:.1f} s of training")
    assert res["test_accuracy"] >= 0.85


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    out = tmp_path / "run"
    error = one_line_error(invoke(*train_args(tiny, out, "--epochs", 1, "--lr", 1e30)))
    assert re.search(r"training diverged: the loss became (nan|inf) in epoch 1 .*at learning rate "
                     r"1e\+30; lower the learning rate \(--lr\)", error)
    assert "RuntimeWarning" not in error and not out.exists()  # nothing worth keeping
    assert invoke(*train_args(tiny, out, "--epochs", 1)).exit_code == 0
    saved = {name: (out / name).read_bytes() for name in ("checkpoint.npz", "metrics.jsonl")}
    error = one_line_error(invoke("train", "--resume", out, "--epochs", 2, "--lr", 1e30))
    assert "training diverged" in error
    assert f"the last checkpoint, from before, is intact: cnnx train --resume {out} --lr <lower>" in error
    assert {name: (out / name).read_bytes() for name in saved} == saved


def test_a_checkpoint_with_non_finite_weights_is_never_written(run_dir, tmp_path):
    from cnnx import run, session
    from cnnx.train import TrainingDiverged
    out, _ = run_dir
    ck = checkpoint.load(out / "checkpoint.npz")
    cfg = run.resolve_config({}, ck)
    prep = run.prepare_data(cfg)
    model = ck.build_model()
    job = session.Session(cfg, model, run.make_optimizer(cfg, model), prep, tmp_path, run.Listener(),
                          "cpu")
    model.layers[0].params["W"][0, 0, 0, 0] = np.inf
    with pytest.raises(TrainingDiverged, match=r"parameter 0\.W became NaN or infinite"):
        job.save(tmp_path / "checkpoint.npz", 1, 0)
    assert not (tmp_path / "checkpoint.npz").exists()


def test_resume_with_a_new_learning_rate_uses_it(tiny, tmp_path):
    out = tmp_path / "run"
    assert invoke(*train_args(tiny, out, "--epochs", 1)).exit_code == 0  # --lr 0.02
    assert invoke("train", "--resume", out, "--epochs", 2, "--lr", 0.005).exit_code == 0
    rates = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rates == [0.02, 0.005]
    assert checkpoint.load(out / "checkpoint.npz").header["config"]["lr"] == 0.005
