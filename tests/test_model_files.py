"""JSON model files and layer specs as a user writes them: what `cnnx summary`, `cnnx train`
and ``models.build`` accept, what they refuse in one line (naming the file, the layer and the
fix), and that what `summary` reports is what a forward pass produces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from cnnx import ModelSpecError, checkpoint, from_spec, layers, models
from cnnx.backends import make_rng
from cli_helpers import invoke, one_line_error, train_args
from cli_fixtures import isolated, tiny  # noqa: F401 (pytest fixtures)

#: Every layer type with every constructor option a spec may set, on 1x28x28 images.
EVERY_OPTION = {"input_shape": [1, 28, 28], "layers": [
    {"type": "Conv2D", "in_channels": 1, "out_channels": 4, "kernel_size": [3, 2], "stride": 1,
     "padding": "same", "activation": "relu", "init": "xavier"},
    {"type": "BatchNorm2D", "num_features": 4, "momentum": 0.2, "eps": 1e-3, "activation": "relu"},
    {"type": "MaxPool2D", "kernel_size": 3, "stride": [2, 1], "padding": [1, 0]},
    {"type": "Conv2D", "in_channels": 4, "out_channels": 3, "kernel_size": 3, "stride": [2, 1],
     "padding": [1, 2]},
    {"type": "Tanh"},
    {"type": "AvgPool2D", "kernel_size": [2, 3], "padding": [1, 1]},
    {"type": "Conv2D", "in_channels": 3, "out_channels": 3, "kernel_size": 1, "padding": "valid"},
    {"type": "Sigmoid"}, {"type": "Identity"}, {"type": "ReLU"},
    {"type": "Conv2D", "in_channels": 3, "out_channels": 2, "kernel_size": 2, "stride": 2,
     "padding": 0, "init": "he"},
    {"type": "Softmax", "axis": 1},  # over the channels of a map: not the model's last layer
    {"type": "Flatten"},
    {"type": "Dropout", "p": 0.1},
    {"type": "Dense", "in_features": 20, "out_features": 12, "activation": "relu", "init": "he"},
    {"type": "BatchNorm1D", "num_features": 12, "momentum": 0.5},
    {"type": "Dropout"},
    {"type": "Dense", "in_features": 12, "out_features": 10},
]}
GAP_HEAD = [{"type": "Conv2D", "in_channels": 1, "out_channels": 10, "kernel_size": 5},
            {"type": "GlobalAvgPool2D"}]


def write(tmp_path, content, name="model.json") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def summary_error(tmp_path, content, *args) -> str:
    return one_line_error(invoke("summary", write(tmp_path, content), *args))


# ----------------------------------------------------------------------------- summary = forward
@pytest.mark.parametrize("spec, input_shape", [(EVERY_OPTION["layers"], (1, 28, 28)),
                                               (GAP_HEAD, (1, 9, 7))])
def test_summary_shapes_and_counts_are_those_of_a_forward_pass(backend, spec, input_shape):
    model = from_spec(spec, input_shape=input_shape).to(backend)
    x = backend.asarray(np.random.default_rng(0).random((3, *input_shape)), dtype="float32")
    for layer, (row) in zip(model.layers, model.layer_table()):
        x = layer.forward(x)
        assert row["output_shape"] == tuple(x.shape[1:]), row["layer"]
        assert row["parameters"] == sum(int(np.prod(p.shape)) for p in layer.params.values())


def test_a_json_model_with_every_option_trains_evaluates_and_predicts(tiny, tmp_path):
    path = write(tmp_path, EVERY_OPTION)
    text = invoke("summary", path).stdout
    assert "Conv2D(1, 4, k=(3, 2), s=(1, 1), p=same, relu)  (4, 28, 28)" in text
    assert "total parameters: 591" in text
    result = invoke(*train_args(tiny, tmp_path / "o", "--model", path, "--epochs", 1))
    assert result.exit_code == 0, result.output
    ck = checkpoint.load(tmp_path / "o")
    assert ck.spec == models.build(str(path)).spec()
    assert invoke("evaluate", tmp_path / "o").exit_code == 0
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((2, 1, 28, 28)))
    predicted = invoke("predict", tmp_path / "o", tmp_path / "x.npy", "--json")
    assert predicted.exit_code == 0 and len(json.loads(predicted.stdout)) == 2
    resumed = invoke("train", "--resume", tmp_path / "o", "--epochs", 2)
    assert resumed.exit_code == 0, resumed.output


# ----------------------------------------------------------------------------- the file
def test_a_byte_order_mark_is_skipped(tmp_path):
    """Windows editors write UTF-8 with a BOM: the model is read, not refused as invalid JSON."""
    path = write(tmp_path, b"\xef\xbb\xbf" + json.dumps(GAP_HEAD).encode())
    result = invoke("summary", path, "--input-shape", "1,9,7")
    assert result.exit_code == 0, result.output
    assert models.build(str(path), input_shape=(1, 9, 7)).shapes()[-1] == (10,)


@pytest.mark.parametrize("content, message", [
    ("", r"is empty: write a JSON list of layers, such as \[\{\"type\": \"Flatten\"\}"),
    (" \n\t", r"is empty"),
    # Python 3.13's json names a trailing comma itself; older ones get our hint
    ('[{"type": "Flatten"},]', r"is not valid JSON: (Expecting value: line 1 column 22 \(char 21\) "
                               r"\(JSON takes no comments, no trailing commas and only double quotes\)"
                               r"|Illegal trailing comma before end of array: line 1 column 21 "
                               r"\(char 20\))$"),
    ('// mine\n[{"type": "Flatten"}]', r"is not valid JSON: .*no comments"),
    ('[{"type": "Dense", "in_features": 3, "out_features": 10, "out_features": 5}]',
     r": key 'out_features' appears twice in one object \(10 and 5\); keep one$"),
    ("[" * 100_000 + "]" * 100_000, r"nests lists or objects too deeply to read"),
    ('[{"type": "Dense", "in_features": ' + "9" * 5000 + ', "out_features": 2}]',
     r"holds a number too long to read \(more than 4300 digits\)$"),
    ("5", r"holds a JSON number: write a list of layer objects, or an object with input_shape "
          r"and layers$"),
    ('"Conv2D"', r"holds a JSON string"),
    ("null", r"holds a JSON null"),
    ('{"input_shape": [1, 28, 28], "layer": []}',
     r": unknown key\(s\) 'layer' \(did you mean 'layers'\?\); a model object has input_shape "
     r"\(optional\) and layers$"),
    ('{"input_shap": [1, 28, 28], "layers": [{"type": "Flatten"}]}',
     r"unknown key\(s\) 'input_shap' \(did you mean 'input_shape'\?\)"),
    ('{"name": "mine", "layers": [{"type": "Flatten"}]}', r"unknown key\(s\) 'name';"),
    ('{"input_shape": [1, 28, 28]}', r": the object has no 'layers'"),
    ('{"input_shape": [], "layers": [{"type": "Flatten"}]}', r": input_shape must be a list of "
                                                              r"positive integers.*, got \[\]$"),
    ('{"input_shape": [1, 28.0, 28], "layers": [{"type": "Flatten"}]}', r"got \[1, 28.0, 28\]$"),
    ('{"input_shape": "1,28,28", "layers": [{"type": "Flatten"}]}', r"got '1,28,28'$"),
])
def test_a_malformed_file_is_one_line_naming_it(tmp_path, content, message):
    error = summary_error(tmp_path, content)
    assert error.startswith(f"Error: model file {tmp_path / 'model.json'}")
    assert re.search(message, error), error


def test_a_file_too_large_for_a_model_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "MAX_FILE_BYTES", 1 << 20)
    path = write(tmp_path, json.dumps(GAP_HEAD) + " " * (1 << 20))
    assert one_line_error(invoke("summary", path)) == (
        f"Error: model file {path} holds more than 1 MiB, which no model description needs: is "
        "it the right file?")
    path.write_text(json.dumps(GAP_HEAD) + " " * ((1 << 20) - 200))  # within the limit
    assert invoke("summary", path).exit_code == 0


def test_summary_without_an_input_shape_says_how_to_get_the_shapes(tmp_path):
    result = invoke("summary", write(tmp_path, GAP_HEAD))
    assert result.exit_code == 0
    assert re.search(r"GlobalAvgPool2D\(\) +\? ", result.stdout)
    assert result.stdout.endswith("output shapes need the input: pass --input-shape C,H,W (or "
                                  "give the file an input_shape)\n")
    assert "pass --input-shape" not in invoke("summary", write(tmp_path, GAP_HEAD), "--input-shape",
                                              "1,9,7").stdout


def test_build_takes_paths_and_files_of_any_name(tmp_path):
    path = write(tmp_path, {"input_shape": [1, 9, 7], "layers": GAP_HEAD}, name="model")
    assert models.build(path).shapes()[-1] == (10,)  # a pathlib.Path
    assert models.build(str(path)).shapes()[-1] == (10,)
    upper = write(tmp_path, {"input_shape": [1, 9, 7], "layers": GAP_HEAD}, name="m.JSON")
    assert invoke("summary", upper.name).exit_code == 0  # in the working directory
    assert invoke("summary", path.name).exit_code == 0
    with pytest.raises(TypeError, match="^build: name must be a preset name or a path to a JSON "
                                        "model file, got a int$"):
        models.build(5)


@pytest.mark.parametrize("name, close", [("Reference", "reference"), ("lenet-5", "lenet5"),
                                         ("fmnist_small", "fmnist-small"), ("resnet", None)])
def test_an_unknown_preset_suggests_the_closest(name, close):
    hint = f" (did you mean '{close}'?)" if close else ""
    assert one_line_error(invoke("summary", name)) == (
        f"Error: unknown model '{name}'{hint}: use one of reference, lenet5, seed-cnn, "
        "fmnist-small, fmnist-bn or a .json file")


# ----------------------------------------------------------------------------- the layers
@pytest.mark.parametrize("layer, message", [
    ("ReLU", """a layer spec must be an object with a 'type', got 'ReLU' (write {"type": "ReLU"})"""),
    ({"type": ["Conv2D"]}, "unknown layer type ['Conv2D']; known: AvgPool2D, "),
    ({"type": {"name": "Dense"}}, "unknown layer type {'name': 'Dense'}; known: "),
    ({"type": None}, "unknown layer type None; known: "),
    ({"type": "conv2d"}, "unknown layer type 'conv2d' (did you mean 'Conv2D'?); known: "),
    ({"type": "Maxpool2D"}, "unknown layer type 'Maxpool2D' (did you mean 'MaxPool2D'?); known: "),
    ({"type": "Dense", "in_feature": 3, "out_features": 2},
     "Dense: unknown argument(s) in_feature (did you mean 'in_features'?); it takes in_features, "
     "out_features, activation, init"),
    ({"type": "Dropout", "rate": 0.5}, "Dropout: unknown argument(s) rate; it takes p"),
    ({"type": "Dropout", "p": 0.5, "seed": 3},
     "Dropout: seed is the whole model's, not a layer's: remove it and give --seed (or seed= to "
     "build/from_spec)"),
    ({"type": "Dense", "in_features": 3, "out_features": 2, "dtype": "float64"},
     "Dense: dtype is the whole model's, not a layer's: remove it and give --dtype"),
    ({"type": "Conv2D", "in_channels": 1, "out_channels": 4, "kernel_size": [[3, 3]]},
     "Conv2D: kernel_size must be an int or a pair of ints, got [[3, 3]]"),
])
def test_a_bad_layer_spec_is_a_model_spec_error_naming_it(tmp_path, layer, message):
    with pytest.raises(ModelSpecError) as info:
        from_spec([{"type": "Flatten"}, layer])
    assert str(info.value).startswith(f"layer 1: {message}")
    assert summary_error(tmp_path, [{"type": "Flatten"}, layer]).startswith(
        f"Error: model file {tmp_path / 'model.json'}: layer 1: {message}")


def test_from_spec_takes_a_tuple_and_says_what_to_pass_for_a_loaded_file():
    assert from_spec(tuple(GAP_HEAD), input_shape=(1, 9, 7)).shapes()[-1] == (10,)
    loaded = {"input_shape": [1, 9, 7], "layers": GAP_HEAD}
    with pytest.raises(ModelSpecError, match=r"^a model spec must be a non-empty list of layer "
                                             r"objects, got a model file's object: pass its "
                                             r"'layers', and its 'input_shape' as input_shape=$"):
        from_spec(loaded)
    with pytest.raises(ModelSpecError, match=r"got \[\]$"):
        from_spec([])


def test_a_layer_spec_seeds_from_the_model_not_from_itself():
    a = layers.from_config({"type": "Dense", "in_features": 5, "out_features": 3}, seed=4)
    b = layers.Dense(5, 3, seed=4)
    np.testing.assert_array_equal(a.params["W"], b.params["W"])


@pytest.mark.parametrize("layer", [
    {"type": "Conv2D", "in_channels": 1, "out_channels": 10**23, "kernel_size": 3},
    {"type": "Conv2D", "in_channels": 2**40, "out_channels": 2**40, "kernel_size": 3},
    {"type": "Dense", "in_features": 4, "out_features": 2**62},
    {"type": "BatchNorm1D", "num_features": 10**30},
])
def test_a_size_beyond_any_memory_names_the_layer(tmp_path, layer):
    """NumPy says "Maximum allowed dimension exceeded" or "array is too big"; a size that is
    merely too large for this machine's memory stays a MemoryError (tests/test_cli.py)."""
    error = summary_error(tmp_path, [layer])
    assert re.match(rf"Error: model file \S+: layer 0: {layer['type']}: a parameter of shape "
                    r"\(.*\) would hold \S+ numbers, more than any memory holds; use smaller "
                    r"sizes$", error), error


@pytest.mark.parametrize("spec, input_shape, message", [
    ([{"type": "Flatten"}, {"type": "Dense", "in_features": 104, "out_features": 2}], "3,5,7",
     r"layer 1 \(Dense: expected input \(104,\), got \(105,\) \(set in_features to 105\)\)$"),
    ([{"type": "Dense", "in_features": 105, "out_features": 2}], "3,5,7",
     r"layer 0 \(Dense: expected input \(105,\), got \(3, 5, 7\) \(add a Flatten before a Dense "
     r"layer\?\)\)$"),
    ([{"type": "Conv2D", "in_channels": 2, "out_channels": 2, "kernel_size": 1}], "3,5,7",
     r"layer 0 \(Conv2D: expected input \(C=2, H, W\), got \(3, 5, 7\) \(set in_channels to 3\)\)$"),
    ([{"type": "Flatten"}, {"type": "Conv2D", "in_channels": 105, "out_channels": 2,
                            "kernel_size": 1}], "3,5,7",
     r"layer 1 \(Conv2D: expected input \(C=105, H, W\), got \(105,\) \(a Conv2D takes \(C, H, W\) "
     r"images, not flat features\)\)$"),
    ([{"type": "Flatten"}, {"type": "Softmax", "axis": 2}], "1,4,4",
     r"layer 1 \(Softmax: axis 2 is out of range for a batch of shape \(N, 16\); use 1 for the "
     r"features or channels\)$"),
])
def test_a_shape_mismatch_says_what_to_change(tmp_path, spec, input_shape, message):
    error = summary_error(tmp_path, spec, "--input-shape", input_shape)
    assert re.match("Error: " + message, error), error


@pytest.mark.parametrize("axis", [-3, -1, 0, 1, 2])
def test_summary_accepts_the_softmax_axes_a_forward_pass_does(axis):
    model = from_spec([{"type": "Softmax", "axis": axis}], input_shape=(3, 2))
    x = make_rng(0).standard_normal((4, 3, 2)).astype("float32")
    assert model.shapes() == [tuple(model.forward(x).shape[1:])]


# ----------------------------------------------------------------------------- cnnx train
@pytest.mark.parametrize("tail", [[{"type": "Softmax"}], [{"type": "Softmax"}, {"type": "Identity"}]])
def test_train_refuses_a_model_ending_in_a_softmax(tiny, tmp_path, tail):
    """cnnx train's loss (and predict) apply the softmax to the class scores themselves: a
    Softmax layer would be applied twice, and train a model of near-uniform probabilities."""
    path = write(tmp_path, [{"type": "Flatten"}, {"type": "Dense", "in_features": 784,
                                                  "out_features": 10}, *tail])
    error = one_line_error(invoke(*train_args(tiny, tmp_path / "o", "--model", path)))
    assert error == ("Error: the model ends with a Softmax (layer 2), but cnnx train takes class "
                     "scores (logits) and applies the softmax in its loss, as predict does: remove "
                     "the Softmax layer")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("last, fix", [
    ({"type": "Dense", "in_features": 784, "out_features": 5}, "give its last layer 10 outputs"),
    ({"type": "Dropout"}, "give its last layer 10 outputs"),
])
def test_train_says_how_to_match_the_class_count(tiny, tmp_path, last, fix):
    layers_ = [{"type": "Flatten"}, last]
    outputs = 5 if last["type"] == "Dense" else 784
    error = one_line_error(invoke(*train_args(tiny, tmp_path / "o", "--model",
                                              write(tmp_path, layers_))))
    assert error == (f"Error: the model outputs shape ({outputs},) per example but tiny has 10 "
                     f"classes: {fix}")


def test_train_says_to_end_an_image_model_with_scores(tiny, tmp_path):
    path = write(tmp_path, [{"type": "Conv2D", "in_channels": 1, "out_channels": 10,
                             "kernel_size": 28}])
    assert one_line_error(invoke(*train_args(tiny, tmp_path / "o", "--model", path))) == (
        "Error: the model outputs shape (10, 1, 1) per example but tiny has 10 classes: end it "
        "with a Flatten and a Dense layer of 10 outputs, one score per class")
