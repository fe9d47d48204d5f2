"""Output-bias correction of a student whose transfer set lacked classes (Hinton et al. 2015 §3).

A student distilled on a transfer set without some classes still learns them from the soft
targets, but its output biases for them come out too low (or, trained on a few classes only, too
high for those). Adding one offset ``b`` to the logits of a set of classes ``C`` (equivalently to
their output biases) fixes much of it; the paper chose ``b`` on the test set.

Here ``b`` is chosen by a rule that never looks at test data, **prior matching**: the share of a
reference set (the training images, or a held-out part) that the corrected student assigns to
``C`` equals the share of ``C`` among that set's labels. Only the class frequency is used, not which
example has which label. The choice is exact, not a search: example ``i`` is predicted in ``C``
exactly when ``b > d_i = max_{k∉C} z_ik − max_{k∈C} z_ik``, so ``b`` lies between two sorted ``d_i``.

:func:`optimal_offset` gives the offset the paper reported, chosen on labelled data (the test
set) to minimise errors; it is reported beside the rule's, labelled as chosen on the test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError


def _class_mask(num_classes: int, classes: Sequence[int], device: torch.device) -> Tensor:
    if not classes or any(not 0 <= c < num_classes for c in classes):
        raise ConfigError(f"bias offset classes must be a non-empty subset of 0..{num_classes - 1}, got {list(classes)}")
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[list(classes)] = True
    if bool(mask.all()):
        raise ConfigError("a bias offset on every class changes no prediction; name a proper subset of the classes")
    return mask


def margins(logits: Tensor, classes: Sequence[int]) -> Tensor:
    """``d_i = max_{k∉C} z_ik − max_{k∈C} z_ik``: example ``i`` is predicted in ``C`` iff the offset exceeds ``d_i``."""
    mask = _class_mask(logits.shape[1], classes, logits.device)
    z = logits.float()
    return z[:, ~mask].max(1).values - z[:, mask].max(1).values


def predictions(logits: Tensor, classes: Sequence[int], offset: float) -> Tensor:
    """Predicted classes after adding ``offset`` to the logits of ``classes``."""
    mask = _class_mask(logits.shape[1], classes, logits.device)
    return (logits.float() + offset * mask.float()).argmax(1)


def prior_matching_offset(logits: Tensor, classes: Sequence[int], target_count: int) -> float:
    """The offset for ``classes`` that makes exactly ``target_count`` of the rows of ``logits`` predicted
    in ``classes`` (the midpoint between the two margins that bracket it; ties may make it inexact)."""
    d = margins(logits, classes).sort().values
    n = len(d)
    if not 0 <= target_count <= n:
        raise ValueError(f"target_count must be in [0, {n}], got {target_count}")
    if target_count == 0:
        return float(d[0]) - 1.0
    if target_count == n:
        return float(d[-1]) + 1.0
    return float(d[target_count - 1] + d[target_count]) / 2.0


def prior_offset_from_labels(logits: Tensor, labels: Tensor, classes: Sequence[int]) -> float:
    """:func:`prior_matching_offset` with the target the reference set's label frequencies give."""
    target = int(torch.isin(labels, torch.tensor(list(classes), device=labels.device)).sum())
    return prior_matching_offset(logits, classes, target)


@dataclass
class OffsetChoice:
    offset: float
    errors: int


def optimal_offset(logits: Tensor, labels: Tensor, classes: Sequence[int]) -> OffsetChoice:
    """The offset minimising errors on labelled ``logits`` (the paper's choice, on the test set), and
    those errors. Exact: errors change only where the offset crosses a margin ``d_i``; every interval
    between margins is tried (its midpoint), and of equally good offsets the one nearest 0 is kept."""
    mask = _class_mask(logits.shape[1], classes, logits.device)
    z = logits.float()
    inside = torch.where(mask, z, torch.full_like(z, -torch.inf)).argmax(1)  # the prediction once offset > d_i
    outside = torch.where(mask, torch.full_like(z, -torch.inf), z).argmax(1)
    d = z[:, ~mask].max(1).values - z[:, mask].max(1).values
    order = d.argsort()
    d_sorted = d[order]
    wrong_in = (inside != labels)[order].long()
    wrong_out = (outside != labels)[order].long()
    # offset in the k-th gap (above d_sorted[:k], below the rest): the first k rows are predicted in C
    errors = torch.cat([wrong_in.new_zeros(1), wrong_in.cumsum(0)]) + torch.cat([wrong_out.flip(0).cumsum(0).flip(0), wrong_out.new_zeros(1)])
    lo = torch.cat([d_sorted[:1] - 1.0, d_sorted])
    hi = torch.cat([d_sorted, d_sorted[-1:] + 1.0])
    candidates = (lo + hi) / 2.0
    best = int(errors.min())
    tied = (errors == best).nonzero().flatten()
    pick = tied[candidates[tied].abs().argmin()]
    return OffsetChoice(float(candidates[pick]), best)


@torch.no_grad()
def shift_output_bias(model: nn.Module, classes: Sequence[int], offset: float) -> None:
    """Add ``offset`` to the output biases of ``classes`` in the model's last ``nn.Linear`` (in place)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last or last[-1].bias is None:
        raise ConfigError("the bias offset needs a model whose last nn.Linear has a bias")
    bias = last[-1].bias
    bias[list(classes)] += offset
