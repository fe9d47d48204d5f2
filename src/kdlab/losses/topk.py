"""Top-k teacher logits: FKD's compression of a many-class soft target, and the loss it implies.

Storing every class's logit for every (sample, view) costs ``classes`` numbers per row; with
tens of thousands of classes that is most of a store. Shen & Xing's FKD ("A Fast Knowledge
Distillation Framework for Visual Recognition", ECCV 2022) keeps the teacher's k largest soft
labels with their class indices and spreads the remaining probability mass evenly over the other
classes ("marginal smoothing"). kdlab stores the same information as logits, so every method that
reads teacher logits reads it unchanged:

* the k largest logits ``z_K`` and their indices ``K``;
* one *rest* logit ``c`` for every other class, chosen so that at the method's temperature ``T``
  the other classes keep their total probability: ``c = T·(logsumexp(z_R / T) − log |R|)``, R the
  classes outside K.

Expanded back (:func:`expand_logits`), ``softmax(z̃ / T)`` equals the teacher's softmax on the
top-k classes exactly and gives each other class the mean of their probabilities. Hinton KD from
the store is therefore ``T² · KL(p̃_T ‖ q_T)`` with ``p̃_T`` that marginally smoothed target
(:func:`smoothed_target`); it equals the full loss when the tail is flat, differs from it by at
most the tail's share otherwise, and is exact only at the stored T (a run whose temperature
changes over the epochs cannot use a top-k store).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..errors import ConfigError


def check_top_k(k: int, classes: int) -> None:
    """One-line refusal of a k that keeps no class or every class."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < classes:
        raise ConfigError(f"teacher_signals.top_k: keep 1 to {classes - 1} of the {classes} classes' logits "
                          f"(or 'all'), got {k!r}")


def compress_logits(logits: Tensor, k: int, temperature: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(values (B, k), indices (B, k) int32, rest (B, 1)) of ``logits`` (B, C) at ``temperature``."""
    check_top_k(k, logits.shape[-1])
    z = logits.float()
    values, indices = z.topk(k, dim=-1)
    tail = z.scatter(-1, indices, float("-inf"))  # the classes outside the top k
    T = float(temperature)
    rest = T * (torch.logsumexp(tail / T, dim=-1, keepdim=True) - torch.log(torch.tensor(float(z.shape[-1] - k))))
    return values, indices.to(torch.int32), rest


def expand_logits(values: Tensor, indices: Tensor, rest: Tensor, classes: int) -> Tensor:
    """Dense (B, C) logits: the stored top-k values at their classes, the rest logit elsewhere."""
    out = rest.float().expand(values.shape[0], classes).clone()
    return out.scatter_(-1, indices.long(), values.float())


def smoothed_target(logits: Tensor, k: int, temperature: float) -> Tensor:
    """The soft target a top-k store implies, computed directly: the teacher's softmax at T on its
    top-k classes, the remaining mass shared evenly by the others (independent of the logit form)."""
    p = torch.softmax(logits.double() / float(temperature), dim=-1)
    top, idx = p.topk(k, dim=-1)
    other = (1.0 - top.sum(-1, keepdim=True)) / (p.shape[-1] - k)
    return other.expand_as(p).clone().scatter_(-1, idx, top)
