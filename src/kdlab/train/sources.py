"""Teacher sources: where a method's teacher side comes from, behind one small interface.

The epoch loop and its steps ask a source for the teacher's outputs of a batch and never know
which source they have:

* :class:`NoTeacher` — the method reads nothing of a teacher (teachers' own training, scratch);
* :class:`CachedLogits` — the training set's teacher logits, computed once (per member for a
  teacher ensemble, each process a share under torchrun) and read by sample index; the closed-form
  and batched steps tabulate its :attr:`~TeacherSource.table` instead of calling it per batch;
* :class:`OnlineTeacher` — the frozen teacher runs on every (augmented) batch in eval mode under
  ``no_grad``, with forward hooks collecting the named features the method asked for;
* :class:`StoredSignals` — the teacher's outputs of every (sample, replayable view), computed once
  into a signal store (:mod:`kdlab.teacher_cache.signals`) and read by index and view;
* :class:`EmaTeacher` — the student's own exponential moving average, kept by the method.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from ..features import FeatureTap
from ..logits import logits_of
from ..losses.topk import expand_logits
from ..methods.base import Batch, Distiller, Outputs
from ..teacher import FrozenTeacher


class TeacherSource:
    """The teacher's outputs of a batch. Subclasses override :meth:`outputs` (and what they need of the rest)."""

    #: Short name recorded in ``run.json`` (``teacher_source``).
    kind = "none"
    #: Training-set teacher logits by sample index, when the source has them (tabulating steps use them).
    table: Optional[Tensor] = None
    #: The teacher module a method may inspect once (:class:`~kdlab.methods.base.RunContext`), if any.
    model: Optional[nn.Module] = None
    #: True when the teacher runs on every batch (its forward counts in a step's cost; channels_last applies).
    runs_per_batch = False

    def outputs(self, batch: Batch) -> Optional[Outputs]:
        return None

    def use_channels_last(self) -> None:
        """Lay out 4-D weights as the student's (a teacher running per batch); default: nothing to lay out."""

    def close(self) -> None:
        """Remove anything the source put on a model (hooks)."""


class NoTeacher(TeacherSource):
    """The method reads nothing of a teacher."""


class CachedLogits(TeacherSource):
    """Training-set logits computed once and read by sample index (the batch must carry its indices)."""

    kind = "cached logits"

    def __init__(self, table: Tensor, model: Optional[nn.Module] = None) -> None:
        self.table, self.model = table, model

    @classmethod
    def compute(cls, teacher: FrozenTeacher, x: Tensor, batch_size: int, members: bool,
                logits_for: Optional[Callable[..., Tensor]] = None) -> "CachedLogits":
        """One teacher pass over ``x`` (``logits_for``: a process plugin's sharded pass, else the teacher's own)."""
        table = (logits_for(teacher, x, batch_size, members) if logits_for is not None
                 else teacher.logits_for(x, batch_size, members=members))
        return cls(table, teacher.model)

    def outputs(self, batch: Batch) -> Optional[Outputs]:
        assert self.table is not None and batch.index is not None
        return Outputs(self.table.index_select(0, batch.index))


class OnlineTeacher(TeacherSource):
    """The frozen teacher on every batch: logits (or each member's) and the hooked features."""

    kind = "online"
    runs_per_batch = True

    def __init__(self, teacher: Any, features: Sequence[str] = (), members: bool = False,
                 signal: Optional[Callable[[str, Tensor], Tensor]] = None,
                 aliases: Optional[Mapping[str, str]] = None) -> None:
        """``aliases``: extra outputs, alias -> tapped layer, each ``signal(alias, that layer's feature)``
        (a study's store keeping one layer in two methods' forms)."""
        self.teacher, self.members, self.signal = teacher, members, signal
        self.aliases = dict(aliases or {})
        self.model = getattr(teacher, "model", None)
        if features and self.model is None:
            raise ValueError("features need the teacher model itself, not a logits signal")
        if self.aliases and (signal is None or not set(self.aliases.values()) <= set(features)):
            raise ValueError("aliases need a signal function and name tapped layers")
        self.tap = FeatureTap(self.model, tuple(features), role="teacher") if features else None

    @property
    def feature_names(self) -> tuple:
        """The features :meth:`outputs` returns: the tapped layers, then the aliases."""
        return (*(self.tap.names if self.tap is not None else ()), *self.aliases)

    def outputs(self, batch: Batch) -> Optional[Outputs]:
        logits = self.teacher.member_logits(batch.x) if self.members else self.teacher(batch.x)
        raw = self.tap.outputs() if self.tap is not None else {}
        feats = raw
        if self.signal is not None:  # the form the method reads (what a signal store holds)
            with torch.no_grad():
                feats = {name: self.signal(name, f) for name, f in raw.items()}
                feats.update({alias: self.signal(alias, raw[layer]) for alias, layer in self.aliases.items()})
        return Outputs(logits, feats)

    def use_channels_last(self) -> None:
        if hasattr(self.teacher, "use_channels_last"):
            self.teacher.use_channels_last()

    def close(self) -> None:
        if self.tap is not None:
            self.tap.remove()


class StoredSignals(TeacherSource):
    """The teacher's outputs of each (sample, view), read from a signal store: no teacher forward.

    The batch carries its sample indices and views (the step replays the stored views). The store
    holds ``logits`` (or their top-k form, expanded here: :mod:`kdlab.losses.topk`) and
    ``feature:<module>`` arrays (:func:`signal_names`).
    """

    kind = "stored signals"

    def __init__(self, store: Any, features: Sequence[str], model: Optional[nn.Module] = None,
                 classes: Optional[int] = None) -> None:
        self.store, self.features, self.model, self.classes = store, tuple(features), model, classes

    def outputs(self, batch: Batch) -> Optional[Outputs]:
        assert batch.index is not None and batch.view is not None, "stored signals are read by sample index and view"
        rows = self.store.rows(batch.index, batch.view)
        dtype = torch.float32
        if "logits" in rows:
            logits = rows["logits"].to(dtype)
        else:
            assert self.classes is not None, "a top-k store needs the number of classes"
            logits = expand_logits(rows["logits_top_values"], rows["logits_top_index"], rows["logits_rest"], self.classes)
        return Outputs(logits, {name: rows[f"feature:{name}"].to(dtype) for name in self.features})


def signal_names(features: Sequence[str], top_k: bool = False) -> list:
    """The arrays a signal store holds for a method reading ``features`` (``top_k``: logits in top-k form)."""
    head = ["logits_top_values", "logits_top_index", "logits_rest"] if top_k else ["logits"]
    return [*head, *(f"feature:{name}" for name in features)]


class EmaTeacher(TeacherSource):
    """The student's exponential moving average as the teacher (the method owns and saves the copy).

    Before each batch the method moves its copy towards the student (:meth:`Distiller.ema_step`);
    the copy then runs on the batch in eval mode under ``no_grad``.
    """

    kind = "student EMA"
    runs_per_batch = True

    def __init__(self, method: Distiller, student: nn.Module) -> None:
        self.method, self.student = method, student

    def outputs(self, batch: Batch) -> Optional[Outputs]:
        ema = self.method.ema_step(self.student)
        with torch.no_grad():
            return Outputs(logits_of(ema(batch.x), "student's EMA copy"))


def tabulated_source(method: Distiller, teacher: Any, table: Optional[Tensor], *, tabulate: bool, x: Optional[Tensor],
                     batch_size: int, logits_for: Optional[Callable[..., Tensor]] = None) -> Optional["tuple[TeacherSource, str]"]:
    """No teacher, or cached logits when the method reads logits alone and the batches are the stored
    training tensors (``tabulate``), with the reason; None when the teacher must run per batch
    (:func:`per_batch_source`, built after the method's setup)."""
    needs = method.needs
    if needs.ema_teacher:
        return None
    if not needs.teacher:
        return NoTeacher(), "the method reads no teacher"
    if not (needs.logits_only and tabulate):
        return None
    if table is not None:
        return CachedLogits(table, getattr(teacher, "model", None)), "training-set logits handed in (shared by a study)"
    assert x is not None
    return (CachedLogits.compute(teacher, x, batch_size, needs.teacher_members, logits_for),
            "the method reads logits only and the batches are un-augmented: one teacher pass, read by index")


def per_batch_source(method: Distiller, student: nn.Module, teacher: Any) -> "tuple[TeacherSource, str]":
    """The student's EMA, or the frozen teacher online (its feature hooks on), with the reason."""
    needs = method.needs
    if needs.ema_teacher:
        return EmaTeacher(method, student), "the method distils from its own moving average of the student"
    if teacher is None:
        raise ValueError("features or augmented batches need the teacher model itself, not cached logits")
    why = ("the method reads intermediate features" if not needs.logits_only else
           "the batches are augmented or come from a DataLoader: the teacher must see each one")
    return OnlineTeacher(teacher, needs.teacher_features, needs.teacher_members, method.teacher_signal), why


def source_facts(source: TeacherSource, reason: str) -> Dict[str, Any]:
    return {"teacher_source": source.kind, "teacher_source_reason": reason}
