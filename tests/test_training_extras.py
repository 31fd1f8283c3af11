"""Batch norm, dropout, global average pooling, Adam/Nesterov, schedules, augmentation and
early stopping (issue 6's building blocks), on every available backend."""

from __future__ import annotations

import itertools
import re
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cli_helpers import write_tiny_npz
from cnnx import (Sequential, checkpoint, fit, gradcheck, layers, losses, optim, run, session,
                  train)
from cnnx.augment import Augment
from cnnx.backends import make_rng
from cnnx.schedules import Constant, Cosine, StepDecay
from cnnx.train import TrainingDiverged, stop_early


@pytest.mark.parametrize("training", [True, False])
@given(n=st.integers(2, 4), c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4))
def test_batchnorm2d_gradcheck(backend, training, n, c, h, w):
    # with m <= 2 values per channel the training-mode dx is ~0 (dy projected away from 1 and
    # x̂ spans everything), leaving only ε-level noise to compare
    assume(not training or n * h * w >= 4)
    layer = layers.BatchNorm2D(c, dtype="float64").to(backend)
    rng = np.random.default_rng(0)
    layer.params["gamma"] = backend.asarray(rng.uniform(0.5, 2, c))
    layer.buffers = {"running_mean": backend.asarray(rng.standard_normal(c)),
                     "running_var": backend.asarray(rng.uniform(0.5, 2, c))}
    if not training:
        layer.eval()
    errors = gradcheck(layer, backend.asarray(rng.standard_normal((n, c, h, w)) * 2 + 1))
    assert max(errors.values()) <= 1e-7, errors


@pytest.mark.parametrize("training", [True, False])
@given(n=st.integers(2, 4), c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4))
def test_batchnorm2d_with_fused_relu_gradcheck(backend, training, n, c, h, w):
    # (the CPU backend's channel-row path for batch-last input is compared with this default
    # path to 1e-12 in tests/test_cpu_fast_paths.py; gradcheck perturbs contiguous arrays)
    assume(not training or n * h * w >= 4)
    layer = layers.BatchNorm2D(c, activation="relu", dtype="float64").to(backend)
    rng = np.random.default_rng(0)
    layer.params["gamma"] = backend.asarray(rng.uniform(0.5, 2, c))
    layer.params["beta"] = backend.asarray(rng.uniform(-0.5, 0.5, c))
    layer.buffers = {"running_mean": backend.asarray(rng.standard_normal(c)),
                     "running_var": backend.asarray(rng.uniform(0.5, 2, c))}
    if not training:
        layer.eval()
    x = backend.asarray(rng.standard_normal((n, c, h, w)) * 2 + 1)
    # keep away from the ReLU's kink: every pre-activation γx̂ + β at least 1e-3 from 0
    xn = backend.to_numpy(x)
    mean, var = ((xn.mean(axis=(0, 2, 3)), xn.var(axis=(0, 2, 3))) if training else
                 (backend.to_numpy(layer.buffers["running_mean"]),
                  backend.to_numpy(layer.buffers["running_var"])))
    z = ((xn - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
         * backend.to_numpy(layer.params["gamma"])[:, None, None]
         + backend.to_numpy(layer.params["beta"])[:, None, None])
    assume(np.abs(z).min() > 1e-3)
    np.testing.assert_allclose(backend.to_numpy(layer.forward(x)), np.maximum(z, 0), rtol=1e-12,
                               atol=1e-12)
    errors = gradcheck(layer, x)
    # and away from gradients that are near-cancelling sums (dβ = Σ u·[z > 0] with c = 1 can
    # be 1e-3 while J is 5): central differences resolve those only to |J|·2⁻⁵²/ε ≈ 1e-9
    assume(min(float(abs(layer.grads[k]).max()) for k in ("gamma", "beta")) > 1e-2)
    assert max(errors.values()) <= 1e-7, errors


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm1d_and_global_avg_pool_gradcheck(backend, training):
    rng = np.random.default_rng(1)
    bn = layers.BatchNorm1D(5, dtype="float64").to(backend)
    if not training:
        bn.eval()
    assert max(gradcheck(bn, backend.asarray(rng.standard_normal((7, 5)))).values()) <= 1e-7
    gap = layers.GlobalAvgPool2D(dtype="float64").to(backend)
    assert max(gradcheck(gap, backend.asarray(rng.standard_normal((2, 3, 4, 5)))).values()) <= 1e-7


def test_batchnorm_running_statistics_and_eval_mode(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3, 4, 4)) * 3 + 5
    bn = layers.BatchNorm2D(3, momentum=0.5, dtype="float64").to(backend)
    y = backend.to_numpy(bn.forward(backend.asarray(x)))
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-5)
    running_mean = backend.to_numpy(bn.buffers["running_mean"])
    np.testing.assert_allclose(running_mean, 0.5 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    m = x[:, 0].size
    np.testing.assert_allclose(backend.to_numpy(bn.buffers["running_var"]),
                               0.5 + 0.5 * x.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-12)
    bn.eval()
    y_eval = backend.to_numpy(bn.forward(backend.asarray(x[:1])))
    expected = (x[:1] - running_mean[None, :, None, None]) / np.sqrt(
        backend.to_numpy(bn.buffers["running_var"])[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-12)


def test_dropout_is_replayable_scaled_and_off_in_eval(backend):
    x = backend.asarray(np.ones((200, 50)), "float32")
    a, b = layers.Dropout(0.3, seed=4).to(backend), layers.Dropout(0.3, seed=4).to(backend)
    ya, yb = backend.to_numpy(a.forward(x)), backend.to_numpy(b.forward(x))
    assert ya.tobytes() == yb.tobytes()  # same seed, same call count: same mask
    assert set(np.unique(ya)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((ya == 0).mean() - 0.3) < 0.02
    assert backend.to_numpy(a.forward(x)).tobytes() != ya.tobytes()  # next call: new mask
    dx = backend.to_numpy(a.backward(backend.asarray(np.ones((200, 50)), "float32")))
    np.testing.assert_array_equal(dx != 0, backend.to_numpy(a.forward(x)) * 0 + (dx != 0))
    a.eval()
    np.testing.assert_array_equal(backend.to_numpy(a.forward(x)), 1)
    assert a.buffers["calls"] == 3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_keeps_its_mask_in_the_layer_dtype(backend, dtype):
    """The scaled mask that forward keeps for backward is x's dtype, never a float64 array cast
    at each use (it was bool / (1 - p): float64, twice a float32 batch's memory), and its
    value is 1/(1-p) rounded once to that dtype."""
    x = backend.asarray(np.full((64, 40), 3.0), dtype)
    drop = layers.Dropout(0.3, seed=1, dtype=dtype).to(backend)
    y = backend.to_numpy(drop.forward(x))
    assert drop._cache.dtype == dtype and y.dtype == dtype
    scale = np.dtype(dtype).type(1 / 0.7)
    assert set(np.unique(y)) == {0.0, np.dtype(dtype).type(3) * scale}
    dx = backend.to_numpy(drop.backward(backend.asarray(np.ones((64, 40)), dtype)))
    assert dx.dtype == dtype and set(np.unique(dx)) == {0.0, scale}
    np.testing.assert_array_equal(dx == 0, y == 0)


def _quadratic_model(backend):
    # one Dense layer, so the optimizers can be compared with the formulas step by step
    model = Sequential([layers.Dense(3, 2, dtype="float64")], seed=0).to(backend)
    return model


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_matches_its_formula(backend, decoupled):
    model = _quadratic_model(backend)
    opt = optim.Adam(model, lr=0.01, weight_decay=0.1, decoupled=decoupled)
    w = backend.to_numpy(model.layers[0].params["W"]).copy()
    m = v = np.zeros_like(w)
    rng = np.random.default_rng(5)
    for t in range(1, 4):
        g = rng.standard_normal(w.shape)
        model.layers[0].grads = {"W": backend.asarray(g), "b": backend.asarray(np.zeros(2))}
        opt.step()
        g_eff = g if decoupled else g + 0.1 * w
        m = 0.9 * m + 0.1 * g_eff
        v = 0.999 * v + 0.001 * g_eff ** 2
        update = (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        w = w - 0.01 * (update + (0.1 * w if decoupled else 0))
        np.testing.assert_allclose(backend.to_numpy(model.layers[0].params["W"]), w, rtol=1e-12)


def test_nesterov_matches_its_formula(backend):
    model = _quadratic_model(backend)
    opt = optim.SGD(model, lr=0.1, momentum=0.9, nesterov=True)
    w = backend.to_numpy(model.layers[0].params["W"]).copy()
    v = np.zeros_like(w)
    for g in np.random.default_rng(6).standard_normal((3, *w.shape)):
        model.layers[0].grads = {"W": backend.asarray(g), "b": backend.asarray(np.zeros(2))}
        opt.step()
        v = 0.9 * v + g
        w = w - 0.1 * (g + 0.9 * v)
        np.testing.assert_allclose(backend.to_numpy(model.layers[0].params["W"]), w, rtol=1e-12)


def test_schedules():
    step = StepDecay(0.1, step_epochs=2, gamma=0.5)
    assert [step(e) for e in (0, 1.9, 2, 4.5)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    cos = Cosine(1.0, total_epochs=11, warmup_epochs=1)
    assert cos(0.5) == pytest.approx(0.5, rel=0.01)  # half-way through the warm-up
    assert cos(1) == pytest.approx(1.0) and cos(6) == pytest.approx(0.5) and cos(11) == pytest.approx(0)


@pytest.mark.parametrize("epochs", range(1, 13))
def test_a_step_decay_starts_at_the_first_step_of_its_third_of_the_run(epochs):
    """fit asks for the rate at ``epoch + step / steps``: a step that begins exactly at a third
    of the run (epoch 1, step 2 of 3 when a third is 5/3 epochs) takes the new rate, though
    1 + 2/3 rounds to a hair below 5/3."""
    schedule = StepDecay(1.0, step_epochs=epochs / 3)
    for steps in range(1, 13):
        for position in range(epochs * steps):
            thirds = Fraction(position, steps) // Fraction(epochs, 3)  # exact arithmetic
            epoch, step = divmod(position, steps)
            assert schedule(epoch + step / steps) == pytest.approx(0.1 ** thirds), (steps, epoch)


@pytest.mark.parametrize("schedule", [Constant, lambda lr, warmup_epochs: StepDecay(
    lr, 10, warmup_epochs=warmup_epochs), lambda lr, warmup_epochs: Cosine(lr, 2, warmup_epochs)])
@pytest.mark.parametrize("warmup", [1e-4, 1e-3, 0.01, 1.5])
def test_a_warm_up_rises_to_the_rate_and_never_above_it(schedule, warmup):
    rates = [schedule(0.1, warmup_epochs=warmup)(p) for p in np.linspace(0, warmup, 50)]
    assert rates == sorted(rates) and max(rates) <= 0.1 and rates[-1] == pytest.approx(0.1)


@pytest.mark.parametrize("final", [-1.0, 1.5])
def test_cosine_ends_at_a_fraction_of_the_rate(final):
    with pytest.raises(ValueError, match=f"final_fraction .* between 0 and 1, got {final}"):
        Cosine(0.1, total_epochs=4, final_fraction=final)


@pytest.mark.parametrize("channels, fill", [(1, 0.0), (3, (-1.5, -2.0, 0.25)), (3, -0.75)])
def test_augment_flip_and_shift_are_exact_and_replayable(backend, channels, fill):
    x = np.arange(2 * channels * 4 * 5, dtype=np.float32).reshape(2, channels, 4, 5)
    aug = Augment(flip=0.5, shift=1, fill=fill)
    plan = aug.plan(2, make_rng((3, 0, 1)), backend)
    out = backend.to_numpy(aug.apply(backend.asarray(x), plan, backend))
    flips, dy, dx = (backend.to_numpy(p) for p in plan)
    fills = np.broadcast_to(np.asarray(fill, np.float32), (channels,))
    for i, c in itertools.product(range(2), range(channels)):
        img = x[i, c, :, ::-1] if flips[i] else x[i, c]
        padded = np.pad(img, 1, constant_values=fills[c])
        np.testing.assert_array_equal(out[i, c], padded[dy[i]:dy[i] + 4, dx[i]:dx[i] + 5])
    assert out.dtype == np.float32
    again = aug.plan(2, make_rng((3, 0, 1)), backend)
    assert all((backend.to_numpy(a) == backend.to_numpy(b)).all() for a, b in zip(plan, again))


@pytest.mark.parametrize("fill, message", [
    (float("nan"), "fill must be a finite number"), ((), "fill must be a finite number"),
    ((0.0, 1.0), "fill has 2 values for images of 3 channels"),
])
def test_augment_refuses_a_fill_it_cannot_use(backend, fill, message):
    with pytest.raises(ValueError, match=message):
        aug = Augment(shift=1, fill=fill)
        aug.apply(backend.asarray(np.zeros((1, 3, 4, 4), np.float32)),
                  aug.plan(1, make_rng(0), backend), backend)


@pytest.mark.parametrize("shift, ok", [(3, True), (4, False), (9, False)])
def test_augment_refuses_a_shift_that_can_empty_an_image(backend, shift, ok):
    # images 4 rows by 6 columns: a move by 4 rows leaves nothing of an image but fill
    aug = Augment(shift=shift)
    x = backend.asarray(np.ones((5, 1, 4, 6), np.float32))
    apply = lambda: aug.apply(x, aug.plan(5, make_rng(0), backend), backend)  # noqa: E731
    if ok:
        assert apply().shape == x.shape
    else:
        with pytest.raises(ValueError, match=f"a shift of {shift} can move 4x6 images wholly "
                                             "out of their frame; give a shift below 4"):
            apply()


def test_a_training_run_refuses_a_shift_as_large_as_its_images(tmp_path):
    write_tiny_npz(tmp_path / "d.npz")
    with pytest.raises(ValueError, match=r"--shift 28 can move an image of d \(28x28\) wholly "
                                         r"out of its frame: give a --shift below 28"):
        run.train({"dataset": str(tmp_path / "d.npz"), "model": "seed-cnn", "shift": 28},
                  tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


def test_a_training_run_shifts_black_in_not_the_mean_gray(tmp_path):
    """Images are standardized before augmentation, so a fill of 0 is each channel's mean
    (Fashion-MNIST: a gray band beside black backgrounds); black there is -mean / std."""
    write_tiny_npz(tmp_path / "d.npz")
    seen = []

    class Recording(Augment):
        def apply(self, x, plan, backend):
            seen.append(self.fill)
            return super().apply(x, plan, backend)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(session, "Augment", Recording)
        result = run.train({"dataset": str(tmp_path / "d.npz"), "model": "seed-cnn", "epochs": 1,
                            "shift": 1}, tmp_path / "run", device="cpu")
    stats = checkpoint.load(tmp_path / "run" / "checkpoint.npz").header["preprocess"]
    black = -stats["mean"][0] / stats["std"][0]
    assert result["epochs"] == 1 and black < -0.5
    assert seen and all(fill == pytest.approx((black,)) for fill in seen)


def test_early_stopping_counts_epochs_without_improvement():
    losses = [1.0, 0.9, 0.95, 0.91, 0.8]
    assert [stop_early(losses[:k], 2) for k in range(1, 6)] == [False, False, False, True, False]
    assert not stop_early(losses[:4], None)


def test_fit_with_bn_dropout_augment_schedule_and_patience(backend):
    rng = np.random.default_rng(7)
    x = rng.random((64, 1, 8, 8), dtype=np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    model = Sequential([layers.Conv2D(1, 4, 3, padding=1), layers.BatchNorm2D(4), layers.ReLU(),
                        layers.GlobalAvgPool2D(), layers.Dropout(0.2), layers.Dense(4, 2)],
                       input_shape=(1, 8, 8), seed=0).to(backend)
    history = fit(model, losses.SoftmaxCrossEntropy(), optim.Adam(model, lr=0.01), x, y, epochs=4,
                  batch_size=16, validation=(x[:16], y[:16]), augment=Augment(flip=0.5, shift=1),
                  schedule=Cosine(0.01, total_epochs=4), patience=10)
    assert len(history) == 4 and history[-1]["lr"] < 0.01
    assert all(np.isfinite(h["train_loss"]) for h in history)
    assert model.layers[1].training  # fit leaves the model in training mode after evaluating


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uniform_stream_is_replayable_and_uniform(backend, dtype):
    a = backend.to_numpy(backend.uniform((1000, 100), dtype, (1, 2)))
    b = backend.to_numpy(backend.uniform((1000, 100), dtype, (1, 2)))
    c = backend.to_numpy(backend.uniform((1000, 100), dtype, (1, 3)))
    assert a.dtype == dtype and a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert 0 <= a.min() and a.max() < 1
    counts = np.histogram(a, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - 10_000) < 500)  # ~5 standard deviations


def test_fit_stops_with_one_line_when_the_loss_diverges(backend, monkeypatch):
    """A learning rate far too large: fit raises TrainingDiverged naming the epoch, the step
    by which it noticed and the rate, before the epoch is reported (no NaN history)."""
    monkeypatch.setattr(train, "FINITE_CHECK_STEPS", 2)
    rng = np.random.default_rng(3)
    x = rng.random((64, 1, 6, 6))
    y = rng.integers(0, 3, 64)
    model = Sequential([layers.Conv2D(1, 4, 3, activation="relu"), layers.Flatten(),
                        layers.Dense(64, 3)], input_shape=(1, 6, 6), seed=0).to(backend)
    model.layers[0].params["W"][...] *= 1e3  # with lr 1e30: overflow within two steps
    reported = []
    with np.errstate(over="ignore", invalid="ignore"):
        with pytest.raises(TrainingDiverged) as caught:
            fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=1e30), x, y, epochs=2,
                batch_size=8, on_epoch=reported.append)
    message = str(caught.value)
    assert re.fullmatch(r"training diverged: the loss became (nan|inf) in epoch 1 \(by step 2\) at "
                        r"learning rate 1e\+30; lower the learning rate \(--lr\) and train again",
                        message), message
    assert reported == []


def test_fit_checks_the_loss_at_the_end_of_every_epoch(backend, monkeypatch):
    monkeypatch.setattr(train, "FINITE_CHECK_STEPS", 10**9)  # only the epoch's last step
    checked = []
    real = train.check_finite_loss
    monkeypatch.setattr(train, "check_finite_loss", lambda *a: checked.append(a[3]) or real(*a))
    rng = np.random.default_rng(3)
    model = Sequential([layers.Flatten(), layers.Dense(4, 2)], input_shape=(1, 2, 2), seed=0).to(backend)
    fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1), rng.random((20, 1, 2, 2)),
        rng.integers(0, 2, 20), epochs=2, batch_size=8)
    assert checked == [2, 2]  # the third (last) step of each epoch


def _dense_model(backend, dropout=False):
    stack = ([layers.Dropout(0.5)] if dropout else []) + [layers.Dense(4, 3)]
    return Sequential(stack, input_shape=(4,), seed=0).to(backend)


@pytest.mark.parametrize("where", ["evaluate", "validation"])
@pytest.mark.parametrize("labels, message", [
    ([0, -1], r"labels must lie in \[0, 3\), got values from -1 to 0"),
    ([0, 3], r"labels must lie in \[0, 3\), got values from 0 to 3"),
])
def test_labels_out_of_range_are_refused_in_evaluation_and_validation_too(backend, where, labels,
                                                                          message):
    model, x = _dense_model(backend), np.ones((2, 4), np.float32)
    loss = losses.SoftmaxCrossEntropy()
    if where == "evaluate":
        with pytest.raises(ValueError, match="evaluation data: SoftmaxCrossEntropy: " + message):
            train.evaluate(model, loss, x, np.array(labels))
    else:
        with pytest.raises(ValueError, match="validation data: SoftmaxCrossEntropy: " + message):
            fit(model, loss, optim.SGD(model), x, np.array([0, 1]),
                validation=(x, np.array(labels)))


@pytest.mark.parametrize("loss", [losses.MSE(), losses.BinaryCrossEntropy(),
                                  losses.SoftmaxCrossEntropy()])
def test_nan_targets_are_refused(backend, loss):
    model, x = _dense_model(backend), np.ones((2, 4), np.float32)
    target = np.array([[0.0, np.nan, 1.0], [1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="training data: targets contain NaN or inf"):
        fit(model, loss, optim.SGD(model), x, target)


@pytest.mark.parametrize("value, message", [
    (1e39, r"training data: inputs as large as 1e\+39 overflow float32 to inf; scale them "
           r"\(standardize\), or build the model in float64"),  # finite in float64, not in float32
    (np.inf, "training data: inputs contain NaN or inf"),
    (np.nan, "training data: inputs contain NaN or inf"),
])
def test_inputs_that_are_not_finite_in_the_models_dtype_are_refused(backend, value, message):
    model = _dense_model(backend)
    x = np.ones((2, 4))
    x[1, 2] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's "overflow in cast"
        with pytest.raises(ValueError, match=f"^{message}$"):
            fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model), x, np.array([0, 1]))


@pytest.mark.parametrize("run", ["predict", "evaluate"])
@pytest.mark.parametrize("training", [True, False])
def test_predict_and_evaluate_leave_the_model_in_its_mode(backend, run, training):
    model, x = _dense_model(backend, dropout=True), np.ones((2, 4), np.float32)
    model.train() if training else model.eval()
    if run == "predict":
        train.predict(model, x)
    else:
        train.evaluate(model, losses.SoftmaxCrossEntropy(), x, np.array([0, 1]))
    assert [layer.training for layer in model.layers] == [training, training]


def test_a_last_batch_of_one_example_is_refused_before_training_with_batch_norm(backend):
    """BatchNorm1D cannot normalise one value per feature: the last batch of 5 examples in
    batches of 4 would fail at the end of the first epoch; fit says so before it starts."""
    model = Sequential([layers.Flatten(), layers.Dense(16, 4), layers.BatchNorm1D(4),
                        layers.Dense(4, 3)], input_shape=(1, 4, 4)).to(backend)
    before = model.state_dict()
    x, y = np.random.default_rng(0).random((5, 1, 4, 4)), np.arange(5) % 3
    with pytest.raises(ValueError, match=r"^the last batch would hold one example \(5 training "
                                         r"examples in batches of 4\), which batch norm cannot "
                                         r"normalise: choose another --batch-size \(e\.g\. 5\)$"):
        fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model), x, y, batch_size=4)
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model), x, y, batch_size=4, drop_last=True)
    # BatchNorm2D on 2x2 maps has four values per channel in a batch of one: no error
    model = Sequential([layers.Conv2D(1, 2, 3), layers.BatchNorm2D(2), layers.Flatten(),
                        layers.Dense(8, 3)], input_shape=(1, 4, 4)).to(backend)
    fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(model), x, y, batch_size=4)


def test_fit_refuses_an_optimizer_of_another_model(backend):
    model, other = _dense_model(backend), _dense_model(backend)
    with pytest.raises(ValueError, match="fit: the optimizer updates another model's parameters"):
        fit(model, losses.SoftmaxCrossEntropy(), optim.SGD(other), np.ones((2, 4), np.float32),
            np.array([0, 1]))


@pytest.mark.parametrize("make", [
    lambda m: optim.SGD(m, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda m: optim.Adam(m, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                         decoupled=True),
])
def test_an_optimizer_loaded_from_a_state_goes_on_as_the_one_saved(backend, make):
    """load_state_dict takes the settings with the buffers (an optimizer built with the defaults
    would ignore momentum buffers or scale Adam's steps otherwise); the two then step alike."""
    x, y = np.random.default_rng(0).random((8, 4), dtype=np.float32), np.arange(8) % 3
    first = _dense_model(backend)
    saved = make(first)
    fit(first, losses.SoftmaxCrossEntropy(), saved, x, y, batch_size=4)
    second = Sequential([layers.Dense(4, 3)], input_shape=(4,)).to(backend)
    second.load_state_dict(first.state_dict())
    loaded = type(saved)(second)
    loaded.load_state_dict(saved.state_dict())
    assert loaded.hyperparameters() == saved.hyperparameters()
    for model, optimizer in ((first, saved), (second, loaded)):
        fit(model, losses.SoftmaxCrossEntropy(), optimizer, x, y, batch_size=4)
    for name, value in first.state_dict().items():
        np.testing.assert_array_equal(second.state_dict()[name], value)
    kept = type(saved)(second, lr=0.5)  # cnnx train --resume: the run's settings, saved buffers
    kept.load_state_dict(saved.state_dict(), hyperparameters=False)
    assert kept.lr == 0.5 and kept.state.keys() == saved.state.keys()


@pytest.mark.parametrize("make", [lambda m: optim.SGD(m, lr=0.1, momentum=0.9), optim.Adam])
def test_an_optimizer_state_takes_its_parameters_dtype_and_must_fit_them(backend, make):
    """Buffers saved from a float64 model come in as the float32 model's dtype (they stayed
    float64, so every update ran in float64), and buffers of another model's shapes are a
    one-line ValueError (they were taken, and the first step failed broadcasting)."""
    x, y = np.random.default_rng(0).random((8, 4)), np.arange(8) % 3
    wide = Sequential([layers.Dense(4, 3, dtype="float64")], input_shape=(4,)).to(backend)
    saved = make(wide)
    fit(wide, losses.SoftmaxCrossEntropy(), saved, x, y, batch_size=4)
    narrow = _dense_model(backend)
    loaded = make(narrow)
    loaded.load_state_dict(saved.state_dict())
    assert {str(v.dtype) for v in loaded.state.values()} == {"float32"}
    assert all(backend.owns(v) for v in loaded.state.values())
    fit(narrow, losses.SoftmaxCrossEntropy(), loaded, x, y, batch_size=4)
    assert {str(v.dtype) for v in loaded.state.values()} == {"float32"}
    other = make(Sequential([layers.Dense(5, 3)], input_shape=(5,)).to(backend))
    with pytest.raises(ValueError, match=r"the saved buffer 0\.W(\.m)? \(3, 4\) does not fit "
                                         r"this model \(shape \(3, 5\)\)$"):
        other.load_state_dict(saved.state_dict())
    state = saved.state_dict()
    state["buffers"]["7.W"] = state["buffers"].pop(next(iter(state["buffers"])))
    with pytest.raises(ValueError, match=r"the saved buffer 7\.W \(.*\) does not fit this model "
                                         r"\(no parameter of this model\)$"):
        loaded.load_state_dict(state)
