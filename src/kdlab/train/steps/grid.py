"""The batched step of a (variant × seed) grid of students: every student's step in one.

For small students one training step is mostly fixed overhead (Python, autograd, dispatch), so
training N students one by one costs about N times one run. Here:

* each seed has its own batch order, and the variants of a seed share its batch;
* with replayed views (:class:`~kdlab.data.views.ReplayViews`: an augmented study trained from a
  stored teacher signal) each sample's view of the epoch is re-created once per step for every
  seed's batch, and the teacher's outputs of exactly those views come from the teacher source, so
  every student sees the same augmented inputs as when it is trained alone;
* each variant's objective runs over all its seeds at once — in closed form
  (:mod:`kdlab.losses.closed_form`) or, for a method without one, vmapped through autograd (a method
  with data-dependent operations, RKD, is called once per seed on its slice instead); a feature
  method the grid may train (attention transfer, RKD) gets its students' tapped features and the
  teacher's stored features of the same batch (in the method's form, e.g. AT's energy maps) — and
  one backward pass takes all students' gradients: student ``m``'s loss depends only on its own
  slice of the stacked parameters, so each slice receives exactly its own gradient;
* one optimizer over the stacked tensors equals independent optimizers, because Adam, AdamW and
  SGD are elementwise; gradient clipping is done per student (its own norm).

Results equal training each student alone to float tolerance (tested).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.func import vmap

from ...methods.base import Batch, Distiller, Outputs
from ..sources import TeacherSource
from ..students import StudentGrid


def clip_per_student(grads: Sequence[Tensor], max_norm: float, n: int) -> None:
    """``clip_grad_norm_`` applied to each student's slice of the stacked gradients."""
    sq = sum(g.reshape(n, -1).pow(2).sum(1) for g in grads)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # type: ignore[union-attr]
    for g in grads:
        g.mul_(coef.view(n, *([1] * (g.dim() - 1))))


class GridStep:
    """One optimizer step of every student of ``grid`` on its seed's batch.

    The teacher side comes from ``source``: with a :attr:`~kdlab.train.sources.TeacherSource.table`
    (training-set logits) and plain batches, the closed forms read their rows tabulated once per
    epoch; otherwise (``replay``: the batches are replayed views) the source is asked for the batch's
    teacher outputs and the closed forms build their rows from them, per step.
    """

    def __init__(self, *, grid: StudentGrid, train: Any, indexers: Sequence[Any], fast: Sequence[Any],
                 source: TeacherSource, optimizer: torch.optim.Optimizer, clip: Optional[float],
                 replay: Any = None) -> None:
        self.grid, self.train, self.indexers, self.fast, self.source = grid, train, list(indexers), list(fast), source
        self.optimizer, self.clip, self.replay = optimizer, clip, replay
        methods = grid.methods
        # per method: (student logits, labels, teacher logits, student features, teacher features), all per seed
        self.step_fns = [None if f is not None else _seeds_fn(m) for f, m in zip(self.fast, methods)]
        self.any_fast = any(f is not None for f in self.fast)
        self.any_autograd = any(f is None for f in self.fast)
        self.any_teacher = any(m.needs.teacher for m in methods)
        # tabulated rows: plain batches and a table (or no teacher at all); else rows from each batch's teacher outputs
        self.tabulated = replay is None and (source.table is not None or not self.any_teacher)
        self.number = 0
        kind = "batched grid (grouped matmuls)" if grid.grouped else "batched grid (vmap)"
        if replay is not None:  # un-augmented views: the stored teacher signal of the plain training set
            kind = f"{kind}, {'replayed views' if replay.cfg.enabled else 'stored teacher signal'}"
        self.kind = kind

    def epoch(self, number: int = 0) -> Tuple[Iterable[Tuple[Tensor, ...]], int]:
        for f, m in zip(self.fast, self.grid.methods):
            if f is not None:
                f.prepare_for(m)
        self.grid.base.train()
        self.number = number
        return zip(*(ix.epoch() for ix in self.indexers)), len(self.indexers[0])

    def _inputs(self, flat_idx: Tensor) -> Tuple[Tensor, Optional[Tensor], Optional[Outputs]]:
        """Every seed's inputs, labels and teacher outputs, flat (S·B, ...): once per step for all variants
        (labels and teacher outputs None when only tabulated closed forms run)."""
        X, Y, replay = self.train.x, self.train.y, self.replay
        if replay is not None:
            view = replay.view_of(self.number, flat_idx)
            x, y = replay(X, Y, flat_idx, view)
        else:
            view, x = None, X.index_select(0, flat_idx)
            y = Y.index_select(0, flat_idx) if self.any_autograd or not self.tabulated else None
        teacher = None
        if self.any_teacher and y is not None:
            teacher = self.source.outputs(Batch(x, y, flat_idx, view))
        return x, y, teacher

    def __call__(self, batch: Tuple[Tensor, ...]) -> Tensor:
        """Returns the (V, S, width) loss rows of this step (NaN-padded)."""
        grid, X = self.grid, self.train.x
        S, M = grid.S, grid.M
        idx = torch.stack(batch)  # (S, B)
        flat_idx = idx.reshape(-1).to(X.device)
        B = idx.shape[1]
        x, y, teacher = self._inputs(flat_idx)
        xb = x.view(S, B, *x.shape[1:])
        out = grid.per_seed_inputs(grid.grid(), xb)  # (S, V, B, C), with the tapped features {name: (S, V, B, ...)}
        logits, feats = out if grid.tap is not None else (out, {})
        values, grads, autograd_total = [], [], None
        detached = logits.detach().contiguous() if self.any_fast else logits
        yb = y.view(S, B, *y.shape[1:]) if y is not None else None
        tl = teacher.logits if teacher is not None else None
        tb = tl.view(S, B, *tl.shape[1:]) if tl is not None else None
        tf = {k: f.view(S, B, *f.shape[1:]) for k, f in teacher.features.items()} if teacher is not None else {}
        for v, (f, step_fn, m) in enumerate(zip(self.fast, self.step_fns, grid.methods)):
            if f is not None:
                rows = f.rows(flat_idx) if self.tabulated else f.rows_for(y, tl if m.needs.teacher else None)
                vals, grad = f(detached[:, v], rows.view(S, B, -1))
                vals = vals.narrow(-1, 0, 1 + len(m.term_weights()))  # CE's closed form also reports a zero soft term
                grads.append(grad)
            else:
                grads.append(logits.new_zeros(S, B, logits.shape[-1]))
                needs = m.needs
                sf = {k: feats[k][:, v] for k in needs.student_features} if not needs.logits_only else {}
                mine = {k: tf[k] for k in needs.teacher_features} if not needs.logits_only else {}
                terms = step_fn(logits[:, v], yb, tb, sf, mine)  # type: ignore[misc]
                total = _total_of(m, terms)
                autograd_total = total.sum() + (0 if autograd_total is None else autograd_total)
                vals = torch.stack([total, *(terms[k] for k in m.term_weights())], -1).detach()
            values.append(_pad(vals, grid.width))
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        outputs: List[Tensor] = [logits] if self.any_fast else []
        out_grads: List[Optional[Tensor]] = [torch.stack(grads, 1)] if self.any_fast else []
        if autograd_total is not None:
            outputs.append(autograd_total)
            out_grads.append(None)
        torch.autograd.backward(outputs, out_grads)  # type: ignore[arg-type]
        if self.clip is not None:
            clip_per_student([p.grad for p in grid.params.values()], self.clip, M)  # type: ignore[misc]
        opt.step()
        return torch.stack(values)  # (V, S, width)

    def finish(self) -> None:
        pass


def _terms_fn(method: Distiller) -> Callable[..., Dict[str, Tensor]]:
    """The method as a function of tensors only, so vmap can batch it over seeds."""

    def terms(s: Tensor, y: Tensor, t: Optional[Tensor], sf: Dict[str, Tensor], tf: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return method(Batch(s, y), Outputs(s, sf), None if t is None else Outputs(t, tf))

    return terms


def _seeds_fn(method: Distiller) -> Callable[..., Dict[str, Tensor]]:
    """The method over every seed's slice at once: vmapped, or one call per seed when its forward has
    data-dependent operations (:attr:`~kdlab.methods.base.Distiller.grid_vmap`); terms come out (S,)."""
    terms = _terms_fn(method)
    if method.grid_vmap:
        return vmap(terms, in_dims=(0, 0, 0 if method.needs.teacher else None, 0, 0))

    def per_seed(s: Tensor, y: Tensor, t: Optional[Tensor], sf: Dict[str, Tensor], tf: Dict[str, Tensor]) -> Dict[str, Tensor]:
        rows = [terms(s[i], y[i], None if t is None else t[i], {k: f[i] for k, f in sf.items()},
                      {k: f[i] for k, f in tf.items()}) for i in range(s.shape[0])]
        return {name: torch.stack([r[name] for r in rows]) for name in rows[0]}

    return per_seed


def _total_of(method: Distiller, terms: Dict[str, Tensor]) -> Tensor:
    total: Any = 0
    for name, w in method.weights().items():
        if w != 0:
            total = total + w * terms[name]
    return total if isinstance(total, Tensor) else sum(terms.values()) * 0.0


def _pad(values: Tensor, width: int) -> Tensor:
    """Pad the last dim with NaN to ``width`` (methods log different numbers of terms)."""
    if values.shape[-1] == width:
        return values
    return torch.cat([values, values.new_full((*values.shape[:-1], width - values.shape[-1]), float("nan"))], -1)
