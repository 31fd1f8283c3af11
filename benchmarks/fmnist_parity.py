"""Does cnnx train as PyTorch does? The reference CNN for one epoch of Fashion-MNIST at batch 64.

1. float32, three optimizers, test accuracy side by side for each seed:
   - cnnx: its own initialization (He), its own shuffle for the seed;
   - PyTorch started from cnnx's initial weights and fed the very same batches in the same
     order: the same run in another framework, apart from float32 rounding;
   - PyTorch on its own: its default initialization and shuffle (how the guide's reference
     figures, 0.70 / 0.84 / 0.87, were made).
2. float64, the same start and batches on both sides: after the whole epoch (844 steps), the
   largest relative difference between cnnx's and PyTorch's parameters, array by array
   (max |ours - theirs| / max |theirs|). Rounding alone leaves ~1e-15; a wrong gradient
   anywhere, even one that still learns, leaves far more.

Data as ``cnnx train`` prepares it (``cnnx.run.prepare_data``: 54,000 training images after the
0.1 validation split, standardized); test accuracy on the official 10,000 test images. Both
frameworks on 2 threads.

    python benchmarks/fmnist_parity.py                 # seeds 0, 1, 2 (~4 minutes on 2 cores)
    python benchmarks/fmnist_parity.py --seeds 0
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_torch import reference_model, weighted  # noqa: E402

from cnnx import evaluate, fit, losses, models, optim  # noqa: E402
from cnnx.run import TrainConfig, prepare_data  # noqa: E402
from cnnx.train import batch_slices, epoch_order  # noqa: E402

BATCH = 64
OPTIMIZERS = {  # name -> (cnnx optimizer, PyTorch optimizer), the same hyperparameters
    "SGD lr 0.01": (lambda m: optim.SGD(m, lr=0.01),
                    lambda p: torch.optim.SGD(p, lr=0.01)),
    "SGD lr 0.01, momentum 0.9": (lambda m: optim.SGD(m, lr=0.01, momentum=0.9),
                                  lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)),
    "Adam lr 1e-3": (lambda m: optim.Adam(m, lr=1e-3),
                     lambda p: torch.optim.Adam(p, lr=1e-3)),
}


def cnnx_epoch(data, make_optimizer, seed: int, dtype: str):
    """(model, test accuracy, training seconds) of one cnnx epoch."""
    (x, y), test = data
    model = models.build("reference", seed=seed, dtype=dtype)
    loss = losses.SoftmaxCrossEntropy()
    start = time.perf_counter()
    fit(model, loss, make_optimizer(model), x, y, epochs=1, batch_size=BATCH, seed=seed)
    seconds = time.perf_counter() - start
    return model, evaluate(model, loss, *test)["accuracy"], seconds


def torch_epoch(data, make_optimizer, seed: int, dtype: str, same_start: bool):
    """(net, test accuracy, training seconds) of one PyTorch epoch; ``same_start``: cnnx's
    initial weights and batch order for ``seed``, else PyTorch's own."""
    (x, y), (xt, yt) = ((torch.from_numpy(a), torch.from_numpy(b.astype(numpy.int64)))
                        for a, b in data)
    torch.manual_seed(seed)
    net = reference_model(seed if same_start else None, dtype)
    opt, loss_fn = make_optimizer(net.parameters()), nn.CrossEntropyLoss()
    order = torch.from_numpy(epoch_order(len(y), seed, 0)) if same_start else torch.randperm(len(y))
    start = time.perf_counter()
    net.train()
    for first, last in batch_slices(len(y), BATCH, drop_last=False):
        index = order[first:last]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x[index]), y[index]).backward()
        opt.step()
    seconds = time.perf_counter() - start
    net.eval()
    with torch.inference_mode():
        correct = sum(int((net(xt[i:i + 256]).argmax(1) == yt[i:i + 256]).sum())
                      for i in range(0, len(yt), 256))
    return net, correct / len(yt), seconds


def parameter_differences(model, net) -> list[float]:
    """max |ours - theirs| / max |theirs| for every weight and bias array, in layer order."""
    out = []
    mine = [layer for layer in model.layers if layer.params]
    for theirs, ours in zip(weighted(net), mine):
        for key, tensor in (("W", theirs.weight), ("b", theirs.bias)):
            ref = tensor.detach().numpy()
            out.append(float(numpy.abs(numpy.asarray(ours.params[key]) - ref).max()
                             / numpy.abs(ref).max()))
    return out


def accuracy_table(prep, seeds) -> None:
    data = (prep.train, prep.test)
    print(f"float32: test accuracy for seeds {seeds} (mean); mean training seconds\n")
    print("| optimizer | cnnx | PyTorch, cnnx's start and batches | PyTorch, own init and shuffle "
          "| seconds cnnx / PyTorch |")
    print("|---|---|---|---|---:|")
    for name, (ours, theirs) in OPTIMIZERS.items():
        runs = {"cnnx": [cnnx_epoch(data, ours, s, "float32")[1:] for s in seeds],
                "same": [torch_epoch(data, theirs, s, "float32", True)[1:] for s in seeds],
                "own": [torch_epoch(data, theirs, s, "float32", False)[1:] for s in seeds]}

        def cell(key):
            accs = [acc for acc, _ in runs[key]]
            return " / ".join(f"{a:.4f}" for a in accs) + f" ({statistics.mean(accs):.4f})"
        seconds = {k: statistics.mean(s for _, s in v) for k, v in runs.items()}
        print(f"| {name} | {cell('cnnx')} | {cell('same')} | {cell('own')} "
              f"| {seconds['cnnx']:.1f} / {seconds['same']:.1f} |", flush=True)


def float64_table(prep, seed: int) -> None:
    data = ((prep.train[0].astype(numpy.float64), prep.train[1]),
            (prep.test[0].astype(numpy.float64), prep.test[1]))
    print(f"\nfloat64, seed {seed}, the same start and batches: largest relative parameter "
          "difference after the epoch\n")
    print("| optimizer | conv1 W, b | conv2 W, b | dense1 W, b | dense2 W, b | test accuracy "
          "cnnx / PyTorch | seconds cnnx / PyTorch |")
    print("|---|---|---|---|---|---|---:|")
    for name, (ours, theirs) in OPTIMIZERS.items():
        model, acc, seconds = cnnx_epoch(data, ours, seed, "float64")
        net, their_acc, their_seconds = torch_epoch(data, theirs, seed, "float64", True)
        diffs = parameter_differences(model, net)
        pairs = " | ".join(f"{diffs[i]:.1e}, {diffs[i + 1]:.1e}" for i in range(0, len(diffs), 2))
        print(f"| {name} | {pairs} | {acc:.4f} / {their_acc:.4f} "
              f"| {seconds:.1f} / {their_seconds:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    seeds = [int(s) for s in parser.parse_args().seeds.split(",")]
    torch.set_num_threads(2)
    prep = prepare_data(TrainConfig(epochs=1, batch_size=BATCH))
    print(f"Fashion-MNIST, reference CNN, one epoch at batch {BATCH} "
          f"({len(prep.train[1]):,} training images, {len(prep.test[1]):,} test images)\n")
    accuracy_table(prep, seeds)
    float64_table(prep, seeds[0])


if __name__ == "__main__":
    main()
