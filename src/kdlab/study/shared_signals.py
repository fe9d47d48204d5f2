"""One teacher signal store for a whole study: every signal its students read, computed once.

A study (``kdlab compare``) trains many students — several methods, several seeds — on the same
replayed views. Each run asks its :class:`~kdlab.train.stored.SignalsPlan` for a store keyed by
the signals its method reads. :func:`shared_store` computes one store holding the teacher's
logits and every teacher feature the study's methods read (each in its method's form), and hands
back a plan that answers every request the store covers — the same teacher, data, views and
precision, and the same form, shape and dtype for each signal asked for — with that store,
restricted to those signals. A layer two methods read in different forms (FitNets' feature map and
AT's energy map of one layer) is stored in both, the second under an alias, from the same teacher
pass. Any other request (a teacher's members, top-k logits at another temperature) goes to the
plan's own store function, so every run still reads exactly the signal it asked for; the study then
reports that store separately.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

from ..config import TrainConfig
from ..data import DatasetSplits, data_fingerprint
from ..methods.base import Batch, Distiller
from ..teacher import FrozenTeacher
from ..teacher_cache.keys import normal
from ..teacher_cache.signals import SignalStore
from ..train.precision import Precision
from ..train.sources import OnlineTeacher, StoredSignals
from ..train.stored import SignalsPlan, StudySignals, form_alias, stored_source


@dataclass
class SharedStore:
    """A study's store and the plan its runs are given; ``readers`` counts the requests it answered."""

    plan: SignalsPlan
    store: Optional[SignalStore]
    reason: str
    readers: int = 0
    source: Optional[StoredSignals] = None  # the store as a teacher source (reads logits as every run does)
    #: methods reading a stored layer in another method's form: stored for them under an alias, but a
    #: batched step (one array per layer) cannot hold them
    left_out: List[Distiller] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return self.store.nbytes if self.store is not None else 0

    @property
    def seconds(self) -> float:
        """Seconds spent computing it here (0.0: an earlier run had computed it)."""
        return self.store.seconds if self.store is not None and self.store.computed else 0.0

    def note(self, readers: Optional[int] = None) -> str:
        """One line for a study's notes: size, cost (or reuse) and how many student runs read it."""
        if self.store is None:
            return f"no shared teacher signal store: {self.reason}"
        cost = f"computed in {self.seconds:.1f} s" if self.store.computed else "reused from an earlier run"
        n = self.readers if readers is None else readers
        signals = ", ".join(k.split(":", 1)[-1] for k in sorted(self.store.shapes, key=lambda k: (not k.startswith("logits"), k)))
        return (f"teacher signal store {self.store.path.name} ({signals}; {self.store.views} view(s) per sample): "
                f"{self.nbytes / 1e6:.1f} MB, {cost}, read by {n} student run(s)")

    def logits_table(self, train: Any) -> Tensor:
        """The stored logits of view 0 of every sample of ``train``: a plain study's shared training-set logits
        (as a run reads them: top-k logits expanded)."""
        assert self.source is not None
        index = torch.arange(len(train), device=train.x.device)
        out = self.source.outputs(Batch(train.x, train.y, index, torch.zeros_like(index)))
        assert out is not None
        return out.logits


def reads_shared_store(method: Distiller) -> bool:
    """True when a study's store can hold what ``method`` reads: a single teacher's signals (not each
    member's logits of a teacher ensemble, not the student's own moving average)."""
    needs = method.needs
    return needs.teacher and not needs.teacher_members and not needs.ema_teacher


def shared_store(plan: SignalsPlan, methods: Sequence[Distiller], teacher: FrozenTeacher, data: DatasetSplits,
                 cfg: TrainConfig) -> SharedStore:
    """Compute (or reuse) the store of every signal ``methods`` read on ``plan``'s views, and the plan
    that hands it to every run it covers (see the module docstring). ``cfg``: the students' train
    settings (their precision is part of the store's key). When the store would not fit, the plan is
    returned as it is, with the reason."""
    usable = [m for m in methods if reads_shared_store(m)]
    union = StudySignals(usable, other_forms=True)  # a layer two methods read in two forms: stored in both
    if plan.top_k is not None and union.temperature is None:  # each run then says why (its own one-line error)
        return SharedStore(plan, None, "teacher_signals.top_k stores logits at a method's temperature, and none has one")
    device = data.train.x.device
    precision = Precision.of(cfg, device, None, teacher.model)  # the teacher's layout, as each run resolves it
    teacher.to(device)
    online = OnlineTeacher(teacher, union.needs.teacher_features, False, union.teacher_signal,
                           aliases={alias: layer for alias, (layer, _m) in union.aliases.items()})
    precision.teacher_pass(online)  # as each run lays the teacher out (Precision.prepare)
    try:
        stored, why = stored_source(plan, union, online, data.train, data_fingerprint(data), precision, device)
    finally:
        online.close()
    if stored is None:
        return SharedStore(plan, None, why, left_out=union.left_out)
    store: SignalStore = stored.store
    result = SharedStore(plan, store, why, source=stored, left_out=union.left_out)
    key = store.meta["key"]

    def open_store(run_key: Dict[str, Any], *, shapes: Mapping[str, Any], **kwargs: Any) -> Any:
        files = _covers(key, store, normal(run_key), shapes)
        if files is not None:
            result.readers += 1
            meta = {**store.meta, "signals": {k: store.meta["signals"][f] for k, f in files.items()}}
            return SignalStore(store.path, meta, files)  # memory-maps only the signals this run reads
        return plan.open_store(run_key, shapes=shapes, **kwargs)

    result.plan = dataclasses.replace(plan, open_store=open_store)
    return result


def _covers(key: Dict[str, Any], store: SignalStore, run_key: Dict[str, Any],
            shapes: Mapping[str, Any]) -> Optional[Dict[str, str]]:
    """Where the study's store holds each signal a run asks for, computed as the run would: {the run's
    name: the store's} (a layer in a second form is under its alias); None when it does not hold them all."""
    if {k: v for k, v in key.items() if k != "signals"} != {k: v for k, v in run_key.items() if k != "signals"}:
        return None
    stored, asked = key.get("signals", {}), run_key.get("signals", {})
    files: Dict[str, str] = {}
    for name, spec in shapes.items():
        shape, dtype = (spec.shape, spec.dtype) if hasattr(spec, "shape") else spec
        want = asked.get(name)
        candidates = [name] + ([f"feature:{form_alias(name.split(':', 1)[1], want['form'])}"]
                               if name.startswith("feature:") and isinstance(want, dict) and "form" in want else [])
        found = next((c for c in candidates if stored.get(c) == want and c in store.shapes
                      and store.shapes[c].shape == tuple(shape) and store.shapes[c].dtype == dtype), None)
        if found is None:
            return None
        files[name] = found
    return files
