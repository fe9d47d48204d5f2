"""PNG plots for comparison reports (matplotlib, optional: ``pip install 'kdlab[report]'``)."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ..errors import KDLabError
from ..utils import atomic_write
from .compare import CompareResult


def pyplot() -> Any:
    try:
        import matplotlib  # optional: matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional: matplotlib
    except ImportError:
        raise KDLabError("plots need matplotlib: pip install 'kdlab[report]' (or pass --no-plots)") from None
    return plt


def save_png(fig: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    fig.clf()
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def plot_accuracy(result: CompareResult, path: str | os.PathLike) -> None:
    """Mean test accuracy per epoch per variant, with a min–max band over seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for v in result.variants:
        curves = np.array([run.curve() for run in result.of(v)]) * 100
        epochs = np.arange(1, curves.shape[1] + 1)
        (line,) = ax.plot(epochs, curves.mean(0), label=v, lw=1.6)
        ax.fill_between(epochs, curves.min(0), curves.max(0), color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    lo = min(float(np.percentile([run.curve() for run in result.of(v)], 10)) for v in result.variants) * 100
    ax.set_ylim(max(lo - 1, 0), None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{result.recipe.name}: test accuracy, {len(result.seeds)} seeds")
    save_png(fig, path)
    plt.close(fig)


def plot_step_losses(result: CompareResult, path: str | os.PathLike) -> None:
    """Per-step total loss of the first seed per variant (thin) and its running mean (thick)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seed = result.seeds[0]
    for v in result.variants:
        total = result.run(v, seed).step_losses[:, 0].numpy()
        (line,) = ax.plot(total, lw=0.4, alpha=0.35)
        window = max(len(total) // 100, 1)
        smooth = np.convolve(total, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window - 1, smooth, color=line.get_color(), lw=1.5, label=v)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel("total loss (hard_weight·CE + soft_weight·soft)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{result.recipe.name}: per-step loss, seed {seed}")
    save_png(fig, path)
    plt.close(fig)
