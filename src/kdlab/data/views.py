"""Replayable augmented views: view ``v`` of sample ``i`` is a pure function of (seed, i, v).

A stored teacher signal (:mod:`kdlab.teacher_cache.signals`) holds the teacher's outputs for
views ``0 … V-1`` of every training sample. A student trained from it must see exactly those
inputs, so every random choice of a view (crop offset, flip, MixUp/CutMix partner, λ and box,
the policy's ops) is drawn from a counter-based hash of (seed, sample, view, stream) rather than
from a stateful generator: any batch, in any order, on any process, re-creates the same images.
The draws are vectorised per batch (one NumPy splitmix64 pass), the crop/flip is one gather.

Differences from the per-batch :class:`~kdlab.data.augment.Augmenter` (which stays the online
default): MixUp/CutMix draw one λ (and one box) per sample instead of per batch, and the partner
is a sample of the whole training set chosen by the hash (its own view ``v`` crop/flip applied),
not a permutation of the batch. Each epoch, sample ``i`` uses view ``(epoch + offset_i) mod V``
with a hashed offset, so every sample cycles through all ``V`` views in ``V`` epochs.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .augment import AugmentConfig, crop_flip, policy_transform, soft_targets

# one stream per independent draw of a view (the hash's last input)
_DY, _DX, _FLIP, _PARTNER, _LAMBDA, _BOX_Y, _BOX_X, _WHICH_MIX, _POLICY, _OFFSET = range(10)
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """Steele et al.'s SplitMix64 finaliser on uint64 arrays (wrap-around arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def view_hash(seed: int, index: Tensor, view: Tensor | int, stream: int) -> np.ndarray:
    """64-bit hashes of (seed, sample index, view, stream), one per sample of ``index``."""
    i = np.asarray(index.detach().cpu().numpy(), dtype=np.uint64)
    v = np.asarray(view.detach().cpu().numpy() if isinstance(view, Tensor) else view, dtype=np.uint64)
    base = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    z = _splitmix64(base ^ i)
    z = _splitmix64(z ^ (v * np.uint64(16) + np.uint64(stream)))
    return z & _MASK


def uniform(seed: int, index: Tensor, view: Tensor | int, stream: int) -> np.ndarray:
    """Uniforms in [0, 1) (float64, 53 bits) for (seed, i, v, stream)."""
    return (view_hash(seed, index, view, stream) >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def integers(seed: int, index: Tensor, view: Tensor | int, stream: int, high: int) -> np.ndarray:
    """Integers in [0, high) for (seed, i, v, stream)."""
    return (view_hash(seed, index, view, stream) % np.uint64(high)).astype(np.int64)


class ReplayViews:
    """Views ``0 … views-1`` of every training sample under ``cfg``; see the module docstring.

    ``mean``/``std``: the normalisation already applied to float inputs (black crop padding,
    policies on floats), as for :class:`~kdlab.data.augment.Augmenter`.
    """

    def __init__(self, cfg: AugmentConfig, seed: int, views: int, num_classes: int,
                 mean: Optional[float | Sequence[float]] = None, std: Optional[float | Sequence[float]] = None) -> None:
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"teacher_signals.views: the number of stored views per sample must be an integer >= 1 "
                              f"(e.g. 8), got {views!r}")
        cfg.validate()
        self.cfg, self.seed, self.views, self.num_classes = cfg, int(seed), int(views), int(num_classes)
        self.mean, self.std = mean, std
        self.policy = policy_transform(cfg) if cfg.policy else None

    def describe(self) -> dict:
        """What decides the views (part of a signal store's key and of a run's facts)."""
        return {"augment": {k: v for k, v in vars(self.cfg).items()}, "seed": self.seed, "views": self.views,
                "per_sample_mix": self.cfg.mixes}

    def view_of(self, epoch: int, index: Tensor) -> Tensor:
        """The view each sample of ``index`` uses in ``epoch`` (1-based): ``(epoch − 1 + offset_i) mod V``."""
        offset = integers(self.seed, index, 0, _OFFSET, self.views)
        return torch.from_numpy((offset + (epoch - 1)) % self.views).to(index.device)

    def _crop_flip(self, x: Tensor, index: Tensor, view: Tensor) -> Tensor:
        cfg = self.cfg
        if not (cfg.crop or cfg.flip):
            return x
        span = 2 * cfg.crop + 1
        dy = torch.from_numpy(integers(self.seed, index, view, _DY, span)).to(x.device)
        dx = torch.from_numpy(integers(self.seed, index, view, _DX, span)).to(x.device)
        mirrored = (torch.from_numpy(uniform(self.seed, index, view, _FLIP) < 0.5).to(x.device) if cfg.flip else None)
        if cfg.crop and x.is_floating_point() and self.mean is not None and self.std is not None:
            black = self._black(x)
            return crop_flip(x - black, cfg.crop, dy, dx, mirrored) + black  # zero padding → black
        return crop_flip(x, cfg.crop, dy, dx, mirrored)

    def _black(self, x: Tensor) -> Tensor:
        as_t = lambda v: torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # noqa: E731
        return (-as_t(self.mean) / as_t(self.std)).expand(x.shape[1], 1, 1)

    def _policy(self, x: Tensor, index: Tensor, view: Tensor) -> Tensor:
        """The policy per sample, each under a torch RNG seeded from its own (seed, i, v) hash."""
        assert self.policy is not None
        floats = x.is_floating_point()
        if floats:
            if self.mean is None or self.std is None:
                raise ConfigError("augment.autoaugment/randaugment on normalised images needs the dataset mean and std")
            black = self._black(x)  # −mean/std: images = (x − black)·std
            std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
            images = ((x - black) * std).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        else:
            images = x
        seeds = view_hash(self.seed, index, view, _POLICY) >> np.uint64(1)
        out = []
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global RNG; keep it untouched
            for img, s in zip(images.cpu(), seeds.tolist()):
                torch.manual_seed(int(s))
                out.append(self.policy(img))
        res = torch.stack(out).to(x.device)
        if floats:
            res = res.to(x.dtype) / 255.0 / std + black
        return res

    def _single(self, x: Tensor, index: Tensor, view: Tensor) -> Tensor:
        if self.policy is not None:
            x = self._policy(x, index, view)
        return self._crop_flip(x, index, view)

    def __call__(self, X: Tensor, Y: Tensor, index: Tensor, view: Tensor) -> Tuple[Tensor, Tensor]:
        """The exact inputs and labels of views ``view`` of samples ``index`` of the training set ``(X, Y)``."""
        if X.dim() != 4:
            raise ConfigError(f"augmentation needs (B, C, H, W) images, got shape {tuple(X.shape[1:])} per sample")
        index = index.to(X.device)
        view = view.to(X.device)
        x, y = self._single(X.index_select(0, index), index, view), Y.index_select(0, index)
        if not self.cfg.mixes:
            return x, y
        return self._mix(X, Y, x, y, index, view)

    def _mix(self, X: Tensor, Y: Tensor, x: Tensor, y: Tensor, index: Tensor, view: Tensor) -> Tuple[Tensor, Tensor]:
        from scipy.special import betaincinv  # scipy (a scikit-learn dependency): start-up time

        cfg, seed, n = self.cfg, self.seed, X.shape[0]
        if not x.is_floating_point():
            raise ConfigError("augment.mixup/cutmix needs float images; apply it after normalisation")
        partner = torch.from_numpy(integers(seed, index, view, _PARTNER, n)).to(X.device)
        xp, yp = self._single(X.index_select(0, partner), partner, view), Y.index_select(0, partner)
        use_cut = np.zeros(len(index), dtype=bool)
        if cfg.cutmix > 0:
            use_cut = (uniform(seed, index, view, _WHICH_MIX) < 0.5) if cfg.mixup > 0 else np.ones(len(index), dtype=bool)
        u = uniform(seed, index, view, _LAMBDA)
        alpha = np.where(use_cut, cfg.cutmix or 1.0, cfg.mixup or 1.0)
        lam = betaincinv(alpha, alpha, u)  # λ ~ Beta(α, α) by its inverse CDF
        b, _, h, w = x.shape
        lam_t = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
        if use_cut.any():
            cut = np.sqrt(1.0 - lam)
            cy = integers(seed, index, view, _BOX_Y, h)
            cx = integers(seed, index, view, _BOX_X, w)
            half_h, half_w = (h * cut).astype(np.int64) // 2, (w * cut).astype(np.int64) // 2
            y0, y1 = np.maximum(cy - half_h, 0), np.minimum(cy + half_h, h)
            x0, x1 = np.maximum(cx - half_w, 0), np.minimum(cx + half_w, w)
            area = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted, after clipping
            lam_t = torch.where(torch.from_numpy(use_cut).to(x.device), torch.as_tensor(area, dtype=x.dtype, device=x.device), lam_t)
            rows = torch.arange(h, device=x.device)
            cols = torch.arange(w, device=x.device)
            as_dev = lambda a: torch.from_numpy(a).to(x.device)[:, None]  # noqa: E731
            inside = ((rows[None] >= as_dev(y0)) & (rows[None] < as_dev(y1)))[:, :, None] & \
                     ((cols[None] >= as_dev(x0)) & (cols[None] < as_dev(x1)))[:, None, :]
            box = inside & torch.from_numpy(use_cut).to(x.device)[:, None, None]
        else:
            box = None
        blend = torch.from_numpy(~use_cut).to(x.device)
        lam_b = lam_t.view(b, 1, 1, 1)
        mixed = torch.where(blend.view(b, 1, 1, 1), x * lam_b + xp * (1.0 - lam_b), x)
        if box is not None:
            mixed = torch.where(box[:, None], xp, mixed)
        t, tp = soft_targets(y, self.num_classes), soft_targets(yp, self.num_classes)
        lam_y = lam_t.to(t.dtype)[:, None]
        return mixed, t * lam_y + tp * (1.0 - lam_y)


def views_fact(views: ReplayViews, epochs: int) -> str:
    """One line for a run's facts: fresh views every epoch, or how often they repeat."""
    if views.views >= epochs:
        return f"{views.views} stored views per sample, {epochs} epochs: every epoch sees fresh views"
    return (f"{views.views} stored views per sample, {epochs} epochs: each view is seen about "
            f"{math.ceil(epochs / views.views)} times")
