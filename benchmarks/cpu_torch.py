"""The PyTorch side of benchmarks/cpu.py: the reference CNN with cnnx's initial weights, and
timed closures shaped like the cnnx ones (a training step, an inference pass, each layer)."""

from __future__ import annotations

import numpy
import torch
from torch import nn

from cnnx import models


def reference_model(seed: int | None = 0, dtype: str = "float32") -> nn.Sequential:
    """conv3x3(1→16)–ReLU–pool–conv3x3(16→32)–ReLU–pool–flatten–fc(1568→128)–ReLU–fc(128→10),
    with the weights cnnx draws for ``seed`` (the same arithmetic on both sides), or PyTorch's
    own initialization (from its global generator) when ``seed`` is None."""
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    ).to(getattr(torch, dtype))
    if seed is None:
        return net
    ours = models.build("reference", seed=seed, dtype=dtype)
    with torch.no_grad():
        for t, c in zip(weighted(net), [layer for layer in ours.layers if layer.params]):
            t.weight.copy_(torch.from_numpy(numpy.asarray(c.params["W"])))
            t.bias.copy_(torch.from_numpy(numpy.asarray(c.params["b"])))
    return net


def weighted(net: nn.Sequential) -> list:
    """The layers of ``net`` that hold weights, in order (those of cnnx's model, one to one)."""
    return [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]


def as_torch(batches) -> list:
    """cnnx's numpy batches as tensors sharing their memory (the same images for both)."""
    return [(torch.from_numpy(x), torch.from_numpy(numpy.asarray(y))) for x, y in batches]


def step_fn(batches):
    net = reference_model()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    data, state = as_torch(batches), {"i": -1}

    def step():
        state["i"] = (state["i"] + 1) % len(data)
        x, y = data[state["i"]]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()
    return step


def inference_fn(batches):
    net = reference_model().eval()
    data, state = as_torch(batches), {"i": -1}

    def forward():
        state["i"] = (state["i"] + 1) % len(data)
        with torch.inference_mode():
            net(data[state["i"]][0])
    return forward


def layer_fns(size: int, inputs, grads):
    """``[(forward, backward)]`` per cnnx layer of the reference model, on cnnx's recorded
    inputs and upstream gradients. Backward re-runs a retained graph, so it times backward only;
    like the training step, the first layer computes no input gradient."""
    net = reference_model()
    groups = [net[0:2], net[2], net[3:5], net[5], net[6], net[7:9], net[9]]
    fns = []
    for i, group in enumerate(groups):
        x = torch.from_numpy(numpy.ascontiguousarray(inputs[i])).requires_grad_(i > 0)
        dy = torch.from_numpy(numpy.ascontiguousarray(grads[i]))
        y = group(x)

        def forward(group=group, x=x):
            group(x)

        def backward(group=group, x=x, y=y, dy=dy):
            group.zero_grad(set_to_none=True)
            x.grad = None
            y.backward(dy, retain_graph=True)
        fns.append((forward, backward))
    return fns
