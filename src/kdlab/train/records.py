"""What an epoch leaves behind: evaluation, per-epoch records, the divergence check, results.

Shared by every trainer (one model or a batched grid), so all write the same keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import TensorData
from ..data.loaders import loader_batches
from ..errors import KDLabError
from ..logits import logits_of
from ..methods.base import Distiller


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, batch_size: int = 2000) -> Dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data`` (eval mode, batched)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for xb, yb in zip(data.x.split(batch_size), data.y.split(batch_size)):
        logits = logits_of(model(xb))
        correct += int((logits.argmax(1) == yb).sum())
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
    model.train(was_training)
    n = max(len(data), 1)
    return {"acc": correct / n, "loss": loss_sum / n}


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader: Any, device: Optional[torch.device] = None) -> Dict[str, float]:
    """:func:`evaluate` over a ``DataLoader`` of ``(x, y[, index])`` batches."""
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for xb, yb, _ in loader_batches(loader, device):
        logits = logits_of(model(xb))
        correct += int((logits.argmax(1) == yb).sum())
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        n += len(yb)
    model.train(was_training)
    return {"acc": correct / max(n, 1), "loss": loss_sum / max(n, 1)}


class NonFiniteLossError(KDLabError):
    """Training produced a NaN/inf loss (or weights); that epoch was not saved."""

    def __init__(self, message: str, epoch: int, step: int, term: str) -> None:
        super().__init__(message)
        self.epoch, self.step, self.term = epoch, step, term


ADVICE = "lower the learning rate, set train.grad_clip or check the loss, then start a new run"


def check_finite(rows: Tensor, names: Sequence[str], epoch: int, params: Iterable[Tensor], kept: str, who: str = "") -> None:
    """Raise :class:`NonFiniteLossError` naming the first bad step of the epoch and its loss term.

    ``rows`` are the epoch's (steps, 1 + terms) losses, ``names`` their columns (``total`` first).
    Called once per epoch, before evaluation or any checkpoint, so no per-step host sync is
    needed and a diverged model never reaches a checkpoint. The parameters are checked too: a
    finite last loss can still be followed by an update that overflows the weights.
    """
    bad_rows = ~torch.isfinite(rows).all(1)
    if not bool(bad_rows.any()):
        if all(bool(torch.isfinite(p).all()) for p in params):
            return
        raise NonFiniteLossError(
            f"training diverged{who}: the weights became non-finite after the last step of epoch {epoch} (every loss "
            f"was finite); {kept}; {ADVICE}", epoch, len(rows), "weights",
        )
    step = int(bad_rows.nonzero()[0, 0])
    values = dict(zip(names, rows[step].tolist()))
    # Name the term that went bad; total only when every named term is fine (an objective's own extra term).
    term = next((n for n in names[1:] if not math.isfinite(values[n])), "total")
    raise NonFiniteLossError(
        f"training diverged{who}: the {term} loss is {values[term]} at epoch {epoch}, step {step + 1} of {len(rows)}; "
        f"{kept}; {ADVICE}", epoch, step + 1, term,
    )


@dataclass
class FitResult:
    history: List[Dict[str, Any]]
    step_losses: Tensor  # (steps, 1 + terms): total, then each term in the method's order
    best_epoch: int
    best_metric: str
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> Dict[str, Any]:
        return self.history[-1]

    @property
    def best(self) -> Dict[str, Any]:
        return next(h for h in self.history if h["epoch"] == self.best_epoch)


def term_shares(record: Mapping[str, Any], weights: Mapping[str, float]) -> Dict[str, float]:
    """Each weighted term's share of the epoch's loss: ``|w·L| / Σ_j |w_j·L_j|`` over the terms of
    nonzero weight, ``L`` the epoch mean ``record["loss_<term>"]``; {} unless two or more terms are
    weighted (one term is all of the loss) or the weighted sum is 0.

    The sum is the epoch's ``loss_total`` when every term is >= 0 (the mean of a weighted sum is the
    weighted sum of the means); absolute values keep a negative term from hiding a large one.
    """
    parts = {t: abs(float(w) * float(record[f"loss_{t}"])) for t, w in weights.items() if w != 0 and f"loss_{t}" in record}
    whole = sum(parts.values())
    if len(parts) < 2 or not (whole > 0 and math.isfinite(whole)):
        return {}
    return {t: v / whole for t, v in parts.items()}


def method_record(
    epoch: int,
    rows: Tensor,
    method: Distiller,
    test: "Optional[tuple[float, float]]",
    lr: float,
    val: "Optional[tuple[float, float]]" = None,
) -> Dict[str, Any]:
    """One epoch's metrics from its (steps, 1 + terms) loss rows: the mean of the total and of every
    named term, accuracies, LR, and the method's own values (weights, T). Shared by every trainer."""
    record: Dict[str, Any] = {"epoch": epoch, "loss_total": float(rows[:, 0].mean())}
    for j, name in enumerate(method.term_weights(), start=1):
        record[f"loss_{name}"] = float(rows[:, j].mean())
    if test is not None:
        record.update(test_acc=float(test[0]), test_loss=float(test[1]))
    record["lr"] = lr
    if method.needs.teacher:
        record["negative_loss_steps"] = int((rows[:, 0] < 0).sum())
    record.update(method.epoch_info())
    handed = method.epoch_weights
    if handed is not None and handed.stage is not None:  # a staged recipe: the stage and the weights it put in force
        record["stage"] = handed.stage
        if handed.stage_name:
            record["stage_name"] = handed.stage_name
        record.update({f"weight_{k}": float(w) for k, w in method.weights().items()})
    if val is not None:
        record.update(val_acc=float(val[0]), val_loss=float(val[1]))
    return record
