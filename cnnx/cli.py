"""The ``cnnx`` command line: parses options and calls the library (``cnnx.run``,
``cnnx.tools``, ``cnnx.report``). Every error a user can cause is printed as one line,
``Error: ...``, with a non-zero exit status; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import collections
import json
import math
import os
import re
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from . import __version__, report, run, tools
from .backends import DeviceError
from .console import ConsoleListener
from .data import NAMES as DATASETS
from .models import PRESETS

DEFAULTS = run.TrainConfig()
USER_ERRORS = (ValueError, DeviceError, OSError)  # CheckpointError, DatasetNotFound: ValueErrors
INPUT_SHAPE_HELP = ("C,H,W: the images to size a preset for (default 1,28,28), or the input of a "
                    "JSON model without one.")
DATA_DIR_HELP = ("Where to look first for fashion-mnist, mnist or cifar10 (an .npz or a "
                 "directory of pictures is named by its path in --dataset).")
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


class CnnxGroup(click.Group):
    """Runs a command and turns every user error into one line on stderr."""

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args
        try:
            code = super().main(args, prog_name or "cnnx", standalone_mode=False, **extra)
        except NO_ARGS_IS_HELP as exc:  # plain ``cnnx``: the help text, not an error
            click.echo(exc.format_message())
            code = 0
        except click.ClickException as exc:
            if debug:
                raise
            _fail(exc.format_message(), exc.exit_code)
        except BrokenPipeError:  # e.g. ``cnnx evaluate RUN | head``: the reader left
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except USER_ERRORS as exc:
            if debug:
                raise
            _fail(str(exc), 1)
        except (MemoryError, OverflowError) as exc:
            # sizes come from the user: a model file's layer of 3e11 outputs, an --input-shape
            # of 100000x100000 pixels, a label of 2**40 (one output per class) -- NumPy's
            # "Unable to allocate 512. TiB ..." says how much, this says why
            if debug:
                raise
            what = "not enough memory" if isinstance(exc, MemoryError) else "a number too large"
            _fail(f"{what}: {exc or 'an allocation failed'} (a layer or input too large?)", 1)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted", 130)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


class Interrupted(click.ClickException):
    exit_code = 130  # the shell's status for Ctrl-C


def _fail(message: str, code: int):
    click.echo("Error: " + " ".join(message.split()), err=True)
    sys.exit(code)


def _json(value) -> str:
    """``value`` as JSON, NaN and infinity written null: json.dumps writes them NaN and
    Infinity, which no JSON reader takes."""
    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v
    return json.dumps(finite(value), indent=2, allow_nan=False)


def _log(text: str) -> None:
    click.echo(text, err=True)


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange, refusing NaN and infinity: it takes them (NaN fails no comparison
    with a bound), and --lr inf or --warmup inf would surface later, as a diverged run or as a
    rate that never warms up."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number


def _device(ctx, param, value):
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", value.strip().lower()):
        raise click.BadParameter(f"{value!r}: use cpu, cuda, cuda:N or auto")
    return value.strip().lower()


def _shape(ctx, param, value):
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise click.BadParameter(f"{value!r}: expected C,H,W such as 1,28,28")
    return shape


def _image_size(ctx, param, value):
    if value is None:
        return None
    try:
        size = [int(v) for v in value.split(",")]
    except ValueError:
        size = []
    if len(size) == 1:
        size *= 2
    if len(size) != 2 or min(size) < 1:
        raise click.BadParameter(f"{value!r}: expected HEIGHT,WIDTH such as 64,48, or one number "
                                 "for squares")
    return size


device_option = click.option(
    "--device", default="auto", show_default=True, callback=_device, metavar="DEVICE",
    help="cpu, cuda, cuda:N, or auto (a GPU when one is usable, else the CPU).")
debug_option = click.option("--debug", is_flag=True, expose_value=False,
                            help="Show the full traceback on errors.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(cls=CnnxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnnx")
@debug_option
def cnnx():
    """cnnx: convolutional networks by hand, on NumPy (CPU) or CuPy (NVIDIA GPUs)."""


@cnnx.command()
@device_option
@click.option("--dataset", default=DEFAULTS.dataset, show_default=True, metavar="NAME|PATH",
              help=f"{', '.join(DATASETS)}, a .npz with x_train, y_train, x_test, y_test "
                   "(optionally x_val, y_val), or a directory of pictures: "
                   "DIR/train/<class>/*.png and DIR/test/<class>/... (also .jpg, .bmp, .webp, "
                   ".tif; optionally DIR/val/<class>/), or DIR/<class>/ alone, of which "
                   "about 20% of each class is held out for testing.")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False),
              help=DATA_DIR_HELP)
@click.option("--image-size", callback=_image_size, metavar="H,W",
              help="Resize every picture of a --dataset directory to H,W pixels (one number for "
                   "squares).  [default: the pictures must have one size]")
@click.option("--model", default=DEFAULTS.model, show_default=True, metavar="PRESET|FILE",
              help=f"A preset ({', '.join(PRESETS)}; sized to the dataset's images and "
              "classes) or a JSON file describing the layers.")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size,
              show_default=True)
@click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), default=DEFAULTS.lr,
              show_default=True, help="Learning rate.")
@click.option("--optimizer", type=click.Choice(list(run.OPTIMIZERS)), default=DEFAULTS.optimizer,
              show_default=True)
@click.option("--momentum", type=FiniteFloatRange(0, 1, max_open=True), default=DEFAULTS.momentum,
              show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=FiniteFloatRange(min=0), default=DEFAULTS.weight_decay,
              show_default=True, help="L2 penalty λ.")
@click.option("--val-split", type=FiniteFloatRange(0, 1, max_open=True),
              help="Fraction of the training set held out for validation.  [default: "
                   f"{run.DEFAULT_VAL_SPLIT}, none when the dataset has its own validation set]")
@click.option("--seed", type=click.IntRange(min=0), default=DEFAULTS.seed, show_default=True,
              help="Seeds all randomness: weights, validation split, shuffling, dropout, "
              "augmentation.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default=DEFAULTS.dtype,
              show_default=True)
@click.option("--schedule", type=click.Choice(list(run.SCHEDULES)), default=DEFAULTS.schedule,
              show_default=True, help="Learning-rate schedule (step: /10 after each third).")
@click.option("--warmup", type=FiniteFloatRange(min=0), default=DEFAULTS.warmup,
              show_default=True, help="Epochs of linear learning-rate warm-up, fewer than "
              "--epochs (a recipe's is shortened to half a shorter run).")
@click.option("--flip", type=FiniteFloatRange(0, 1), default=DEFAULTS.flip, show_default=True,
              help="Augmentation: probability of a horizontal flip.")
@click.option("--shift", type=click.IntRange(min=0), default=DEFAULTS.shift, show_default=True,
              help="Augmentation: random shifts of up to this many pixels, fewer than the "
              "images' height and width (black shifted in).")
@click.option("--patience", type=click.IntRange(min=1),
              help="Stop after this many epochs without a better validation loss (needs a "
              "validation set; --val-split 0 turns a recipe's off).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=DEFAULTS.checkpoint_every,
              show_default=True, help="Also checkpoint every N steps (0: at epoch ends only).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run directory  [default: runs/<timestamp>]")
@click.option("--resume", type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="Continue the run in DIR from its last checkpoint.")
@click.option("--cuda-graph", is_flag=True,
              help="Replay each training step from a CUDA graph: one launch per step instead "
              "of ~40 (CUDA only; not with dropout).")
@click.option("--quiet", is_flag=True, help="Print only the device and the final results.")
@debug_option
@click.pass_context
def train(ctx, device, out, resume, quiet, cuda_graph, **options):
    """Train a model on a dataset.

    Writes metrics.jsonl, result.json, checkpoint.npz, best.npz and (with matplotlib)
    curves.png into the run directory, and ends with the test accuracy and a bias/variance
    diagnosis. Ctrl-C or a crash keeps the last checkpoint: continue with --resume DIR.

    Options not given take the model's training recipe where it has one (fmnist-small,
    fmnist-bn), else the defaults shown; with --resume, the run's saved settings.
    """
    if resume and out and Path(out).resolve() != Path(resume).resolve():  # X and X/ are one
        raise click.BadParameter("--out and --resume name different directories", param_hint="--out")
    options = {k: v for k, v in options.items()
               if ctx.get_parameter_source(k) != ParameterSource.DEFAULT}
    out = resume or out or run.default_out()
    listener = ConsoleListener(quiet)
    try:
        result = run.train(options, out, device, resume=bool(resume), listener=listener,
                           cuda_graph=cuda_graph)
    except KeyboardInterrupt:
        if not (Path(out) / "checkpoint.npz").exists():  # stopped before its first checkpoint
            raise Interrupted("interrupted before the first checkpoint, so there is nothing to "
                              "resume (--checkpoint-every N saves within an epoch)") from None
        raise Interrupted(f"interrupted; the last checkpoint is intact: continue with "
                          f"cnnx train --resume {out}") from None
    finally:
        listener.end_line()  # the error, if any, on a line of its own
    epochs = f"{result['epochs']} epoch" + ("s" if result["epochs"] != 1 else "")
    click.echo(f"test accuracy {result['test_accuracy']:.4f} (loss {result['test_loss']:.4f}) "
               f"after {epochs}, {result['seconds']:.1f} s on {result['device']}")
    click.echo(report.format_diagnosis(result["diagnosis"]))
    click.echo(f"run files in {result['out']}")
    if result["epochs"] and not result["curves"]:
        click.echo("no curves.png: drawing it needs matplotlib (pip install 'cnnx[plot]')")


@cnnx.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--dataset", metavar="NAME|PATH",
              help="Dataset whose test split to evaluate on (an .npz needs only "
              "x_test and y_test, a directory of pictures only test/<class>/)  "
              "[default: the checkpoint's]")
@click.option("--data-dir", type=click.Path(exists=True, file_okay=False),
              help=DATA_DIR_HELP + "  [default: the checkpoint's]")
@device_option
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@json_option
@debug_option
def evaluate(checkpoint, dataset, data_dir, device, batch_size, as_json):
    """Score a checkpoint on a test set.

    Accuracy, loss, per-class accuracy and the confusion matrix of CHECKPOINT (a .npz file or
    a run directory, whose checkpoint.npz is used) on the test split of --dataset (of a
    directory of class folders alone: the share that training held out); the training split
    is not read.
    """
    r = tools.evaluate_checkpoint(checkpoint, dataset, data_dir, device, batch_size, log=_log)
    if as_json:
        click.echo(_json(r))
        return
    held_out = f" ({r['test_source']})" if r["test_source"] else ""
    click.echo(f"{r['dataset']} test set{held_out}, {r['images']} images, on {r['device']}: "
               f"accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f}")
    click.echo(report.format_confusion(r["confusion_matrix"], r["class_names"]))


@cnnx.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@device_option
@json_option
@debug_option
def predict(checkpoint, files, top_k, device, as_json):
    """Classify images with a checkpoint.

    FILES are .npy arrays (one image or a batch; uint8 or floats in [0, 1]), pictures (PNG,
    JPEG, BMP, WebP, TIFF, PPM/PGM; needs Pillow: pip install 'cnnx[images]'), or directories,
    which stand for the .npy files and pictures in them and their subfolders, in path order.
    A picture is converted to the model's channels (grayscale or RGB) and resized to its input
    size, nothing more: a model trained on Fashion-MNIST expects a light garment on a black
    background. Prints the top-k classes with their probabilities, and class names when the
    checkpoint knows them.
    """
    results = tools.predict_files(checkpoint, files, top_k, device, log=_log)
    if as_json:
        click.echo(_json(results))
        return
    images_in = collections.Counter(r["file"] for r in results)
    for r in results:
        best = ", ".join(f"{t['name']} {t['probability']:.3f}" for t in r["top"])
        where = f"{r['file']}[{r['index']}]" if images_in[r["file"]] > 1 else r["file"]
        click.echo(f"{where}: {best}")


@cnnx.command()
@click.argument("model")
@click.option("--input-shape", callback=_shape, metavar="C,H,W", help=INPUT_SHAPE_HELP)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True)
@debug_option
def summary(model, input_shape, dtype):
    """Show a model's layers, output shapes and parameters.

    MODEL is a preset or a JSON file; output sizes follow ⌊(n + 2p - f)/s⌋ + 1 per layer.
    """
    from .models import build

    built = build(model, dtype=dtype, input_shape=input_shape)
    click.echo(built.summary())
    if built.input_shape is None:  # a JSON model without one: shapes shown as "?"
        click.echo("output shapes need the input: pass --input-shape C,H,W (or give the file "
                   "an input_shape)")


@cnnx.command()
@click.argument("model")
@click.option("--input-shape", callback=_shape, metavar="C,H,W", help=INPUT_SHAPE_HELP)
@click.option("--tolerance", type=FiniteFloatRange(min=0, min_open=True), default=1e-6,
              show_default=True, help="Largest relative error accepted.")
@click.option("--max-elements", type=click.IntRange(min=1), default=30, show_default=True,
              help="Elements checked per parameter array (a random subset).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the random data and the elements checked.")
@debug_option
@click.pass_context
def gradcheck(ctx, model, input_shape, tolerance, max_elements, seed):
    """Check a model's gradients by finite differences.

    Builds MODEL in float64, runs it on random data and compares every parameter's analytic
    gradient with central differences (on --max-elements of each array; one-sided, from the
    smooth side, where a ReLU or max-pool kink lies within the step); prints the relative
    error of each parameter array and of the input gradient (0 where both gradients are within
    the finite-difference noise of 0, such as a conv bias before a batch norm) and exits with
    status 1 when the largest is above --tolerance.
    """
    r = tools.gradcheck_model(model, input_shape, seed=seed, max_elements=max_elements)
    for row in r["errors"]:
        flag = "ok" if row["error"] <= tolerance else "FAIL"
        click.echo(f"{row['index']:>3} {row['layer']:<40} {row['parameter']:<3} "
                   f"{row['error']:.2e}  {flag}")
    click.echo(f"input gradient: {r['input']:.2e}; largest relative error {r['max']:.2e} "
               f"(tolerance {tolerance:.2e})")  # as many digits as the error it is compared with
    if r["max"] > tolerance:
        ctx.exit(1)


@cnnx.command()
@json_option
@debug_option
def info(as_json):
    """Show versions, devices and the datasets found.

    Lists cnnx, Python and NumPy (with its BLAS), the CUDA device when one is usable (CuPy,
    CUDA version, GPU name and memory) or why not, and where each dataset was found.
    """
    env = report.environment()
    if as_json:
        click.echo(_json(env))
        return
    for key, value in env.items():
        if key != "datasets":
            click.echo(f"{key:<8} {value}")
    click.echo("datasets")
    for name, where in env["datasets"].items():
        click.echo(f"  {name:<14} {where}")


def main():
    cnnx.main()


if __name__ == "__main__":
    main()
