"""Write a :class:`CompareResult` as Markdown, CSV and JSON (plots live in :mod:`.plots`).

Every file is written atomically; the JSON holds everything (resolved config, versions, seeds,
per-epoch histories) so a report can be re-rendered or re-analysed without retraining.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..recipes import dump_recipe
from ..utils import atomic_write, atomic_write_json, atomic_write_text, environment
from .compare import REFERENCE, CompareResult
from .plots import plot_accuracy, plot_step_losses
from .stats import Summary


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}"


def _pm(s: Summary) -> str:
    return f"{_pct(s.mean)} ± {_pct(s.std)}" if s.n > 1 else _pct(s.mean)


def _ci(s: Summary) -> str:
    return "n/a" if s.n < 2 else f"[{_pct(s.ci_low)}, {_pct(s.ci_high)}]"


def summary_rows(result: CompareResult) -> List[Dict[str, Any]]:
    rows = []
    for v in result.variants:
        s = result.summary(v)
        p = result.paired_vs_reference(v)
        rows.append(
            {
                "variant": v,
                "seeds": s.final_acc.n,
                "final_acc_mean": s.final_acc.mean,
                "final_acc_std": s.final_acc.std,
                "final_acc_ci_low": s.final_acc.ci_low,
                "final_acc_ci_high": s.final_acc.ci_high,
                "best_epoch_acc_mean": s.best_epoch_acc.mean,
                "best_epoch_acc_std": s.best_epoch_acc.std,
                "epochs_to_target": s.epochs_to_target,
                "seeds_reaching_target": s.reached_target,
                "loss_std_last_epoch": s.loss_std_last_epoch,
                "negative_loss_steps": s.negative_loss_steps,
                "wall_seconds_per_run": s.wall_seconds,
                "diff_vs_hinton_mean": None if p is None else p.diff.mean,
                "diff_vs_hinton_ci_low": None if p is None else p.diff.ci_low,
                "diff_vs_hinton_ci_high": None if p is None else p.diff.ci_high,
                "diff_vs_hinton_p_value": None if p is None else p.p_value,
            }
        )
    return rows


def markdown(result: CompareResult, plots: Optional[Dict[str, str]] = None) -> str:
    r = result.recipe
    n = len(result.seeds)
    lines = [
        f"# kdlab compare: {r.name}",
        "",
        f"Dataset `{r.dataset.name}`; teacher `{r.teacher.model.name}` {r.teacher.model.params} "
        f"(test acc {_pct(result.teacher['test_acc'])}%); student `{r.student.model.name}` {r.student.model.params}, "
        f"{r.student.train.epochs} epochs, batch {r.student.train.batch_size}, {r.student.train.optimizer.name} "
        f"lr {r.student.train.optimizer.lr}; T = {r.distill.temperature}, hard weight {r.distill.hard_weight}, "
        f"soft weight {r.distill.soft_weight}.",
        "",
        f"Seeds {result.seeds[0]}–{result.seeds[-1]} ({n}). Per seed, every variant starts from the same student "
        "weights and sees the same batches in the same order; all share one teacher. Students trained "
        f"{result.mode}; total wall time {result.wall_seconds:.0f} s.",
        "",
        "| variant | final test acc % (mean ± std) | 95% CI | best-epoch acc % | epochs to target | "
        "last-epoch loss std | negative-loss steps | wall s / run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in result.variants:
        s = result.summary(v)
        ett = "never" if s.epochs_to_target is None else f"{s.epochs_to_target:.1f}"
        if s.epochs_to_target is not None and s.reached_target < n:
            ett += f" ({s.reached_target}/{n} seeds)"
        lines.append(
            f"| {v} | {_pm(s.final_acc)} | {_ci(s.final_acc)} | {_pm(s.best_epoch_acc)} | {ett} | "
            f"{s.loss_std_last_epoch:.4f} | {s.negative_loss_steps:.0f} | {s.wall_seconds:.1f} |"
        )
    best_metric = next(iter(result.runs.values())).best_metric
    lines += [
        "",
        f"Final = last epoch. Best-epoch acc = test accuracy at the epoch with the best `{best_metric}`"
        + (" (chosen on the test set itself, so optimistic)." if best_metric == "test_acc" else ".")
        + f" Target = {_pct(result.target_acc)}% test accuracy. CI = mean ± t(0.975, n−1)·std/√n.",
    ]
    if result.mode in ("batched", "partly batched"):
        lines.append("Wall time per run of a batched variant = the batched training time divided by its number of students.")
    if REFERENCE in result.variants and n > 1:
        lines += [
            "",
            f"## Paired difference vs `{REFERENCE}` (final test acc, same seeds)",
            "",
            "| variant | mean diff (points) | 95% CI | p (paired t) |",
            "| --- | ---: | ---: | ---: |",
        ]
        for v in result.variants:
            p = result.paired_vs_reference(v)
            if p is not None:
                lines.append(f"| {v} | {100 * p.diff.mean:+.2f} | [{100 * p.diff.ci_low:+.2f}, {100 * p.diff.ci_high:+.2f}] | {p.p_value:.3g} |")
    for note in result.notes:
        lines += ["", f"Note: {note}."]
    if result.profile is not None:
        lines += ["", "## Cost: teacher vs student (`kdlab profile`)", "", result.profile.table()]
    if plots:
        lines += ["", "## Plots", ""]
        for title, name in plots.items():
            lines += [f"![{title}]({name})", ""]
    lines += ["", "Files: `results.json` (everything), `summary.csv`, `epochs.csv`, `step_losses.npz`, `config.yaml`."]
    return "\n".join(lines) + "\n"


def csv_text(rows: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def epoch_rows(result: CompareResult) -> List[Dict[str, Any]]:
    keys = ["epoch", "test_acc", "test_loss", "val_acc", "loss_total", "loss_hard", "loss_soft", "temperature", "hard_weight", "soft_weight", "lr"]
    for run in result.runs.values():  # a method's own terms (hint, rkd_angle, ...) get columns too
        for key in run.history[0] if run.history else ():
            if key.startswith("loss_") and key not in keys:
                keys.append(key)
    rows = []
    for (v, s), run in result.runs.items():
        for h in run.history:
            rows.append({"variant": v, "seed": s, **{k: h.get(k) for k in keys}})
    return rows


def write_report(result: CompareResult, out: str | os.PathLike, plots: bool = True) -> Path:
    """Write report.md, summary.csv, epochs.csv, results.json, step_losses.npz, config.yaml and PNGs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images: Dict[str, str] = {}
    if plots:
        plot_accuracy(result, out / "accuracy.png")
        plot_step_losses(result, out / "step_loss.png")
        images = {"Test accuracy per epoch (band: min–max over seeds)": "accuracy.png", "Per-step training loss": "step_loss.png"}
    summary = summary_rows(result)
    atomic_write_text(out / "summary.csv", csv_text(summary))
    atomic_write_text(out / "epochs.csv", csv_text(epoch_rows(result)))
    atomic_write_text(out / "config.yaml", dump_recipe(result.recipe))
    arrays = {f"{v}": np.stack([run.step_losses.numpy() for run in result.of(v)]) for v in result.variants}
    buf = io.BytesIO()
    np.savez_compressed(buf, seeds=np.array(result.seeds), **arrays)
    atomic_write(out / "step_losses.npz", lambda fh: fh.write(buf.getvalue()))
    atomic_write_json(
        out / "results.json",
        {
            "recipe": result.recipe.to_dict(),
            "environment": environment(),
            "variants": result.variants,
            "seeds": result.seeds,
            "mode": result.mode,
            "wall_seconds": result.wall_seconds,
            "teacher": result.teacher,
            "target_acc": result.target_acc,
            "notes": result.notes,
            "profile": None if result.profile is None else result.profile.as_dict(),
            "summary": summary,
            "runs": [{"variant": v, "seed": s, "best_epoch": r.best_epoch, "best_metric": r.best_metric,
                      "wall_seconds": r.wall_seconds, "history": r.history} for (v, s), r in result.runs.items()],
        },
    )
    atomic_write_text(out / "report.md", markdown(result, images))
    return out
