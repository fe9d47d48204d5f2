"""How many intra-op threads a training step of a given size wants, quiet and with a core taken.

    python benchmarks/threads.py [--busy] [--repeats 5]

For MLP students of several widths (one, and a batched grid of 40 as ``kdlab demo`` trains) and a
small CNN, times a full training step (forward, loss, backward, Adam) at 1 and at 2 intra-op
threads, alternating, and prints milliseconds per step with the step's multiply-adds. ``--busy``
runs a CPU-bound loop in a second process meanwhile (another job on a 2-core machine). The
threshold in ``kdlab.device.SMALL_STEP_MACS`` comes from these numbers: below it one thread is as
fast as two on a quiet machine, and two threads collapse when a core is shared.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, grad, vmap, stack_module_state

from kdlab.device import cpu_model, step_macs


def _spin() -> None:  # pragma: no cover - a competing job
    while True:
        pass


def mlp(width: int, depth: int = 2) -> nn.Module:
    layers, d = [], 64
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10))


def cnn(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(2 * channels * 49, 10))


def single_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def batched_step(width: int, n: int, x: torch.Tensor, y: torch.Tensor):
    """``n`` students trained at once through ``vmap`` of the per-model gradient (as compare batches)."""
    params, _ = stack_module_state([mlp(width) for _ in range(n)])
    base = mlp(width).to("meta")

    def loss(p, xb, yb):
        return nn.functional.cross_entropy(functional_call(base, p, (xb,)), yb)

    g = vmap(grad(loss), in_dims=(0, None, None))

    def step() -> None:
        grads = g(params, x, y)
        with torch.no_grad():
            for k in params:
                params[k].sub_(1e-3 * grads[k])
    return step


def time_step(step, repeats: int, steps: int) -> dict:
    """Median ms per step at 1 and 2 threads, the two alternating chunk by chunk."""
    times: dict = {1: [], 2: []}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        step()
    for _ in range(repeats):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            times[threads].append((time.perf_counter() - t0) / steps * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", action="store_true", help="run a CPU-bound loop in a second process meanwhile")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spinner = mp.Process(target=_spin, daemon=True) if args.busy else None
    if spinner:
        spinner.start()
    torch.manual_seed(0)
    cases = []
    for width in (20, 128, 512, 1200):
        x, y = torch.randn(128, 64), torch.randint(0, 10, (128,))
        m = mlp(width)
        cases.append((f"mlp 64-{width}-{width}-10, batch 128", step_macs(m, x[:1], 128), single_step(m, x, y)))
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    m = mlp(20)
    cases.append(("40 batched mlp 64-20-20-10, batch 32", step_macs(m, x[:1], 32 * 40), batched_step(20, 40, x, y)))
    for ch in (8, 32):
        x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
        m = cnn(ch)
        cases.append((f"cnn {ch}-{2 * ch} channels, batch 32", step_macs(m, x[:1], 32), single_step(m, x, y)))
    print(f"CPU: {cpu_model()} ({platform.machine()}), torch {torch.__version__}, "
          f"{'one competing CPU-bound process' if args.busy else 'quiet'}")
    print("| step | multiply-adds | 1 thread ms | 2 threads ms | 2/1 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, macs, step in cases:
        steps = max(3, min(200, int(3e8 / max(macs, 1))))
        ms = time_step(step, args.repeats, steps)
        one, two = ms[1], ms[2]
        print(f"| {name} | {macs:,} | {one:.3f} | {two:.3f} | {two / one:.2f} |", flush=True)
    if spinner:
        spinner.terminate()


if __name__ == "__main__":
    main()
