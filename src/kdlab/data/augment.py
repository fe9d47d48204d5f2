"""Per-batch data augmentation with per-sample randomness: crop+flip, AutoAugment/RandAugment, MixUp/CutMix.

The trainer calls ``augment(x, y, generator)`` on each batch, whether the batch was gathered from
in-memory tensors or collated by a user's ``DataLoader``; every random draw comes from that
``torch.Generator``, so a run is a function of its seed. Each sample gets its own crop offset,
flip and policy ops; MixUp/CutMix draw one λ per batch, as in the papers.

Where each step sits relative to normalisation:

* AutoAugment / RandAugment (``torchvision.transforms.v2``) work on uint8 images. Given uint8 they
  run directly; given normalised floats they need the ``mean``/``std`` the data were normalised
  with, and undo it, round to uint8 (exact for data that came from uint8), run, and redo it. Cost:
  one policy call per sample (torchvision draws one op per call), usually more than the model step
  for small students (user ``DataLoader``s can move it into workers). Crop, flip and mixing are
  vectorised: one gather / one blend per batch.
* Random crop with zero padding, flip and MixUp/CutMix work on any dtype they can express;
  on normalised floats the padding is filled with ``-mean/std`` (black, as in torchvision's
  pad-then-normalise pipeline) when ``mean``/``std`` are given, else with 0 (the mean colour).
  MixUp needs float inputs.
* MixUp/CutMix return SOFT labels ``λ·onehot(y) + (1−λ)·onehot(y[perm])`` (float, rows sum to 1),
  which ``kdlab.losses.kd.hard_loss`` takes as class probabilities. With augmentation the
  teacher must see the same augmented batch, so no cached teacher logits can be used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.zoo import TORCHVISION_PIN

AUTOAUGMENT_POLICIES = ("cifar10", "imagenet", "svhn")
RANDAUGMENT_MAX_MAGNITUDE = 30  # torchvision's default num_magnitude_bins=31 → m in 0..30

Augment = Callable[[Tensor, Tensor, torch.Generator], Tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class AugmentConfig:
    """The recipe's ``augment:`` section; every field off by default.

    ``crop``: zero padding in px before a random crop back to the input size (4 for CIFAR);
    ``flip``: random horizontal flip; ``autoaugment``: a torchvision policy name;
    ``randaugment``: ``{n: ops per image, m: magnitude 0..30}``; ``mixup`` / ``cutmix``: Beta(α, α)
    concentration, 0 = off (with both on, each batch uses one of them, chosen with probability ½).
    """

    crop: int = 0
    flip: bool = False
    autoaugment: Optional[str] = None
    randaugment: Optional[Mapping[str, int]] = None
    mixup: float = 0.0
    cutmix: float = 0.0

    @classmethod
    def from_dict(cls, data: Optional[Mapping[str, Any]], where: str = "augment") -> "AugmentConfig":
        """Build and validate from a recipe mapping; unknown keys or bad values give one line."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping like {{crop: 4, flip: true}}, got {data!r}")
        accepted = [f.name for f in fields(cls)]
        for key in data:
            if key not in accepted:
                raise ConfigError(f"{where}.{key}: unknown augmentation; accepted: {', '.join(accepted)}")
        cfg = cls(**dict(data))
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "augment") -> None:
        if isinstance(self.crop, bool) or not isinstance(self.crop, int) or self.crop < 0:
            raise ConfigError(f"{where}.crop: padding in pixels must be an integer >= 0 (e.g. 4), got {self.crop!r}")
        if not isinstance(self.flip, bool):
            raise ConfigError(f"{where}.flip: must be true or false, got {self.flip!r}")
        if self.autoaugment is not None and self.autoaugment not in AUTOAUGMENT_POLICIES:
            raise ConfigError(f"{where}.autoaugment: unknown policy {self.autoaugment!r}; choose one of: "
                              f"{', '.join(AUTOAUGMENT_POLICIES)} (or null)")
        if self.randaugment is not None:
            ra = self.randaugment
            ok = isinstance(ra, Mapping) and set(ra) <= {"n", "m"} and all(
                isinstance(ra.get(k, 1), int) and not isinstance(ra.get(k, 1), bool) for k in ("n", "m"))
            if not ok or ra.get("n", 2) < 1 or not 0 <= ra.get("m", 9) <= RANDAUGMENT_MAX_MAGNITUDE:
                raise ConfigError(f"{where}.randaugment: expected {{n: ops >= 1, m: magnitude 0..{RANDAUGMENT_MAX_MAGNITUDE}}}"
                                  f", e.g. {{n: 2, m: 9}}, got {ra!r}")
            if self.autoaugment is not None:
                raise ConfigError(f"{where}: autoaugment and randaugment are alternatives; set one of them to null")
        for key in ("mixup", "cutmix"):
            alpha = getattr(self, key)
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0 or math.isinf(alpha):
                raise ConfigError(f"{where}.{key}: Beta concentration alpha must be a number >= 0 (0 = off, "
                                  f"1.0 is common), got {alpha!r}")

    @property
    def enabled(self) -> bool:
        """False when the batch passes unchanged (the trainer may then cache teacher logits)."""
        return bool(self.crop or self.flip or self.policy or self.mixes)

    @property
    def policy(self) -> bool:
        return self.autoaugment is not None or self.randaugment is not None

    @property
    def mixes(self) -> bool:
        """True when labels come out soft (float class probabilities)."""
        return self.mixup > 0 or self.cutmix > 0


def _uniform_int(high: int, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``n`` integers in ``[0, high]``, drawn on the generator's device, moved to ``device``."""
    return torch.randint(0, high + 1, (n,), generator=generator, device=generator.device).to(device)


def random_crop_flip(x: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Zero-pad by ``padding``, crop back to (H, W) at a per-sample random offset and, with
    ``flip``, mirror each sample with probability ½: one ``gather`` for the whole batch."""
    b = x.shape[0]
    dy = _uniform_int(2 * padding, b, generator, x.device)
    dx = _uniform_int(2 * padding, b, generator, x.device)
    mirrored = torch.rand(b, generator=generator, device=generator.device).lt(0.5).to(x.device) if flip else None
    return crop_flip(x, padding, dy, dx, mirrored)


def crop_flip(x: Tensor, padding: int, dy: Tensor, dx: Tensor, mirrored: Optional[Tensor]) -> Tensor:
    """Zero-pad by ``padding`` and crop (H, W) at per-sample offsets ``dy``, ``dx`` (in ``[0, 2·padding]``),
    mirroring the samples where ``mirrored`` is true: one ``gather`` for the whole batch."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4) if padding else x
    cols = torch.arange(w, device=x.device).expand(b, w)
    if mirrored is not None:
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    index = (rows[:, :, None] * (w + 2 * padding) + (dx[:, None] + cols)[:, None, :]).reshape(b, 1, h * w)
    return padded.reshape(b, c, -1).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def soft_targets(y: Tensor, num_classes: int) -> Tensor:
    """Labels as float class probabilities (one-hot for integer labels)."""
    if y.is_floating_point():
        return y
    return torch.nn.functional.one_hot(y, num_classes).to(torch.float32)


def _beta(alpha: float, generator: torch.Generator) -> float:
    """λ ~ Beta(α, α), seeded from ``generator`` (torch's Beta sampler takes no generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup(x: Tensor, y: Tensor, alpha: float, num_classes: int, generator: torch.Generator) -> Tuple[Tensor, Tensor, float]:
    """Zhang et al. 2018: blend the batch with a permutation of itself; returns (x, soft y, λ)."""
    if not x.is_floating_point():
        raise ConfigError("augment.mixup needs float images; apply it after normalisation")
    lam = _beta(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device)
    t = soft_targets(y, num_classes)
    return x * lam + x[perm] * (1.0 - lam), t * lam + t[perm] * (1.0 - lam), lam


def cutmix(x: Tensor, y: Tensor, alpha: float, num_classes: int, generator: torch.Generator) -> Tuple[Tensor, Tensor, float]:
    """Yun et al. 2019: paste one box of the permuted batch; λ = 1 − box area / image area, exactly."""
    b, _, h, w = x.shape
    lam = _beta(alpha, generator)
    perm = torch.randperm(b, generator=generator, device=generator.device).to(x.device)
    cut = math.sqrt(1.0 - lam)
    cy, cx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=generator, device=generator.device))
    cy, cx = cy % h, cx % w
    y0, y1 = max(cy - int(h * cut) // 2, 0), min(cy + int(h * cut) // 2, h)
    x0, x1 = max(cx - int(w * cut) // 2, 0), min(cx + int(w * cut) // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted, after clipping
    t = soft_targets(y, num_classes)
    return out, t * lam + t[perm] * (1.0 - lam), lam


def policy_transform(cfg: AugmentConfig) -> Callable[[Tensor], Tensor]:
    try:
        from torchvision.transforms import v2  # optional: torchvision
    except Exception:  # absent, or built for another torch
        key = "autoaugment" if cfg.autoaugment is not None else "randaugment"
        raise ConfigError(f"augment.{key} needs torchvision: {TORCHVISION_PIN} (torchvision must match torch "
                          f"{torch.__version__})") from None
    if cfg.autoaugment is not None:
        return v2.AutoAugment(v2.AutoAugmentPolicy(cfg.autoaugment))
    ra = dict(cfg.randaugment or {})
    return v2.RandAugment(num_ops=int(ra.get("n", 2)), magnitude=int(ra.get("m", 9)))


class Augmenter:
    """``augment(x, y, generator) -> (x, y)`` for (B, C, H, W) batches; see the module docstring.

    ``mean``/``std``: the normalisation already applied to float inputs (scalars or one value per
    channel); needed by AutoAugment/RandAugment on floats and for black crop padding.
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int, mean: Optional[float | Sequence[float]] = None,
                 std: Optional[float | Sequence[float]] = None) -> None:
        cfg.validate()
        self.cfg, self.num_classes = cfg, int(num_classes)
        self.mean, self.std = mean, std
        self.policy = policy_transform(cfg) if cfg.policy else None

    def _stats(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """mean and std as (C or 1, 1, 1) tensors on ``x``'s device, checked against its channels."""
        as_t = lambda v: torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # noqa: E731
        mean, std = as_t(self.mean), as_t(self.std)
        for what, t in (("mean", mean), ("std", std)):
            if t.shape[0] not in (1, x.shape[1]):
                raise ConfigError(f"augmentation {what} has {t.shape[0]} values for {x.shape[1]}-channel images; "
                                  f"give one value or one per channel")
        return mean, std

    def _apply_policy(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """One policy call per sample (per-sample ops), under a torch RNG seeded from ``generator``."""
        assert self.policy is not None
        floats = x.is_floating_point()
        if floats:
            if self.mean is None or self.std is None:
                raise ConfigError("augment.autoaugment/randaugment on normalised images needs the dataset mean "
                                  "and std (pass mean=, std= to build_augment) or uint8 images")
            mean, std = self._stats(x)
            images = (x * std + mean).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        else:
            images = x
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global RNG; keep it untouched
            torch.manual_seed(seed)
            out = torch.stack([self.policy(img) for img in images.cpu()]).to(x.device)
        if floats:
            out = (out.to(x.dtype) / 255.0 - mean) / std
        return out

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
        if x.dim() != 4:
            raise ConfigError(f"augmentation needs (B, C, H, W) image batches, got shape {tuple(x.shape)}")
        cfg = self.cfg
        if self.policy is not None:
            x = self._apply_policy(x, generator)
        if cfg.crop or cfg.flip:
            if cfg.crop and x.is_floating_point() and self.mean is not None and self.std is not None:
                mean, std = self._stats(x)
                black = (-mean / std).expand(x.shape[1], 1, 1)
                x = random_crop_flip(x - black, cfg.crop, cfg.flip, generator) + black  # zero padding → black
            else:
                x = random_crop_flip(x, cfg.crop, cfg.flip, generator)
        if cfg.mixes:
            use_cutmix = cfg.cutmix > 0 and (cfg.mixup == 0 or bool(torch.rand(
                (), generator=generator, device=generator.device) < 0.5))
            mix = cutmix if use_cutmix else mixup
            x, y, _ = mix(x, y, cfg.cutmix if use_cutmix else cfg.mixup, self.num_classes, generator)
        return x, y


def build_augment(cfg: AugmentConfig | Mapping[str, Any] | None, num_classes: int,
                  mean: Optional[float | Sequence[float]] = None, std: Optional[float | Sequence[float]] = None) -> Augment:
    """The per-batch augmentation the trainer calls as ``x, y = augment(x, y, generator)``.

    ``num_classes`` sizes MixUp/CutMix soft labels; ``mean``/``std`` describe the normalisation
    already applied to float batches (see :class:`Augmenter`).
    """
    if not isinstance(cfg, AugmentConfig):
        cfg = AugmentConfig.from_dict(cfg)
    return Augmenter(cfg, num_classes, mean, std)
