"""The frozen teacher: always in eval mode, never tracked by autograd, logits cached when possible.

Enforced here rather than in each script, because forgetting ``teacher.eval()`` (dropout noise in
the soft labels) or ``no_grad`` (a wasted backward graph) are the two most common KD bugs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .logits import logits_of


class FrozenTeacher(nn.Module):
    """Eval mode and no gradient for as long as it wraps ``model``; :meth:`release` hands the
    model back exactly as it was given (its training flags and every ``requires_grad``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._given = ({name: m.training for name, m in model.named_modules()},
                       {name: p.requires_grad for name, p in model.named_parameters()})
        #: Parameters :meth:`use_channels_last` converted from the standard layout (restored on release).
        self._relaid: set = set()
        self.model.requires_grad_(False)
        self.model.eval()
        super().train(False)

    def use_channels_last(self) -> None:
        """4-D weights in channels_last, as the run trains its student: an online teacher's
        convolutions are then as fast as the student's (with bf16 on CPUs with native bf16 much
        faster than in the standard layout). :meth:`release` puts them back."""
        for name, p in self.model.named_parameters():
            if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                self._relaid.add(name)
        self.model.to(memory_format=torch.channels_last)

    def release(self) -> nn.Module:
        """Restore the wrapped model's training modes, ``requires_grad`` flags and weight layout;
        returns it."""
        modes, grads = self._given
        for name, m in self.model.named_modules():
            m.training = modes.get(name, m.training)
        for name, p in self.model.named_parameters():
            p.requires_grad_(grads.get(name, p.requires_grad))
            if name in self._relaid:
                p.data = p.data.contiguous()
        self._relaid.clear()
        return self.model

    def __enter__(self) -> "FrozenTeacher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Ignored on purpose: a teacher stays in eval mode even inside ``student.train()`` calls."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if self.model.training:  # someone flipped the inner module directly
            self.model.eval()
        return logits_of(self.model(x), "teacher")

    @torch.no_grad()
    def member_logits(self, x: Tensor) -> Tensor:
        """Each member's logits, (B, members, K): a :class:`TeacherEnsemble`'s members, or the one model."""
        if self.model.training:
            self.model.eval()
        members = self.model.members if isinstance(self.model, TeacherEnsemble) else [self.model]
        return torch.stack([logits_of(m(x), "teacher") for m in members], 1)

    @torch.no_grad()
    def logits_for(self, x: Tensor, batch_size: int = 2000, members: bool = False) -> Tensor:
        """Logits for a whole dataset, in batches; computed once and reused every epoch.
        ``members``: each member's, (N, members, K), as :meth:`member_logits`."""
        call = self.member_logits if members else self
        return torch.cat([call(chunk) for chunk in x.split(batch_size)])


class PrecomputedTeacherLogits:
    """Teacher signal from training-set logits computed elsewhere (one forward shared by a study)."""

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits

    def __call__(self, idx: Tensor, xb: Tensor) -> Tensor:
        return self.logits.index_select(0, idx)


class TeacherEnsemble(nn.Module):
    """Several teachers as one: the mean of their logits (equal weights).

    Members keep their module names under ``members.<i>.`` (``members.0.layer3``), so feature
    methods can tap any member by name.
    """

    def __init__(self, members: "list[nn.Module]") -> None:
        super().__init__()
        if not members:
            raise ValueError("a teacher ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([logits_of(m(x), "teacher") for m in self.members]).mean(0)
