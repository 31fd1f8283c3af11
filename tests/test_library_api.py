"""The library as its users call it (README "The library"): the public functions refuse a
mistaken argument at the API boundary, in one line that says what was wrong, instead of a
traceback from deep inside, or a silent wrong answer."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import cnnx
from cnnx import layers


def _flat_model(backend):
    """A model that starts by flattening: it takes any array of 12 numbers an example."""
    return cnnx.Sequential([layers.Flatten(), layers.Dense(12, 3)], input_shape=(3, 2, 2)).to(backend)


@pytest.mark.parametrize("shape, message", [
    ((4, 2, 2, 3), r"prediction data: examples have shape \(2, 2, 3\), the model expects "
                   r"\(3, 2, 2\) \(the images are channels-last: convert them with "
                   r"x.transpose\(0, 3, 1, 2\)\)$"),                          # NHWC for NCHW
    ((3, 2, 2), r"prediction data: examples have shape \(2, 2\), the model expects \(3, 2, 2\) "
                r"\(a batch of them: \(N, 3, 2, 2\)\)$"),                     # no batch axis
])
def test_predict_refuses_examples_of_another_shape(backend, shape, message):
    """Before: predict flattened NHWC images into the Dense layer and returned numbers
    computed from scrambled pixels; fit and evaluate refused them."""
    model = _flat_model(backend)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        cnnx.predict(model, x)
    with pytest.raises(ValueError, match=message.replace("prediction", "evaluation")):
        cnnx.evaluate(model, cnnx.losses.SoftmaxCrossEntropy(), x, np.zeros(shape[0], int))


def _fit_args():
    model = cnnx.Sequential([layers.Flatten(), layers.Dense(12, 3)], input_shape=(3, 2, 2))
    x = np.random.default_rng(0).random((4, 3, 2, 2), dtype=np.float32)
    return model, cnnx.losses.SoftmaxCrossEntropy(), cnnx.optim.SGD(model, lr=0.1), x, [0, 1, 2, 0]


@pytest.mark.parametrize("change, error, message", [
    # before: TypeError: Loss.to() missing 1 required positional argument: 'device'
    (lambda a: {"loss": cnnx.losses.SoftmaxCrossEntropy}, TypeError,
     r"^fit: loss must be a cnnx loss object, such as losses.SoftmaxCrossEntropy\(\), got the "
     r"class SoftmaxCrossEntropy \(call it: SoftmaxCrossEntropy\(...\)\); the arguments are "
     r"fit\(model, loss, optimizer, x, y, ...\)$"),
    # before: AttributeError: 'SGD' object has no attribute 'to'
    (lambda a: {"loss": a["optimizer"], "optimizer": a["loss"]}, TypeError,
     r"^fit: loss must be a cnnx loss object.*got a SGD; the arguments are fit\(model, loss, "),
    # before: TypeError: SGD.step() missing 1 required positional argument: 'self'
    (lambda a: {"optimizer": cnnx.optim.SGD}, TypeError,
     r"^fit: optimizer must be a cnnx optimizer built for the model, such as "
     r"optim.SGD\(model, lr=0.01\), got the class SGD \(call it: SGD\(...\)\)"),
    # before: TypeError: prepare() got multiple values for argument 'name'
    (lambda a: {"validation": a["x"]}, ValueError,
     r"^fit: validation must be a pair \(x_val, y_val\), got a ndarray$"),
    # before: TypeError: 'float' object cannot be interpreted as an integer
    (lambda a: {"epochs": 1.5}, ValueError, r"^epochs must be an integer >= 0, got 1.5$"),
    # before: TypeError: '<' not supported between instances of 'str' and 'int'
    (lambda a: {"epochs": "2"}, ValueError, r"^epochs must be an integer >= 0, got '2'$"),
    # before: TypeError: 'float' object cannot be interpreted as an integer
    (lambda a: {"batch_size": 2.0}, ValueError, r"^batch_size must be a positive integer, got 2.0$"),
    # before: TypeError: object of type 'NoneType' has no len() (from NumPy's seeding)
    (lambda a: {"seed": None}, ValueError, r"^fit: seed must be an integer >= 0, got None$"),
    # before: trained the whole first epoch, then "patience must be >= 1, got 0"
    (lambda a: {"patience": 0, "validation": (a["x"], a["y"])}, ValueError,
     r"^patience must be an integer >= 1, got 0$"),
    # before: trained every epoch and never stopped early, without a word (as cnnx train
    # refuses --patience without a validation set)
    (lambda a: {"patience": 2}, ValueError,
     r"^fit: patience stops on the validation loss; pass validation=\(x_val, y_val\) too$"),
    # before: TypeError: 'float' object is not callable
    (lambda a: {"schedule": 0.1}, TypeError,
     r"^fit: schedule must map epochs to a learning rate, such as "
     r"schedules.Cosine\(0.05, total_epochs=10\), got a float; for a constant rate set the "
     r"optimizer's lr$"),
    # before: TypeError: Augment.plan() missing 1 required positional argument: 'backend'
    (lambda a: {"augment": cnnx.augment.Augment}, TypeError,
     r"^fit: augment must be an augment.Augment\(flip=..., shift=...\), got the class Augment"),
    # before: IndexError: list index out of range
    (lambda a: {"batch_size": 8, "drop_last": True}, ValueError,
     r"^fit: drop_last=True drops every batch: 4 training examples make no full batch of 8; "
     r"use a smaller batch_size$"),
])
def test_fit_names_a_wrong_argument(change, error, message):
    model, loss, optimizer, x, y = _fit_args()
    args = {"loss": loss, "optimizer": optimizer, "x": x, "y": y}
    args.update(change(args))
    kwargs = {k: v for k, v in args.items() if k not in ("loss", "optimizer", "x", "y")}
    with pytest.raises(error, match=message):
        cnnx.fit(model, args["loss"], args["optimizer"], args["x"], args["y"], **kwargs)


def test_evaluate_and_predict_name_a_wrong_argument():
    model, loss, _, x, y = _fit_args()
    with pytest.raises(TypeError, match=r"^evaluate: loss must be a cnnx loss object.*the "
                                        r"arguments are evaluate\(model, loss, x, y, ...\)$"):
        cnnx.evaluate(model, type(loss), x, y)
    with pytest.raises(ValueError, match=r"^batch_size must be a positive integer, got 2.5$"):
        cnnx.predict(model, x, batch_size=2.5)
    assert cnnx.predict(model, x, batch_size=np.int64(3)).shape == (4, 3)   # NumPy ints do


@pytest.mark.parametrize("make, message", [
    # before: accepted, then AttributeError: 'list' object has no attribute 'backend' in step()
    (lambda m: cnnx.optim.SGD(m.layers, lr=0.1),
     r"^SGD: expected the model whose parameters it updates \(a cnnx.Sequential\), got a list; "
     r"wrap them: cnnx.Sequential\(layers\)$"),
    # before: accepted, then AttributeError: 'Dense' object has no attribute 'parameters'
    (lambda m: cnnx.optim.Adam(m.layers[1]),
     r"^Adam: expected the model .*, got a Dense; wrap it: cnnx.Sequential\(\[layer\]\)$"),
    (lambda m: cnnx.optim.SGD(m.parameters()), r"^SGD: expected the model .*, got a list$"),
])
def test_optimizers_refuse_what_is_not_a_model(make, message):
    model, *_ = _fit_args()
    with pytest.raises(TypeError, match=message):
        make(model)


def test_repr_of_optimizers_and_losses_shows_their_settings():
    """Before: <cnnx.optim.SGD object at 0x7f...>."""
    model, *_ = _fit_args()
    assert repr(cnnx.optim.SGD(model, lr=0.1, momentum=0.9)) == (
        "SGD(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False)")
    assert repr(cnnx.optim.Adam(model, weight_decay=0.01, decoupled=True)) == (
        "Adam(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, decoupled=True)")
    assert repr(cnnx.losses.BinaryCrossEntropy()) == "BinaryCrossEntropy()"


def test_import_cnnx_reaches_the_modules_the_readme_names():
    """The README names cnnx.schedules, cnnx.augment.Augment and cnnx.models.build; before,
    ``import cnnx`` alone left them unimported (AttributeError: module 'cnnx' has no attribute
    'schedules'). A fresh interpreter: in this one, other tests have imported them."""
    code = ("import cnnx; cnnx.schedules.Cosine; cnnx.augment.Augment; cnnx.models.build; "
            "names = {}; exec('from cnnx import *', names); "
            "assert {'models', 'schedules', 'augment'} <= set(names), sorted(names)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_layer_is_called_like_a_model_and_a_loss(backend):
    """Before: model(x) and loss(pred, y) worked, layer(x) was TypeError: 'Conv2D' object is
    not callable. A layer subclass's own forward is the one called."""
    conv = layers.Conv2D(2, 3, 3, padding=1, activation="relu").to(backend)
    x = backend.asarray(np.random.default_rng(0).random((2, 2, 5, 5)), dtype="float32")
    y = conv(x)
    assert np.array_equal(backend.to_numpy(y), backend.to_numpy(conv.forward(x)))
    conv.backward(backend.xp.ones_like(y))   # conv(x) recorded its output for backward


@pytest.mark.parametrize("x", [[[1.0, 2.0, 3.0]], 3.0])
def test_a_layer_given_no_array_says_to_pass_one(backend, x):
    """Before: "input is a builtins.list, but the layer is on cpu; convert with
    backend.asarray or move the layer with .to()" -- moving the layer cannot help a list."""
    dense = layers.Dense(3, 2).to(backend)
    with pytest.raises(ValueError, match=r"^Dense: input is a (list|float), not an array; pass "
                                         r"one, e.g. layer.backend.asarray\(x, dtype='float32'\)$"):
        dense(x)


@pytest.mark.parametrize("make, message", [
    # before: TypeError: '<=' not supported between instances of 'str' and 'int'
    (lambda: cnnx.schedules.Cosine("0.1", total_epochs=10), r"^Cosine: lr must be a number, got '0.1'$"),
    # before: TypeError: '<=' not supported between instances of 'NoneType' and 'float'
    (lambda: cnnx.schedules.Cosine(0.1, total_epochs=None),
     r"^Cosine: total_epochs must be a number, got None$"),
    (lambda: cnnx.schedules.StepDecay(0.1, 3, gamma="0.5"), r"^StepDecay: gamma must be a number"),
    # before: accepted, the shift truncated to 1 pixel without a word
    (lambda: cnnx.augment.Augment(shift=1.5),
     r"^Augment: need a probability 0 <= flip <= 1 and a whole number of pixels shift >= 0, "
     r"got flip=0.0, shift=1.5$"),
    # before: TypeError: '<=' not supported between instances of 'int' and 'str'
    (lambda: cnnx.augment.Augment(flip="0.5"), r"^Augment: need a probability .* got flip='0.5'"),
])
def test_schedules_and_augment_name_a_wrong_setting(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_repr_of_augment_shows_its_settings():
    """Before: <cnnx.augment.Augment object at 0x7f...>."""
    assert repr(cnnx.augment.Augment(0.5, 2)) == "Augment(flip=0.5, shift=2, fill=0.0)"
    assert repr(cnnx.augment.Augment(fill=[0.1, 0.2])) == "Augment(flip=0.0, shift=0, fill=(0.1, 0.2))"


def test_the_history_has_the_keys_fit_documents():
    model, loss, optimizer, x, y = _fit_args()
    history = cnnx.fit(model, loss, optimizer, x, y, epochs=1, batch_size=2)
    keys = re.search(r"one dict per epoch with ``([^`]+)``", cnnx.fit.__doc__).group(1)
    documented = re.sub(r"\s+", " ", keys).split(", ")
    assert sorted(history[0]) == sorted(documented)   # before: the docstring left out lr
    assert history[0]["val_loss"] is None and history[0]["lr"] == 0.1


def test_an_optimizer_refuses_a_state_it_cannot_continue(tmp_path):
    """Before: an SGD took an Adam's state without a word (its .m and .v buffers, under no
    name SGD reads, and Adam's lr), and a checkpoint saved without an optimizer gave
    TypeError: argument of type 'NoneType' is not iterable."""
    model, loss, _, x, y = _fit_args()
    adam = cnnx.optim.Adam(model, lr=0.01)
    cnnx.fit(model, loss, adam, x, y, batch_size=2)
    with pytest.raises(ValueError, match=r"^SGD: the state was saved from Adam, whose buffers mean "
                                         r"something else here; continue with optim.Adam\(model\) "
                                         r"or leave this SGD to start empty$"):
        cnnx.optim.SGD(model, momentum=0.9).load_state_dict(adam.state_dict())
    ck = cnnx.checkpoint.load(cnnx.checkpoint.save(tmp_path / "c.npz", model))
    with pytest.raises(TypeError, match=r"^Adam: expected a state as state_dict\(\) returns it, got "
                                        r"a NoneType \(the checkpoint was saved without an optimizer"):
        cnnx.optim.Adam(model).load_state_dict(ck.optimizer_state)
    same = cnnx.optim.Adam(model)
    state = adam.state_dict()
    same.load_state_dict({k: v for k, v in state.items() if k != "type"})   # files before the type
    assert same.steps == adam.steps == 2 and same.lr == 0.01


def test_grayscale_images_without_a_channel_axis_are_told_how_to_add_it():
    model = cnnx.Sequential([layers.Conv2D(1, 2, 3), layers.Flatten(), layers.Dense(2 * 4 * 4, 3)],
                            input_shape=(1, 6, 6))
    x = np.zeros((5, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"^training data: examples have shape \(6, 6\), the model "
                                         r"expects \(1, 6, 6\) \(the images have no channel axis: "
                                         r"add it with x\[:, None\]\)$"):
        cnnx.fit(model, cnnx.losses.SoftmaxCrossEntropy(), cnnx.optim.SGD(model), x, np.zeros(5, int))
    cnnx.fit(model, cnnx.losses.SoftmaxCrossEntropy(), cnnx.optim.SGD(model), x[:, None],
             np.zeros(5, int))


def test_a_layer_given_channels_last_images_says_how_to_transpose_them(backend):
    """Before: only "expected 3 input channels/features (axis 1), got 8 in shape (2, 8, 8, 3)"."""
    conv = layers.Conv2D(3, 4, 3).to(backend)
    x = backend.asarray(np.zeros((2, 8, 8, 3)), dtype="float32")
    with pytest.raises(ValueError, match=r"^Conv2D: expected 3 input channels/features \(axis 1\), "
                                         r"got 8 in shape \(2, 8, 8, 3\); it looks channels-last "
                                         r"\(N, H, W, C\): convert it with x.transpose\(0, 3, 1, 2\)$"):
        conv(x)
    assert conv(x.transpose(0, 3, 1, 2)).shape == (2, 4, 6, 6)


@pytest.mark.parametrize("make, message", [
    # before: TypeError: int() argument must be ... not 'NoneType'
    (lambda: cnnx.Sequential([layers.Dense(3, 2)], seed=None),
     r"^Sequential: seed must be an integer >= 0, got None$"),
    # before: accepted, truncated to 1 without a word
    (lambda: layers.Dropout(0.5, seed=1.5), r"^Dropout: seed must be an integer >= 0, got 1.5$"),
    # before: TypeError: SeedSequence expects int or sequence of ints for entropy not 1.5
    (lambda: layers.Dense(3, 2, seed=1.5), r"^seed must be an integer >= 0, got 1.5$"),
    # before: a fresh random seed each call, so a check that could not be repeated
    (lambda: cnnx.gradcheck(layers.Tanh(dtype="float64"), np.ones((2, 2)), seed=None),
     r"^seed must be an integer >= 0, got None$"),
])
def test_seeds_are_explicit_integers(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_fit_takes_an_optimizer_of_ones_own_that_is_no_subclass():
    """The argument checks look for what fit uses (step, lr), not for cnnx's classes: a
    researcher's own optimizer trains."""
    class PlainSGD:
        def __init__(self, model, lr):
            self.model, self.lr = model, lr

        def step(self):
            for _, layer, key in self.model.parameters():
                layer.params[key] -= self.lr * layer.grads[key]

    model, loss, _, x, y = _fit_args()
    before = model.state_dict()["1.W"]
    history = cnnx.fit(model, loss, PlainSGD(model, 0.1), x, y, epochs=2, batch_size=2)
    assert len(history) == 2 and not np.array_equal(model.state_dict()["1.W"], before)


def test_a_model_with_an_input_shape_refuses_other_examples_in_forward(backend):
    """A hand-written training loop calls model(x) directly; before, a model that starts by
    flattening took channels-last images without a word (its Conv2D-first sibling refused
    them only by the channel count)."""
    model = _flat_model(backend)
    x = backend.asarray(np.zeros((4, 2, 2, 3)), dtype="float32")
    with pytest.raises(ValueError, match=r"^Sequential.forward: examples have shape \(2, 2, 3\), the "
                                         r"model expects \(3, 2, 2\) \(the images are channels-last: "
                                         r"convert them with x.transpose\(0, 3, 1, 2\)\)$"):
        model(x)
    assert model(x.transpose(0, 3, 1, 2)).shape == (4, 3)
