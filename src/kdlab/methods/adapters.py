"""Adapters that make a student feature comparable with a teacher feature, built from observed shapes.

A thin student's ``layer2`` rarely has the teacher's width or resolution, and users should not
have to compute those by hand: on the first batch the method sees both tensors and builds

* identity when the shapes already match;
* ``Linear(Ds, Dt)`` for vectors ``(B, Ds) -> (B, Dt)`` and on the last dim of sequences
  ``(B, L, Ds) -> (B, L, Dt)`` (the sequence lengths must match);
* for maps ``(B, C, H, W)``: adaptive average pooling of whichever map is LARGER down to the
  smaller size (per dimension, so each side may be pooled), then ``1x1 conv + BatchNorm2d``
  from student to teacher channels when they differ. FitNets' regressor maps student -> teacher;
  when the teacher map is the larger one its target is pooled too, which is why an adapter takes
  and returns the *pair* to compare. Pooling before the 1x1 conv is exact (both are linear per
  pixel) and cheaper. mdistiller's ``ConvReg`` uses a strided/sized conv plus BN and ReLU
  instead; we keep no ReLU because teacher features taken before an activation may be negative.
  A training batch with ONE value per channel (a single sample of a pooled ``(1, C, 1, 1)`` map,
  e.g. the trainer's trailing partial batch) has no batch variance: there the BatchNorm normalises
  with its running statistics and leaves them unchanged, as in eval mode, instead of raising
  (:class:`AdapterBatchNorm2d`); its affine weights and the conv still train.

Adapters are trainable parts owned by the method: they live in an :class:`AdapterSet` (an
``nn.Module``) so they are optimised with the student, saved in and restored from checkpoints,
and never part of the exported student.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..losses.hint import conv_bn_hint_loss, hint_loss

__all__ = ["AdapterBatchNorm2d", "AdapterSet", "ConvAdapter", "LinearAdapter", "PairAdapter", "build_adapter", "pair_key"]

Shape = Tuple[int, ...]


def _fmt(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def pair_key(student: str, teacher: str) -> str:
    """``ModuleDict`` key of a layer pair (module names contain dots, which keys may not)."""
    return f"{student}>{teacher}".replace(".", "/")


class PairAdapter(nn.Module):
    """Identity: ``(student_feat, teacher_feat) -> (student_feat, teacher_feat)``, already comparable."""

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tuple[Tensor, Tensor]:
        return student_feat, teacher_feat

    def hint(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        """FitNets' hint: the mean squared difference of the adapted pair."""
        return hint_loss(*self(student_feat, teacher_feat))

    def describe(self) -> str:
        """One line for logs: what this adapter does to the pair."""
        return "identity"


class LinearAdapter(PairAdapter):
    """``Linear`` on the last dimension: vectors ``(B, Ds)`` and token sequences ``(B, L, Ds)``."""

    def __init__(
        self, in_dim: int, out_dim: int, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, device=device, dtype=dtype)

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tuple[Tensor, Tensor]:
        return self.proj(student_feat), teacher_feat

    def describe(self) -> str:
        return f"linear {self.proj.in_features}->{self.proj.out_features}"


class AdapterBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training mode, normalises a batch of one value per channel (B·H·W = 1) with the
    running statistics and does not update them, where ``nn.BatchNorm2d`` raises (no batch variance)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.track_running_stats and x.dim() == 4 and x.size(0) * x.size(2) * x.size(3) == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class ConvAdapter(PairAdapter):
    """Feature maps ``(B, C, H, W)``: pool the larger map(s) to ``size``, then 1x1 conv + BN on channels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: Tuple[int, int],
        pool_student: bool,
        pool_teacher: bool,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.pool_student = bool(pool_student)
        self.pool_teacher = bool(pool_teacher)
        self.proj: nn.Module = nn.Identity()
        if in_channels != out_channels:  # bias-free conv: the BatchNorm right after supplies the shift
            self.proj = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False, device=device, dtype=dtype),
                AdapterBatchNorm2d(out_channels, device=device, dtype=dtype),
            )

    def pooled(self, student_feat: Tensor, teacher_feat: Tensor) -> Tuple[Tensor, Tensor]:
        """The pair at the common size, before the 1x1 conv + BN."""
        if self.pool_student:
            student_feat = F.adaptive_avg_pool2d(student_feat, self.size)
        if self.pool_teacher:
            teacher_feat = F.adaptive_avg_pool2d(teacher_feat, self.size)
        return student_feat, teacher_feat

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tuple[Tensor, Tensor]:
        student_feat, teacher_feat = self.pooled(student_feat, teacher_feat)
        return self.proj(student_feat), teacher_feat

    def hint(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        """The hint of the adapted pair; through a conv + BatchNorm in the moment form of
        :func:`~kdlab.losses.hint.conv_bn_hint_loss` (same loss, gradients and running statistics, a
        third of the cost), except under autocast, whose half-precision products the form's
        differences of large terms would not survive."""
        if not isinstance(self.proj, nn.Sequential) or torch.is_autocast_enabled(student_feat.device.type) \
                or student_feat.dtype not in (torch.float32, torch.float64):
            return super().hint(student_feat, teacher_feat)
        student_feat, teacher_feat = self.pooled(student_feat, teacher_feat)
        conv, bn = self.proj[0], self.proj[1]
        pixels = student_feat.shape[0] * student_feat.shape[2] * student_feat.shape[3]
        batch_stats = bn.training or not bn.track_running_stats
        if batch_stats and bn.track_running_stats and pixels == 1:
            batch_stats = False  # AdapterBatchNorm2d: one value per channel has no variance
        update = batch_stats and bn.training and bn.track_running_stats
        loss, mu, var = conv_bn_hint_loss(
            student_feat, conv.weight, teacher_feat, bn.weight, bn.bias, bn.eps,
            mean=None if batch_stats else bn.running_mean, var=None if batch_stats else bn.running_var)
        if update:  # what nn.BatchNorm2d does in training mode
            bn.num_batches_tracked.add_(1)
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            with torch.no_grad():
                bn.running_mean.mul_(1 - m).add_(mu, alpha=m)
                bn.running_var.mul_(1 - m).add_(var * (pixels / max(pixels - 1, 1)), alpha=m)
        return loss

    def describe(self) -> str:
        parts = []
        if isinstance(self.proj, nn.Sequential):
            conv = self.proj[0]
            parts.append(f"conv1x1+bn {conv.in_channels}->{conv.out_channels}")
        size = f"{self.size[0]}x{self.size[1]}"
        if self.pool_student:
            parts.append(f"pool student to {size}")
        if self.pool_teacher:
            parts.append(f"pool teacher to {size}")
        return ", ".join(parts) or "identity"


def _cannot(student_name: str, teacher_name: str, s: Sequence[int], t: Sequence[int], reason: str) -> ConfigError:
    return ConfigError(
        f"cannot compare student {student_name!r} output {_fmt(s)} with teacher {teacher_name!r} output {_fmt(t)}: "
        f"{reason}; pick another layer pair (see kdlab layers RECIPE)"
    )


def build_adapter(
    student_shape: Sequence[int],
    teacher_shape: Sequence[int],
    student_name: str = "student",
    teacher_name: str = "teacher",
    device: Optional[torch.device] = None,
    dtype: Optional[torch.dtype] = None,
) -> PairAdapter:
    """The adapter joining two observed feature shapes (batch dimension first), or a one-line error."""
    s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
    if len(s) < 1 or len(t) < 1 or s[0] != t[0]:
        raise _cannot(student_name, teacher_name, s, t, "the batch sizes differ")
    if s == t:
        return PairAdapter()
    if len(s) != len(t):
        raise _cannot(student_name, teacher_name, s, t, f"no adapter joins a {len(s)}-D and a {len(t)}-D output")
    if len(s) == 2:
        return LinearAdapter(s[1], t[1], device, dtype)
    if len(s) == 3:
        if s[1] != t[1]:
            raise _cannot(student_name, teacher_name, s, t, f"sequence lengths differ ({s[1]} vs {t[1]})")
        return LinearAdapter(s[2], t[2], device, dtype)
    if len(s) == 4:
        size = (min(s[2], t[2]), min(s[3], t[3]))
        return ConvAdapter(s[1], t[1], size, s[2:] != size, t[2:] != size, device, dtype)
    raise _cannot(student_name, teacher_name, s, t, f"no adapter for {len(s)}-D outputs of different shapes")


class AdapterSet(nn.Module):
    """The adapters of one method, one per (student layer, teacher layer) pair, built lazily.

    Call it as ``adapters(student_name, teacher_name, student_feat, teacher_feat)``; the first
    call for a pair builds its adapter on the features' device and dtype. Because new parameters
    must reach the optimizer, build them before creating it (run the method on the first batch,
    or call :meth:`build`) and then :meth:`lock` the set, so a late build fails loudly instead of
    leaving a randomly initialised adapter untrained.

    The observed per-sample shapes travel in the ``state_dict`` (``_extra_state``, plain lists and
    strings, so ``torch.load(weights_only=True)`` reads it): loading a checkpoint into a fresh set
    rebuilds the adapters before their weights are copied in. Restored adapters are created on the
    CPU in their saved dtype; move the owning module with ``.to(device)`` as usual.
    """

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self._specs: Dict[str, Dict[str, object]] = {}
        self.locked = False

    def lock(self) -> None:
        """Forbid building new adapters (their parameters would be missing from the optimizer)."""
        self.locked = True

    def __contains__(self, key: object) -> bool:
        return key in self.adapters

    def __len__(self) -> int:
        return len(self.adapters)

    def build(
        self,
        student_name: str,
        teacher_name: str,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> PairAdapter:
        """Build (or return the existing) adapter of a pair from full observed shapes, batch first."""
        key = pair_key(student_name, teacher_name)
        if key in self.adapters:
            self._check_shapes(key, student_shape, teacher_shape)
            return self.adapters[key]  # type: ignore[return-value]
        if self.locked:
            raise RuntimeError(
                f"adapter for {student_name!r} -> {teacher_name!r} requested after lock(); build it on the first batch"
            )
        adapter = build_adapter(student_shape, teacher_shape, student_name, teacher_name, device, dtype)
        adapter.train(self.training)  # a new adapter follows its owner's train/eval mode
        self.adapters[key] = adapter
        self._specs[key] = {
            "student": student_name,
            "teacher": teacher_name,
            "student_shape": [int(d) for d in student_shape[1:]],
            "teacher_shape": [int(d) for d in teacher_shape[1:]],
            "dtype": str(dtype or torch.get_default_dtype()).replace("torch.", ""),
        }
        return adapter

    def _check_shapes(self, key: str, student_shape: Sequence[int], teacher_shape: Sequence[int]) -> None:
        spec = self._specs[key]
        s, t = list(student_shape), list(teacher_shape)
        if s[1:] != spec["student_shape"] or t[1:] != spec["teacher_shape"] or s[0] != t[0]:
            raise ConfigError(
                f"pair {spec['student']!r} -> {spec['teacher']!r}: outputs {_fmt(s)} and {_fmt(t)} differ from the "
                f"per-sample shapes {_fmt(spec['student_shape'])} and {_fmt(spec['teacher_shape'])} its adapter was "
                "built for; keep the input size the same for every batch"
            )

    def forward(
        self, student_name: str, teacher_name: str, student_feat: Tensor, teacher_feat: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """The pair to compare: adapted student feature and (possibly pooled) teacher feature."""
        adapter = self.build(
            student_name, teacher_name, student_feat.shape, teacher_feat.shape, student_feat.device, student_feat.dtype
        )
        return adapter(student_feat, teacher_feat)

    def hint(self, student_name: str, teacher_name: str, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        """FitNets' hint loss of a pair: ``mean((adapted student − teacher)²)``, built on first use like
        :meth:`forward`, computed by the adapter (which may take a cheaper exact route)."""
        adapter = self.build(
            student_name, teacher_name, student_feat.shape, teacher_feat.shape, student_feat.device, student_feat.dtype
        )
        return adapter.hint(student_feat, teacher_feat)  # type: ignore[operator]

    def describe(self) -> List[str]:
        """One line per pair, e.g. ``features.3 -> layer2: conv1x1+bn 16->128, pool student to 7x7``."""
        return [
            f"{spec['student']} -> {spec['teacher']}: {self.adapters[key].describe()}"  # type: ignore[operator]
            for key, spec in self._specs.items()
        ]

    def get_extra_state(self) -> Dict[str, object]:
        return {"version": 1, "pairs": {key: dict(spec) for key, spec in self._specs.items()}}

    def set_extra_state(self, state: object) -> None:
        """Rebuild the saved adapters (their weights are loaded right after, by ``load_state_dict``)."""
        pairs = state.get("pairs") if isinstance(state, dict) else None
        if not isinstance(pairs, dict):
            raise CheckpointError("checkpoint adapters are unreadable (no pair list); was it written by kdlab?")
        for key, spec in pairs.items():
            try:
                s_name, t_name = str(spec["student"]), str(spec["teacher"])
                s_shape, t_shape = [int(d) for d in spec["student_shape"]], [int(d) for d in spec["teacher_shape"]]
                dtype = getattr(torch, str(spec["dtype"]))
                if not isinstance(dtype, torch.dtype):
                    raise TypeError(spec["dtype"])
            except (KeyError, TypeError, ValueError, AttributeError):
                raise CheckpointError(
                    f"checkpoint adapter {key!r} has an unreadable description; was it written by kdlab?"
                ) from None
            if key in self.adapters:
                have_s, have_t = self._specs[key]["student_shape"], self._specs[key]["teacher_shape"]
                if [s_shape, t_shape] != [have_s, have_t]:
                    raise CheckpointError(
                        f"checkpoint adapter {s_name!r} -> {t_name!r} was built for {_fmt(s_shape)} -> "
                        f"{_fmt(t_shape)}, this run has {_fmt(have_s)} -> {_fmt(have_t)}; "
                        "resume with the same models, layers and input size"
                    )
                continue
            locked, self.locked = self.locked, False
            try:
                self.build(s_name, t_name, [1, *s_shape], [1, *t_shape], dtype=dtype)
            finally:
                self.locked = locked
