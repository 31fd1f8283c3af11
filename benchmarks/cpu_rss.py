"""Peak resident memory of one epoch of Fashion-MNIST training: ``cnnx train`` against the same
run written in PyTorch, each in a process of its own.

Both runs read and prepare the data with cnnx's loader (``cnnx.run.prepare_data``: validation
split 0.1, standardized), train one epoch at batch 64 (SGD, lr 0.05, momentum 0.9), evaluate
the validation set, the test set and 10,000 training images at batch 256. The peak is
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read by a wrapper process that has started exactly
one child, so the number is that child's alone.

    python benchmarks/cpu_rss.py             # prints the table (cpu.py calls peak_rss_table)
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BATCH, LR, MOMENTUM = 64, 0.05, 0.9


def child_command(framework: str, out_dir: str) -> list[str]:
    if framework == "cnnx":
        return [sys.executable, "-m", "cnnx", "train", "--device", "cpu", "--dataset",
                "fashion-mnist", "--epochs", "1", "--batch-size", str(BATCH), "--lr", str(LR),
                "--momentum", str(MOMENTUM), "--quiet", "--out", os.path.join(out_dir, "run")]
    return [sys.executable, os.path.abspath(__file__), "--torch-run"]


def measure(framework: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one child running ``framework``'s epoch."""
    command = [sys.executable, os.path.abspath(__file__), "--wrap", framework]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": ROOT})
    kib, seconds = done.stdout.split()[-2:]
    return int(kib) / 1024, float(seconds)


def wrap(framework: str) -> None:
    """Run one child and print its peak RSS (KiB on Linux) and wall time."""
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        subprocess.run(child_command(framework, out_dir), check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, f"{seconds:.1f}")


def torch_run() -> None:
    """The ``cnnx train`` run above, with PyTorch doing the training and evaluation."""
    import torch
    from torch import nn

    from cnnx.run import TrainConfig, prepare_data
    from cpu_torch import reference_model

    torch.set_num_threads(2)
    torch.manual_seed(0)
    prep = prepare_data(TrainConfig(batch_size=BATCH, lr=LR, momentum=MOMENTUM, epochs=1))
    net = reference_model()
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    x, y = (torch.from_numpy(a) for a in prep.train)
    order = torch.randperm(len(y))
    net.train()
    for start in range(0, len(y), BATCH):
        index = order[start:start + BATCH]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x[index]), y[index]).backward()
        opt.step()
    for xs, ys in (prep.val, prep.test, (prep.train[0][:10_000], prep.train[1][:10_000])):
        evaluate(net, loss_fn, torch.from_numpy(xs), torch.from_numpy(ys))


def evaluate(net, loss_fn, x, y, batch: int = 256):
    import torch

    net.eval()
    with torch.inference_mode():
        for start in range(0, len(y), batch):
            loss_fn(net(x[start:start + batch]), y[start:start + batch])
    net.train()


def peak_rss_table() -> list[str]:
    lines = ["| run | peak RSS (MiB) | wall time (s) |", "|---|---:|---:|"]
    results = {}
    for framework in ("cnnx", "torch"):
        try:
            results[framework] = measure(framework)
        except (subprocess.CalledProcessError, ImportError) as exc:
            lines.append(f"| {framework} | failed: {exc} | |")
            continue
        rss, seconds = results[framework]
        lines.append(f"| {framework} one epoch, batch {BATCH} | {rss:,.0f} | {seconds:.1f} |")
    if len(results) == 2:
        lines.append(f"\ncnnx / PyTorch peak RSS: {results['cnnx'][0] / results['torch'][0]:.2f}")
    return lines


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    if sys.argv[1:2] == ["--wrap"]:
        wrap(sys.argv[2])
    elif sys.argv[1:2] == ["--torch-run"]:
        torch_run()
    else:
        print("\n".join(peak_rss_table()))
