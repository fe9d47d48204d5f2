"""The students' share of the training split (``dataset.student_subset``), for small-data studies.

Soft targets matter most when the student has few labelled examples (Hinton et al. 2015 §6: a
model trained on 3% of the data with soft targets). The teacher is trained on the whole training
split; the students learn from a class-stratified share of it, drawn from the subset's own seed
only, so every variant and every seed of a study (and any later run with the same recipe) trains
on exactly the same examples.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict

import torch
from torch import Tensor

from ..config import StudentSubsetConfig


def subset_indices(y: Tensor, cfg: StudentSubsetConfig, num_classes: int) -> Tensor:
    """Sorted indices of the subset: from each class, ``round(fraction · its count)`` examples (at
    least one; a class with no example stays empty), drawn with a generator seeded by ``cfg.seed``."""
    labels = y.detach().cpu()
    gen = torch.Generator().manual_seed(cfg.seed)
    picked = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        if len(members) == 0:
            continue
        k = max(1, int(round(len(members) * cfg.fraction)))
        picked.append(members[torch.randperm(len(members), generator=gen)[:k]])
    return torch.cat(picked).sort().values.to(y.device)


def subset_facts(y: Tensor, idx: Tensor, cfg: StudentSubsetConfig, num_classes: int) -> Dict[str, Any]:
    """What ``run.json`` and a study's notes record: sizes, class counts and a digest of the indices
    (equal digests: the same examples)."""
    digest = hashlib.sha256(idx.detach().cpu().to(torch.int64).numpy().tobytes()).hexdigest()[:16]
    return {"examples": len(idx), "of": len(y), "fraction": cfg.fraction, "seed": cfg.seed,
            "class_counts": y.index_select(0, idx).bincount(minlength=num_classes).tolist(), "indices_sha256": digest}


def describe_subset(facts: Dict[str, Any]) -> str:
    """One sentence for a study's notes."""
    return (f"every student trained on {facts['examples']:,} of the {facts['of']:,} training examples "
            f"(dataset.student_subset: fraction {facts['fraction']}, seed {facts['seed']}, stratified by class, indices "
            f"sha256 {facts['indices_sha256']}); the teacher on all of them")
